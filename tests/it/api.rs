//! The control plane's HTTP API, driven in-process (`tower::ServiceExt::oneshot`)
//! over a registry in SQLite, MariaDB and PostgreSQL: every case runs once per
//! database, each in a database of its own.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use tower::ServiceExt;
use weir::api::{Access, ApiConfig, AppState, ROUTES, router};
use weir::registry::Registry;
use weir::runtime::{Runtime, RuntimeConfig};
use weir_integration::{Service, unique};

pub(crate) const ADMIN: &str = "admin-token-for-tests-0001";
pub(crate) const VIEWER: &str = "viewer-token-for-tests-0001";
/// Upload limit of the test server: above every artifact, small enough to exceed cheaply.
const LIMIT: usize = 8 << 20;

/// Which database a case runs against.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Database {
    Sqlite,
    MariaDb,
    Postgres,
}

/// A database made for one test; dropped by [`TestDb::drop_database`] when the
/// test got that far (a failed test leaves it for inspection).
pub(crate) struct TestDb {
    pub(crate) url: String,
    kind: Database,
    name: String,
    admin_url: String,
}

impl TestDb {
    pub(crate) async fn create(kind: Database) -> Self {
        let name = unique("weir_reg").replace('-', "_");
        match kind {
            Database::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                TestDb {
                    url: format!("sqlite://{}", path.display()),
                    kind,
                    name,
                    admin_url: String::new(),
                }
            }
            Database::MariaDb | Database::Postgres => {
                let service = if matches!(kind, Database::MariaDb) {
                    Service::MariaDb
                } else {
                    Service::Postgres
                };
                let admin_url = service.addr();
                install_default_drivers();
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("connect to {admin_url}: {e}"));
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("create database {name}: {e}"));
                pool.close().await;
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(base, _)| base)
                    .expect("database URL has a path");
                TestDb {
                    url: format!("{base}/{name}"),
                    kind,
                    name,
                    admin_url,
                }
            }
        }
    }

    pub(crate) async fn drop_database(self) {
        match self.kind {
            Database::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
            Database::MariaDb | Database::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&self.admin_url)
                    .await
                    .expect("reconnect to drop the test database");
                let force = if matches!(self.kind, Database::Postgres) {
                    " WITH (FORCE)"
                } else {
                    ""
                };
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE {}{force}", self.name)))
                    .execute(&pool)
                    .await
                    .expect("drop the test database");
                pool.close().await;
            }
        }
    }
}

/// One runtime for the whole test binary: components compile once.
pub(crate) fn runtime() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Runtime::new(RuntimeConfig {
                max_instances: 64,
                ..RuntimeConfig::default()
            })
            .expect("runtime")
        })
        .clone()
}

pub(crate) fn artifact(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The same component with a custom section appended: a distinct, valid
/// upload (a new sha256) that behaves exactly like the original.
pub(crate) fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    padded(bytes, tag.as_bytes())
}

