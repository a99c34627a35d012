//! `weir report`: per scenario and day (or hour), events, matched, success
//! ratio, dead letters and top values, computed from the archive
//! ([`weir::report`]), printed as a table, CSV or JSON, and (by day) written
//! back under `reports/daily/`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::{Args, ValueEnum};
use weir::report::{Archive, Period, Progress, ReportOptions, ReportRow};

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    Table,
    /// A header line, then a line per row.
    Csv,
    /// A JSON array, one object per row.
    Json,
}

/// `weir report` flags.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// The archive: a directory, hdfs://host:port/path or s3://bucket/prefix
    /// (default: `weir serve`'s, from --config, the environment and its defaults).
    #[arg(long, env = "WEIR_ARCHIVE")]
    archive: Option<String>,
    /// `weir serve`'s configuration file, for the archive root and its S3 settings.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// `weir serve`'s data directory (the default archive is `<data_dir>/archive`).
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Only this scenario (repeat for more); default: every scenario in the archive.
    #[arg(long = "scenario", value_name = "ID")]
    scenarios: Vec<String>,
    /// From this UTC day on, YYYY-MM-DD (inclusive).
    #[arg(long, value_name = "DATE")]
    from: Option<NaiveDate>,
    /// Up to this UTC day, YYYY-MM-DD (inclusive).
    #[arg(long, value_name = "DATE")]
    to: Option<NaiveDate>,
    /// A row per day or per hour (UTC, by the events' time).
    #[arg(long, value_enum, default_value_t = Period::Day)]
    by: Period,
    /// The most frequent values of these fields of the scenario's records
    /// (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "FIELD")]
    top: Vec<String>,
    /// How many values per field.
    #[arg(long, default_value_t = 5, value_name = "N")]
    top_n: usize,
    /// How the report is printed.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Do not write the daily report back under `reports/daily/` in the archive.
    #[arg(long)]
    no_write: bool,
}

