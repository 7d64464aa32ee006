//! The Connect API's rules, as a function from a request to a reply over a [`Store`]: routing,
//! tokens and vault scope, id checks, filters, files. No I/O; `server.rs` does the HTTP.

use base64::Engine;
use http::Method;
use serde::Serialize;

use super::store::{Access, MAX_INLINE_FILE_BYTES, SimError, Store, View};
use onepassword_connect::{
    Endpoint,
    model::{ErrorBody, File, FullItem, Health, ServiceDependency, is_valid_id},
};

/// The version Connect reports in `1Password-Connect-Version` and `/health`.
pub const CONNECT_VERSION: &str = "1.7.1";

/// A request's place in the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    ListVaults,
    GetVault {
        vault: String,
    },
    ListItems {
        vault: String,
    },
    CreateItem {
        vault: String,
    },
    GetItem {
        vault: String,
        item: String,
    },
    ReplaceItem {
        vault: String,
        item: String,
    },
    DeleteItem {
        vault: String,
        item: String,
    },
    ListFiles {
        vault: String,
        item: String,
    },
    GetFile {
        vault: String,
        item: String,
        file: String,
    },
    GetFileContent {
        vault: String,
        item: String,
        file: String,
    },
    Heartbeat,
    Health,
    Metrics,
    MethodNotAllowed,
    NotFound,
}

impl Route {
    pub fn parse(method: &Method, path: &str) -> Route {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = *method == Method::GET || *method == Method::HEAD;
        let s = |s: &str| s.to_string();
        match segments.as_slice() {
            ["heartbeat"] if get => Route::Heartbeat,
            ["health"] if get => Route::Health,
            ["metrics"] if get => Route::Metrics,
            ["v1", "vaults"] if get => Route::ListVaults,
            ["v1", "vaults", v] if get => Route::GetVault { vault: s(v) },
            ["v1", "vaults", v, "items"] => match *method {
                Method::GET | Method::HEAD => Route::ListItems { vault: s(v) },
                Method::POST => Route::CreateItem { vault: s(v) },
                _ => Route::MethodNotAllowed,
            },
            ["v1", "vaults", v, "items", i] => {
                let (vault, item) = (s(v), s(i));
                match *method {
                    Method::GET | Method::HEAD => Route::GetItem { vault, item },
                    Method::PUT => Route::ReplaceItem { vault, item },
                    Method::DELETE => Route::DeleteItem { vault, item },
                    _ => Route::MethodNotAllowed,
                }
            }
            ["v1", "vaults", v, "items", i, "files"] if get => Route::ListFiles {
                vault: s(v),
                item: s(i),
            },
            ["v1", "vaults", v, "items", i, "files", f] if get => Route::GetFile {
                vault: s(v),
                item: s(i),
                file: s(f),
            },
            ["v1", "vaults", v, "items", i, "files", f, "content"] if get => {
                Route::GetFileContent {
                    vault: s(v),
                    item: s(i),
                    file: s(f),
                }
            }
            ["heartbeat" | "health" | "metrics"] | ["v1", "vaults", ..] if !get => {
                Route::MethodNotAllowed
            }
            _ => Route::NotFound,
        }
    }

    /// A stable name for counts, metrics and fault scoping: the Connect client's name for the
    /// same endpoint ([`Endpoint::as_str`]).
    pub fn endpoint(&self) -> &'static str {
        let endpoint = match self {
            Route::ListVaults => Endpoint::ListVaults,
            Route::GetVault { .. } => Endpoint::GetVault,
            Route::ListItems { .. } => Endpoint::ListItems,
            Route::CreateItem { .. } => Endpoint::CreateItem,
            Route::GetItem { .. } => Endpoint::GetItem,
            Route::ReplaceItem { .. } => Endpoint::ReplaceItem,
            Route::DeleteItem { .. } => Endpoint::DeleteItem,
            Route::ListFiles { .. } => Endpoint::ListFiles,
            Route::GetFile { .. } => Endpoint::GetFile,
            Route::GetFileContent { .. } => Endpoint::GetFileContent,
            Route::Heartbeat => Endpoint::Heartbeat,
            Route::Health => Endpoint::Health,
            Route::Metrics => Endpoint::Metrics,
            Route::MethodNotAllowed => return "method_not_allowed",
            Route::NotFound => return "not_found",
        };
        endpoint.as_str()
    }
}

