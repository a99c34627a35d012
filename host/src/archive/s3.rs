//! The archive on S3 and S3-compatible servers, through `object_store`.
//!
//! S3 has no rename and no directories, so the protocol of the local and HDFS
//! stores (a temporary file renamed into place out of a fenced directory) does not
//! carry over. What S3 does have: an object appears whole or not at all (a PUT, or a
//! multipart upload on completion), and a write can be made conditional on the name
//! being free (`If-None-Match: *`, answered 412 when it is not). The archive builds on
//! that with names that say where a file stands in its key's chain, not which rows
//! it holds (see [`Naming::Position`](super::store::Naming) and the archive module's
//! doc): two writers of one partition that disagree always race for the same name,
//! and the server lets exactly one of them have it.
//!
//! Files up to `s3_multipart_mb` go up in one conditional PUT. Larger ones go up as a
//! multipart upload to a temporary name under `_tmp/`, and are then copied to their
//! final name by a multipart upload whose one part copies the temporary object on the
//! server and whose completion carries `If-None-Match: *`; the temporary object is
//! then deleted. A process killed mid-upload leaves an unfinished upload that no
//! reader lists (a bucket lifecycle rule `AbortIncompleteMultipartUpload` removes its
//! parts) or a whole temporary object under `_tmp/`, which the next writer of the
//! partition deletes when it fences it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut, S3CopyIfNotExists};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, WriteMultipart,
};
use parquet::file::metadata::{FooterTail, ParquetMetaDataReader};

use super::ArchiveError;
use super::store::{Naming, Store, StoreFile, put_one, store_error};

/// Key-value metadata in every archive file's footer: the highest source offset of
/// its rows, which a file named by position does not say.
pub const LAST_OFFSET_KEY: &str = "weir.last_offset";
/// Key-value metadata naming the attempt that wrote the file, so a writer that
/// retries a put whose answer it never saw can tell its own file from another's.
pub const ATTEMPT_KEY: &str = "weir.attempt";

/// Most files an [`S3Store`] uploads at once.
const S3_PARALLEL_PUTS: usize = 16;
/// Bytes of a file's end read at first to find its footer.
const FOOTER_GUESS: u64 = 64 << 10;

/// Where an `s3://bucket/prefix` archive is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// The server's URL (`http://127.0.0.1:9000`); empty: AWS, or `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    /// The region; empty: `AWS_REGION`, the AWS config file, else `us-east-1`.
    pub region: String,
    /// `bucket.host` addressing instead of `host/bucket` (path-style, which
    /// S3-compatible servers expect, is the default).
    pub virtual_hosted: bool,
    /// Files larger than this many MiB go up as multipart uploads (0: every file).
    pub multipart_mb: u64,
    /// An access key id and secret to use instead of the environment's and the
    /// shared files' (for embedding; `weir serve` reads those).
    pub credentials: Option<(String, String)>,
}

/// An archive root on S3.
pub struct S3Store {
    store: Arc<AmazonS3>,
    url: String,
    base: String,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    multipart_bytes: usize,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// One `key = value` setting of `profile` in an AWS-style INI file (`~/.aws/credentials`
/// has `[name]` sections, `~/.aws/config` has `[profile name]` ones besides `[default]`).
fn ini_value(text: &str, profile: &str, key: &str) -> Option<String> {
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            section = name
                .strip_prefix("profile ")
                .unwrap_or(name)
                .trim()
                .to_owned();
        } else if section == profile
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

/// Credentials and region from the AWS shared files, for what the environment did
/// not set: `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`) and
/// `AWS_CONFIG_FILE` (default `~/.aws/config`), profile `AWS_PROFILE` or `default`.
fn from_files(mut builder: AmazonS3Builder) -> AmazonS3Builder {
    let home = std::env::var("HOME").unwrap_or_default();
    let file = |var: &str, default: &str| {
        let path = std::env::var(var).unwrap_or_else(|_| format!("{home}/.aws/{default}"));
        std::fs::read_to_string(path).unwrap_or_default()
    };
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_owned());
    let env_set = |var: &str| std::env::var_os(var).is_some();
    if !env_set("AWS_ACCESS_KEY_ID") {
        let credentials = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        if let (Some(id), Some(secret)) = (
            ini_value(&credentials, &profile, "aws_access_key_id"),
            ini_value(&credentials, &profile, "aws_secret_access_key"),
        ) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = ini_value(&credentials, &profile, "aws_session_token") {
                builder = builder.with_token(token);
            }
        }
    }
    if !env_set("AWS_REGION") && !env_set("AWS_DEFAULT_REGION") {
        let config = file("AWS_CONFIG_FILE", "config");
        if let Some(region) = ini_value(&config, &profile, "region") {
            builder = builder.with_region(region);
        }
    }
    builder
}

