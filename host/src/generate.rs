//! Generated traffic for `weir generate`: the shapes of the events weir takes
//! in, seeded so that a run can be repeated.
//!
//! - [`Profile::Hits`]: tracking hits for scenarios, as a pixel or a Matomo
//!   tracker sends them (`memberId`, `h`, `e_c`/`e_a`/`e_n`, `url`, `urlref`, `res`…).
//! - [`Profile::Services`]: application logs of a service mix (`auth`, `order`,
//!   `payment`, `notify`) weighted by the time of day, with an error rate; errors
//!   also go to the `error` service's topic.
//! - [`Profile::Logs`]: generic application logs (`logs.raw`).
//! - [`Profile::Activities`]: user activities (`events.activity`).

use serde_json::{Map, Value, json};

/// What kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Tracking hits for scenarios.
    Hits,
    /// Logs of a service mix, weighted by the hour, with errors.
    Services,
    /// Generic application logs.
    Logs,
    /// User activities.
    Activities,
}

/// The services of [`Profile::Services`] and their share of the traffic.
pub const SERVICES: [(&str, u32); 4] =
    [("auth", 30), ("order", 30), ("payment", 20), ("notify", 20)];

/// Relative traffic by hour of day (0-23): quiet at night, peaks at noon and
/// in the evening; 100 is the peak.
pub const HOUR_WEIGHTS: [u32; 24] = [
    30, 20, 15, 15, 15, 20, 35, 55, 75, 85, 90, 95, 100, 100, 90, 85, 85, 90, 95, 100, 100, 85, 65,
    45,
];

/// One generated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The event's fields.
    pub fields: Map<String, Value>,
    /// Where it goes: the scenario id of a hit, the stream of a JSON record.
    pub route: String,
    /// For [`Profile::Services`] errors: also to this route.
    pub also: Option<String>,
}

/// A seeded generator of one profile.
#[derive(Debug)]
pub struct Generator {
    profile: Profile,
    rng: fastrand::Rng,
    scenarios: Vec<String>,
    error_rate: f64,
    n: u64,
}

impl Generator {
    /// A generator; `scenarios` are the hits' scenario ids (at least one),
    /// `error_rate` the share of service logs that are errors.
    pub fn new(profile: Profile, seed: u64, scenarios: Vec<String>, error_rate: f64) -> Self {
        Self {
            profile,
            rng: fastrand::Rng::with_seed(seed),
            scenarios: if scenarios.is_empty() {
                vec!["5".into()]
            } else {
                scenarios
            },
            error_rate: error_rate.clamp(0.0, 1.0),
            n: 0,
        }
    }

    /// The share of the peak rate at `hour` (1.0 except for the services mix).
    pub fn weight(&self, hour: u32) -> f64 {
        match self.profile {
            Profile::Services => f64::from(HOUR_WEIGHTS[(hour % 24) as usize]) / 100.0,
            _ => 1.0,
        }
    }

    /// The next event, stamped `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Generated {
        self.n += 1;
        // The demo's members, so generated hits are enriched as the demo's are.
        let member = format!("m{:04}", self.rng.u64(0..crate::service::demo::MEMBERS));
        match self.profile {
            Profile::Hits => {
                let scenario = self.scenarios[self.rng.usize(0..self.scenarios.len())].clone();
                let (e_a, e_n) = [
                    ("Viewed", "조회"),
                    ("Carted", "장바구니"),
                    ("Clicked", "구매"),
                ][self.rng.usize(0..3)];
                let goods = self.rng.u32(0..120);
                let fields = json!({
                    "memberId": member,
                    "h": self.rng.u32(0..24).to_string(),
                    "m": self.rng.u32(0..60).to_string(),
                    "e_c": "buttonClick",
                    "e_a": e_a,
                    "e_n": e_n,
                    "url": format!("https://shop.example/goods/{goods}"),
                    "urlref": "https://shop.example/",
                    "res": pick(&mut self.rng, &["1920x1080", "1366x768", "390x844"]),
                    "_idn": if self.rng.u32(0..5) == 0 { "1" } else { "0" },
                    "cookie": "1",
                    "ts": now_ms.to_string(),
                });
                Generated {
                    fields: object(fields),
                    route: scenario,
                    also: None,
                }
            }
            Profile::Services => {
                let mut pick = self.rng.u32(0..100);
                let mut service = SERVICES[0].0;
                for (name, share) in SERVICES {
                    if pick < share {
                        service = name;
                        break;
                    }
                    pick -= share;
                }
                let error = self.rng.f64() < self.error_rate;
                let (level, message) = if error {
                    (
                        "ERROR",
                        [
                            "timeout calling upstream",
                            "database unavailable",
                            "invalid state",
                        ][self.rng.usize(0..3)],
                    )
                } else {
                    (
                        "INFO",
                        ["request handled", "cache hit", "request handled"][self.rng.usize(0..3)],
                    )
                };
                let fields = json!({
                    "service": service,
                    "level": level,
                    "message": message,
                    "memberId": member,
                    "latency_ms": self.rng.u32(1..if error { 5000 } else { 400 }),
                    "trace_id": format!("{:016x}", self.rng.u64(..)),
                    "ts": now_ms,
                });
                Generated {
                    fields: object(fields),
                    route: service.to_owned(),
                    also: error.then(|| "error".to_owned()),
                }
            }
            Profile::Logs => {
                let level = ["INFO", "INFO", "INFO", "WARN", "ERROR"][self.rng.usize(0..5)];
                let fields = json!({
                    "level": level,
                    "logger": pick(&mut self.rng, &["web", "worker", "scheduler"]),
                    "message": format!("event {} processed", self.n),
                    "ts": now_ms,
                });
                Generated {
                    fields: object(fields),
                    route: "logs".into(),
                    also: None,
                }
            }
            Profile::Activities => {
                let fields = json!({
                    "memberId": member,
                    "activity": pick(&mut self.rng, &["view", "search", "cart", "purchase", "review"]),
                    "goods": self.rng.u32(0..120),
                    "ts": now_ms,
                });
                Generated {
                    fields: object(fields),
                    route: "activities".into(),
                    also: None,
                }
            }
        }
    }
}

fn pick<'a>(rng: &mut fastrand::Rng, choices: &[&'a str]) -> &'a str {
    choices[rng.usize(0..choices.len())]
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_its_run_and_another_differs() {
        let run = |seed| {
            let mut g = Generator::new(Profile::Services, seed, vec![], 0.1);
            (0..200).map(|_| g.next(0)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn the_service_mix_has_its_shares_and_error_rate() {
        let mut g = Generator::new(Profile::Services, 1, vec![], 0.05);
        let events: Vec<Generated> = (0..20_000).map(|_| g.next(0)).collect();
        let errors = events.iter().filter(|e| e.also.is_some()).count();
        assert!((800..1200).contains(&errors), "about 5% errors: {errors}");
        let auth = events.iter().filter(|e| e.route == "auth").count();
        assert!((5_400..6_600).contains(&auth), "about 30% auth: {auth}");
        assert!(
            events
                .iter()
                .all(|e| (e.fields["level"] == "ERROR") == e.also.is_some())
        );
        assert!(g.weight(3) < g.weight(12));
    }
}
