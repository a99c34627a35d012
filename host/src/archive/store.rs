//! Where archive files go: a small seam with a local directory and HDFS behind it.
//!
//! A [`Store`] knows a few things: make a file visible under its final name all at
//! once ([`Store::put`]: write a temporary file, close it, rename it), list the files
//! of a directory, delete a file, and make or delete a directory of temporary files.
//! Paths are relative to the store's root and use `/`.
//!
//! `put` never creates the temporary file's directory and never replaces a final
//! file: the archive fences a partition's writers by deleting their temporary
//! directories (see the archive module doc), and a writer whose directory is gone
//! can neither start a file nor rename one. S3 has no rename: its store names files
//! by their place in a chain instead and writes them only if the name is free
//! ([`Naming::Position`], `s3.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions};

use super::ArchiveError;

/// One file for [`Store::put_all`]: its final path, its temporary path, its content.
#[derive(Debug, Clone)]
pub struct StoreFile {
    /// Final path, relative to the root.
    pub path: String,
    /// Temporary path, relative to the root.
    pub tmp: String,
    /// The whole file.
    pub bytes: Vec<u8>,
}

/// How a store's final file names keep two writers of one partition from archiving
/// a row twice (see the archive module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `{topic}-{partition}-{first}-{last}.parquet`, the lowest and highest offsets
    /// of the rows in the file, renamed into place out of a temporary directory that
    /// a writer taking the partition over deletes (local directories, HDFS).
    Range,
    /// `{topic}-{partition}-{from}.parquet`, where `from` is one past the previous
    /// file's last offset in the same directory (0 for the first), written only if
    /// the name is free: a writer that lost the name was taken over (S3). The last
    /// offset is in the file's footer ([`Store::last_offset`]).
    Position,
}

/// A file system the archive writes to.
pub trait Store: Send + std::fmt::Debug {
    /// How final names are made; see [`Naming`].
    fn naming(&self) -> Naming {
        Naming::Range
    }

    /// The highest source offset of the rows of the archive file at `path`, from its
    /// footer; needed only by stores whose names do not say it ([`Naming::Position`]).
    fn last_offset(&mut self, path: &str) -> Result<i64, ArchiveError> {
        Err(store_error(
            "read the footer of",
            path,
            "this store names files by their offsets",
        ))
    }

    /// Writes `bytes` under the temporary path `tmp`, closes the file and renames it to
    /// `path`, creating `path`'s directories but not `tmp`'s: a missing temporary
    /// directory fails the put. Returns `false` and removes the temporary file when
    /// `path` already exists (the file there is left as it is; nothing is replaced,
    /// whoever renames first). A store with [`Naming::Position`] writes `path`
    /// directly when it can, and returns `false` only when another writer's file
    /// has the name.
    fn put(&mut self, path: &str, tmp: &str, bytes: &[u8]) -> Result<bool, ArchiveError>;

    /// [`Store::put`] for each file, concurrently where the store gains from it; one
    /// result per file, in order.
    fn put_all(&mut self, files: &[StoreFile]) -> Vec<Result<bool, ArchiveError>> {
        files
            .iter()
            .map(|f| self.put(&f.path, &f.tmp, &f.bytes))
            .collect()
    }

    /// Names (not paths) of the files directly in `dir`; empty when `dir` does not exist.
    fn list(&mut self, dir: &str) -> Result<Vec<String>, ArchiveError>;

    /// Deletes the file at `path`; a missing file is not an error.
    fn delete(&mut self, path: &str) -> Result<(), ArchiveError>;

    /// Deletes the directory `dir` with everything in it, at once; a missing
    /// directory is not an error.
    fn delete_dir(&mut self, dir: &str) -> Result<(), ArchiveError>;

    /// Creates the directory `dir` and its parents.
    fn make_dir(&mut self, dir: &str) -> Result<(), ArchiveError>;

    /// Whether `dir` exists as a directory.
    fn is_dir(&mut self, dir: &str) -> Result<bool, ArchiveError>;

    /// Where the store's root is, for logs.
    fn root(&self) -> String;
}

