//! `weir generate`: sends generated traffic (`weir::generate`) to the collector
//! over HTTP or straight to Kafka, at a rate, for a count or a duration, with a
//! progress line, and says at the end how much was taken.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use weir::generate::{Generated, Generator, Profile};

/// `weir generate` flags.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// What to generate.
    #[arg(long, value_enum, default_value = "hits")]
    profile: Profile,
    /// Events per second (for `services`, the rate at the busiest hour).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Seed of the generator: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The collector's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    to: String,
    /// Produce straight to these Kafka brokers instead of the collector.
    #[arg(long, env = "WEIR_KAFKA")]
    kafka: Option<String>,
    /// Kafka topic for every event (default: `weir.events` for hits,
    /// `logs.<service>` and `logs.error` for services, `logs.raw`,
    /// `events.activity`).
    #[arg(long)]
    topic: Option<String>,
    /// Scenario ids of the hits (repeat for several).
    #[arg(long = "scenario", default_value = "5")]
    scenarios: Vec<String>,
    /// Share of service logs that are errors.
    #[arg(long, default_value_t = 0.02)]
    error_rate: f64,
}

/// Where events go.
enum Target {
    Http {
        client: reqwest::Client,
        base: String,
    },
    Kafka(FutureProducer),
}

#[derive(Default)]
struct Tally {
    sent: u64,
    failed: u64,
    last_failure: Option<String>,
}

impl GenerateArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        if self.rate == 0 {
            anyhow::bail!("--rate must be at least 1");
        }
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(self.generate())
    }

    async fn generate(self) -> anyhow::Result<ExitCode> {
        let target = match &self.kafka {
            Some(brokers) => Target::Kafka(
                ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "10")
                    .create()
                    .context("creating the Kafka producer")?,
            ),
            None => Target::Http {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .context("creating the HTTP client")?,
                base: self.to.trim_end_matches('/').to_owned(),
            },
        };
        let mut generator = Generator::new(
            self.profile,
            self.seed,
            self.scenarios.clone(),
            self.error_rate,
        );
        let started = Instant::now();
        let deadline = self.duration.map(|s| started + Duration::from_secs(s));
        let tty = std::io::stderr().is_terminal();
        let mut tally = Tally::default();
        let mut owed = 0.0f64;
        let mut generated = 0u64;
        let mut last_report = Instant::now();
        let tick = Duration::from_millis(100);
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            if self.count.is_some_and(|c| generated >= c)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            let hour = chrono::Timelike::hour(&chrono::Local::now());
            owed += f64::from(self.rate) * generator.weight(hour) / 10.0;
            let mut batch = Vec::new();
            while owed >= 1.0 && self.count.is_none_or(|c| generated < c) {
                owed -= 1.0;
                generated += 1;
                batch.push(generator.next(chrono::Utc::now().timestamp_millis()));
            }
            let next_tick = tokio::time::sleep(tick);
            self.send(&target, batch, &mut tally).await;
            if last_report.elapsed() >= Duration::from_secs(if tty { 1 } else { 5 }) {
                last_report = Instant::now();
                let line = progress(&tally, started);
                if tty {
                    eprint!("\r{line}   ");
                } else {
                    eprintln!("{line}");
                }
            }
            tokio::select! {
                _ = &mut interrupted => break,
                () = next_tick => {}
            }
        }
        if tty {
            eprintln!();
        }
        eprintln!("{}", progress(&tally, started));
        if let Some(reason) = &tally.last_failure {
            eprintln!("weir generate: last failure: {reason}");
        }
        Ok(if tally.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    async fn send(&self, target: &Target, batch: Vec<Generated>, tally: &mut Tally) {
        if batch.is_empty() {
            return;
        }
        let mut outcomes: Vec<Result<u64, (u64, String)>> = Vec::new();
        match target {
            Target::Http { client, base } if self.profile == Profile::Hits => {
                let mut sends = tokio::task::JoinSet::new();
                for event in batch {
                    let query: Vec<(String, String)> = event
                        .fields
                        .iter()
                        .map(|(k, v)| (k.clone(), text(v)))
                        .collect();
                    let request = client.get(format!("{base}/{}", event.route)).query(&query);
                    sends.spawn(async move {
                        status(request.send().await).map(|()| 1).map_err(|e| (1, e))
                    });
                }
                while let Some(done) = sends.join_next().await {
                    outcomes.push(done.unwrap_or_else(|e| Err((1, e.to_string()))));
                }
            }
            Target::Http { client, base } => {
                // One NDJSON batch a tick for each stream.
                let mut streams: std::collections::BTreeMap<&str, (u64, String)> =
                    Default::default();
                let stream = match self.profile {
                    Profile::Activities => "activities",
                    _ => "logs",
                };
                for event in &batch {
                    let (n, body) = streams.entry(stream).or_default();
                    *n += 1;
                    body.push_str(&Value::Object(event.fields.clone()).to_string());
                    body.push('\n');
                }
                for (stream, (n, body)) in streams {
                    let sent = client
                        .post(format!("{base}/collect/{stream}"))
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await;
                    outcomes.push(status(sent).map(|()| n).map_err(|e| (n, e)));
                }
            }
            Target::Kafka(producer) => {
                let mut deliveries = Vec::new();
                for event in batch {
                    let mut fields = event.fields;
                    let mut topics = Vec::new();
                    match (&self.topic, self.profile) {
                        (Some(topic), _) => topics.push(topic.clone()),
                        (None, Profile::Hits) => topics.push("weir.events".into()),
                        (None, Profile::Services) => {
                            topics.push(format!("logs.{}", event.route));
                            topics.extend(event.also.map(|also| format!("logs.{also}")));
                        }
                        (None, Profile::Logs) => topics.push("logs.raw".into()),
                        (None, Profile::Activities) => topics.push("events.activity".into()),
                    }
                    if self.profile == Profile::Hits {
                        fields.insert("scenario_id".into(), Value::from(event.route.clone()));
                    }
                    let payload = Value::Object(fields).to_string();
                    for topic in &topics {
                        let record = FutureRecord::<(), _>::to(topic).payload(&payload);
                        match producer.send_result(record) {
                            Ok(delivery) => deliveries.push(delivery),
                            Err((error, _)) => outcomes.push(Err((1, error.to_string()))),
                        }
                    }
                }
                // Every delivery is in flight already: wait for each in turn.
                for delivery in deliveries {
                    outcomes.push(match delivery.await {
                        Ok(Ok(_)) => Ok(1),
                        Ok(Err((error, _))) => Err((1, error.to_string())),
                        Err(_) => Err((1, "the producer stopped".to_owned())),
                    });
                }
            }
        }
        for outcome in outcomes {
            match outcome {
                Ok(n) => tally.sent += n,
                Err((n, reason)) => {
                    tally.failed += n;
                    tally.last_failure = Some(reason);
                }
            }
        }
    }
}

fn status(sent: Result<reqwest::Response, reqwest::Error>) -> Result<(), String> {
    match sent {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the collector answered {}", response.status())),
        Err(error) => Err(error.to_string()),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn progress(tally: &Tally, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    format!(
        "weir generate: {} sent, {} failed in {:.1} s ({:.0}/s)",
        tally.sent,
        tally.failed,
        secs,
        tally.sent as f64 / secs
    )
}