/// Like [`variant`], with `padding` as the custom section's content (any size).
pub(crate) fn padded(bytes: &[u8], padding: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"weir-test";
    let mut payload = Vec::with_capacity(padding.len() + 16);
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(padding);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    leb128(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// A server over a fresh registry.
struct Api {
    router: axum::Router,
    db: TestDb,
    registry: Registry,
    /// The server's own OpenAPI document: every answer is checked against it.
    openapi: Value,
}

/// An answer, body parsed as JSON when it is JSON.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    bytes: Vec<u8>,
}

impl Answer {
    /// Asserts a problem+json answer with this status, returning its detail.
    #[track_caller]
    fn problem(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{:#}", self.body);
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json",
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status.as_u16());
        assert!(
            self.body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:weir:problem:")
        );
        self.body["detail"].as_str().unwrap().to_owned()
    }

    /// The `field` of every entry of `errors`.
    fn fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    async fn start(kind: Database) -> Self {
        let db = TestDb::create(kind).await;
        let registry = Registry::connect(&db.url, runtime())
            .await
            .unwrap_or_else(|e| panic!("registry on {}: {e}", db.url));
        let config = ApiConfig {
            admin_token: Some(ADMIN.into()),
            viewer_token: Some(VIEWER.into()),
            upload_limit_bytes: LIMIT,
        };
        let router = router(AppState::new(registry.clone(), &config));
        let mut api = Self {
            router,
            db,
            registry,
            openapi: Value::Null,
        };
        let document = api.call(Method::GET, "/api/openapi.json", None, None).await;
        assert_eq!(document.status, StatusCode::OK);
        api.openapi = document.body;
        api
    }

    /// Checks a JSON answer against the schema the OpenAPI document gives for
    /// its route and status: the route's success schema, or `Problem`.
    fn conform(&self, method: &Method, path: &str, answer: &Answer) {
        if self.openapi.is_null() {
            return;
        }
        let path = path.split('?').next().unwrap_or(path);
        let name = if answer.status.is_success() {
            let Some(route) = ROUTES
                .iter()
                .find(|r| r.method == *method && pattern_matches(r.path, path))
            else {
                panic!(
                    "{method} {path} answered {} but is not in ROUTES",
                    answer.status
                );
            };
            match route.response_schema {
                Some(name) => name,
                None => return,
            }
        } else {
            "Problem"
        };
        let mut schema = json!({ "$ref": format!("#/components/schemas/{name}") });
        schema["components"] = self.openapi["components"].clone();
        let validator = jsonschema::validator_for(&schema).expect("the document's schemas compile");
        let errors: Vec<String> = validator
            .iter_errors(&answer.body)
            .map(|e| format!("{}: {e}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} ({}) does not match schema {name}: {errors:#?}\n{:#}",
            answer.status,
            answer.body
        );
    }

    async fn finish(self) {
        self.registry.close().await;
        self.db.drop_database().await;
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Answer {
        let mut request = Request::builder().method(method.clone()).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, bytes)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(bytes)),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let answer = Answer {
            status,
            headers,
            body,
            bytes,
        };
        self.conform(&method, path, &answer);
        answer
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, Some(VIEWER), None).await
    }

    async fn upload(&self, bytes: Vec<u8>, name: Option<&str>) -> Answer {
        let path = match name {
            Some(name) => format!("/api/plugins?name={name}"),
            None => "/api/plugins".to_owned(),
        };
        self.call(
            Method::POST,
            &path,
            Some(ADMIN),
            Some(("application/wasm", bytes)),
        )
        .await
    }

    async fn put_scenario(&self, id: &str, document: &Value) -> Answer {
        self.call(
            Method::PUT,
            &format!("/api/scenarios/{id}"),
            Some(ADMIN),
            Some(("application/json", document.to_string().into_bytes())),
        )
        .await
    }

    async fn generation(&self) -> i64 {
        let answer = self.get("/api/generation").await;
        assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.body);
        answer.body["generation"].as_i64().unwrap()
    }

    /// Everything the registry holds, as the API shows it.
    async fn snapshot(&self) -> Value {
        json!({
            "generation": self.generation().await,
            "plugins": self.get("/api/plugins").await.body,
            "scenarios": self.get("/api/scenarios").await.body,
        })
    }

    /// Uploads the shipped scenario plugin under its own name.
    async fn with_scenario_plugin(&self) {
        let answer = self
            .upload(artifact(weir_artifacts::PLUGIN_SCENARIO), None)
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:#}", answer.body);
        assert_eq!(answer.body["name"], "scenario");
    }
}