/// `(bucket, prefix)` of `s3://bucket/prefix`.
pub fn parse_url(url: &str) -> Result<(String, String), ArchiveError> {
    let (bucket, prefix) = super::store::split_root_url(url, "s3", "bucket", "s3://bucket/prefix")?;
    Ok((bucket.to_owned(), prefix))
}

impl S3Store {
    /// A store at `settings.url`, running its calls on `runtime`, each bounded by
    /// `timeout`. Credentials: `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// the other `AWS_*` variables), else the shared credentials file.
    pub fn new(
        settings: &S3Settings,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Result<Self, ArchiveError> {
        let (store, _, base) = client(settings, timeout)?;
        Ok(Self {
            store: Arc::new(store),
            url: settings.url.clone(),
            base,
            runtime,
            timeout,
            multipart_bytes: usize::try_from(settings.multipart_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
        })
    }

    fn full(&self, path: &str) -> Path {
        if self.base.is_empty() {
            Path::from(path)
        } else {
            Path::from(format!("{}/{path}", self.base))
        }
    }

    fn run<T>(
        &self,
        op: &'static str,
        path: &str,
        call: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, ArchiveError> {
        self.runtime
            .block_on(async { tokio::time::timeout(self.timeout, call).await })
            .map_err(|_| store_error(op, path, format!("no answer in {:?}", self.timeout)))?
            .map_err(|e| store_error(op, path, e))
    }
}

/// A client of the bucket `settings.url` names, each call bounded by `timeout`,
/// with the bucket and the prefix. Credentials: `settings.credentials`, else
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and the other `AWS_*`
/// variables), else the shared credentials file.
pub fn client(
    settings: &S3Settings,
    timeout: Duration,
) -> Result<(AmazonS3, String, String), ArchiveError> {
    let (bucket, base) = parse_url(&settings.url)?;
    // HTTPS through rustls with ring (no aws-lc build): make ring the process's
    // provider, unless the process chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = from_files(AmazonS3Builder::from_env())
        .with_bucket_name(&bucket)
        .with_virtual_hosted_style_request(settings.virtual_hosted)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
    if !settings.endpoint.is_empty() {
        builder = builder.with_endpoint(&settings.endpoint);
    }
    if let Some((id, secret)) = &settings.credentials {
        builder = builder
            .with_access_key_id(id)
            .with_secret_access_key(secret);
    }
    if !settings.region.is_empty() {
        builder = builder.with_region(&settings.region);
    }
    let endpoint = builder
        .get_config_value(&object_store::aws::AmazonS3ConfigKey::Endpoint)
        .unwrap_or_default();
    builder = builder.with_client_options(
        ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_timeout(timeout),
    );
    let store = builder
        .build()
        .map_err(|e| ArchiveError::Config(format!("archive.root: `{}`: {e}", settings.url)))?;
    Ok((store, bucket, base))
}

/// The footer's key-value metadata of the archive file at `path`.
async fn footer_values(
    store: &AmazonS3,
    path: &Path,
) -> Result<Vec<(String, String)>, object_store::Error> {
    let generic = |reason: String| object_store::Error::Generic {
        store: "S3",
        source: reason.into(),
    };
    let mut want = FOOTER_GUESS;
    loop {
        let got = store
            .get_opts(
                path,
                GetOptions {
                    range: Some(GetRange::Suffix(want)),
                    ..GetOptions::default()
                },
            )
            .await?;
        let size = got.meta.size;
        let tail = got.bytes().await?;
        if tail.len() < 8 {
            return Err(generic(format!("{path}: {size} bytes is no Parquet file")));
        }
        let footer: &[u8; 8] = tail[tail.len() - 8..].try_into().expect("8 bytes");
        let footer = FooterTail::try_new(footer).map_err(|e| generic(format!("{path}: {e}")))?;
        let needed = footer.metadata_length() as u64 + 8;
        if needed > tail.len() as u64 {
            if needed > size || want >= size {
                return Err(generic(format!("{path}: its footer does not fit the file")));
            }
            want = needed;
            continue;
        }
        let start = tail.len() - needed as usize;
        let metadata = ParquetMetaDataReader::decode_metadata(&tail[start..tail.len() - 8])
            .map_err(|e| generic(format!("{path}: {e}")))?;
        return Ok(metadata
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
            .collect());
    }
}

/// Puts `data` at `path` only if the name is free: `Ok(true)` when it was, or when
/// what is there is this attempt's own (an earlier try whose answer was lost);
/// `Ok(false)` when another writer's file has the name.
async fn s3_put(
    store: Arc<AmazonS3>,
    path: Path,
    tmp: Path,
    attempt: String,
    data: Bytes,
    multipart_bytes: usize,
) -> Result<bool, (&'static str, object_store::Error)> {
    let created = if data.len() <= multipart_bytes {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        store
            .put_opts(&path, PutPayload::from_bytes(data), options)
            .await
            .map(|_| ())
    } else {
        // Whole under a temporary name first (an upload appears only on completion),
        // then copied on the server under the final name, created only if free.
        let upload = store.put_multipart(&tmp).await.map_err(|e| ("upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        writer.put(data);
        writer.finish().await.map_err(|e| ("upload", e))?;
        let copied = store.copy_if_not_exists(&tmp, &path).await;
        // Best effort: a leftover is deleted when the partition is next fenced.
        let _ = store.delete(&tmp).await;
        copied
    };
    match created {
        Ok(()) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let values = footer_values(&store, &path)
                .await
                .map_err(|e| ("read the footer of", e))?;
            Ok(values
                .iter()
                .any(|(k, v)| k == ATTEMPT_KEY && *v == attempt))
        }
        Err(e) => Err(("put", e)),
    }
}

impl Store for S3Store {
    fn naming(&self) -> Naming {
        Naming::Position
    }

    fn put(&mut self, path: &str, tmp: &str, bytes: &[u8]) -> Result<bool, ArchiveError> {
        put_one(self, path, tmp, bytes)
    }

    fn put_all(&mut self, files: &[StoreFile]) -> Vec<Result<bool, ArchiveError>> {
        let limit = Arc::new(tokio::sync::Semaphore::new(S3_PARALLEL_PUTS));
        let timeout = self.timeout;
        let tasks: Vec<_> = files
            .iter()
            .map(|file| {
                let (store, limit) = (self.store.clone(), limit.clone());
                let (path, tmp) = (self.full(&file.path), self.full(&file.tmp));
                let data = Bytes::copy_from_slice(&file.bytes);
                let (attempt, multipart) = (file.tmp.clone(), self.multipart_bytes);
                self.runtime.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    // A multipart upload is several calls: allow each its timeout.
                    let calls = 3 + data.len() / (8 << 20);
                    let bound = timeout.saturating_mul(u32::try_from(calls).unwrap_or(u32::MAX));
                    tokio::time::timeout(bound, s3_put(store, path, tmp, attempt, data, multipart))
                        .await
                })
            })
            .collect();
        files
            .iter()
            .zip(tasks)
            .map(|(file, task)| match self.runtime.block_on(task) {
                Ok(Ok(Ok(created))) => Ok(created),
                Ok(Ok(Err((op, e)))) => Err(store_error(op, &file.path, e)),
                Ok(Err(_)) => Err(store_error(
                    "put",
                    &file.path,
                    format!("no answer in time ({timeout:?} per call)"),
                )),
                Err(e) => Err(store_error("put", &file.path, e)),
            })
            .collect()
    }

    fn list(&mut self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        let prefix = self.full(dir);
        let store = self.store.clone();
        let listed = self.run("list", dir, async move {
            store.list_with_delimiter(Some(&prefix)).await
        })?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .collect())
    }

    fn delete(&mut self, path: &str) -> Result<(), ArchiveError> {
        let full = self.full(path);
        let store = self.store.clone();
        self.run("delete", path, async move {
            match store.delete(&full).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        })
    }

    fn delete_dir(&mut self, dir: &str) -> Result<(), ArchiveError> {
        let prefix = self.full(dir);
        let store = self.store.clone();
        self.run("delete directory", dir, async move {
            let mut listed = store.list(Some(&prefix));
            while let Some(meta) = listed.next().await {
                match store.delete(&meta?.location).await {
                    Err(object_store::Error::NotFound { .. }) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// S3 has no directories: a prefix exists once an object is under it.
    fn make_dir(&mut self, _dir: &str) -> Result<(), ArchiveError> {
        Ok(())
    }

    /// Always true: with [`Naming::Position`] the archive never asks whether its
    /// temporary directory is gone (S3's fence is the conditional write).
    fn is_dir(&mut self, _dir: &str) -> Result<bool, ArchiveError> {
        Ok(true)
    }

    fn last_offset(&mut self, path: &str) -> Result<i64, ArchiveError> {
        let full = self.full(path);
        let store = self.store.clone();
        let values = self.run("read the footer of", path, async move {
            footer_values(&store, &full).await
        })?;
        values
            .iter()
            .find(|(k, _)| k == LAST_OFFSET_KEY)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| {
                store_error(
                    "read the footer of",
                    path,
                    format!("no `{LAST_OFFSET_KEY}` in its key-value metadata"),
                )
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
    fn ini_profiles_are_read_from_both_file_forms() {
        let text = "[default]\naws_access_key_id = A\n\n[profile other]\nregion=eu-west-1\n[x]\nregion = no\n";
        assert_eq!(
            ini_value(text, "default", "aws_access_key_id").as_deref(),
            Some("A")
        );
        assert_eq!(
            ini_value(text, "other", "region").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(ini_value(text, "default", "region"), None);
        assert_eq!(ini_value(text, "x", "region").as_deref(), Some("no"));
    }

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://b/a/b/").unwrap(),
            ("b".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), String::new()));
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("hdfs://x").is_err());
    }
}