pub(super) fn store_error(op: &'static str, path: &str, reason: impl ToString) -> ArchiveError {
    ArchiveError::Store {
        op,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A put's error: [`ArchiveError::Gone`] when what was missing is the temporary
/// file or its directory (`gone`), else a store error.
fn put_error(op: &'static str, path: &str, gone: bool, reason: impl ToString) -> ArchiveError {
    if gone {
        ArchiveError::Gone {
            op,
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    } else {
        store_error(op, path, reason)
    }
}

/// [`Store::put`] through [`Store::put_all`], for stores whose puts run concurrently.
pub(super) fn put_one(
    store: &mut impl Store,
    path: &str,
    tmp: &str,
    bytes: &[u8],
) -> Result<bool, ArchiveError> {
    let file = StoreFile {
        path: path.to_owned(),
        tmp: tmp.to_owned(),
        bytes: bytes.to_vec(),
    };
    store
        .put_all(std::slice::from_ref(&file))
        .pop()
        .unwrap_or(Ok(false))
}

/// Whether an HDFS error says a path does not exist.
fn not_found(e: &HdfsError) -> bool {
    match e {
        HdfsError::FileNotFound(_) => true,
        HdfsError::RPCError(class, _) => class.ends_with("FileNotFoundException"),
        _ => false,
    }
}

/// A directory on the local file system.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root`, which is created when missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, ArchiveError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| store_error("create directory", &root.display().to_string(), e))?;
        Ok(Self { root })
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

/// Makes a rename or a new file in `dir` survive a power cut.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Store for LocalStore {
    fn put(&mut self, path: &str, tmp: &str, bytes: &[u8]) -> Result<bool, ArchiveError> {
        let (tmp_full, full) = (self.full(tmp), self.full(path));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp_full)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        write()
            .map_err(|e| put_error("write", tmp, e.kind() == std::io::ErrorKind::NotFound, e))?;
        if full.exists() {
            std::fs::remove_file(&tmp_full).map_err(|e| store_error("delete", tmp, e))?;
            return Ok(false);
        }
        // A hard link is the rename that never replaces: it fails when `full`
        // exists, and when another replica deleted the temporary directory.
        let parent = full.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(|e| store_error("create directory", path, e))?;
        match std::fs::hard_link(&tmp_full, &full) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp_full).map_err(|e| store_error("delete", tmp, e))?;
                return Ok(false);
            }
            Err(e) => {
                let gone = e.kind() == std::io::ErrorKind::NotFound;
                return Err(put_error("rename", path, gone, e));
            }
        }
        std::fs::remove_file(&tmp_full)
            .and_then(|()| sync_dir(parent))
            .map_err(|e| store_error("rename", path, e))?;
        Ok(true)
    }

    fn list(&mut self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        let entries = match std::fs::read_dir(self.full(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(store_error("list", dir, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| store_error("list", dir, e))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn delete(&mut self, path: &str) -> Result<(), ArchiveError> {
        match std::fs::remove_file(self.full(path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(store_error("delete", path, e))
            }
            _ => Ok(()),
        }
    }

    fn delete_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        match std::fs::remove_dir_all(self.full(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(store_error("delete directory", dir, e))
            }
            _ => Ok(()),
        }
    }

    fn make_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        std::fs::create_dir_all(self.full(dir)).map_err(|e| store_error("create directory", dir, e))
    }

    fn is_dir(&mut self, dir: &str) -> Result<bool, ArchiveError> {
        Ok(self.full(dir).is_dir())
    }

    fn root(&self) -> String {
        self.root.display().to_string()
    }
}

/// A directory on HDFS, through hdfs-native. Calls run on a tokio runtime, each bounded
/// by a timeout so a stuck NameNode or DataNode fails the cycle instead of hanging it.
pub struct HdfsStore {
    client: Client,
    url: String,
    base: String,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for HdfsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdfsStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `<scheme>://<authority>/<path>` as the authority and the path below it,
/// without leading or trailing `/`; `names` says what the authority is and
/// `shape` how the root is written, for the errors.
pub(crate) fn split_root_url<'u>(
    url: &'u str,
    scheme: &str,
    names: &str,
    shape: &str,
) -> Result<(&'u str, String), ArchiveError> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
        .ok_or_else(|| {
            ArchiveError::Config(format!(
                "archive.root: `{url}` is not an {scheme}:// URL; give {shape}"
            ))
        })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(ArchiveError::Config(format!(
            "archive.root: `{url}` names no {names}; give {shape}"
        )));
    }
    Ok((authority, path.trim_matches('/').to_owned()))
}

/// `hdfs://host:port/path` as the NameNode's URL (`hdfs://host:port`) and the
/// path below it, without leading or trailing `/`.
pub fn split_hdfs_url(url: &str) -> Result<(String, String), ArchiveError> {
    let (authority, base) = split_root_url(url, "hdfs", "NameNode", "hdfs://host:port/path")?;
    Ok((format!("hdfs://{authority}"), base))
}

impl HdfsStore {
    /// A store at `url` (`hdfs://host:port/path`), running its calls on `runtime`.
    pub fn new(
        url: &str,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Result<Self, ArchiveError> {
        let (namenode, base) = split_hdfs_url(url)?;
        // The client may start tasks of its own: build it inside the runtime.
        let _entered = runtime.enter();
        let client = ClientBuilder::new()
            .with_url(namenode)
            .build()
            .map_err(|e| ArchiveError::Config(format!("archive.root: `{url}`: {e}")))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            base: format!("/{base}"),
            runtime,
            timeout,
        })
    }

    fn full(&self, path: &str) -> String {
        if self.base == "/" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.base)
        }
    }

    fn run<T>(
        &self,
        op: &'static str,
        path: &str,
        call: impl std::future::Future<Output = Result<T, HdfsError>>,
    ) -> Result<T, ArchiveError> {
        self.runtime
            .block_on(async { tokio::time::timeout(self.timeout, call).await })
            .map_err(|_| store_error(op, path, format!("no answer in {:?}", self.timeout)))?
            .map_err(|e| store_error(op, path, e))
    }
}

/// Most files an [`HdfsStore`] writes at once.
const HDFS_PARALLEL_PUTS: usize = 16;