/// A scenario's `shadow` or `canary` must name a stored version; promoting
/// makes it the plugin and drops it; with none left, promoting is a 409.
async fn a_shadow_candidate_is_checked_and_promoted(db: Database) {
    let api = Api::start(db).await;
    api.with_scenario_plugin().await;
    let with_shadow = |shadow: Value| {
        let mut document = scenario5();
        document["shadow"] = shadow;
        document
    };
    for (shadow, words) in [
        (json!("scenario@9"), "has no version 9"),
        (json!("scenario"), "names no version"),
        (json!("nothing-here@1"), "no plugin named"),
        (json!(7), "expected `name@N`"),
    ] {
        let refused = api.put_scenario("5", &with_shadow(shadow.clone())).await;
        let detail = refused.problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            detail.contains("shadow") && detail.contains(words),
            "{shadow}: {detail}"
        );
    }
    let stored = api
        .put_scenario("5", &with_shadow(json!("scenario@1")))
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{:#}", stored.body);
    assert_eq!(stored.body["plugin"], "scenario");

    let promote = || api.call(Method::POST, "/api/scenarios/5/promote", Some(ADMIN), None);
    let promoted = promote().await;
    assert_eq!(promoted.status, StatusCode::OK, "{:#}", promoted.body);
    assert_eq!(promoted.body["plugin"], "scenario@1");
    assert!(
        promoted.body["document"].get("shadow").is_none(),
        "{:#}",
        promoted.body
    );
    assert_eq!(promoted.body["document"]["plugin"], "scenario@1");
    let again = promote().await;
    assert!(
        again
            .problem(StatusCode::CONFLICT)
            .contains("no candidate to promote")
    );

    // A canary: every field checked, one candidate at a time; promoting
    // makes it the plugin, and a rolled-back one is refused.
    // A second version of the scenario plugin: the same component with a
    // custom section (id 0, name "ver2") appended.
    let mut second = artifact(weir_artifacts::PLUGIN_SCENARIO);
    second.extend_from_slice(&[0x00, 0x05, 0x04, b'v', b'e', b'r', b'2']);
    let uploaded = api.upload(second, Some("scenario")).await;
    assert_eq!(uploaded.body["version"], 2, "{:#}", uploaded.body);
    let with_canary = |canary: Value| {
        let mut document = scenario5();
        document["plugin"] = json!("scenario@2");
        document["canary"] = canary;
        document
    };
    for (canary, field, words) in [
        (
            json!({"plugin": "scenario@9", "share": 0.1}),
            "canary.plugin",
            "has no version 9",
        ),
        (
            json!({"plugin": "scenario", "share": 0.1}),
            "canary.plugin",
            "names no version",
        ),
        (
            json!({"plugin": "scenario@1"}),
            "canary.share",
            "a number from",
        ),
        (
            json!({"plugin": "scenario@1", "share": 1.5}),
            "canary.share",
            "a number from",
        ),
        (
            json!({"plugin": "scenario@1", "share": 0.1, "by": "moon"}),
            "canary.by",
            "\"partition\"",
        ),
        (
            json!({"plugin": "scenario@1", "share": 0.1, "rollback_margin": -1}),
            "canary.rollback_margin",
            "fraction",
        ),
        (
            json!({"plugin": "scenario@1", "share": 0.1, "min_events": 0}),
            "canary.min_events",
            "at least 1",
        ),
        (
            json!({"plugin": "scenario@1", "share": 0.1, "typo": 1}),
            "canary.typo",
            "unknown field",
        ),
        (json!("scenario@1"), "canary", "expected an object"),
    ] {
        let refused = api.put_scenario("5", &with_canary(canary.clone())).await;
        let detail = refused.problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            detail.contains(field) && detail.contains(words),
            "{canary}: {detail}"
        );
    }
    let mut own = with_canary(json!({"plugin": "scenario@1", "share": 0.1}));
    own["plugin"] = json!("scenario@1");
    assert!(
        api.put_scenario("5", &own)
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY)
            .contains("the scenario's own plugin version")
    );
    let mut both = with_canary(json!({"plugin": "scenario@1", "share": 0.1}));
    both["shadow"] = json!("scenario@1");
    let refused = api.put_scenario("5", &both).await;
    assert!(
        refused
            .problem(StatusCode::UNPROCESSABLE_ENTITY)
            .contains("one candidate at a time")
    );
    let rolled_back = with_canary(json!({"plugin": "scenario@1", "share": 0.1,
                                          "rolled_back": "failed 3 %"}));
    let stored = api.put_scenario("5", &rolled_back).await;
    assert_eq!(stored.status, StatusCode::OK, "{:#}", stored.body);
    assert!(
        promote()
            .await
            .problem(StatusCode::CONFLICT)
            .contains("was rolled back (failed 3 %)")
    );
    let stored = api
        .put_scenario(
            "5",
            &with_canary(json!({"plugin": "scenario@1", "share": 0.25})),
        )
        .await;
    assert_eq!(stored.status, StatusCode::OK, "{:#}", stored.body);
    let promoted = promote().await;
    assert_eq!(promoted.status, StatusCode::OK, "{:#}", promoted.body);
    assert_eq!(promoted.body["plugin"], "scenario@1");
    assert!(promoted.body["document"].get("canary").is_none());
    let unknown = api
        .call(
            Method::POST,
            "/api/scenarios/404/promote",
            Some(ADMIN),
            None,
        )
        .await;
    unknown.problem(StatusCode::NOT_FOUND);
    api.finish().await;
}

fn scenario5() -> Value {
    json!({
        "scenario_id": 5,
        "title": "adult male users who clicked buy after 9 o'clock",
        "manager": "kim",
        "log_format": {"memberId": 1, "age": 1, "gender": 1, "h": 1, "e_n": 1},
        "filters": [
            {"left": "age", "operator": ">", "right": 20},
            {"left": "gender", "operator": "==", "right": "MALE"},
            {"left": "h", "operator": ">=", "right": 9}
        ],
        "logical_operator": "AND",
        "source": ["tracking"],
        "enrich": {"by": "memberId"}
    })
}

