//! `spec.template.data`: Secret keys rendered from Jinja templates (the `minijinja` engine) over
//! the item. Pure, like the rest of [`crate::secret`].
//!
//! The context uses the names of the official operator's unreleased templates
//! (`pkg/template/template.go`: `Fields`, `Sections`, `FieldsByID`), so its documented templates
//! read the same here less Go's leading dot; we add `Files`, `URLs` and `Item`.
//!
//! A template cannot read files or the network (no loader is set), a missing value is an error
//! (strict undefined), and each render has a fuel budget and an output cap, so a hostile
//! template stops with an error in bounded time and memory. Errors name the key, the line and
//! the kind of problem, never a value: minijinja's own message can quote values, so it is not
//! used.

use std::{
    collections::BTreeMap,
    fmt, io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::{Engine as _, engine::GeneralPurpose};
use minijinja::{
    AutoEscape, Environment, ErrorKind, State, UndefinedBehavior, Value, syntax::SyntaxConfig,
};

use super::{BuildError, MAX_SECRET_DATA_BYTES, SourceItems, shape::KeyedText};
use sha2::{Digest as _, Sha256};

use crate::connect::model::ItemWithFiles;

/// The work one key's template may do: one unit per instruction, plus one per 64 bytes it
/// produces or reads. A real template (a DSN, a config file) takes a few hundred; the cap keeps
/// a hostile one (`range` over millions, string repetition) to milliseconds.
pub const FUEL: u64 = 100_000;

/// bcrypt's cost for `htpasswd`, at most: 2^10 rounds, some 50 ms of one core (release build).
pub const HTPASSWD_MAX_COST: u32 = 10;
const HTPASSWD_MIN_COST: u32 = 4;
/// `htpasswd` calls in one Secret, at most: fuel does not count bcrypt's work, this does.
pub const HTPASSWD_MAX_CALLS: usize = 8;

/// What went wrong in a template, without anything of its input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateProblem {
    Syntax,
    /// A syntax error where the template looks like a Go template (`.Fields.x`, `index`).
    GoSyntax,
    /// A name the context does not have (strict undefined).
    Undefined,
    OutOfFuel,
    /// The output passed the Secret's 1 MiB limit.
    TooLarge,
    /// Any other kind, by minijinja's fixed description of it ("invalid operation", "unknown
    /// filter", ...), which never carries a value.
    Other(String),
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateProblem::Syntax => f.write_str("syntax error"),
            TemplateProblem::GoSyntax => f.write_str(
                "syntax error: this is Go template syntax; templates here are Jinja, without the \
                 leading dot: write {{ Fields.x }} for {{ .Fields.x }}, and \
                 {{ Sections[\"s\"][\"x\"] }} for {{ index .Sections \"s\" \"x\" }}",
            ),
            TemplateProblem::Undefined => f.write_str(
                "undefined value: the template names a field, section, file or URL the item does \
                 not have (give an optional one a default: `| default(\"\")`)",
            ),
            TemplateProblem::OutOfFuel => {
                write!(
                    f,
                    "the template does too much work (more than {FUEL} units of fuel)"
                )
            }
            TemplateProblem::TooLarge => write!(
                f,
                "the output is larger than the {MAX_SECRET_DATA_BYTES} bytes a Secret can hold"
            ),
            TemplateProblem::Other(kind) => f.write_str(kind),
        }
    }
}

/// The keys of `templates`, rendered over the main item (and `Items.<name>`: each item of
/// `spec.items`, seen the same way).
pub fn render(
    templates: &KeyedText,
    items: SourceItems<'_>,
) -> Result<BTreeMap<String, Vec<u8>>, BuildError> {
    let env = environment();
    let context = context_of(items);
    templates
        .0
        .iter()
        .map(|(key, source)| {
            let mut out = Capped(Vec::new());
            env.template_from_named_str(key, source)
                .and_then(|t| t.render_captured_to(context.clone(), &mut out))
                .map_err(|e| template_error(key, source, &e))?;
            Ok((key.clone(), out.0))
        })
        .collect()
}

/// Checks that each template compiles, before the item is fetched.
pub fn check(templates: &KeyedText) -> Result<(), BuildError> {
    let env = environment();
    for (key, source) in &templates.0 {
        env.template_from_named_str(key, source)
            .map_err(|e| template_error(key, source, &e))?;
    }
    Ok(())
}