impl ReportArgs {
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from > to
        {
            bail!("--from {from} is after --to {to}");
        }
        if self.top_n == 0 && !self.top.is_empty() {
            bail!("--top-n must be at least 1");
        }
        let config = match super::serve::archive_config(
            self.config.clone(),
            self.data_dir.clone(),
            self.archive.clone(),
        ) {
            Ok(config) => config,
            Err(problems) => return Ok(super::serve::print_problems(&problems)),
        };
        let options = ReportOptions {
            scenarios: self.scenarios.clone(),
            from: self.from,
            to: self.to,
            by: self.by,
            top: self.top.clone(),
            top_n: self.top_n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let (report, written) = runtime.block_on(async {
            let archive = Archive::open(&config)?;
            let mut line = ProgressLine::new();
            let report = archive
                .report(&options, &mut |progress| line.show(&progress))
                .await;
            line.clear();
            let report = report?;
            let written = if self.by == Period::Day && !self.no_write {
                archive.write_daily(&report.rows).await?
            } else {
                Vec::new()
            };
            Ok::<_, weir::report::ReportError>((report, written))
        })?;
        let rows = &report.rows;
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Table => write_table(&mut out, rows, self.by, &self.top)?,
            Format::Csv => write_csv(&mut out, rows, self.by, &self.top)?,
            Format::Json => write_json(&mut out, rows, self.by)?,
        }
        out.flush()?;
        for (scenario, field) in &report.missing_fields {
            eprintln!(
                "weir report: scenario {} has no column {}: no top values for it",
                printable(scenario),
                printable(field)
            );
        }
        if rows.is_empty() && report.failed.is_empty() {
            eprintln!(
                "weir report: no events of these scenarios and days in {}",
                config.root
            );
        }
        if !written.is_empty() {
            eprintln!(
                "weir report: {} daily report(s) written under {}/{}",
                written.len(),
                config.root.trim_end_matches('/'),
                weir::report::DAILY_DIR
            );
        }
        if !report.failed.is_empty() {
            for (scenario, error) in &report.failed {
                eprintln!(
                    "error: scenario {} could not be reported: {}",
                    printable(scenario),
                    printable(&error.to_string())
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `text` with control characters (a terminal's escape sequences among them)
/// shown as `\u{..}`: ids and top values come from outside.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A line on stderr saying where a long report is: redrawn in place on a
/// terminal, else a line every few seconds. Nothing for a report done in a
/// second.
struct ProgressLine {
    started: Instant,
    last: Option<Instant>,
    terminal: bool,
    drawn: bool,
}

impl ProgressLine {
    const QUIET: Duration = Duration::from_secs(1);
    const EVERY_LINE: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: None,
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn show(&mut self, progress: &Progress<'_>) {
        let now = Instant::now();
        if now.duration_since(self.started) < Self::QUIET {
            return;
        }
        if !self.terminal
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < Self::EVERY_LINE)
        {
            return;
        }
        self.last = Some(now);
        let text = format!(
            "weir report: scenario {} ({}/{}): {}, {:.0} s",
            printable(progress.scenario),
            progress.index,
            progress.of,
            printable(&progress.stage),
            now.duration_since(self.started).as_secs_f64()
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{text}");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

fn period_name(by: Period) -> &'static str {
    match by {
        Period::Day => "day",
        Period::Hour => "hour",
    }
}

/// `value (count), value (count)` of one field of a row.
fn top_text(row: &ReportRow, field: &str) -> String {
    row.top
        .get(field)
        .map(|values| {
            values
                .iter()
                .map(|v| format!("{} ({})", printable(&v.value), v.count))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn write_table(
    out: &mut impl Write,
    rows: &[ReportRow],
    by: Period,
    top: &[String],
) -> std::io::Result<()> {
    let mut lines: Vec<Vec<String>> = vec![
        [
            "scenario_id",
            period_name(by),
            "events",
            "matched",
            "success_ratio",
            "dead_letters",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(top.iter().map(|f| format!("top {f}")))
        .collect(),
    ];
    for row in rows {
        let mut line = vec![
            printable(&row.scenario_id),
            row.period.clone(),
            row.events.to_string(),
            row.matched.to_string(),
            format!("{:.4}", row.success_ratio),
            row.dead_letters.to_string(),
        ];
        line.extend(top.iter().map(|f| top_text(row, f)));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                // Figures right-aligned, text left.
                if (2..6).contains(&i) {
                    format!("{cell:>w$}", w = widths[i])
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// A CSV field, quoted when it must be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn write_csv(
    out: &mut impl Write,
    rows: &[ReportRow],
    by: Period,
    top: &[String],
) -> std::io::Result<()> {
    let mut header = vec![
        "scenario_id".to_owned(),
        period_name(by).to_owned(),
        "events".to_owned(),
        "matched".to_owned(),
        "success_ratio".to_owned(),
        "dead_letters".to_owned(),
    ];
    header.extend(top.iter().map(|f| format!("top_{f}")));
    writeln!(
        out,
        "{}",
        header
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",")
    )?;
    for row in rows {
        let mut line = vec![
            csv_field(&row.scenario_id),
            csv_field(&row.period),
            row.events.to_string(),
            row.matched.to_string(),
            row.success_ratio.to_string(),
            row.dead_letters.to_string(),
        ];
        line.extend(top.iter().map(|f| {
            csv_field(
                &serde_json::to_string(row.top.get(f).unwrap_or(&Vec::new())).unwrap_or_default(),
            )
        }));
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// One row of `--format json`, its keys in this order; the period is `day` or `hour`.
#[derive(serde::Serialize)]
struct JsonRow<'a> {
    scenario_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hour: Option<&'a str>,
    events: u64,
    matched: u64,
    success_ratio: f64,
    dead_letters: u64,
    top: &'a std::collections::BTreeMap<String, Vec<weir::report::TopValue>>,
}

fn write_json(out: &mut impl Write, rows: &[ReportRow], by: Period) -> std::io::Result<()> {
    let rows: Vec<JsonRow<'_>> = rows
        .iter()
        .map(|row| JsonRow {
            scenario_id: &row.scenario_id,
            day: (by == Period::Day).then_some(row.period.as_str()),
            hour: (by == Period::Hour).then_some(row.period.as_str()),
            events: row.events,
            matched: row.matched,
            success_ratio: row.success_ratio,
            dead_letters: row.dead_letters,
            top: &row.top,
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &rows)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use weir::report::TopValue;

    fn row() -> ReportRow {
        ReportRow {
            scenario_id: "5".into(),
            period: "2026-12-07".into(),
            events: 1850,
            matched: 480,
            success_ratio: 0.2595,
            dead_letters: 2,
            top: BTreeMap::from([(
                "page".to_owned(),
                vec![TopValue {
                    value: "/a,b".into(),
                    count: 7,
                }],
            )]),
        }
    }

    #[test]
    fn csv_quotes_what_it_must() {
        let mut out = Vec::new();
        write_csv(&mut out, &[row()], Period::Day, &["page".into()]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "scenario_id,day,events,matched,success_ratio,dead_letters,top_page\n\
             5,2026-12-07,1850,480,0.2595,2,\"[{\"\"value\"\":\"\"/a,b\"\",\"\"count\"\":7}]\"\n"
        );
    }

    #[test]
    fn json_names_the_period() {
        let mut out = Vec::new();
        write_json(&mut out, &[row()], Period::Hour).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value[0]["hour"], "2026-12-07");
        assert_eq!(value[0]["events"], 1850);
        assert_eq!(value[0]["top"]["page"][0]["count"], 7);
        let text = String::from_utf8(out).unwrap();
        let at = |key: &str| text.find(&format!("\"{key}\"")).unwrap();
        assert!(
            at("scenario_id") < at("hour") && at("hour") < at("events"),
            "{text}"
        );
        assert!(!text.contains("\"day\""), "{text}");
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(printable("/a"), "/a");
        assert_eq!(printable("x\u{1b}[2Jy"), "x\\u{1b}[2Jy");
    }

    #[test]
    fn the_table_aligns_figures() {
        let mut out = Vec::new();
        write_table(&mut out, &[row()], Period::Day, &[]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), lines[1].len(), "{text}");
        assert!(lines[1].contains("0.2595"), "{text}");
    }
}
