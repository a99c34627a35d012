//! An archive on HDFS as an [`ObjectStore`], so the query engine reads its
//! Parquet files as it reads a directory or S3: listings, ranged reads of a
//! file, and a whole-file replace for the report files written back.
//!
//! Object paths are relative to the root of the NameNode's file system
//! (`hdfs://nn:9000/weir/archive` registers `hdfs://nn:9000`; the object
//! `weir/archive/scenario_id=5/...` is the file `/weir/archive/scenario_id=5/...`).

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use hdfs_native::{Client, HdfsError, WriteOptions};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

const STORE: &str = "HDFS";

/// Files of one HDFS file system.
#[derive(Clone)]
pub struct HdfsObjects {
    client: Client,
    url: String,
    /// Longest NameNode or DataNode call.
    timeout: Duration,
}

impl fmt::Debug for HdfsObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HdfsObjects")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for HdfsObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HdfsObjects({})", self.url)
    }
}

impl HdfsObjects {
    /// The file system at `url` (`hdfs://host:port`), each call bounded by
    /// `timeout`. Build it inside the runtime that will run its calls.
    pub fn new(url: &str, timeout: Duration) -> Result<Self> {
        let client = hdfs_native::ClientBuilder::new()
            .with_url(url)
            .build()
            .map_err(generic)?;
        Ok(Self {
            client,
            url: url.to_owned(),
            timeout,
        })
    }

    /// `call` on `path`, bounded by the timeout.
    async fn run<T>(
        &self,
        path: &str,
        call: impl Future<Output = std::result::Result<T, HdfsError>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| error(path, e)),
            Err(_) => Err(generic(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{}{path}: no answer in {:?}", self.url, self.timeout),
            ))),
        }
    }
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e),
    }
}

fn error(path: &str, e: HdfsError) -> object_store::Error {
    match e {
        HdfsError::FileNotFound(_) => object_store::Error::NotFound {
            path: path.to_owned(),
            source: Box::new(e),
        },
        HdfsError::AlreadyExists(_) => object_store::Error::AlreadyExists {
            path: path.to_owned(),
            source: Box::new(e),
        },
        e => generic(e),
    }
}

fn not_implemented(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.to_owned(),
        implementer: "HdfsObjects".to_owned(),
    }
}

/// The file of an object path.
fn file(location: &Path) -> String {
    format!("/{location}")
}

fn meta(status: &hdfs_native::client::FileStatus) -> ObjectMeta {
    ObjectMeta {
        location: Path::from(status.path.trim_start_matches('/')),
        last_modified: DateTime::<Utc>::from_timestamp_millis(
            i64::try_from(status.modification_time).unwrap_or(i64::MAX),
        )
        .unwrap_or_default(),
        size: status.length as u64,
        e_tag: None,
        version: None,
    }
}

impl HdfsObjects {
    /// Every file below `prefix` (recursively), or none when it does not exist.
    async fn files(&self, prefix: Option<&Path>) -> Result<Vec<ObjectMeta>> {
        let dir = prefix.map_or_else(|| "/".to_owned(), file);
        match self.run(&dir, self.client.list_status(&dir, true)).await {
            Ok(list) => Ok(list.iter().filter(|s| !s.isdir).map(meta).collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl ObjectStore for HdfsObjects {
    /// Writes a temporary file beside `location` and renames it over it, so a
    /// reader sees the old file or the new one, whole.
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let overwrite = match opts.mode {
            PutMode::Overwrite => true,
            PutMode::Create => false,
            PutMode::Update(_) => return Err(not_implemented("put (update)")),
        };
        let path = file(location);
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
        let tmp = format!("{dir}/.{name}.{}.tmp", std::process::id());
        let mut writer = self
            .client
            .create(
                &tmp,
                WriteOptions::default().create_parent(true).overwrite(true),
            )
            .await
            .map_err(|e| error(&tmp, e))?;
        for chunk in payload.iter() {
            writer
                .write_bytes(chunk.clone())
                .await
                .map_err(|e| error(&tmp, e))?;
        }
        writer.close().await.map_err(|e| error(&tmp, e))?;
        if let Err(e) = self.client.rename(&tmp, &path, overwrite).await {
            let _ = self.client.delete(&tmp, false).await;
            return Err(error(&path, e));
        }
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(not_implemented("put_multipart"))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let path = file(location);
        let status = self.run(&path, self.client.get_file_info(&path)).await?;
        let meta = meta(&status);
        let range: Range<u64> = match &options.range {
            Some(range) => range.as_range(meta.size).map_err(generic)?,
            None => 0..meta.size,
        };
        let payload = if options.head || range.is_empty() {
            stream::empty().boxed()
        } else {
            let reader = self.client.read(&path).await.map_err(|e| error(&path, e))?;
            let (start, len) = (range.start as usize, (range.end - range.start) as usize);
            let bytes: Bytes = reader
                .read_range(start, len)
                .await
                .map_err(|e| error(&path, e))?;
            stream::once(async move { Ok(bytes) }).boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    let path = file(&location);
                    this.run(&path, this.client.delete(&path, false)).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        let prefix = prefix.cloned();
        stream::once(async move { this.files(prefix.as_ref()).await })
            .map(|listed| match listed {
                Ok(files) => stream::iter(files.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .flatten()
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let dir = prefix.map_or_else(|| "/".to_owned(), file);
        let listed = match self.run(&dir, self.client.list_status(&dir, false)).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut result = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
        };
        for status in &listed {
            if status.isdir {
                result
                    .common_prefixes
                    .push(Path::from(status.path.trim_start_matches('/')));
            } else {
                result.objects.push(meta(status));
            }
        }
        Ok(result)
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> Result<()> {
        Err(not_implemented("copy"))
    }
}