/// What a template sees: the main item's names, and `Items`: each item of `spec.items` by its
/// name, with the same names (`Items.db.Fields.password`).
pub fn context_of(items: SourceItems<'_>) -> Value {
    let named: BTreeMap<String, Value> = items
        .named
        .iter()
        .map(|(name, item)| (name.clone(), context(item)))
        .collect();
    let mut top = names(items.main);
    top.insert("Items".to_owned(), Value::from(named));
    Value::from(top)
}

/// What a template sees of one item.
pub fn context(item: &ItemWithFiles) -> Value {
    Value::from(names(item))
}

fn names(item: &ItemWithFiles) -> BTreeMap<String, Value> {
    let full = &item.item;
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut fields = BTreeMap::new();
    let mut by_id = BTreeMap::new();
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in &full.sections {
        sections
            .entry(section_name(&s.id, s.label.as_deref()))
            .or_default();
    }
    for f in &full.fields {
        // A label repeated in the item: the later field wins, as in the official operator.
        fields.insert(f.label.clone(), value(&f.value));
        by_id.insert(f.id.clone(), value(&f.value));
        let section = f.section.as_ref().map_or(String::new(), |r| {
            let label = full.sections.iter().find(|s| s.id == r.id);
            section_name(&r.id, label.and_then(|s| s.label.as_deref()))
        });
        sections
            .entry(section)
            .or_default()
            .insert(f.label.clone(), value(&f.value));
    }
    let mut urls: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for u in &full.urls {
        // A primary URL wins over others of its label, else the later one.
        if !urls
            .get(&u.label)
            .is_some_and(|(primary, _)| *primary && !u.primary)
        {
            urls.insert(u.label.clone(), (u.primary, u.href.clone()));
        }
    }
    let urls: BTreeMap<String, String> = urls.into_iter().map(|(k, (_, href))| (k, href)).collect();
    let files: BTreeMap<String, Value> = item
        .files
        .iter()
        .map(|f| {
            let content = match std::str::from_utf8(&f.content) {
                Ok(text) => Value::from(text),
                Err(_) => Value::from_bytes(f.content.clone()),
            };
            (f.name.clone(), content)
        })
        .collect();
    let meta = BTreeMap::from([
        ("ID".to_owned(), Value::from(full.id.as_str())),
        ("Title".to_owned(), Value::from(full.title.as_str())),
        ("Version".to_owned(), Value::from(full.version)),
        ("Tags".to_owned(), Value::from(full.tags.clone())),
        ("VaultID".to_owned(), Value::from(full.vault.id.as_str())),
    ]);
    BTreeMap::from([
        ("Fields".to_owned(), Value::from(fields)),
        ("FieldsByID".to_owned(), Value::from(by_id)),
        ("Sections".to_owned(), Value::from(sections)),
        ("Files".to_owned(), Value::from(files)),
        ("URLs".to_owned(), Value::from(urls)),
        ("Item".to_owned(), Value::from(meta)),
    ])
}

/// A section by its label, or by its id when it has none (as the official operator does).
fn section_name(id: &str, label: Option<&str>) -> String {
    match label {
        Some(l) if !l.is_empty() => l.to_owned(),
        _ => id.to_owned(),
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // A key named `config.json` or `index.html` is not to be escaped: the output is data.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // As Go templates do: a file's last newline is part of it.
    env.set_syntax(
        SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.add_filter("b64enc", b64enc);
    env.add_filter("b64dec", b64dec);
    env.add_filter("urlencode", urlencode);
    // A filter (`Fields.username | htpasswd(Fields.password)`) and a function (Sprig's
    // `htpasswd user password`, here `htpasswd(Fields.username, Fields.password)`).
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = move |state: &State, user: &str, password: &str, cost: Option<u32>| {
        if calls.fetch_add(1, Ordering::Relaxed) >= HTPASSWD_MAX_CALLS {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "htpasswd is called too often in one Secret",
            ));
        }
        htpasswd(state, user, password, cost)
    };
    env.add_filter("htpasswd", counted.clone());
    env.add_function("htpasswd", counted);
    env
}

