//! Tailing log files into Kafka (`[[collect.tail]]`), one record a line, as the
//! lines are: the shipped `access-log` plugin parses nginx's downstream.
//!
//! - Files are found by path, with `*` and `?` allowed in the file name, every
//!   250 ms, and known by (device, inode): a file renamed away (rotation by
//!   `mv` and a reopen) is read to its end through the handle already open, and
//!   the new file at the path is read from its start. A file that shrinks
//!   (`copytruncate`) is read again from its start.
//! - A line is complete at its newline; a line longer than `max_line_bytes` is
//!   cut there (counted).
//! - Checkpoints (device, inode, offset) live in `<data dir>/tail-checkpoints.json`,
//!   written only after the broker acknowledged the lines before the offset.
//!   Before a batch is produced its range is written down as pending; after a
//!   crash the pending range is sent again and its line count reported
//!   (`weir_tail_resent_lines_total`): those are the only lines that may come twice.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// One `[[collect.tail]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailConfig {
    /// The file, e.g. `/var/log/nginx/access.log`; `*` and `?` may stand in the
    /// file name (not in directories).
    pub path: String,
    /// The topic its lines go to.
    pub topic: String,
    /// Longest line sent whole, bytes (default 64 KiB); longer ones are cut.
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// Where a file found with no checkpoint is read from: `beginning` (the
    /// default: nothing already written is missed) or `end`.
    #[serde(default)]
    pub start_at: StartAt,
}

fn default_max_line() -> usize {
    64 << 10
}

/// Where a file without a checkpoint is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From its first byte.
    #[default]
    Beginning,
    /// From its end when first seen at start-up (files that appear later are
    /// read from their start).
    End,
}

impl TailConfig {
    /// Every problem with this entry.
    pub fn problems(&self, index: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let path = Path::new(&self.path);
        let dir_glob = path
            .parent()
            .is_some_and(|d| d.to_string_lossy().contains(['*', '?']));
        if !path.is_absolute() || path.file_name().is_none() || dir_glob {
            problems.push(format!(
                "collect.tail[{index}].path = {:?}: an absolute file path; `*` and `?` only in \
                 the file name",
                self.path
            ));
        }
        if !crate::registry::valid_topic(&self.topic) {
            problems.push(format!(
                "collect.tail[{index}].topic = {:?}: not a Kafka topic name",
                self.topic
            ));
        }
        if self.max_line_bytes < 64 {
            problems.push(format!(
                "collect.tail[{index}].max_line_bytes = {}: use at least 64",
                self.max_line_bytes
            ));
        }
        problems
    }
}

/// The tailer's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct TailMetrics {
    /// Lines the broker acknowledged.
    pub lines: AtomicU64,
    /// Lines sent again after a restart (their range was in flight at a crash).
    pub resent: AtomicU64,
    /// Lines cut at `max_line_bytes`.
    pub cut: AtomicU64,
    /// Files found shorter than their offset (copytruncate), read again.
    pub truncations: AtomicU64,
    /// Produce or read failures (retried).
    pub failures: AtomicU64,
}