/// The query parameters the API reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub filter: Option<String>,
    pub inline_files: bool,
}

impl Query {
    /// Parses a raw query string (`+` is a space, as form encoding has it).
    pub fn parse(raw: Option<&str>) -> Query {
        let mut query = Query::default();
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match &*key {
                "filter" if !value.trim().is_empty() => query.filter = Some(value.into_owned()),
                "inline_files" => {
                    query.inline_files = value.eq_ignore_ascii_case("true") || value == "1"
                }
                _ => {}
            }
        }
        query
    }
}

/// A SCIM `attribute eq "value"` filter, the only kind Connect takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Lower-cased.
    pub attribute: String,
    pub value: String,
}

impl Filter {
    /// The value runs from the first to the last double quote, so a title with an unescaped quote
    /// in it (the Go SDK does not escape) still parses; `\"` and `\\` are unescaped.
    pub fn parse(text: &str) -> Option<Filter> {
        let text = text.trim();
        let (attribute, rest) = text.split_once(char::is_whitespace)?;
        let (op, rest) = rest.trim_start().split_once(char::is_whitespace)?;
        if !op.eq_ignore_ascii_case("eq") {
            return None;
        }
        let quoted = rest.trim();
        if quoted.len() < 2 || !quoted.starts_with('"') || !quoted.ends_with('"') {
            return None;
        }
        let inner = &quoted[1..quoted.len() - 1];
        let mut value = String::with_capacity(inner.len());
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\\', Some('"' | '\\')) => value.push(chars.next().unwrap_or(c)),
                _ => value.push(c),
            }
        }
        Some(Filter {
            attribute: attribute.to_ascii_lowercase(),
            value,
        })
    }
}

/// An answer, before it becomes HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Json { status: u16, body: Vec<u8> },
    Text { status: u16, body: String },
    File { name: String, content: Vec<u8> },
    NoContent,
}

impl Reply {
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            &ErrorBody {
                status,
                message: message.into(),
            },
        )
    }

    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::Json { status, body },
            Err(e) => Reply::error(500, format!("cannot encode the response: {e}")),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Reply::Json { status, .. } | Reply::Text { status, .. } => *status,
            Reply::File { .. } => 200,
            Reply::NoContent => 204,
        }
    }
}

fn unauthorized() -> Reply {
    Reply::error(401, "Invalid token signature")
}

fn not_in_scope(vault: &str) -> Reply {
    Reply::error(403, format!("vault {vault} is not in scope"))
}

fn sim_error(error: SimError) -> Reply {
    match error {
        SimError::VaultNotFound(_) | SimError::ItemNotFound(_) | SimError::FileNotFound(_) => {
            Reply::error(404, error.to_string())
        }
        SimError::Stopped => Reply::error(503, error.to_string()),
        _ => Reply::error(400, error.to_string()),
    }
}

fn too_large() -> Reply {
    Reply::error(
        413,
        "File is too large to inline in request. Use the \
         /v1/vaults/{vaultUUID}/items/{itemUUID}/files/{fileUUID}/content endpoint instead.",
    )
}

/// The health document: every dependency up.
pub fn health() -> Health {
    let dependency = |service: &str, message: Option<&str>| ServiceDependency {
        service: service.into(),
        status: "ACTIVE".into(),
        message: message.map(Into::into),
    };
    Health {
        name: "1Password Connect API".into(),
        version: CONNECT_VERSION.into(),
        dependencies: vec![
            dependency("sqlite", Some("Connected to ./1password.sqlite")),
            dependency("account_data", None),
            dependency("sync", None),
            dependency("1Password", None),
        ],
    }
}

