//! What the data digests and their salts are made of: HMAC-SHA256 (the Connect client's, which
//! also keys the salt of a new Secret with the token) and lower-case hex.

pub use onepassword_connect::hmac_sha256;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