async fn upload_is_idempotent_and_versions_are_monotonic(db: Database) {
    let api = Api::start(db).await;
    let passthrough = artifact(weir_artifacts::FIXTURE_PASSTHROUGH);

    let first = api.upload(passthrough.clone(), None).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:#}", first.body);
    assert_eq!(first.body["name"], "passthrough");
    assert_eq!(first.body["version"], 1);
    assert_eq!(first.body["kind"], "map");
    assert_eq!(first.body["config_schema"], json!({"type": "object"}));
    assert_eq!(first.body["created"], true);
    assert_eq!(first.body["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        first.headers[header::LOCATION],
        "/api/plugins/passthrough/versions/1"
    );
    let generation = api.generation().await;

    let again = api.upload(passthrough.clone(), None).await;
    assert_eq!(again.status, StatusCode::OK, "{:#}", again.body);
    assert_eq!(again.body["version"], 1);
    assert_eq!(again.body["created"], false);
    assert_eq!(api.generation().await, generation, "nothing changed");

    let mut versions = Vec::new();
    for tag in ["a", "b", "c"] {
        let answer = api.upload(variant(&passthrough, tag), None).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:#}", answer.body);
        versions.push(answer.body["version"].as_i64().unwrap());
    }
    assert_eq!(versions, [2, 3, 4]);

    // Deleting a version does not free its number.
    let deleted = api
        .call(
            Method::DELETE,
            "/api/plugins/passthrough/versions/3",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{:#}", deleted.body);
    let next = api.upload(variant(&passthrough, "d"), None).await;
    assert_eq!(next.body["version"], 5, "{:#}", next.body);

    let detail = api.get("/api/plugins/passthrough").await;
    let listed: Vec<i64> = detail.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [1, 2, 4, 5]);
    assert_eq!(detail.body["current_version"], 5);

    // The same bytes under another name are another plugin.
    let renamed = api.upload(passthrough.clone(), Some("echo")).await;
    assert_eq!(renamed.status, StatusCode::CREATED, "{:#}", renamed.body);
    assert_eq!(renamed.body["name"], "echo");
    assert_eq!(renamed.body["declared_name"], "passthrough");
    assert_eq!(renamed.body["version"], 1);

    // Download returns the exact bytes.
    let download = api
        .get("/api/plugins/passthrough/versions/1/component")
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.headers[header::CONTENT_TYPE], "application/wasm");
    assert_eq!(download.bytes, passthrough);
    api.finish().await;
}

async fn multipart_upload_takes_its_name_from_a_field(db: Database) {
    let api = Api::start(db).await;
    let bytes = artifact(weir_artifacts::FIXTURE_PASSTHROUGH);
    let boundary = "weir-boundary-7f3a";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nrelay\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.wasm\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let answer = api
        .call(
            Method::POST,
            "/api/plugins",
            Some(ADMIN),
            Some((&format!("multipart/form-data; boundary={boundary}"), body)),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:#}", answer.body);
    assert_eq!(answer.body["name"], "relay");
    api.finish().await;
}

async fn bad_uploads_are_refused_precisely_and_store_nothing(db: Database) {
    let api = Api::start(db).await;
    api.upload(artifact(weir_artifacts::FIXTURE_PASSTHROUGH), None)
        .await;
    let before = api.snapshot().await;

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let detail = api
        .upload(random, None)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        detail.contains("not a WebAssembly binary") && detail.contains("wasm32-wasip2"),
        "{detail}"
    );

    let detail = api
        .upload(artifact(weir_artifacts::FIXTURE_CORE_MODULE), None)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        detail.contains("core WebAssembly module, not a component"),
        "{detail}"
    );

    let detail = api
        .upload(artifact(weir_artifacts::FIXTURE_WRONG_WORLD), None)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        detail.contains("weir:plugin/plugin@0.2.0")
            && detail.contains("weir:plugin/weir-plugin@0.1.0"),
        "{detail}"
    );

    let detail = api
        .upload(artifact(weir_artifacts::FIXTURE_FORBIDDEN_IMPORT), None)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail.contains("not granted"), "{detail}");

    let detail = api
        .upload(artifact(weir_artifacts::FIXTURE_DESCRIBE_TRAP), None)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(detail.contains("`describe` failed"), "{detail}");

    let oversized = vec![0u8; LIMIT + 1];
    let detail = api
        .upload(oversized, None)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert!(detail.contains(&LIMIT.to_string()), "{detail}");

    let wrong_type = api
        .call(
            Method::POST,
            "/api/plugins",
            Some(ADMIN),
            Some(("text/plain", artifact(weir_artifacts::FIXTURE_PASSTHROUGH))),
        )
        .await;
    let detail = wrong_type.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        detail.contains("`text/plain`")
            && detail.contains("application/wasm")
            && detail.contains("multipart/form-data"),
        "{detail}"
    );

    let detail = api
        .upload(
            variant(&artifact(weir_artifacts::FIXTURE_PASSTHROUGH), "x"),
            Some("Not_A_Name"),
        )
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(
        detail.contains("`Not_A_Name`") && detail.contains("lowercase"),
        "{detail}"
    );

    let detail = api
        .call(
            Method::POST,
            "/api/plugins?nmae=x",
            Some(ADMIN),
            Some((
                "application/wasm",
                artifact(weir_artifacts::FIXTURE_PASSTHROUGH),
            )),
        )
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(detail.contains("nmae"), "{detail}");

    assert_eq!(
        api.snapshot().await,
        before,
        "a refused upload stores nothing"
    );
    api.finish().await;
}

