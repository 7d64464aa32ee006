// Peer for benches/compare: pins the official 1Password operator's release so its manager
// binary can be built with `go build github.com/1Password/onepassword-operator/cmd`.
// No code of the official operator lives in this repository.
module opsync.bench/official

go 1.24.0

require github.com/1Password/onepassword-operator v1.12.0

// The official module requires a local-only sub-module; its replace directive does not apply
// to dependents, so benches/official/build points it at the downloaded module's copy.
