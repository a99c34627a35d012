//! Client commands that talk to a running control plane over HTTP:
//! `weir plugin push|list|rollback`, `weir scenario apply|list|get|delete`,
//! `weir member import`. Output is a short human report, or the server's JSON
//! with `--json`; a refused request prints the server's reason and every field
//! error and exits with status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the control plane is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub(crate) struct Server {
    /// Base URL of the weir control plane.
    #[arg(long, env = "WEIR_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer token: the admin token for changes, the viewer token for reads.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON answer instead of a human summary.
    #[arg(long)]
    json: bool,
}

/// `weir plugin` commands that use the server.
#[derive(Debug, Subcommand)]
pub(crate) enum PluginClientCommand {
    /// Upload a plugin component (a new version, or the existing one for the same bytes).
    Push {
        /// The `.wasm` component.
        file: PathBuf,
        /// Registry name; default the name the plugin gives itself.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        server: Server,
    },
    /// List plugins with their current versions.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Make an earlier (or any stored) version current.
    Rollback {
        /// The plugin's registry name.
        name: String,
        /// The version to make current.
        #[arg(long)]
        to: i64,
        #[command(flatten)]
        server: Server,
    },
}

/// `weir scenario ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ScenarioCommand {
    /// Create or replace a scenario from a JSON file (its `scenario_id` names it).
    Apply {
        /// The scenario JSON file (`-` for stdin).
        #[arg(short, long)]
        file: PathBuf,
        #[command(flatten)]
        server: Server,
    },
    /// List scenarios.
    List {
        #[command(flatten)]
        server: Server,
    },
    /// Print one scenario's document.
    Get {
        /// The scenario id.
        id: String,
        #[command(flatten)]
        server: Server,
    },
    /// Delete a scenario.
    Delete {
        /// The scenario id.
        id: String,
        #[command(flatten)]
        server: Server,
    },
    /// A scenario's counts and success ratio, as the dashboard shows them,
    /// and its shadow candidate's agreement when it has one.
    Stats {
        /// The scenario id.
        id: String,
        #[command(flatten)]
        server: Server,
    },
    /// Make the scenario's canary or shadow candidate its plugin, from the next batch on.
    Promote {
        /// The scenario id.
        id: String,
        #[command(flatten)]
        server: Server,
    },
}

/// `weir status`: the pipeline's health, as the dashboard shows it.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    server: Server,
}

impl StatusArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        let answer = self.server.call(Method::GET, "/api/pipeline", None)?;
        self.server.report(answer, |p| {
            let mut out = format!(
                "events {} ({} /s), outputs {}, dead letters {}, cycles {} ({} failed), generation {}",
                p["events_total"],
                p["events_per_second"],
                p["outputs_total"],
                p["dead_letters_total"],
                p["cycles_total"],
                p["failed_cycles_total"],
                p["generation"],
            );
            for l in p["lag"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\nlag {}/{}: {}",
                    text(&l["topic"]),
                    l["partition"],
                    l["lag"]
                ));
            }
            for s in p["failing_sinks"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\nsink {} failing for {} s: {}",
                    text(&s["sink"]),
                    s["seconds"],
                    text(&s["error"])
                ));
            }
            for q in p["quarantined"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\nscenario {} quarantined ({}) until {}: {}",
                    text(&q["scenario"]),
                    text(&q["plugin"]),
                    text(&q["until"]),
                    text(&q["reason"])
                ));
            }
            for a in p["alerts_firing"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "\nalert {} firing since {}: {}",
                    text(&a["rule"]),
                    text(&a["since"]),
                    text(&a["summary"])
                ));
            }
            out
        })
    }
}

/// `weir member ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum MemberCommand {
    /// Import members from JSON Lines or CSV; all or nothing.
    Import {
        /// The file; `.csv` is read as CSV, anything else as JSON Lines.
        file: PathBuf,
        /// The format, when the extension does not say.
        #[arg(long, value_parser = ["csv", "ndjson"])]
        format: Option<String>,
        #[command(flatten)]
        server: Server,
    },
}