async fn rollback_makes_an_earlier_version_current(db: Database) {
    let api = Api::start(db).await;
    let bytes = artifact(weir_artifacts::FIXTURE_PASSTHROUGH);
    api.upload(bytes.clone(), None).await;
    api.upload(variant(&bytes, "two"), None).await;

    let rollback = |to: Value| {
        api.call(
            Method::POST,
            "/api/plugins/passthrough/rollback",
            Some(ADMIN),
            Some(("application/json", to.to_string().into_bytes())),
        )
    };
    let answer = rollback(json!({"to": 1})).await;
    assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.body);
    assert_eq!(answer.body["version"], 1);
    assert_eq!(answer.body["current"], true);
    let listed = api.get("/api/plugins").await;
    assert_eq!(listed.body["plugins"][0]["current_version"], 1);
    assert_eq!(listed.body["plugins"][0]["latest_version"], 2);

    let detail = rollback(json!({"to": 9}))
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(
        detail.contains("no version 9") && detail.contains("[1, 2]"),
        "{detail}"
    );
    let bad = rollback(json!({"version": 1})).await;
    bad.problem(StatusCode::BAD_REQUEST);
    assert!(
        bad.body["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown field `version`"),
        "{:#}",
        bad.body
    );

    // The current version cannot be deleted while others exist.
    let detail = api
        .call(
            Method::DELETE,
            "/api/plugins/passthrough/versions/1",
            Some(ADMIN),
            None,
        )
        .await
        .problem(StatusCode::CONFLICT);
    assert!(detail.contains("roll back to another version"), "{detail}");

    // Pushing version 2's bytes again makes it current again.
    let again = api.upload(variant(&bytes, "two"), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["version"], 2);
    assert_eq!(again.body["current"], true);
    api.finish().await;
}

async fn scenarios_are_checked_against_their_plugin(db: Database) {
    let api = Api::start(db).await;
    api.with_scenario_plugin().await;

    let created = api.put_scenario("5", &scenario5()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{:#}", created.body);
    assert_eq!(created.body["scenario_id"], "5");
    assert_eq!(created.body["plugin"], "scenario");
    assert_eq!(created.body["enabled"], true);
    assert_eq!(created.body["document"], scenario5());

    let replaced = api.put_scenario("5", &scenario5()).await;
    assert_eq!(replaced.status, StatusCode::OK);
    let posted = api
        .call(
            Method::POST,
            "/api/scenarios",
            Some(ADMIN),
            Some(("application/json", scenario5().to_string().into_bytes())),
        )
        .await;
    posted.problem(StatusCode::CONFLICT);

    let got = api.get("/api/scenarios/5").await;
    assert_eq!(got.body["document"]["title"], scenario5()["title"]);
    let listed = api.get("/api/scenarios").await;
    assert_eq!(listed.body["scenarios"].as_array().unwrap().len(), 1);

    let before = api.snapshot().await;
    let bad = |patch: Value| {
        let mut document = scenario5();
        for (k, v) in patch.as_object().unwrap() {
            document[k] = v.clone();
        }
        document
    };

    let mut unknown_operator = scenario5();
    unknown_operator["filters"][1]["operator"] = json!("=~");
    let answer = api.put_scenario("5", &unknown_operator).await;
    let detail = answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.fields(), ["filters[1].operator"], "{detail}");
    assert!(
        detail.contains("got \"=~\"") && detail.contains("\"contains\""),
        "the accepted operators are listed: {detail}"
    );

    let answer = api
        .put_scenario(
            "5",
            &bad(json!({"filters": "age > 20", "logical_operator": "XOR"})),
        )
        .await;
    answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = answer.fields();
    fields.sort();
    assert_eq!(fields, ["filters", "logical_operator"], "{:#}", answer.body);

    let answer = api
        .put_scenario("5", &bad(json!({"plugin": "no-such-plugin"})))
        .await;
    let detail = answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.fields(), ["plugin"]);
    assert!(
        detail.contains("no plugin named `no-such-plugin`") && detail.contains("scenario"),
        "{detail}"
    );
    let answer = api
        .put_scenario("5", &bad(json!({"plugin": "scenario@7"})))
        .await;
    assert!(
        answer
            .problem(StatusCode::UNPROCESSABLE_ENTITY)
            .contains("no version 7"),
        "{:#}",
        answer.body
    );

    let answer = api
        .put_scenario(
            "5",
            &bad(json!({
                "enrich": {"by": "memberId", "ttl": 3},
                "enabled": "yes",
                "source": "tracking",
            })),
        )
        .await;
    answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        answer.fields(),
        ["source", "enrich.ttl", "enabled"],
        "{:#}",
        answer.body
    );

    let mut misspelt = scenario5();
    misspelt["filter"] = misspelt["filters"].take();
    misspelt.as_object_mut().unwrap().remove("filters");
    let answer = api.put_scenario("5", &misspelt).await;
    let detail = answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.fields(), ["filter"], "{detail}");
    assert!(
        detail.contains("unknown field for plugin `scenario`") && detail.contains("filters"),
        "{detail}"
    );

    let answer = api.put_scenario("6", &scenario5()).await;
    answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.fields(), ["scenario_id"]);

    let not_json = api
        .call(
            Method::PUT,
            "/api/scenarios/5",
            Some(ADMIN),
            Some(("application/json", b"{\"scenario_id\": 5,".to_vec())),
        )
        .await;
    assert!(
        not_json
            .problem(StatusCode::BAD_REQUEST)
            .contains("not valid")
    );
    let wrong_type = api
        .call(
            Method::PUT,
            "/api/scenarios/5",
            Some(ADMIN),
            Some(("text/yaml", b"scenario_id: 5".to_vec())),
        )
        .await;
    assert!(
        wrong_type
            .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .contains("application/json")
    );

    assert_eq!(
        api.snapshot().await,
        before,
        "a refused scenario stores nothing"
    );

    let deleted = api
        .call(Method::DELETE, "/api/scenarios/5", Some(ADMIN), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    api.get("/api/scenarios/5")
        .await
        .problem(StatusCode::NOT_FOUND);
    api.finish().await;
}