/// [`respond_seen`] from the current items.
#[cfg(test)]
pub fn respond(
    store: &mut Store,
    token: Option<&str>,
    route: &Route,
    query: &Query,
    body: &[u8],
) -> Reply {
    respond_seen(store, token, route, query, body, View::Current)
}

/// Answers one API request, reads from `view` (a lagging replica serves older items). `token`
/// is the bearer token, if the request had one. Metrics are answered by the server, which holds
/// the counters.
pub fn respond_seen(
    store: &mut Store,
    token: Option<&str>,
    route: &Route,
    query: &Query,
    body: &[u8],
    view: View,
) -> Reply {
    match route {
        Route::Heartbeat => {
            return Reply::Text {
                status: 200,
                body: ".".into(),
            };
        }
        Route::Health => return Reply::json(200, &health()),
        Route::Metrics => return Reply::error(404, "metrics are served by the server"),
        Route::NotFound => return Reply::error(404, "Not found"),
        Route::MethodNotAllowed => return Reply::error(405, "Method not allowed"),
        _ => {}
    }
    let Some(access) = token.and_then(|t| store.access(t)).cloned() else {
        return unauthorized();
    };
    let mut api = Api {
        store,
        access: &access,
        view,
    };
    match api.answer(route, query, body) {
        Ok(reply) | Err(reply) => reply,
    }
}

struct Api<'a> {
    store: &'a mut Store,
    access: &'a Access,
    view: View,
}