impl PluginClientCommand {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            PluginClientCommand::Push { file, name, server } => {
                let bytes = read(&file)?;
                let path = match &name {
                    Some(name) => format!("/api/plugins?name={}", query_value(name)),
                    None => "/api/plugins".to_owned(),
                };
                let answer = server.call(Method::POST, &path, Some(("application/wasm", bytes)))?;
                server.report(answer, |body| {
                    let verb = if body["created"] == true {
                        "stored"
                    } else {
                        "already stored"
                    };
                    format!(
                        "{verb}: {} version {} ({} {}, sha256 {}), now current",
                        text(&body["name"]),
                        body["version"],
                        text(&body["kind"]),
                        text(&body["declared_version"]),
                        short_sha(&body["sha256"]),
                    )
                })
            }
            PluginClientCommand::List { server } => {
                let answer = server.call(Method::GET, "/api/plugins", None)?;
                server.report(answer, |body| {
                    let mut out = format!(
                        "{:<24} {:>7} {:>6} {:<10} {:<12} {}",
                        "NAME", "CURRENT", "LATEST", "KIND", "SHA256", "UPLOADED"
                    );
                    for p in body["plugins"].as_array().into_iter().flatten() {
                        let current = &p["current"];
                        out.push_str(&format!(
                            "\n{:<24} {:>7} {:>6} {:<10} {:<12} {}",
                            text(&p["name"]),
                            text(&p["current_version"]),
                            text(&p["latest_version"]),
                            text(&current["kind"]),
                            short_sha(&current["sha256"]),
                            text(&current["uploaded_at"]),
                        ));
                    }
                    out
                })
            }
            PluginClientCommand::Rollback { name, to, server } => {
                let body = serde_json::json!({ "to": to }).to_string().into_bytes();
                let answer = server.call(
                    Method::POST,
                    &format!("/api/plugins/{name}/rollback"),
                    Some(("application/json", body)),
                )?;
                server.report(answer, |body| {
                    format!(
                        "{} version {} is now current",
                        text(&body["name"]),
                        body["version"]
                    )
                })
            }
        }
    }
}

impl ScenarioCommand {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            ScenarioCommand::Apply { file, server } => {
                let bytes = read(&file)?;
                let document: Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                let id = match &document["scenario_id"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => bail!(
                        "{} has no `scenario_id` (a string or a number); it names the scenario",
                        file.display()
                    ),
                };
                let answer = server.call(
                    Method::PUT,
                    &format!("/api/scenarios/{id}"),
                    Some(("application/json", bytes)),
                )?;
                let created = answer.0 == StatusCode::CREATED;
                server.report(answer, |body| {
                    format!(
                        "scenario {} {} (plugin {}, {})",
                        text(&body["scenario_id"]),
                        if created { "created" } else { "updated" },
                        text(&body["plugin"]),
                        if body["enabled"] == true {
                            "enabled"
                        } else {
                            "disabled"
                        }
                    )
                })
            }
            ScenarioCommand::List { server } => {
                let answer = server.call(Method::GET, "/api/scenarios", None)?;
                server.report(answer, |body| {
                    let mut out =
                        format!("{:<16} {:<8} {:<20} {}", "ID", "ENABLED", "PLUGIN", "TITLE");
                    for s in body["scenarios"].as_array().into_iter().flatten() {
                        out.push_str(&format!(
                            "\n{:<16} {:<8} {:<20} {}",
                            text(&s["scenario_id"]),
                            text(&s["enabled"]),
                            text(&s["plugin"]),
                            text(&s["document"]["title"]),
                        ));
                    }
                    out
                })
            }
            ScenarioCommand::Get { id, server } => {
                let answer = server.call(Method::GET, &format!("/api/scenarios/{id}"), None)?;
                server.report(answer, |body| {
                    serde_json::to_string_pretty(&body["document"]).unwrap_or_default()
                })
            }
            ScenarioCommand::Stats { id, server } => {
                let answer =
                    server.call(Method::GET, &format!("/api/scenarios/{id}/stats"), None)?;
                server.report(answer, |b| {
                    let mut out = format!(
                        "scenario {id}: {} events, {} matched (success ratio {:.2} %), {} dead-lettered, {} dropped",
                        b["total"],
                        b["matched"],
                        b["success_ratio"].as_f64().unwrap_or(0.0) * 100.0,
                        b["errors"],
                        b["dropped"],
                    );
                    let shadow = &b["shadow"];
                    if shadow.is_object() {
                        out.push_str(&format!(
                            "\nshadow {} beside {}: {} of {} events alike ({:.2} %), {} differ, {} failed; {} ns/event against {}",
                            text(&shadow["candidate"]),
                            text(&shadow["current"]),
                            shadow["agree"],
                            shadow["events"],
                            shadow["agreement"].as_f64().unwrap_or(0.0) * 100.0,
                            shadow["differ"],
                            shadow["candidate_failed"],
                            shadow["candidate_ns_per_event"],
                            shadow["current_ns_per_event"],
                        ));
                        if let Some(error) = shadow["error"].as_str() {
                            out.push_str(&format!("\nshadow error: {error}"));
                        }
                    }
                    let canary = &b["canary"];
                    if canary.is_object() {
                        let rate = |v: &Value| v.as_f64().unwrap_or(0.0) * 100.0;
                        out.push_str(&format!(
                            "\ncanary {} ({:.2} % of events): failed {} of {} ({:.2} %), {} failed {} of {} ({:.2} %); {} ns/event against {}",
                            text(&canary["candidate"]),
                            rate(&canary["share"]),
                            canary["candidate_failed"],
                            canary["candidate_events"],
                            rate(&canary["candidate_failure_rate"]),
                            text(&canary["current"]),
                            canary["current_failed"],
                            canary["current_events"],
                            rate(&canary["current_failure_rate"]),
                            canary["candidate_ns_per_event"],
                            canary["current_ns_per_event"],
                        ));
                        if let Some(verdict) = canary["verdict"].as_str() {
                            out.push_str(&format!(
                                "\ncanary {}: {}",
                                verdict.replace('_', " "),
                                text(&canary["reason"])
                            ));
                        }
                    }
                    out
                })
            }
            ScenarioCommand::Promote { id, server } => {
                let answer =
                    server.call(Method::POST, &format!("/api/scenarios/{id}/promote"), None)?;
                server.report(answer, |body| {
                    format!(
                        "scenario {id} now runs {} (from the next batch on)",
                        text(&body["plugin"])
                    )
                })
            }
            ScenarioCommand::Delete { id, server } => {
                let answer = server.call(Method::DELETE, &format!("/api/scenarios/{id}"), None)?;
                server.report(answer, |_| format!("scenario {id} deleted"))
            }
        }
    }
}