/// `user:<bcrypt hash of password>`, an htpasswd line (`$2y$`, as `htpasswd -B` writes it).
/// bcrypt's salt is random by design; here it is derived from the Secret key, the item's id and
/// the user (never the password), so the same input gives the same line and the Secret does
/// not change, or roll a workload, at every rebuild.
fn htpasswd(
    state: &State,
    user: &str,
    password: &str,
    cost: Option<u32>,
) -> Result<String, minijinja::Error> {
    let cost = cost.unwrap_or(HTPASSWD_MAX_COST);
    if !(HTPASSWD_MIN_COST..=HTPASSWD_MAX_COST).contains(&cost) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "htpasswd: the cost is from 4 to 10",
        ));
    }
    let item_id = state
        .lookup("Item")
        .and_then(|item| item.get_attr("ID").ok())
        .map(|id| id.to_string())
        .unwrap_or_default();
    let mut salt_source = Sha256::new();
    for part in ["htpasswd", state.name(), &item_id, user] {
        salt_source.update(part.as_bytes());
        salt_source.update([0]);
    }
    let mut salt = [0; 16];
    salt.copy_from_slice(&salt_source.finalize()[..16]);
    Ok(format!(
        "{user}:{}",
        bcrypt_hash(password.as_bytes(), cost, salt)
    ))
}

/// `$2y$<cost>$<salt><hash>`, bcrypt's modular crypt format. As every bcrypt does, the
/// password is NUL-terminated and cut at 72 bytes.
fn bcrypt_hash(password: &[u8], cost: u32, salt: [u8; 16]) -> String {
    let mut key = password[..password.len().min(72)].to_vec();
    key.push(0);
    key.truncate(72);
    let hash = bcrypt::bcrypt(cost, salt, &key);
    let b64 = GeneralPurpose::new(
        &base64::alphabet::BCRYPT,
        base64::engine::general_purpose::NO_PAD,
    );
    format!(
        "$2y${cost:02}${}{}",
        b64.encode(salt),
        b64.encode(&hash[..23])
    )
}

/// Base64 (standard, padded) of a string's UTF-8 or of bytes (a binary file).
fn b64enc(value: &Value) -> Result<String, minijinja::Error> {
    let bytes = value.as_bytes().ok_or_else(|| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "b64enc takes a string or bytes",
        )
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The bytes of standard base64: text when they are UTF-8, else bytes (for `b64enc` again).
fn b64dec(value: &str) -> Result<Value, minijinja::Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, "b64dec: not base64"))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Value::from(text),
        Err(e) => Value::from_bytes(e.into_bytes()),
    })
}

/// Percent-encodes all but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`). Jinja's
/// builtin leaves `/` as it is, which breaks a password in a URL's user part (`user:pa/ss@`).
fn urlencode(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Output that refuses to grow past what a Secret can hold.
struct Capped(Vec<u8>);

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > MAX_SECRET_DATA_BYTES {
            return Err(io::Error::other("over the Secret size limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The error of `key`'s template, from the kind and line of minijinja's error only.
fn template_error(key: &str, source: &str, e: &minijinja::Error) -> BuildError {
    let go_line = go_syntax_line(source);
    let (problem, line) = match e.kind() {
        ErrorKind::SyntaxError if go_line.is_some() => (TemplateProblem::GoSyntax, go_line),
        ErrorKind::SyntaxError => (TemplateProblem::Syntax, e.line()),
        ErrorKind::UndefinedError => (TemplateProblem::Undefined, e.line()),
        ErrorKind::OutOfFuel => (TemplateProblem::OutOfFuel, e.line()),
        ErrorKind::WriteFailure => (TemplateProblem::TooLarge, e.line()),
        kind => (TemplateProblem::Other(kind.to_string()), e.line()),
    };
    BuildError::Template {
        key: key.to_owned(),
        line,
        problem,
    }
}

/// The line of the first `{{ .Name`, `{{ index `, `{{ printf ` or `{{ $x` in `source`: Go
/// template syntax, which a Jinja template never has there.
fn go_syntax_line(source: &str) -> Option<usize> {
    source.match_indices("{{").find_map(|(at, _)| {
        let rest = source[at + 2..].trim_start_matches('-').trim_start();
        let go = rest.starts_with('.')
            || rest.starts_with('$')
            || ["index ", "printf ", "template "]
                .iter()
                .any(|w| rest.starts_with(w));
        go.then(|| source[..at].matches('\n').count() + 1)
    })
}

#[cfg(test)]
mod tests;
