//! The cold store export bundles live in: JetStream's Object Store (bucket
//! `ATP_EXPORT_BUNDLES`) by default, or any store `object_store` reaches (`s3://bucket/prefix`
//! with the usual `AWS_*` settings, `file:///dir`) by configuration.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_nats::jetstream::Context;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore as NatsObjects};
use base64::Engine as _;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, WriteMultipart};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// JetStream's default 128 KiB chunks make a 1 GiB bundle 8192 messages; 512 KiB stays well
/// under the server's 1 MiB max payload.
const NATS_CHUNK: usize = 512 * 1024;
/// Multipart uploads to S3 need parts of at least 5 MiB.
const UPLOAD_PART: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ColdError {
    #[error("cold store {0:?} is not understood: use nats, file:///dir or s3://bucket[/prefix]")]
    BadUrl(String),
    #[error("cold store: {0}")]
    Store(String),
    #[error("cold store I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn store_err(e: impl std::fmt::Display) -> ColdError {
    ColdError::Store(e.to_string())
}

#[derive(Clone)]
pub enum ColdStore {
    Nats(Box<NatsObjects>),
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        url: String,
    },
}

impl std::fmt::Debug for ColdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ColdStore {
    /// `None` or `nats`: the JetStream bucket; otherwise an `object_store` URL.
    pub async fn open(js: &Context, url: Option<&str>) -> Result<Self, ColdError> {
        match url {
            None | Some("nats") => Ok(Self::Nats(Box::new(
                atp_nats::exports::bundles(js).await.map_err(store_err)?,
            ))),
            Some(u) => Self::from_url(u),
        }
    }

    /// An `object_store` URL: `s3://bucket/prefix` or `file:///dir`.
    pub fn from_url(u: &str) -> Result<Self, ColdError> {
        let parsed = url::Url::parse(u).map_err(|_| ColdError::BadUrl(u.to_owned()))?;
        if !matches!(parsed.scheme(), "s3" | "file") {
            return Err(ColdError::BadUrl(u.to_owned()));
        }
        if parsed.scheme() == "file" {
            std::fs::create_dir_all(parsed.path())?;
        }
        // S3 settings come from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT…), never from
        // the URL, so no secret sits in a command line.
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) = object_store::parse_url_opts(&parsed, env).map_err(store_err)?;
        Ok(Self::Object {
            store: Arc::from(store),
            prefix,
            url: u.to_owned(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Nats(_) => format!("nats object store {}", atp_nats::streams::EXPORT_BUNDLES),
            Self::Object { url, .. } => url.clone(),
        }
    }

    fn path(prefix: &ObjectPath, key: &str) -> ObjectPath {
        key.split('/')
            .fold(prefix.clone(), |p, part| p.clone().join(part))
    }

    /// Stores the file at `path` under `key`, streaming it; returns its size and SHA-256 (hex),
    /// computed on the way (JetStream's Object Store hashes every object it stores anyway).
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(u64, String), ColdError> {
        self.put(key, tokio::fs::File::open(path).await?).await
    }

    /// Stores what `data` reads under `key`; returns its size and SHA-256 (hex).
    pub async fn put(
        &self,
        key: &str,
        data: impl AsyncRead + Unpin + Send,
    ) -> Result<(u64, String), ColdError> {
        let file = data;
        match self {
            Self::Nats(objects) => {
                let meta = ObjectMetadata {
                    name: key.to_owned(),
                    chunk_size: Some(NATS_CHUNK),
                    ..Default::default()
                };
                let mut reader = BufReader::with_capacity(NATS_CHUNK, file);
                let info = objects.put(meta, &mut reader).await.map_err(store_err)?;
                let sha = info
                    .digest
                    .as_deref()
                    .and_then(|d| d.strip_prefix("SHA-256="))
                    .and_then(|d| base64::engine::general_purpose::URL_SAFE.decode(d).ok())
                    .map(hex::encode)
                    .ok_or_else(|| ColdError::Store(format!("{key}: the store gave no SHA-256")))?;
                Ok((info.size as u64, sha))
            }
            Self::Object { store, prefix, .. } => {
                let upload = store
                    .put_multipart(&Self::path(prefix, key))
                    .await
                    .map_err(store_err)?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART);
                let mut reader = BufReader::with_capacity(1 << 20, file);
                let mut buf = vec![0u8; 1 << 20];
                let mut total = 0u64;
                let mut hash = Sha256::new();
                loop {
                    let n = reader.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    writer.wait_for_capacity(4).await.map_err(store_err)?;
                    writer.write(&buf[..n]);
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                writer.finish().await.map_err(store_err)?;
                Ok((total, hex::encode(hash.finalize())))
            }
        }
    }

    /// Deletes `key` and its bytes (a bundle withdrawn because it disclosed an erased
    /// subject). Deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), ColdError> {
        match self {
            Self::Nats(objects) => match objects.delete(key).await {
                Ok(()) => Ok(()),
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::object_store::DeleteErrorKind::NotFound =>
                {
                    Ok(())
                }
                Err(e) => Err(store_err(e)),
            },
            Self::Object { store, prefix, .. } => {
                match store.delete(&Self::path(prefix, key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(store_err(e)),
                }
            }
        }
    }

    /// The size of `key`, or `None` if it is not there.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, ColdError> {
        match self {
            Self::Nats(objects) => match objects.info(key).await {
                Ok(info) if !info.deleted => Ok(Some(info.size as u64)),
                Ok(_) => Ok(None),
                Err(e)
                    if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(store_err(e)),
            },
            Self::Object { store, prefix, .. } => {
                match store.head(&Self::path(prefix, key)).await {
                    Ok(meta) => Ok(Some(meta.size)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_err(e)),
                }
            }
        }
    }