impl MemberCommand {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        let MemberCommand::Import {
            file,
            format,
            server,
        } = self;
        let csv = match format.as_deref() {
            Some(format) => format == "csv",
            None => file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv")),
        };
        let media = if csv {
            "text/csv"
        } else {
            "application/x-ndjson"
        };
        let bytes = read(&file)?;
        let answer = server.call(Method::POST, "/api/members", Some((media, bytes)))?;
        server.report(answer, |body| {
            format!("{} members imported", body["imported"])
        })
    }
}

/// A file's bytes, or stdin's for `-`.
fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).context("reading stdin")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

/// Prints a line on stdout; a closed pipe (`weir ... | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Percent-encodes a query parameter value.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn short_sha(value: &Value) -> String {
    value
        .as_str()
        .map_or("-", |s| &s[..s.len().min(12)])
        .to_owned()
}

impl Server {
    /// The server at `server` (a base URL), with `token`.
    pub(crate) fn new(server: String, token: Option<String>) -> Self {
        Self {
            server,
            token,
            json: false,
        }
    }

    /// `GET path`'s body as bytes; a refusal is an error with the server's
    /// reason.
    pub(crate) fn fetch(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let (status, bytes) = self.send(Method::GET, path, None)?;
        if !status.is_success() {
            let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            bail!(
                "the server answered {status}: {}",
                problem["detail"].as_str().unwrap_or("no reason given")
            );
        }
        Ok(bytes)
    }