/// Write, close, rename; `Ok(false)` when `full` exists already (`tmp_full` is removed).
async fn hdfs_put(
    client: &Client,
    tmp_full: &str,
    full: &str,
    data: Bytes,
) -> Result<bool, (&'static str, bool, HdfsError)> {
    let mut writer = client
        .create(tmp_full, WriteOptions::default().create_parent(false))
        .await
        .map_err(|e| ("write", not_found(&e), e))?;
    writer
        .write_bytes(data)
        .await
        .map_err(|e| ("write", false, e))?;
    // Dropping a writer without `close` loses what it buffered. `close` waits until
    // the NameNode has heard of the block from the DataNode: most of the time of a put.
    writer.close().await.map_err(|e| ("close", false, e))?;
    let renamed = async {
        match client.get_file_info(full).await {
            Ok(_) => return Ok(false),
            Err(HdfsError::FileNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some((parent, _)) = full.rsplit_once('/') {
            client.mkdirs(parent, 0o755, true).await?;
        }
        match client.rename(tmp_full, full, false).await {
            Ok(()) => Ok(true),
            Err(HdfsError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    .await
    .map_err(|e| ("rename", not_found(&e), e))?;
    if !renamed {
        client
            .delete(tmp_full, false)
            .await
            .map_err(|e| ("delete", false, e))?;
    }
    Ok(renamed)
}

impl Store for HdfsStore {
    fn put(&mut self, path: &str, tmp: &str, bytes: &[u8]) -> Result<bool, ArchiveError> {
        put_one(self, path, tmp, bytes)
    }

    fn put_all(&mut self, files: &[StoreFile]) -> Vec<Result<bool, ArchiveError>> {
        let limit = Arc::new(tokio::sync::Semaphore::new(HDFS_PARALLEL_PUTS));
        let timeout = self.timeout;
        let tasks: Vec<_> = files
            .iter()
            .map(|file| {
                let (client, limit) = (self.client.clone(), limit.clone());
                let (tmp_full, full) = (self.full(&file.tmp), self.full(&file.path));
                let data = Bytes::copy_from_slice(&file.bytes);
                self.runtime.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    tokio::time::timeout(timeout, hdfs_put(&client, &tmp_full, &full, data)).await
                })
            })
            .collect();
        files
            .iter()
            .zip(tasks)
            .map(|(file, task)| match self.runtime.block_on(task) {
                Ok(Ok(Ok(renamed))) => Ok(renamed),
                Ok(Ok(Err((op, gone, e)))) => Err(put_error(op, &file.path, gone, e)),
                Ok(Err(_)) => Err(store_error(
                    "put",
                    &file.path,
                    format!("no answer in {timeout:?}"),
                )),
                Err(e) => Err(store_error("put", &file.path, e)),
            })
            .collect()
    }

    fn list(&mut self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        let full = self.full(dir);
        let client = &self.client;
        let listed = self.run("list", dir, async {
            match client.list_status(&full, false).await {
                Ok(statuses) => Ok(statuses),
                Err(HdfsError::FileNotFound(_)) => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        })?;
        Ok(listed
            .into_iter()
            .filter(|status| !status.isdir)
            .map(|status| {
                status
                    .path
                    .rsplit_once('/')
                    .map_or(status.path.clone(), |(_, name)| name.to_owned())
            })
            .collect())
    }

    fn delete(&mut self, path: &str) -> Result<(), ArchiveError> {
        let full = self.full(path);
        let client = &self.client;
        self.run("delete", path, async {
            client.delete(&full, false).await.map(|_| ())
        })
    }

    fn delete_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        let full = self.full(dir);
        let client = &self.client;
        self.run("delete directory", dir, async {
            client.delete(&full, true).await.map(|_| ())
        })
    }

    fn make_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        let full = self.full(dir);
        let client = &self.client;
        self.run("create directory", dir, async {
            client.mkdirs(&full, 0o755, true).await
        })
    }

    fn is_dir(&mut self, dir: &str) -> Result<bool, ArchiveError> {
        let full = self.full(dir);
        let client = &self.client;
        self.run("stat", dir, async {
            match client.get_file_info(&full).await {
                Ok(status) => Ok(status.isdir),
                Err(HdfsError::FileNotFound(_)) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn root(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hdfs_root_splits_into_its_namenode_and_path() {
        assert_eq!(
            split_hdfs_url("hdfs://nn:9000/a/b/").unwrap(),
            ("hdfs://nn:9000".to_owned(), "a/b".to_owned())
        );
        assert_eq!(
            split_hdfs_url("hdfs://nn:9000").unwrap(),
            ("hdfs://nn:9000".to_owned(), String::new())
        );
        let no_namenode = split_hdfs_url("hdfs:///a").unwrap_err().to_string();
        assert!(no_namenode.contains("names no NameNode"), "{no_namenode}");
        let other = split_hdfs_url("s3://b/a").unwrap_err().to_string();
        assert!(other.contains("is not an hdfs:// URL"), "{other}");
        // The scheme is the whole word before `://`, not a prefix of it.
        assert!(split_hdfs_url("hdfsx://nn/a").is_err());
    }
}