async fn plugin_deletion_is_refused_while_a_scenario_uses_it(db: Database) {
    let api = Api::start(db).await;
    api.with_scenario_plugin().await;
    let second = api
        .upload(
            variant(&artifact(weir_artifacts::PLUGIN_SCENARIO), "2"),
            None,
        )
        .await;
    assert_eq!(second.body["version"], 2);
    let mut pinned = scenario5();
    pinned["plugin"] = json!("scenario@1");
    let answer = api.put_scenario("5", &pinned).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:#}", answer.body);
    assert_eq!(answer.body["plugin"], "scenario@1");
    let before = api.snapshot().await;

    let detail = api
        .call(
            Method::DELETE,
            "/api/plugins/scenario/versions/1",
            Some(ADMIN),
            None,
        )
        .await
        .problem(StatusCode::CONFLICT);
    assert!(
        detail.contains("scenario(s) 5") && detail.contains("force=true"),
        "{detail}"
    );
    let detail = api
        .call(Method::DELETE, "/api/plugins/scenario", Some(ADMIN), None)
        .await
        .problem(StatusCode::CONFLICT);
    assert!(detail.contains("scenario(s) 5"), "{detail}");
    assert_eq!(
        api.snapshot().await,
        before,
        "a refused deletion deletes nothing"
    );

    let forced = api
        .call(
            Method::DELETE,
            "/api/plugins/scenario/versions/1?force=true",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(forced.status, StatusCode::OK, "{:#}", forced.body);
    assert_eq!(forced.body["disabled_scenarios"], json!(["5"]));
    let scenario = api.get("/api/scenarios/5").await;
    assert_eq!(scenario.body["enabled"], false);
    assert_eq!(scenario.body["document"]["enabled"], false);

    let gone = api
        .call(Method::DELETE, "/api/plugins/scenario", Some(ADMIN), None)
        .await;
    assert_eq!(
        gone.status,
        StatusCode::CONFLICT,
        "still referenced by name"
    );
    let gone = api
        .call(
            Method::DELETE,
            "/api/plugins/scenario?force=true",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{:#}", gone.body);
    api.get("/api/plugins/scenario")
        .await
        .problem(StatusCode::NOT_FOUND);
    api.finish().await;
}

async fn members_import_all_or_nothing(db: Database) {
    let api = Api::start(db).await;
    let ndjson = "{\"memberId\": \"m1\", \"age\": 31, \"gender\": \"MALE\"}\n\
                  {\"memberId\": \"m2\", \"age\": 19, \"gender\": \"FEMALE\", \"nick\": \"구매왕\"}\n";
    let answer = api
        .call(
            Method::POST,
            "/api/members",
            Some(ADMIN),
            Some(("application/x-ndjson", ndjson.as_bytes().to_vec())),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.body);
    assert_eq!(answer.body["imported"], 2);
    let m2 = api.get("/api/members/m2").await;
    assert_eq!(
        m2.body,
        json!({"member_id": "m2", "attributes": {"age": 19, "gender": "FEMALE", "nick": "구매왕"}})
    );

    let csv = "memberId,age,gender\nm1,32,MALE\nm3,45,FEMALE\n";
    let answer = api
        .call(
            Method::POST,
            "/api/members",
            Some(ADMIN),
            Some(("text/csv; charset=utf-8", csv.as_bytes().to_vec())),
        )
        .await;
    assert_eq!(answer.body["imported"], 2, "{:#}", answer.body);
    assert_eq!(
        api.get("/api/members/m1").await.body["attributes"]["age"],
        32
    );

    let before = api.generation().await;
    let bad = "{\"memberId\": \"m4\", \"age\": 50}\nnot json\n{\"age\": 3}\n";
    let answer = api
        .call(
            Method::POST,
            "/api/members",
            Some(ADMIN),
            Some(("application/x-ndjson", bad.as_bytes().to_vec())),
        )
        .await;
    answer.problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.fields(), ["line 2", "line 3"]);
    api.get("/api/members/m4")
        .await
        .problem(StatusCode::NOT_FOUND);
    let wrong = api
        .call(
            Method::POST,
            "/api/members",
            Some(ADMIN),
            Some(("application/json", b"[]".to_vec())),
        )
        .await;
    let detail = wrong.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        detail.contains("application/x-ndjson") && detail.contains("text/csv"),
        "{detail}"
    );
    assert_eq!(api.generation().await, before);
    api.finish().await;
}

/// Whether a concrete path fits a route pattern with `{param}` segments.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    pattern.len() == path.len()
        && pattern
            .iter()
            .zip(&path)
            .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
}