impl Api<'_> {
    fn answer(&mut self, route: &Route, query: &Query, body: &[u8]) -> Result<Reply, Reply> {
        Ok(match route {
            Route::ListVaults => self.list_vaults(query)?,
            Route::GetVault { vault } => Reply::json(200, self.vault(vault)?),
            Route::ListItems { vault } => self.list_items(vault, query)?,
            Route::GetItem { vault, item } => Reply::json(200, self.item(vault, item)?),
            Route::ListFiles { vault, item } => {
                let full = self.item(vault, item)?.clone();
                let files = self.files(&full, query.inline_files, |_| true)?;
                Reply::json(200, &files)
            }
            Route::GetFile { vault, item, file } => {
                let full = self.item(vault, item)?.clone();
                check_id(file, "File")?;
                let mut files = self.files(&full, query.inline_files, |f| f.id == *file)?;
                match files.pop() {
                    Some(found) => Reply::json(200, &found),
                    None => Reply::error(404, format!("file {file} not found")),
                }
            }
            Route::GetFileContent { vault, item, file } => {
                check_id(vault, "Vault")?;
                check_id(item, "Item")?;
                check_id(file, "File")?;
                self.item(vault, item)?;
                let (meta, content) = self
                    .store
                    .file_seen(vault, item, file, self.view)
                    .map_err(sim_error)?;
                Reply::File {
                    name: meta.name.clone(),
                    content: content.to_vec(),
                }
            }
            Route::CreateItem { vault } => {
                self.vault(vault)?;
                let mut new = parse_item(body)?;
                new.id.clear();
                Reply::json(200, &self.store.put_item(vault, new).map_err(sim_error)?)
            }
            Route::ReplaceItem { vault, item } => {
                self.item(vault, item)?;
                let mut replacement = parse_item(body)?;
                replacement.id = item.clone();
                Reply::json(
                    200,
                    &self.store.put_item(vault, replacement).map_err(sim_error)?,
                )
            }
            Route::DeleteItem { vault, item } => {
                self.item(vault, item)?;
                self.store.delete_item(vault, item).map_err(sim_error)?;
                Reply::NoContent
            }
            Route::Heartbeat
            | Route::Health
            | Route::Metrics
            | Route::MethodNotAllowed
            | Route::NotFound => Reply::error(404, "Not found"),
        })
    }

    fn list_vaults(&self, query: &Query) -> Result<Reply, Reply> {
        let name = match query.filter.as_deref().map(Filter::parse) {
            None => None,
            Some(Some(f)) if f.attribute == "title" || f.attribute == "name" => {
                Some(f.value.to_lowercase())
            }
            Some(_) => return Err(Reply::error(400, "Invalid filter")),
        };
        let vaults: Vec<_> = self
            .store
            .vaults()
            .filter(|v| self.access.allows(&v.id))
            .filter(|v| name.as_ref().is_none_or(|n| v.name.to_lowercase() == *n))
            .collect();
        Ok(Reply::json(200, &vaults))
    }

    fn list_items(&self, vault: &str, query: &Query) -> Result<Reply, Reply> {
        self.vault(vault)?;
        let filter = match query.filter.as_deref().map(Filter::parse) {
            None => None,
            Some(Some(f)) if f.attribute == "title" || f.attribute == "tag" => Some(f),
            Some(_) => return Err(Reply::error(400, "Invalid filter")),
        };
        let keep = |item: &FullItem| match &filter {
            None => true,
            Some(f) if f.attribute == "title" => item.title == f.value,
            Some(f) => item.tags.contains(&f.value),
        };
        let items: Vec<_> = self
            .store
            .items_seen(vault, self.view)
            .into_iter()
            .flatten()
            .filter(|i| keep(i))
            .map(FullItem::summary)
            .collect();
        Ok(Reply::json(200, &items))
    }

    fn vault(&self, vault: &str) -> Result<&onepassword_connect::model::Vault, Reply> {
        check_id(vault, "Vault")?;
        if !self.access.allows(vault) {
            return Err(not_in_scope(vault));
        }
        self.store
            .vault_by_id(vault)
            .ok_or_else(|| Reply::error(404, format!("vault {vault} not found")))
    }

    fn item(&self, vault: &str, item: &str) -> Result<&FullItem, Reply> {
        check_id(vault, "Vault")?;
        check_id(item, "Item")?;
        self.vault(vault)?;
        self.store
            .item_seen(vault, item, self.view)
            .ok_or_else(|| Reply::error(404, format!("item {item} not found")))
    }

    fn files(
        &self,
        item: &FullItem,
        inline: bool,
        keep: impl Fn(&File) -> bool,
    ) -> Result<Vec<File>, Reply> {
        let files = self
            .store
            .files_seen(&item.vault.id, &item.id, self.view)
            .unwrap_or_default();
        let mut out = Vec::new();
        for (file, content) in files.into_iter().filter(|(f, _)| keep(f)) {
            let mut file = file.clone();
            if inline {
                if file.size > MAX_INLINE_FILE_BYTES {
                    return Err(too_large());
                }
                file.content = Some(base64::engine::general_purpose::STANDARD.encode(content));
            }
            out.push(file);
        }
        Ok(out)
    }
}

fn check_id(id: &str, kind: &str) -> Result<(), Reply> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(Reply::error(400, format!("Invalid {kind} UUID")))
    }
}

