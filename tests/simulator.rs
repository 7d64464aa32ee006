//! The Connect simulator over real HTTP: the API's rules, faults, counts, admin endpoints, seeds
//! and TLS.

use std::time::{Duration, Instant};

use connect_sim::{Fault, ItemSpec, Seed, Simulator, TokenAccess, VaultSpec};
use onepassword_secrets_operator::connect::model::{ErrorBody, File, FullItem, ItemSummary, Vault};
use reqwest::StatusCode;
use serde_json::{Value, json};

const MISSING_ID: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzz";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn seed() -> Seed {
    Seed::new()
        .vault(
            VaultSpec::new("Team Vault")
                .item(
                    ItemSpec::new("db")
                        .username("admin")
                        .password("s3cret")
                        .field_in("connection", "port", "5432")
                        .url("website", "https://db.example", true)
                        .tag("backend"),
                )
                .item(
                    ItemSpec::new("db")
                        .password("second")
                        .created_at("2030-01-01T00:00:00Z"),
                )
                .item(ItemSpec::new("My Item").field("k", "v"))
                .item(
                    ItemSpec::new("files")
                        .category("DOCUMENT")
                        .file("small.txt", "hello")
                        .file("big.bin", vec![7u8; 100 * 1024 + 1]),
                ),
        )
        .vault(VaultSpec::new("Private").item(ItemSpec::new("secret").password("x")))
        .token("team", TokenAccess::vaults(["Team Vault"]))
        .token("all", TokenAccess::All)
}

struct Ctx {
    sim: Simulator,
    http: reqwest::Client,
    team: String,
    private: String,
}

impl Ctx {
    fn new() -> Ctx {
        let sim = Simulator::start(seed()).unwrap();
        let team = sim.vault("Team Vault").unwrap().id;
        let private = sim.vault("Private").unwrap().id;
        Ctx {
            sim,
            http: client(),
            team,
            private,
        }
    }

    fn item_id(&self, vault: &str, item: &str) -> String {
        self.sim.item(vault, item).unwrap().id
    }

    async fn get(&self, token: Option<&str>, path: &str) -> reqwest::Response {
        self.try_get(token, path).await.unwrap()
    }