/// A concrete path for a route pattern.
fn concrete(path: &str) -> String {
    path.replace("{name}", "scenario")
        .replace("{version}", "1")
        .replace("{id}", "5")
}

async fn every_route_checks_its_role(db: Database) {
    let api = Api::start(db).await;
    let before = api.snapshot().await;
    let mut writes = 0;
    for route in ROUTES {
        let path = concrete(route.path);
        let body = route.request.first().map(|media| (*media, b"{}".to_vec()));
        let call = |token| api.call(route.method.clone(), &path, token, body.clone());
        match route.access {
            Access::Public => {
                let answer = call(None).await;
                assert_eq!(answer.status, StatusCode::OK, "{} {path}", route.method);
            }
            Access::Read => {
                call(None).await.problem(StatusCode::UNAUTHORIZED);
                call(Some("not-a-token-0000000000"))
                    .await
                    .problem(StatusCode::UNAUTHORIZED);
                let answer = call(Some(VIEWER)).await;
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&answer.status),
                    "{} {path}: {:#}",
                    route.method,
                    answer.body
                );
            }
            Access::Write => {
                writes += 1;
                let answer = call(None).await;
                let detail = answer.problem(StatusCode::UNAUTHORIZED);
                assert!(detail.contains("Bearer"), "{detail}");
                assert_eq!(
                    answer.headers[header::WWW_AUTHENTICATE],
                    "Bearer realm=\"weir\""
                );
                call(Some("not-a-token-0000000000"))
                    .await
                    .problem(StatusCode::UNAUTHORIZED);
                let detail = call(Some(VIEWER)).await.problem(StatusCode::FORBIDDEN);
                assert!(detail.contains("admin token"), "{detail}");
            }
        }
    }
    assert!(
        writes >= 8,
        "the eight mutating routes were tried ({writes})"
    );
    assert_eq!(api.snapshot().await, before, "refused calls store nothing");
    api.finish().await;
}

async fn generation_grows_with_every_write(db: Database) {
    let api = Api::start(db).await;
    let mut last = api.generation().await;
    let mut expect_bump = |now: i64, what: &str| {
        assert!(now > last, "{what}: generation {now} after {last}");
        last = now;
    };
    api.with_scenario_plugin().await;
    expect_bump(api.generation().await, "upload");
    api.put_scenario("5", &scenario5()).await;
    expect_bump(api.generation().await, "scenario");
    api.call(
        Method::POST,
        "/api/members",
        Some(ADMIN),
        Some(("text/csv", b"id,age\nm1,3\n".to_vec())),
    )
    .await;
    expect_bump(api.generation().await, "members");
    api.upload(
        variant(&artifact(weir_artifacts::PLUGIN_SCENARIO), "g"),
        None,
    )
    .await;
    expect_bump(api.generation().await, "second version");
    api.call(
        Method::POST,
        "/api/plugins/scenario/rollback",
        Some(ADMIN),
        Some(("application/json", b"{\"to\": 1}".to_vec())),
    )
    .await;
    expect_bump(api.generation().await, "rollback");
    api.call(Method::DELETE, "/api/scenarios/5", Some(ADMIN), None)
        .await;
    expect_bump(api.generation().await, "scenario deletion");
    for path in [
        "/api/plugins",
        "/api/scenarios",
        "/healthz",
        "/api/plugins/scenario",
    ] {
        api.get(path).await;
    }
    assert_eq!(api.generation().await, last, "reads change nothing");
    api.finish().await;
}