    /// Sends one request and returns the status and the JSON body (`null`
    /// when the body is empty or not JSON).
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, bytes) = self.send(method, path, body)?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Sends one request; the status and the body's bytes.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the HTTP client")?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("building the HTTP client")?;
            let mut request = client.request(method, &url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some((media, bytes)) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, media)
                    .body(bytes);
            }
            let response = request.send().await.with_context(|| {
                format!(
                    "cannot reach the weir server at {}; is `weir serve` running there? \
                     (set --server or WEIR_SERVER)",
                    self.server
                )
            })?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .with_context(|| format!("reading the answer from {url}"))?;
            Ok((status, bytes.to_vec()))
        })
    }

    /// Prints an answer: the summary (or JSON) on success, the problem on failure.
    fn report(
        &self,
        (status, body): (StatusCode, Value),
        summary: impl FnOnce(&Value) -> String,
    ) -> anyhow::Result<ExitCode> {
        if status.is_success() {
            if self.json {
                print_out(&serde_json::to_string_pretty(&body)?)?;
            } else {
                print_out(&summary(&body))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        if self.json {
            print_out(&serde_json::to_string_pretty(&body)?)?;
        } else {
            let detail = body["detail"]
                .as_str()
                .map_or_else(|| format!("the server answered {status}"), str::to_owned);
            eprintln!("error: {detail}");
            // One field error is already in the detail; several are listed.
            let errors = body["errors"].as_array().filter(|e| e.len() > 1);
            for error in errors.into_iter().flatten() {
                eprintln!("  {}: {}", text(&error["field"]), text(&error["reason"]));
            }
            if status == StatusCode::UNAUTHORIZED {
                eprintln!("hint: pass the token with --token or WEIR_TOKEN");
            }
        }
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use weir::api::{ApiConfig, AppState, router};
    use weir::registry::Registry;
    use weir::runtime::{Runtime, RuntimeConfig};

    use super::*;

    const ADMIN: &str = "cli-admin-token-000001";

    /// A control plane on 127.0.0.1 over a fresh SQLite registry, served by
    /// its own thread until the returned sender is dropped.
    fn start_server(dir: &Path) -> (String, mpsc::Sender<()>) {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let url = format!("sqlite://{}", dir.join("registry.db").display());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let runtime = Runtime::new(RuntimeConfig {
                    max_instances: 4,
                    ..RuntimeConfig::default()
                })
                .unwrap();
                let registry = Registry::connect(&url, runtime).await.unwrap();
                let config = ApiConfig {
                    admin_token: Some(ADMIN.into()),
                    ..ApiConfig::default()
                };
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let stop = async move {
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                };
                axum::serve(listener, router(AppState::new(registry, &config)))
                    .with_graceful_shutdown(stop)
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        (format!("http://{addr}"), stop_tx)
    }

    /// `weir plugin diff relay@1 …` fetches version 1's bytes from the
    /// server; a version it does not have is refused with the server's reason.
    #[test]
    fn a_version_on_the_server_is_fetched_by_name() {
        let dir = std::env::temp_dir().join(format!("weir-cli-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, _stop) = start_server(&dir);
        let server = Server::new(url, Some(ADMIN.into()));
        let push = PluginClientCommand::Push {
            file: PathBuf::from(weir_artifacts::FIXTURE_PASSTHROUGH),
            name: Some("relay".into()),
            server: server.clone(),
        };
        assert_eq!(push.run().unwrap(), ExitCode::SUCCESS);
        let bytes = super::super::plugin::component("relay@1", &server).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(weir_artifacts::FIXTURE_PASSTHROUGH).unwrap()
        );
        let missing = super::super::plugin::component("relay@7", &server).unwrap_err();
        assert!(
            format!("{missing:#}").contains("404"),
            "the server's refusal: {missing:#}"
        );
        let neither = super::super::plugin::component("no-such-file.wasm", &server).unwrap_err();
        assert!(
            format!("{neither:#}").contains("not `name@N`"),
            "{neither:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commands_drive_a_real_server() {
        let dir = std::env::temp_dir().join(format!("weir-cli-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url, _stop) = start_server(&dir);
        let server = Server {
            server: url.clone(),
            token: Some(ADMIN.into()),
            json: false,
        };
        let plugin = PathBuf::from(weir_artifacts::FIXTURE_PASSTHROUGH);

        let push = || PluginClientCommand::Push {
            file: plugin.clone(),
            name: Some("relay".into()),
            server: server.clone(),
        };
        assert_eq!(push().run().unwrap(), ExitCode::SUCCESS);
        assert_eq!(push().run().unwrap(), ExitCode::SUCCESS, "idempotent");
        let rollback = PluginClientCommand::Rollback {
            name: "relay".into(),
            to: 9,
            server: server.clone(),
        };
        assert_eq!(rollback.run().unwrap(), ExitCode::FAILURE);

        let scenario = dir.join("s.json");
        std::fs::write(
            &scenario,
            r#"{"scenario_id": 5, "title": "t", "plugin": "relay", "source": ["tracking"]}"#,
        )
        .unwrap();
        let apply = ScenarioCommand::Apply {
            file: scenario,
            server: server.clone(),
        };
        assert_eq!(apply.run().unwrap(), ExitCode::SUCCESS);

        let members = dir.join("members.csv");
        std::fs::write(&members, "memberId,age\nm1,31\nm2,19\n").unwrap();
        let import = MemberCommand::Import {
            file: members,
            format: None,
            server: server.clone(),
        };
        assert_eq!(import.run().unwrap(), ExitCode::SUCCESS);

        let (status, plugins) = server.call(Method::GET, "/api/plugins", None).unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(plugins["plugins"][0]["name"], "relay");
        assert_eq!(plugins["plugins"][0]["latest_version"], 1);
        let (_, scenario) = server.call(Method::GET, "/api/scenarios/5", None).unwrap();
        assert_eq!(scenario["plugin"], "relay");
        let (_, member) = server.call(Method::GET, "/api/members/m2", None).unwrap();
        assert_eq!(member["attributes"]["age"], 19);

        let delete = ScenarioCommand::Delete {
            id: "5".into(),
            server: server.clone(),
        };
        assert_eq!(delete.run().unwrap(), ExitCode::SUCCESS);
        let (status, _) = server.call(Method::GET, "/api/scenarios/5", None).unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);

        let stranger = Server {
            token: Some("wrong-token-000000000".into()),
            ..server
        };
        let list = PluginClientCommand::List { server: stranger };
        assert_eq!(list.run().unwrap(), ExitCode::FAILURE);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unreachable_server_is_named_in_the_error() {
        let server = Server {
            server: "http://127.0.0.1:9".into(),
            token: None,
            json: false,
        };
        let error = server.call(Method::GET, "/api/plugins", None).unwrap_err();
        let message = format!("{error:#}");
        assert!(
            message.contains("http://127.0.0.1:9") && message.contains("WEIR_SERVER"),
            "{message}"
        );
    }
}