/// An item from a request body. `id` and `vault` may be left out: the path gives them.
fn parse_item(body: &[u8]) -> Result<FullItem, Reply> {
    let invalid = |e: serde_json::Error| Reply::error(400, format!("Invalid request body: {e}"));
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if let Some(object) = value.as_object_mut() {
        object.entry("id").or_insert_with(|| "".into());
        object
            .entry("vault")
            .or_insert_with(|| serde_json::json!({ "id": "" }));
    }
    serde_json::from_value(value).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        seed::{ItemSpec, Seed, VaultSpec},
        store::TokenAccess,
    };

    struct Fixture {
        store: Store,
        demo: String,
        other: String,
        db: FullItem,
    }

    fn fixture() -> Fixture {
        let mut store = Store::new();
        Seed::new()
            .vault(
                VaultSpec::new("Demo")
                    .item(
                        ItemSpec::new("db")
                            .username("admin")
                            .password("s3cret")
                            .tag("t1"),
                    )
                    .item(ItemSpec::new("db").password("other"))
                    .item(
                        ItemSpec::new("DB Two")
                            .file("small.txt", "hello")
                            .file("big.bin", vec![7u8; 100 * 1024 + 1]),
                    ),
            )
            .vault(VaultSpec::new("Other"))
            .token("demo", TokenAccess::vaults(["Demo"]))
            .token("all", TokenAccess::All)
            .apply(&mut store)
            .unwrap();
        let demo = store.vault("Demo").unwrap().id.clone();
        let other = store.vault("Other").unwrap().id.clone();
        let db = store.item("Demo", "db").unwrap().clone();
        Fixture {
            store,
            demo,
            other,
            db,
        }
    }

    fn get(f: &mut Fixture, token: &str, path_and_query: &str) -> (u16, serde_json::Value) {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let route = Route::parse(&Method::GET, path);
        match respond(&mut f.store, Some(token), &route, &Query::parse(query), b"") {
            Reply::Json { status, body } => (status, serde_json::from_slice(&body).unwrap()),
            Reply::Text { status, body } => (status, serde_json::Value::String(body)),
            Reply::File { content, .. } => (
                200,
                serde_json::Value::String(String::from_utf8_lossy(&content).into()),
            ),
            Reply::NoContent => (204, serde_json::Value::Null),
        }
    }

    #[test]
    fn routes_and_endpoint_names() {
        let r = |m: Method, p: &str| Route::parse(&m, p).endpoint();
        assert_eq!(r(Method::GET, "/v1/vaults"), "list_vaults");
        assert_eq!(r(Method::GET, "/v1/vaults/"), "list_vaults");
        assert_eq!(r(Method::GET, "/v1/vaults/x"), "get_vault");
        assert_eq!(r(Method::GET, "/v1/vaults/x/items"), "list_items");
        assert_eq!(r(Method::GET, "/v1/vaults/x/items/y"), "get_item");
        assert_eq!(r(Method::GET, "/v1/vaults/x/items/y/files"), "list_files");
        assert_eq!(r(Method::GET, "/v1/vaults/x/items/y/files/z"), "get_file");
        assert_eq!(
            r(Method::GET, "/v1/vaults/x/items/y/files/z/content"),
            "get_file_content"
        );
        assert_eq!(r(Method::GET, "/heartbeat"), "heartbeat");
        assert_eq!(r(Method::GET, "/health"), "health");
        assert_eq!(r(Method::GET, "/metrics"), "metrics");
        assert_eq!(r(Method::POST, "/v1/vaults/x/items"), "create_item");
        assert_eq!(r(Method::PUT, "/v1/vaults/x/items/y"), "replace_item");
        assert_eq!(r(Method::DELETE, "/v1/vaults/x/items/y"), "delete_item");
        assert_eq!(
            r(Method::PATCH, "/v1/vaults/x/items/y"),
            "method_not_allowed"
        );
        assert_eq!(r(Method::GET, "/v2/nothing"), "not_found");
    }

    #[test]
    fn filters_parse_scim_eq_with_quotes_and_escapes() {
        let f = Filter::parse(r#"title eq "my item""#).unwrap();
        assert_eq!(
            (f.attribute.as_str(), f.value.as_str()),
            ("title", "my item")
        );
        let f = Filter::parse(r#"Title EQ "a "quoted" one""#).unwrap();
        assert_eq!(
            (f.attribute.as_str(), f.value.as_str()),
            ("title", r#"a "quoted" one"#)
        );
        let f = Filter::parse(r#"title eq "a \"b\" \\c""#).unwrap();
        assert_eq!(f.value, r#"a "b" \c"#);
        assert_eq!(Filter::parse("title eq db"), None);
        assert_eq!(Filter::parse(r#"title ne "db""#), None);
        assert_eq!(
            Query::parse(Some("filter=title+eq+%22my+item%22&inline_files=true")),
            Query {
                filter: Some(r#"title eq "my item""#.into()),
                inline_files: true
            }
        );
    }

    #[test]
    fn tokens_are_checked_before_anything_else() {
        let mut f = fixture();
        let route = Route::ListVaults;
        for token in [None, Some("nope")] {
            assert_eq!(
                respond(&mut f.store, token, &route, &Query::default(), b""),
                Reply::error(401, "Invalid token signature")
            );
        }
        let (status, _) = get(&mut f, "nope", "/heartbeat");
        assert_eq!(status, 200);
    }

    #[test]
    fn vault_scope_ids_and_existence_give_403_400_404() {
        let mut f = fixture();
        let (other, demo) = (f.other.clone(), f.demo.clone());
        let (status, body) = get(&mut f, "demo", &format!("/v1/vaults/{other}"));
        assert_eq!(
            (status, body["message"].as_str().unwrap()),
            (403, &*format!("vault {other} is not in scope"))
        );
        let (status, body) = get(&mut f, "demo", "/v1/vaults/NotAnId");
        assert_eq!(
            (status, body["message"].as_str().unwrap()),
            (400, "Invalid Vault UUID")
        );
        let missing = "zzzzzzzzzzzzzzzzzzzzzzzzzz";
        let (status, _) = get(&mut f, "demo", &format!("/v1/vaults/{missing}"));
        assert_eq!(status, 403);
        let (status, body) = get(&mut f, "all", &format!("/v1/vaults/{missing}"));
        assert_eq!(
            (status, body["message"].as_str().unwrap()),
            (404, &*format!("vault {missing} not found"))
        );
        let (status, body) = get(&mut f, "demo", &format!("/v1/vaults/{demo}/items/bad"));
        assert_eq!(
            (status, body["message"].as_str().unwrap()),
            (400, "Invalid Item UUID")
        );
        let (status, body) = get(
            &mut f,
            "demo",
            &format!("/v1/vaults/{demo}/items/{missing}"),
        );
        assert_eq!(
            (status, body["message"].as_str().unwrap()),
            (404, &*format!("item {missing} not found"))
        );
        let (status, body) = get(&mut f, "demo", "/v1/vaults");
        assert_eq!(status, 200);
        assert_eq!(body.as_array().unwrap().len(), 1);
        assert_eq!(body[0]["items"], 3);
    }

    #[test]
    fn vault_filters_ignore_case_and_item_filters_do_not() {
        let mut f = fixture();
        let demo = f.demo.clone();
        for filter in ["title+eq+%22demo%22", "name%20eq%20%22DEMO%22"] {
            let (_, body) = get(&mut f, "all", &format!("/v1/vaults?filter={filter}"));
            assert_eq!(body.as_array().unwrap().len(), 1, "{filter}");
        }
        let (status, _) = get(&mut f, "all", "/v1/vaults?filter=bogus");
        assert_eq!(status, 400);

        let items = |f: &mut Fixture, filter: &str| {
            let (_, body) = get(
                f,
                "all",
                &format!("/v1/vaults/{demo}/items?filter={filter}"),
            );
            body.as_array().unwrap().len()
        };
        assert_eq!(items(&mut f, "title+eq+%22db%22"), 2);
        assert_eq!(items(&mut f, "title+eq+%22DB%22"), 0);
        assert_eq!(items(&mut f, "title+eq+%22DB+Two%22"), 1);
        assert_eq!(items(&mut f, "tag+eq+%22t1%22"), 1);
        assert_eq!(items(&mut f, ""), 3);
    }

    #[test]
    fn listings_carry_no_fields_and_full_items_do() {
        let mut f = fixture();
        let (demo, db) = (f.demo.clone(), f.db.id.clone());
        let (_, list) = get(&mut f, "all", &format!("/v1/vaults/{demo}/items"));
        let first = list[0].as_object().unwrap();
        for absent in ["fields", "sections", "urls", "files"] {
            assert!(!first.contains_key(absent), "{absent}");
        }
        assert_eq!(first["version"], 1);
        assert!(!list.to_string().contains("s3cret"));
        let (_, item) = get(&mut f, "all", &format!("/v1/vaults/{demo}/items/{db}"));
        assert_eq!(item["fields"][1]["value"], "s3cret");
        assert_eq!(item["vault"]["id"], demo);
    }

    #[test]
    fn files_inline_only_when_small_enough() {
        let mut f = fixture();
        let demo = f.demo.clone();
        let two = f.store.item("Demo", "DB Two").unwrap().clone();
        let base = format!("/v1/vaults/{demo}/items/{}", two.id);
        let (status, files) = get(&mut f, "all", &format!("{base}/files"));
        assert_eq!(status, 200);
        assert!(files[0].get("content").is_none());
        assert_eq!(
            files[0]["content_path"],
            format!("{base}/files/{}/content", two.files[0].id)
        );
        let (status, _) = get(&mut f, "all", &format!("{base}/files?inline_files=true"));
        assert_eq!(status, 413);
        let small = &two.files[0].id;
        let (_, file) = get(
            &mut f,
            "all",
            &format!("{base}/files/{small}?inline_files=true"),
        );
        assert_eq!(file["content"], "aGVsbG8=");
        let (_, content) = get(&mut f, "all", &format!("{base}/files/{small}/content"));
        assert_eq!(content, "hello");
        let big = &two.files[1].id;
        let (status, _) = get(
            &mut f,
            "all",
            &format!("{base}/files/{big}?inline_files=true"),
        );
        assert_eq!(status, 413);
        let missing = "zzzzzzzzzzzzzzzzzzzzzzzzzz";
        let (status, body) = get(&mut f, "all", &format!("{base}/files/{missing}/content"));
        assert_eq!(
            (status, body["message"].as_str().unwrap()),
            (404, &*format!("file {missing} not found"))
        );
    }

    #[test]
    fn writes_create_replace_and_delete_items() {
        let mut f = fixture();
        let demo = f.demo.clone();
        let create = Route::CreateItem {
            vault: demo.clone(),
        };
        let body = br#"{"title":"new","category":"PASSWORD","fields":[{"id":"password","type":"CONCEALED","purpose":"PASSWORD","value":"p"}]}"#;
        let Reply::Json { status: 200, body } =
            respond(&mut f.store, Some("all"), &create, &Query::default(), body)
        else {
            panic!("create failed");
        };
        let created: FullItem = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (created.version, created.vault.id.as_str()),
            (1, demo.as_str())
        );

        let mut changed = created.clone();
        changed.title = "renamed".into();
        let replace = Route::ReplaceItem {
            vault: demo.clone(),
            item: created.id.clone(),
        };
        let reply = respond(
            &mut f.store,
            Some("all"),
            &replace,
            &Query::default(),
            &serde_json::to_vec(&changed).unwrap(),
        );
        assert_eq!(reply.status(), 200);
        assert_eq!(f.store.item(&demo, &created.id).unwrap().version, 2);

        let delete = Route::DeleteItem {
            vault: demo.clone(),
            item: created.id.clone(),
        };
        assert_eq!(
            respond(&mut f.store, Some("all"), &delete, &Query::default(), b""),
            Reply::NoContent
        );
        assert_eq!(
            respond(&mut f.store, Some("all"), &delete, &Query::default(), b"").status(),
            404
        );
        assert_eq!(
            respond(&mut f.store, Some("all"), &create, &Query::default(), b"{").status(),
            400
        );
    }
}