/// A checkpoint of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct FileId {
    dev: u64,
    ino: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoints {
    /// Offsets acknowledged, by file.
    files: Vec<Mark>,
    /// Ranges produced and not yet known acknowledged.
    pending: Vec<Pending>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mark {
    dev: u64,
    ino: u64,
    offset: u64,
    path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    dev: u64,
    ino: u64,
    from: u64,
    until: u64,
    lines: u64,
}

/// A file being followed.
#[derive(Debug)]
struct Followed {
    path: PathBuf,
    file: std::fs::File,
    offset: u64,
    /// Scans since the file was last found at a path of the entry.
    unseen: u32,
}

impl Followed {
    /// `file` (open at `path`) followed from `offset`.
    fn at(path: PathBuf, mut file: std::fs::File, offset: u64, unseen: u32) -> Self {
        let _ = file.seek(SeekFrom::Start(offset));
        Self {
            path,
            file,
            offset,
            unseen,
        }
    }
}

/// Most bytes read from one file in one pass.
const READ_CHUNK: usize = 1 << 20;

/// Follows `config`'s files until `stop`; checkpoints in `dir`.
pub async fn run(
    index: usize,
    config: TailConfig,
    producer: FutureProducer,
    dir: PathBuf,
    metrics: Arc<TailMetrics>,
    stop: CancellationToken,
) {
    let store = dir.join(format!("tail-checkpoints-{index}.json"));
    let mut saved: Checkpoints = std::fs::read(&store)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let resend: u64 = saved.pending.iter().map(|p| p.lines).sum();
    if resend > 0 {
        eprintln!(
            "weir: tailing {}: {resend} lines were in flight when weir last stopped; sending \
             them again (they may be in Kafka twice)",
            config.path
        );
        tracing::warn!(
            path = %config.path,
            lines = resend,
            "lines were in flight when weir last stopped; sending them again (they may come twice)"
        );
        metrics.resent.fetch_add(resend, Ordering::Relaxed);
    }
    // Where each known file resumes: a pending range's start, else its mark.
    let mut resume: BTreeMap<FileId, (u64, String)> = saved
        .files
        .iter()
        .map(|m| {
            (
                FileId {
                    dev: m.dev,
                    ino: m.ino,
                },
                (m.offset, m.path.clone()),
            )
        })
        .collect();
    for p in &saved.pending {
        let id = FileId {
            dev: p.dev,
            ino: p.ino,
        };
        let entry = resume.entry(id).or_insert((p.from, String::new()));
        entry.0 = entry.0.min(p.from);
    }
    saved.pending.clear();
    let mut followed: BTreeMap<FileId, Followed> = BTreeMap::new();
    let mut first_scan = true;
    loop {
        for (path, id) in matching(&config.path) {
            if let Some(f) = followed.get_mut(&id) {
                f.unseen = 0;
                f.path = path;
                continue;
            }
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let offset = match resume.remove(&id) {
                Some((offset, _)) => offset,
                None if first_scan && config.start_at == StartAt::End => len,
                None => 0,
            };
            followed.insert(id, Followed::at(path, file, offset, 0));
        }
        // Known files no longer at a matching path (renamed by a rotation):
        // found again in their directory by inode after a restart.
        if first_scan {
            for (id, (offset, old)) in std::mem::take(&mut resume) {
                if let Some(path) = find_inode(Path::new(&old), id)
                    && let Ok(file) = std::fs::File::open(&path)
                {
                    followed.insert(id, Followed::at(path, file, offset, 1));
                }
            }
        }
        first_scan = false;

        let mut progressed = false;
        let ids: Vec<FileId> = followed.keys().copied().collect();
        for id in ids {
            let f = followed.get_mut(&id).expect("followed");
            match read_lines(f, config.max_line_bytes, &metrics) {
                Ok(None) => {}
                Ok(Some((lines, until))) => {
                    let from = f.offset;
                    let count = lines.len() as u64;
                    saved.pending = vec![Pending {
                        dev: id.dev,
                        ino: id.ino,
                        from,
                        until,
                        lines: count,
                    }];
                    save(&store, &saved, &followed);
                    match produce(&producer, &config.topic, &lines).await {
                        Ok(()) => {
                            let f = followed.get_mut(&id).expect("followed");
                            f.offset = until;
                            saved.pending.clear();
                            save(&store, &saved, &followed);
                            metrics.lines.fetch_add(count, Ordering::Relaxed);
                            progressed = true;
                        }
                        Err(error) => {
                            metrics.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, path = %config.path, "tailed lines not acknowledged; retrying");
                            // Read them again at the next pass.
                            let f = followed.get_mut(&id).expect("followed");
                            let _ = f.file.seek(SeekFrom::Start(f.offset));
                        }
                    }
                }
                Err(error) => {
                    metrics.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, path = %f.path.display(), "reading a tailed file failed");
                }
            }
        }
        // A file renamed away and read to its end, quiet for a few scans: done.
        followed.retain(|_, f| {
            f.unseen += 1;
            let len = f.file.metadata().map(|m| m.len()).unwrap_or(0);
            f.unseen < 20 || len > f.offset
        });
        if !progressed {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        } else if stop.is_cancelled() {
            return;
        }
    }
}