    async fn try_get(&self, token: Option<&str>, path: &str) -> reqwest::Result<reqwest::Response> {
        let mut request = self.http.get(format!("{}{path}", self.sim.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await
    }

    async fn json(&self, token: &str, path: &str) -> Value {
        let response = self.get(Some(token), path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.json().await.unwrap()
    }

    async fn admin(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/__sim/{path}", self.sim.url()))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: ErrorBody = response.json().await.unwrap();
    assert_eq!(body.status, status.as_u16());
    (status, body.message)
}

#[tokio::test]
async fn every_response_carries_the_connect_version_header() {
    let ctx = Ctx::new();
    let item = ctx.sim.item("Team Vault", "files").unwrap();
    let paths = [
        (None, "/heartbeat".to_string()),
        (None, "/health".into()),
        (None, "/metrics".into()),
        (None, "/v1/vaults".into()),
        (Some("team"), "/v1/vaults".into()),
        (Some("team"), "/v1/vaults/bad".into()),
        (Some("team"), "/nowhere".into()),
        (Some("team"), item.files[0].content_path.clone()),
        (None, "/__sim/counts".into()),
    ];
    for (token, path) in paths {
        let response = ctx.get(token, &path).await;
        assert_eq!(
            response.headers()["1Password-Connect-Version"],
            "1.7.1",
            "{path}"
        );
    }
}

#[tokio::test]
async fn health_endpoints_need_no_token() {
    let ctx = Ctx::new();
    let heartbeat = ctx.get(None, "/heartbeat").await;
    assert_eq!(heartbeat.status(), StatusCode::OK);
    assert_eq!(heartbeat.text().await.unwrap(), ".");
    let health: Value = ctx.get(None, "/health").await.json().await.unwrap();
    assert_eq!(health["version"], "1.7.1");
    assert_eq!(health["dependencies"].as_array().unwrap().len(), 4);
    let metrics = ctx.get(None, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("connect_sim_requests_total{endpoint=\"heartbeat\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_missing_or_unknown_token_gets_401() {
    let ctx = Ctx::new();
    for token in [None, Some("nope")] {
        let (status, message) = error_of(ctx.get(token, "/v1/vaults").await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(message, "Invalid token signature");
    }
    let response = ctx
        .http
        .get(format!("{}/v1/vaults", ctx.sim.url()))
        .header("Authorization", "Basic dGVhbQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_sees_only_its_vaults_and_gets_403_for_others() {
    let ctx = Ctx::new();
    let vaults: Vec<Vault> = ctx
        .json("team", "/v1/vaults")
        .await
        .as_array()
        .cloned()
        .map(|a| {
            a.into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect()
        })
        .unwrap();
    assert_eq!(vaults.len(), 1);
    assert_eq!(vaults[0].name, "Team Vault");
    assert_eq!(vaults[0].items, 4);
    assert_eq!(
        ctx.json("all", "/v1/vaults")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let private = &ctx.private;
    let secret = ctx.item_id("Private", "secret");
    for path in [
        format!("/v1/vaults/{private}"),
        format!("/v1/vaults/{private}/items"),
        format!("/v1/vaults/{private}/items/{secret}"),
    ] {
        let (status, message) = error_of(ctx.get(Some("team"), &path).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(message, format!("vault {private} is not in scope"));
    }

    // Grants change while running.
    ctx.sim.grant("team", "Private").unwrap();
    assert_eq!(
        ctx.get(Some("team"), &format!("/v1/vaults/{private}"))
            .await
            .status(),
        StatusCode::OK
    );
    ctx.sim.revoke("team", "Private").unwrap();
    assert_eq!(
        ctx.get(Some("team"), &format!("/v1/vaults/{private}"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    ctx.sim.remove_token("team").unwrap();
    assert_eq!(
        ctx.get(Some("team"), "/v1/vaults").await.status(),
        StatusCode::UNAUTHORIZED
    );
    ctx.sim
        .add_token("new", TokenAccess::vaults(["Private"]))
        .unwrap();
    assert_eq!(ctx.json("new", "/v1/vaults").await[0]["name"], "Private");
}

#[tokio::test]
async fn malformed_ids_get_400_and_unknown_ones_404() {
    let ctx = Ctx::new();
    let team = &ctx.team;
    let files = ctx.item_id("Team Vault", "files");
    let cases = [
        (
            "/v1/vaults/NOT-AN-ID".to_string(),
            400,
            "Invalid Vault UUID".to_string(),
        ),
        (
            format!("/v1/vaults/{team}/items/short"),
            400,
            "Invalid Item UUID".into(),
        ),
        (
            format!("/v1/vaults/{MISSING_ID}"),
            404,
            format!("vault {MISSING_ID} not found"),
        ),
        (
            format!("/v1/vaults/{MISSING_ID}/items"),
            404,
            format!("vault {MISSING_ID} not found"),
        ),
        (
            format!("/v1/vaults/{team}/items/{MISSING_ID}"),
            404,
            format!("item {MISSING_ID} not found"),
        ),
        (
            format!("/v1/vaults/{team}/items/{files}/files/{MISSING_ID}"),
            404,
            format!("file {MISSING_ID} not found"),
        ),
        (
            format!("/v1/vaults/{team}/items/{files}/files/{MISSING_ID}/content"),
            404,
            format!("file {MISSING_ID} not found"),
        ),
    ];
    for (path, status, message) in cases {
        let got = error_of(ctx.get(Some("all"), &path).await).await;
        assert_eq!((got.0.as_u16(), got.1), (status, message), "{path}");
    }
}

#[tokio::test]
async fn vault_filters_match_names_ignoring_case_with_encoded_spaces() {
    let ctx = Ctx::new();
    // reqwest encodes spaces as `+`, the Go SDK's url.QueryEscape too; also try `%20`.
    for filter in [r#"title eq "team vault""#, r#"name eq "TEAM VAULT""#] {
        let response = ctx
            .http
            .get(format!("{}/v1/vaults", ctx.sim.url()))
            .query(&[("filter", filter)])
            .bearer_auth("all")
            .send()
            .await
            .unwrap();
        let vaults: Vec<Vault> = response.json().await.unwrap();
        assert_eq!(vaults.len(), 1, "{filter}");
        assert_eq!(vaults[0].id, ctx.team);
    }
    let raw = ctx
        .json("all", "/v1/vaults?filter=title%20eq%20%22Team%20Vault%22")
        .await;
    assert_eq!(raw.as_array().unwrap().len(), 1);
    let none = ctx
        .json("all", "/v1/vaults?filter=title+eq+%22Team%22")
        .await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let (status, _) = error_of(
        ctx.get(Some("all"), "/v1/vaults?filter=title%3D%22x%22")
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn item_filters_are_exact_and_return_every_duplicate() {
    let ctx = Ctx::new();
    let base = format!("/v1/vaults/{}/items", ctx.team);
    let titles = |filter: &'static str| {
        let path = format!("{base}?filter={filter}");
        let ctx = &ctx;
        async move {
            let items: Vec<ItemSummary> =
                serde_json::from_value(ctx.json("team", &path).await).unwrap();
            items.into_iter().map(|i| i.title).collect::<Vec<_>>()
        }
    };
    assert_eq!(titles("title+eq+%22db%22").await, ["db", "db"]);
    assert_eq!(titles("title+eq+%22DB%22").await, Vec::<String>::new());
    assert_eq!(titles("title+eq+%22My+Item%22").await, ["My Item"]);
    assert_eq!(titles("title%20eq%20%22My%20Item%22").await, ["My Item"]);
    assert_eq!(titles("tag+eq+%22backend%22").await, ["db"]);
    assert_eq!(titles("").await.len(), 4);

    // Duplicates differ by createdAt, so a client can pick the oldest.
    let items: Vec<ItemSummary> = serde_json::from_value(
        ctx.json("team", &format!("{base}?filter=title+eq+%22db%22"))
            .await,
    )
    .unwrap();
    assert_ne!(items[0].created_at, items[1].created_at);
    assert_eq!(items[1].created_at.as_deref(), Some("2030-01-01T00:00:00Z"));
}

#[tokio::test]
async fn listings_have_no_values_and_full_items_have_everything() {
    let ctx = Ctx::new();
    let listing = ctx
        .json("team", &format!("/v1/vaults/{}/items", ctx.team))
        .await;
    for item in listing.as_array().unwrap() {
        let item = item.as_object().unwrap();
        for absent in ["fields", "sections", "urls", "files"] {
            assert!(!item.contains_key(absent), "{absent} in {item:?}");
        }
        for present in [
            "id",
            "title",
            "version",
            "vault",
            "category",
            "createdAt",
            "updatedAt",
        ] {
            assert!(item.contains_key(present), "{present} missing in {item:?}");
        }
    }
    assert!(!listing.to_string().contains("s3cret"));

    let db = ctx.item_id("Team Vault", "db");
    let item: FullItem = serde_json::from_value(
        ctx.json("team", &format!("/v1/vaults/{}/items/{db}", ctx.team))
            .await,
    )
    .unwrap();
    assert_eq!(item.vault.id, ctx.team);
    assert_eq!(item.category, "LOGIN");
    assert_eq!(item.version, 1);
    assert_eq!(item.tags, ["backend"]);
    assert_eq!(item.urls[0].href, "https://db.example");
    let password = item.fields.iter().find(|f| f.label == "password").unwrap();
    assert_eq!(
        (password.id.as_str(), password.field_type.as_str()),
        ("password", "CONCEALED")
    );
    assert_eq!(password.purpose, "PASSWORD");
    assert_eq!(password.value.as_deref(), Some("s3cret"));
    let port = item.fields.iter().find(|f| f.label == "port").unwrap();
    assert_eq!(port.section.as_ref().unwrap().id, item.sections[0].id);
}

#[tokio::test]
async fn changes_bump_the_item_version_and_the_vault_content_version() {
    let ctx = Ctx::new();
    let vault_path = format!("/v1/vaults/{}", ctx.team);
    let before: Vault = serde_json::from_value(ctx.json("team", &vault_path).await).unwrap();
    let db = ctx.sim.item("Team Vault", "db").unwrap();
    let item_path = format!("{vault_path}/items/{}", db.id);

    std::thread::sleep(Duration::from_millis(5));
    let changed = ctx
        .sim
        .set_field(&ctx.team, &db.id, "password", "rotated")
        .unwrap();
    assert_eq!(changed.version, 2);
    let served: FullItem = serde_json::from_value(ctx.json("team", &item_path).await).unwrap();
    assert_eq!(served.version, 2);
    assert_eq!(served.created_at, db.created_at);
    assert_ne!(served.updated_at, db.updated_at);
    assert_eq!(
        served
            .fields
            .iter()
            .find(|f| f.label == "password")
            .unwrap()
            .value
            .as_deref(),
        Some("rotated")
    );
    let after: Vault = serde_json::from_value(ctx.json("team", &vault_path).await).unwrap();
    assert_eq!(after.content_version, before.content_version + 1);
    assert_eq!(after.attribute_version, before.attribute_version);

    // The listing shows the new version too: one request per vault tells what changed.
    let listing: Vec<ItemSummary> =
        serde_json::from_value(ctx.json("team", &format!("{vault_path}/items")).await).unwrap();
    assert_eq!(listing.iter().find(|i| i.id == db.id).unwrap().version, 2);

    let added = ctx
        .sim
        .put_item("Team Vault", ItemSpec::new("new").password("p"))
        .unwrap();
    assert_eq!(added.version, 1);
    ctx.sim.set_file("Team Vault", "new", "a.txt", "A").unwrap();
    ctx.sim.delete_item("Team Vault", &added.id).unwrap();
    let (status, _) = error_of(
        ctx.get(Some("team"), &format!("{vault_path}/items/{}", added.id))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let last: Vault = serde_json::from_value(ctx.json("team", &vault_path).await).unwrap();
    assert_eq!(last.content_version, before.content_version + 4);
    assert_eq!(last.items, 4);

    // Replacing a wire item keeps its createdAt and takes the next version whatever it says.
    let mut replacement = ctx.sim.item("Team Vault", &db.id).unwrap();
    replacement.version = 1;
    replacement.title = "database".into();
    let replaced = ctx.sim.put_item("Team Vault", replacement).unwrap();
    assert_eq!((replaced.version, replaced.created_at), (3, db.created_at));
    assert!(ctx.sim.add_vault("Fresh").content_version >= 1);
}

#[tokio::test]
async fn files_list_inline_and_download_with_413_above_100_kb() {
    let ctx = Ctx::new();
    let item = ctx.sim.item("Team Vault", "files").unwrap();
    let base = format!("/v1/vaults/{}/items/{}", ctx.team, item.id);

    let full: FullItem = serde_json::from_value(ctx.json("team", &base).await).unwrap();
    assert_eq!(full.files.len(), 2);
    let small = &full.files[0];
    assert_eq!((small.name.as_str(), small.size), ("small.txt", 5));
    assert_eq!(
        small.content_path,
        format!("{base}/files/{}/content", small.id)
    );
    assert_eq!(small.content, None);

    let listed: Vec<File> =
        serde_json::from_value(ctx.json("team", &format!("{base}/files")).await).unwrap();
    assert!(listed.iter().all(|f| f.content.is_none()));
    let (status, message) = error_of(
        ctx.get(Some("team"), &format!("{base}/files?inline_files=true"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        message.starts_with("File is too large to inline"),
        "{message}"
    );

    let one: File = serde_json::from_value(
        ctx.json(
            "team",
            &format!("{base}/files/{}?inline_files=true", small.id),
        )
        .await,
    )
    .unwrap();
    assert_eq!(one.content.as_deref(), Some("aGVsbG8="));
    let big = &full.files[1];
    let response = ctx
        .get(
            Some("team"),
            &format!("{base}/files/{}?inline_files=true", big.id),
        )
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    for (file, len) in [(small, 5), (big, 100 * 1024 + 1)] {
        let response = ctx.get(Some("team"), &file.content_path).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-disposition"],
            format!("attachment; filename=\"{}\"", file.name).as_str()
        );
        assert_eq!(response.bytes().await.unwrap().len(), len);
    }
    // The content endpoint needs a token too.
    assert_eq!(
        ctx.get(None, &small.content_path).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn status_faults_answer_with_connect_error_bodies_then_expire() {
    let ctx = Ctx::new();
    ctx.sim
        .inject(Fault::internal_error().on("list_vaults").times(2));
    for _ in 0..2 {
        let (status, _) = error_of(ctx.get(Some("team"), "/v1/vaults").await).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        ctx.get(Some("team"), "/v1/vaults").await.status(),
        StatusCode::OK
    );
    // Only the endpoint it is scoped to.
    ctx.sim.inject(Fault::status(503).on("get_item"));
    assert_eq!(
        ctx.get(Some("team"), "/v1/vaults").await.status(),
        StatusCode::OK
    );
    ctx.sim.clear_faults();

    ctx.sim.inject(Fault::too_many_requests(7).times(1));
    let response = ctx.get(Some("team"), "/v1/vaults").await;
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(error_of(response).await.0, StatusCode::TOO_MANY_REQUESTS);

    ctx.sim.inject(Fault::timeout().times(1));
    assert_eq!(
        error_of(ctx.get(Some("team"), "/v1/vaults").await).await.0,
        StatusCode::REQUEST_TIMEOUT
    );

    let team = ctx.team.clone();
    ctx.sim
        .inject(Fault::internal_error().under(format!("/v1/vaults/{team}/items")));
    assert_eq!(
        ctx.get(Some("team"), &format!("/v1/vaults/{team}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        ctx.get(Some("team"), &format!("/v1/vaults/{team}/items"))
            .await
            .status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn a_delay_fault_slows_the_answer() {
    let ctx = Ctx::new();
    ctx.sim.inject(
        Fault::delay(Duration::from_millis(300))
            .on("heartbeat")
            .times(1),
    );
    let start = Instant::now();
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let start = Instant::now();
    ctx.get(None, "/heartbeat").await;
    assert!(start.elapsed() < Duration::from_millis(300));

    // A client with a shorter timeout gives up.
    ctx.sim.inject(
        Fault::delay(Duration::from_secs(5))
            .on("heartbeat")
            .times(1),
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let error = impatient
        .get(format!("{}/heartbeat", ctx.sim.url()))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
}

#[tokio::test]
async fn a_dropped_connection_gives_no_response_at_all() {
    let ctx = Ctx::new();
    // Warm a keep-alive connection first, then cut it mid-request.
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
    ctx.sim
        .inject(Fault::drop_connection().on("list_vaults").times(1));
    let error = ctx.try_get(Some("team"), "/v1/vaults").await.unwrap_err();
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
    // The next request works on a new connection.
    assert_eq!(
        ctx.get(Some("team"), "/v1/vaults").await.status(),
        StatusCode::OK
    );
    assert_eq!(ctx.sim.count("list_vaults"), 2);
}

#[tokio::test]
async fn a_malformed_json_fault_sends_a_200_that_does_not_parse() {
    let ctx = Ctx::new();
    ctx.sim.inject(Fault::malformed_json().times(1));
    let response = ctx.get(Some("team"), "/v1/vaults").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.json::<Vec<Vault>>().await.is_err());
    assert!(
        ctx.get(Some("team"), "/v1/vaults")
            .await
            .json::<Vec<Vault>>()
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_lagging_fault_serves_items_as_they_were_one_change_ago() {
    let ctx = Ctx::new();
    let files = ctx.sim.item("Team Vault", "files").unwrap();
    let db = ctx.item_id("Team Vault", "db");
    ctx.sim
        .set_field("Team Vault", &db, "password", "rotated")
        .unwrap();
    ctx.sim
        .set_file("Team Vault", "files", "small.txt", "changed")
        .unwrap();
    let item_path = format!("/v1/vaults/{}/items/{db}", ctx.team);
    let listing_path = format!("/v1/vaults/{}/items", ctx.team);
    let password = |item: &FullItem| {
        item.fields
            .iter()
            .find(|f| f.label == "password")
            .and_then(|f| f.value.clone())
    };

    ctx.sim.inject(Fault::lagging().times(4));
    let served: FullItem = serde_json::from_value(ctx.json("team", &item_path).await).unwrap();
    assert_eq!(served.version, 1);
    assert_eq!(password(&served).as_deref(), Some("s3cret"));
    let listing: Vec<ItemSummary> =
        serde_json::from_value(ctx.json("team", &listing_path).await).unwrap();
    let version_of = |id: &str| listing.iter().find(|i| i.id == id).unwrap().version;
    assert_eq!((version_of(&db), version_of(&files.id)), (1, 1));
    let small = files.files.iter().find(|f| f.name == "small.txt").unwrap();
    let content = ctx.get(Some("team"), &small.content_path).await;
    assert_eq!(content.text().await.unwrap(), "hello");
    // An item that never changed is served as it is.
    let private = ctx.sim.item("Private", "secret").unwrap();
    let never_changed: FullItem = serde_json::from_value(
        ctx.json(
            "all",
            &format!("/v1/vaults/{}/items/{}", ctx.private, private.id),
        )
        .await,
    )
    .unwrap();
    assert_eq!(never_changed.version, 1);

    // Once the fault is used up, the current versions again.
    let served: FullItem = serde_json::from_value(ctx.json("team", &item_path).await).unwrap();
    assert_eq!(served.version, 2);
    assert_eq!(password(&served).as_deref(), Some("rotated"));
    let response = ctx
        .admin("faults", json!({"kind": "lagging", "times": 1}))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let served: FullItem = serde_json::from_value(ctx.json("team", &item_path).await).unwrap();
    assert_eq!(served.version, 1);
}

#[tokio::test]
async fn going_down_refuses_connections_until_resumed_on_the_same_port() {
    let ctx = Ctx::new();
    let url = ctx.sim.url();
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
    ctx.sim.down().unwrap();
    // As when Connect dies: a pooled connection fails however it fails, new ones are refused.
    assert!(ctx.try_get(None, "/heartbeat").await.is_err());
    let error = ctx.try_get(None, "/heartbeat").await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    ctx.sim.resume().unwrap();
    assert_eq!(ctx.sim.url(), url);
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
    // Resuming twice is harmless.
    ctx.sim.resume().unwrap();
}

#[tokio::test]
async fn requests_are_counted_by_endpoint() {
    let ctx = Ctx::new();
    let files = ctx.sim.item("Team Vault", "files").unwrap();
    let base = format!("/v1/vaults/{}", ctx.team);
    let item_base = format!("{base}/items/{}", files.id);
    for path in [
        "/v1/vaults".to_string(),
        base.clone(),
        format!("{base}/items"),
        item_base.clone(),
        item_base.clone(),
        format!("{item_base}/files"),
        format!("{item_base}/files/{}", files.files[0].id),
        files.files[0].content_path.clone(),
        "/heartbeat".into(),
        "/health".into(),
    ] {
        ctx.get(Some("team"), &path).await;
    }
    ctx.get(None, "/v1/vaults").await; // counted even when refused
    ctx.get(None, "/__sim/counts").await; // not counted
    let counts = ctx.sim.counts();
    let expected = [
        ("get_file", 1),
        ("get_file_content", 1),
        ("get_item", 2),
        ("get_vault", 1),
        ("health", 1),
        ("heartbeat", 1),
        ("list_files", 1),
        ("list_items", 1),
        ("list_vaults", 2),
    ];
    assert_eq!(
        counts,
        expected.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    );
    assert_eq!(ctx.sim.total_requests(), 11);

    let over_http: Value = ctx.get(None, "/__sim/counts").await.json().await.unwrap();
    assert_eq!(over_http["total"], 11);
    assert_eq!(over_http["endpoints"]["get_item"], 2);

    ctx.sim.reset_counts();
    assert_eq!(ctx.sim.total_requests(), 0);
}

#[tokio::test]
async fn admin_endpoints_change_items_faults_tokens_and_counts() {
    let ctx = Ctx::new();
    let db = ctx.sim.item("Team Vault", "db").unwrap();

    let response = ctx
        .admin(
            "items/set-field",
            json!({"vault": "Team Vault", "item": db.id, "label": "password", "value": "via-admin"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let summary: ItemSummary = response.json().await.unwrap();
    assert_eq!(summary.version, 2);
    let password = ctx.sim.item("Team Vault", &db.id).unwrap().fields[1]
        .value
        .clone();
    assert_eq!(password.as_deref(), Some("via-admin"));

    let put = ctx
        .admin(
            "items/put",
            json!({"vault": ctx.team, "item": {"title": "created", "fields": [{"label": "k", "value": "v"}]}}),
        )
        .await;
    let created: ItemSummary = put.json().await.unwrap();
    assert_eq!((created.title.as_str(), created.version), ("created", 1));

    let set_file = ctx
        .admin(
            "items/set-file",
            json!({"vault": "Team Vault", "item": "created", "name": "f.bin", "base64": "AAE="}),
        )
        .await;
    assert_eq!(set_file.status(), StatusCode::OK);
    assert_eq!(
        ctx.sim.item("Team Vault", "created").unwrap().files[0].size,
        2
    );

    let deleted = ctx
        .admin(
            "items/delete",
            json!({"vault": "Team Vault", "item": "created"}),
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(ctx.sim.item("Team Vault", "created").is_none());
    let missing = ctx
        .admin(
            "items/delete",
            json!({"vault": "Team Vault", "item": "created"}),
        )
        .await;
    assert_eq!(error_of(missing).await.0, StatusCode::NOT_FOUND);

    let fault = ctx
        .admin(
            "faults",
            json!({"kind": "status", "status": 502, "endpoint": "heartbeat"}),
        )
        .await;
    assert_eq!(fault.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        ctx.get(None, "/heartbeat").await.status(),
        StatusCode::BAD_GATEWAY
    );
    let listed: Value = ctx.get(None, "/__sim/faults").await.json().await.unwrap();
    assert_eq!(listed[0]["status"], 502);
    ctx.admin("faults/clear", json!({})).await;
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
    let bad = ctx.admin("faults", json!({"kind": "earthquake"})).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let token = ctx
        .admin("tokens", json!({"token": "t2", "vaults": ["Private"]}))
        .await;
    assert_eq!(token.status(), StatusCode::NO_CONTENT);
    assert_eq!(ctx.json("t2", "/v1/vaults").await[0]["name"], "Private");
    ctx.admin("tokens/remove", json!({"token": "t2"})).await;
    assert_eq!(
        ctx.get(Some("t2"), "/v1/vaults").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let vault: Vault = ctx
        .admin("vaults", json!({"name": "Added"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ctx.sim.vault("Added").unwrap().id, vault.id);
    let all: Vec<Vault> = ctx.get(None, "/__sim/vaults").await.json().await.unwrap();
    assert_eq!(all.len(), 3);

    assert!(ctx.sim.total_requests() > 0);
    assert_eq!(
        ctx.admin("counts/reset", json!({})).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(ctx.sim.total_requests(), 0);
}

#[tokio::test]
async fn the_admin_down_endpoint_comes_back_by_itself() {
    let ctx = Ctx::new();
    let response = ctx.admin("down", json!({"for_millis": 400})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        ctx.try_get(None, "/heartbeat")
            .await
            .unwrap_err()
            .is_connect()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn writes_through_the_api_create_replace_and_delete() {
    let ctx = Ctx::new();
    let items = format!("{}/v1/vaults/{}/items", ctx.sim.url(), ctx.team);
    let created: FullItem = ctx
        .http
        .post(&items)
        .bearer_auth("team")
        .json(&json!({"vault": {"id": ctx.team}, "title": "api", "category": "PASSWORD",
                      "fields": [{"id": "", "type": "CONCEALED", "purpose": "PASSWORD", "value": "p1"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    let mut update = created.clone();
    update.fields[0].value = Some("p2".into());
    let updated: FullItem = ctx
        .http
        .put(format!("{items}/{}", created.id))
        .bearer_auth("team")
        .json(&update)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    let deleted = ctx
        .http
        .delete(format!("{items}/{}", created.id))
        .bearer_auth("team")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_demo_seed_file_loads() {
    let seed = Seed::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sim/demo.yaml"
    ))
    .unwrap();
    let sim = Simulator::start(seed).unwrap();
    let http = client();
    let vaults: Vec<Vault> = http
        .get(format!("{}/v1/vaults", sim.url()))
        .bearer_auth("demo-only-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vaults.len(), 1);
    assert_eq!(vaults[0].id, "demovaultaaaaaaaaaaaaaaaaa");
    assert_eq!(vaults[0].items, 4);

    let docker = sim.item("Demo", "registry-pull").unwrap();
    let config: Value = serde_json::from_str(docker.fields[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(docker.fields[0].label, ".dockerconfigjson");
    assert!(config["auths"]["registry.demo.example"]["auth"].is_string());
    let document = sim.item("Demo", "tls-bundle").unwrap();
    assert_eq!(document.category, "DOCUMENT");
    assert_eq!(document.files.len(), 2);
    let content = http
        .get(format!("{}{}", sim.url(), document.files[1].content_path))
        .bearer_auth("demo-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(content.starts_with("ssh-ed25519 "));
    assert!(sim.item("Staging", "db").is_some());
}

#[test]
fn a_bad_seed_fails_to_start_with_a_clear_error() {
    let error =
        Simulator::start(Seed::new().token("t", TokenAccess::vaults(["Nope"]))).unwrap_err();
    assert!(
        error.to_string().contains("vault Nope not found"),
        "{error}"
    );
    assert!(Seed::from_file("/nonexistent/seed.yaml").is_err());
}

#[test]
fn the_handle_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Simulator>();
}

#[test]
fn the_handle_works_without_any_async_runtime() {
    let sim = Simulator::start(seed()).unwrap();
    sim.set_field("Team Vault", "db", "password", "x").unwrap();
    sim.down().unwrap();
    sim.resume().unwrap();
    sim.shutdown();
    sim.shutdown();
    assert!(sim.down().is_err());
}

#[tokio::test]
async fn after_shutdown_connections_are_refused() {
    let ctx = Ctx::new();
    assert_eq!(ctx.get(None, "/heartbeat").await.status(), StatusCode::OK);
    ctx.sim.shutdown();
    assert!(ctx.try_get(None, "/heartbeat").await.is_err());
    assert!(
        ctx.try_get(None, "/heartbeat")
            .await
            .unwrap_err()
            .is_connect()
    );
}

#[tokio::test]
async fn https_with_a_custom_ca() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sim");
    let read = |name: &str| std::fs::read(format!("{fixtures}/{name}")).unwrap();
    let sim = Simulator::start_tls(seed(), &read("server.crt"), &read("server.key")).unwrap();
    assert!(sim.url().starts_with("https://127.0.0.1:"));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&read("ca.crt")).unwrap();
    let trusting = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let response = trusting
        .get(format!("{}/v1/vaults", sim.url()))
        .bearer_auth("team")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["1Password-Connect-Version"], "1.7.1");

    // Faults work the same over TLS.
    sim.inject(Fault::drop_connection().times(1));
    assert!(
        trusting
            .get(format!("{}/heartbeat", sim.url()))
            .send()
            .await
            .is_err()
    );

    let untrusting = client();
    let error = untrusting
        .get(format!("{}/heartbeat", sim.url()))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}