async fn service_routes_answer(db: Database) {
    let api = Api::start(db).await;
    for path in ["/healthz", "/readyz"] {
        let health = api.call(Method::GET, path, None, None).await;
        assert_eq!(health.status, StatusCode::OK, "{path}");
        assert_eq!(health.body["status"], "ready", "{path}");
        assert_eq!(health.body["dependencies"][0]["name"], "registry");
        assert_eq!(health.body["dependencies"][0]["state"], "up");
        assert_eq!(health.body["pipeline"]["state"], "none");
    }
    let live = api.call(Method::GET, "/livez", None, None).await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.body["status"], "live");

    let openapi = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(openapi.status, StatusCode::OK);
    assert_eq!(openapi.body["openapi"], "3.1.0");
    for route in ROUTES {
        let method = route.method.as_str().to_ascii_lowercase();
        assert!(
            openapi.body["paths"][route.path][&method].is_object(),
            "{method} {} documented",
            route.path
        );
    }

    // The conformance check every call goes through does refuse a wrong body.
    let wrong = Answer {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: json!({"plugins": [{"name": "x", "current_version": "1"}]}),
        bytes: Vec::new(),
    };
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        api.conform(&Method::GET, "/api/plugins", &wrong)
    }));
    assert!(refused.is_err(), "a body that breaks PluginList is caught");

    let detail = api
        .get("/api/nothing-here")
        .await
        .problem(StatusCode::NOT_FOUND);
    assert!(detail.contains("/api/openapi.json"), "{detail}");
    let detail = api
        .call(Method::PATCH, "/api/plugins", Some(ADMIN), None)
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED);
    assert!(detail.contains("GET, POST"), "{detail}");
    let detail = api
        .get("/api/plugins/scenario/versions/latest")
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert!(detail.contains("latest"), "{detail}");
    api.finish().await;
}

/// The daily history route reads what `weir report` wrote into the archive:
/// nothing yet, then the days written (replaced whole by a rerun), and a clear
/// 503 when the archive cannot be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_history_comes_from_the_reports_in_the_archive() {
    let mut api = Api::start(Database::Sqlite).await;
    api.with_scenario_plugin().await;
    let stored = api.put_scenario("5", &scenario5()).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{:#}", stored.body);
    let root = std::env::temp_dir().join(weir_integration::unique("weir-daily"));
    let archive = weir::archive::ArchiveConfig {
        root: root.display().to_string(),
        ..weir::archive::ArchiveConfig::default()
    };
    let config = ApiConfig {
        admin_token: Some(ADMIN.into()),
        viewer_token: Some(VIEWER.into()),
        upload_limit_bytes: LIMIT,
    };
    api.router = router(AppState::new(api.registry.clone(), &config).with_archive(archive.clone()));

    let empty = api.get("/api/scenarios/5/daily").await;
    assert_eq!(empty.status, StatusCode::OK, "{:#}", empty.body);
    assert_eq!(empty.body["days"], json!([]));
    assert!(
        empty.body["source"]
            .as_str()
            .unwrap()
            .ends_with("reports/daily/scenario_id=5")
    );

    let day = |day: &str, events: u64, matched: u64| weir::report::ReportRow {
        scenario_id: "5".into(),
        period: day.into(),
        events,
        matched,
        success_ratio: matched as f64 / events as f64,
        dead_letters: 1,
        top: Default::default(),
    };
    let reports = weir::report::Archive::open(&archive).expect("archive");
    reports
        .write_daily(&[day("2026-12-06", 100, 25), day("2026-12-05", 10, 5)])
        .await
        .expect("written");
    // A rerun of one day replaces its report.
    reports
        .write_daily(&[day("2026-12-06", 200, 50)])
        .await
        .expect("rewritten");
    let history = api.get("/api/scenarios/5/daily").await;
    assert_eq!(history.status, StatusCode::OK, "{:#}", history.body);
    assert_eq!(
        history.body["days"],
        json!([
            {"day": "2026-12-05", "events": 10, "matched": 5, "success_ratio": 0.5, "dead_letters": 1},
            {"day": "2026-12-06", "events": 200, "matched": 50, "success_ratio": 0.25, "dead_letters": 1},
        ])
    );
    api.get("/api/scenarios/6/daily")
        .await
        .problem(StatusCode::NOT_FOUND);

    // An archive that does not answer: a 503 that says where.
    let unreachable = weir::archive::ArchiveConfig {
        root: "hdfs://127.0.0.1:1/nowhere".into(),
        store_timeout_secs: 2,
        ..weir::archive::ArchiveConfig::default()
    };
    api.router = router(AppState::new(api.registry.clone(), &config).with_archive(unreachable));
    let detail = api
        .get("/api/scenarios/5/daily")
        .await
        .problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(detail.contains("hdfs://127.0.0.1:1"), "{detail}");
    std::fs::remove_dir_all(&root).ok();
    api.finish().await;
}

/// Runs each case once per database, as `api::<database>::<case>`.
macro_rules! on_every_database {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Database::Sqlite).await })*
        }
        mod mariadb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Database::MariaDb).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case(super::Database::Postgres).await })*
        }
    };
}

on_every_database!(
    upload_is_idempotent_and_versions_are_monotonic,
    multipart_upload_takes_its_name_from_a_field,
    bad_uploads_are_refused_precisely_and_store_nothing,
    rollback_makes_an_earlier_version_current,
    scenarios_are_checked_against_their_plugin,
    plugin_deletion_is_refused_while_a_scenario_uses_it,
    members_import_all_or_nothing,
    every_route_checks_its_role,
    generation_grows_with_every_write,
    service_routes_answer,
    a_shadow_candidate_is_checked_and_promoted,
);