/// The complete lines after `f.offset` (at most [`READ_CHUNK`] bytes of them)
/// and the offset after the last; a shrunk file is read again from its start.
fn read_lines(
    f: &mut Followed,
    max_line: usize,
    metrics: &TailMetrics,
) -> std::io::Result<Option<(Vec<Vec<u8>>, u64)>> {
    let len = f.file.metadata()?.len();
    if len < f.offset {
        metrics.truncations.fetch_add(1, Ordering::Relaxed);
        f.offset = 0;
    }
    if len == f.offset {
        return Ok(None);
    }
    f.file.seek(SeekFrom::Start(f.offset))?;
    let want = usize::try_from(len - f.offset)
        .unwrap_or(READ_CHUNK)
        .min(READ_CHUNK);
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match f.file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    let mut lines = Vec::new();
    let mut start = 0;
    let mut consumed = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let mut line = &buf[start..i];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.len() > max_line {
                metrics.cut.fetch_add(1, Ordering::Relaxed);
                line = &line[..max_line];
            }
            lines.push(line.to_vec());
            start = i + 1;
            consumed = start;
        }
    }
    // A line longer than a whole chunk: send its first part, cut.
    if lines.is_empty() && got == READ_CHUNK {
        metrics.cut.fetch_add(1, Ordering::Relaxed);
        lines.push(buf[..max_line.min(got)].to_vec());
        consumed = got;
    }
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some((lines, f.offset + consumed as u64)))
}

async fn produce(producer: &FutureProducer, topic: &str, lines: &[Vec<u8>]) -> Result<(), String> {
    let mut deliveries = Vec::with_capacity(lines.len());
    for line in lines {
        loop {
            let record = FutureRecord::<(), _>::to(topic).payload(line);
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((error, _)) => {
                    if !matches!(
                        error.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ) {
                        return Err(error.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error.to_string()),
            Err(_) => return Err("the producer stopped".into()),
        }
    }
    Ok(())
}

/// Writes the checkpoints atomically (a new file renamed over the old one).
fn save(store: &Path, saved: &Checkpoints, followed: &BTreeMap<FileId, Followed>) {
    let checkpoints = Checkpoints {
        files: followed
            .iter()
            .map(|(id, f)| Mark {
                dev: id.dev,
                ino: id.ino,
                offset: f.offset,
                path: f.path.display().to_string(),
            })
            .collect(),
        pending: saved.pending.clone(),
    };
    let tmp = store.with_extension("json.tmp");
    let written = serde_json::to_vec(&checkpoints)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, store));
    if let Err(error) = written {
        tracing::warn!(%error, path = %store.display(), "writing the tail checkpoints failed");
    }
}

/// The files matching `pattern` (`*`/`?` in the file name), with their ids.
fn matching(pattern: &str) -> Vec<(PathBuf, FileId)> {
    let path = Path::new(pattern);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let mut found = Vec::new();
    if !name.contains(['*', '?']) {
        if let Ok(meta) = std::fs::metadata(path)
            && meta.is_file()
        {
            found.push((
                path.to_owned(),
                FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
            ));
        }
        return found;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        if glob(&name, &file_name.to_string_lossy())
            && let Ok(meta) = std::fs::metadata(entry.path())
            && meta.is_file()
        {
            found.push((
                entry.path(),
                FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
            ));
        }
    }
    found.sort();
    found
}

/// A file of `near`'s directory with inode `id` (a rotated file, renamed).
fn find_inode(near: &Path, id: FileId) -> Option<PathBuf> {
    let dir = near.parent()?;
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let meta = entry.metadata().ok()?;
        (meta.is_file() && meta.dev() == id.dev && meta.ino() == id.ino).then(|| entry.path())
    })
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character).
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_file_names() {
        assert!(glob("access.log*", "access.log"));
        assert!(glob("access.log*", "access.log.1"));
        assert!(glob("*.log", "app.log"));
        assert!(!glob("*.log", "app.log.1"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
    }

    #[test]
    fn complete_lines_are_read_and_a_partial_one_waits() {
        let dir = std::env::temp_dir().join(format!("weir-tail-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        std::fs::write(&path, b"one\r\ntwo\nthr").unwrap();
        let mut f = Followed {
            path: path.clone(),
            file: std::fs::File::open(&path).unwrap(),
            offset: 0,
            unseen: 0,
        };
        let metrics = TailMetrics::default();
        let (lines, until) = read_lines(&mut f, 64, &metrics).unwrap().unwrap();
        assert_eq!(lines, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(until, 9);
        f.offset = until;
        assert!(
            read_lines(&mut f, 64, &metrics).unwrap().is_none(),
            "the partial line waits"
        );
        // copytruncate: the file is shorter than the offset.
        std::fs::write(&path, b"new\n").unwrap();
        let (lines, _) = read_lines(&mut f, 64, &metrics).unwrap().unwrap();
        assert_eq!(lines, [b"new".to_vec()]);
        assert_eq!(metrics.truncations.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