    /// Bytes `range` of `key` as a stream of chunks.
    ///
    /// S3 and files read the range natively. JetStream's Object Store has no ranged read: its
    /// chunks are read from the start and the bytes before the range skipped, which costs a
    /// local read of the prefix (hundreds of MB/s), not a transfer to the client.
    pub async fn read(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, ColdError> {
        match self {
            Self::Nats(objects) => {
                let object = objects.get(key).await.map_err(store_err)?;
                let state = (object, range.start, range.end - range.start);
                let stream =
                    futures::stream::try_unfold(state, |(mut obj, mut skip, left)| async move {
                        if left == 0 {
                            return Ok(None);
                        }
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            let n = obj.read(&mut buf).await?;
                            if n == 0 {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "object ended before the range",
                                ));
                            }
                            let n = n as u64;
                            if skip >= n {
                                skip -= n;
                                continue;
                            }
                            let start = skip as usize;
                            let end = (n.min(skip + left)) as usize;
                            let chunk = Bytes::copy_from_slice(&buf[start..end]);
                            let taken = (end - start) as u64;
                            return Ok(Some((chunk, (obj, 0, left - taken))));
                        }
                    });
                Ok(stream.boxed())
            }
            Self::Object { store, prefix, .. } => {
                let got = store
                    .get_opts(
                        &Self::path(prefix, key),
                        GetOptions {
                            range: Some(GetRange::Bounded(range)),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(store_err)?;
                Ok(got.into_stream().map_err(std::io::Error::other).boxed())
            }
        }
    }

    /// Copies `key` into the file at `path` (server-side verification reads it from there).
    pub async fn download(&self, key: &str, path: &Path) -> Result<u64, ColdError> {
        let size = self
            .size(key)
            .await?
            .ok_or_else(|| ColdError::Store(format!("{key} is not in the cold store")))?;
        let mut out = tokio::fs::File::create(path).await?;
        let mut chunks = self.read(key, 0..size).await?;
        while let Some(chunk) = chunks.next().await {
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk?).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_store_keeps_bundles_and_reads_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("cold").display());
        let store = ColdStore::from_url(&url).unwrap();
        assert_eq!(store.describe(), url);
        let src = dir.path().join("bundle.tar");
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &body).unwrap();
        let (size, sha) = store.put_file("acme/01EXPORT.tar", &src).await.unwrap();
        assert_eq!(size, body.len() as u64);
        assert_eq!(sha, hex::encode(Sha256::digest(&body)));
        assert_eq!(store.size("acme/01EXPORT.tar").await.unwrap(), Some(size));
        assert_eq!(store.size("acme/none.tar").await.unwrap(), None);
        let mut got = Vec::new();
        let mut chunks = store
            .read("acme/01EXPORT.tar", 1_000_000..2_500_001)
            .await
            .unwrap();
        while let Some(c) = chunks.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, body[1_000_000..2_500_001]);
        let copy = dir.path().join("copy.tar");
        assert_eq!(
            store.download("acme/01EXPORT.tar", &copy).await.unwrap(),
            size
        );
        assert_eq!(std::fs::read(&copy).unwrap(), body);
        assert!(matches!(
            ColdStore::from_url("ftp://example.com/x"),
            Err(ColdError::BadUrl(_))
        ));
    }
}
