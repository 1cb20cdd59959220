//! Where results, staged uploads and failure markers live: an [`ObjectStore`] with two
//! implementations, S3 ([`S3Store`], feature `s3`) and a local directory ([`LocalStore`], the
//! embedded default). [`Store`] picks one at run time from the settings.
//!
//! A missing object is `Ok(None)`, never an error: errors are what a caller retries.

mod local;
#[cfg(feature = "s3")]
mod s3;

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;

pub use local::LocalStore;
#[cfg(feature = "s3")]
pub use s3::S3Store;

use crate::settings::StoreSettings;
use crate::{Error, Result};

/// What is written with an object besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub content_type: String,
    /// User metadata (S3 `x-amz-meta-*`); values must be ASCII.
    pub metadata: BTreeMap<String, String>,
}

/// What a `head` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// An object store holding whole objects, each handed over and read back in one piece (images are
/// megabytes, not gigabytes; how an implementation sends a large one, S3 multipart for example, is
/// its own business).
pub trait ObjectStore: Send + Sync {
    /// Writes `body` under `key`, replacing what was there. Readers never see a partial object.
    fn put(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> impl Future<Output = Result<()>> + Send;
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Bytes>>> + Send;
    fn head(&self, key: &str) -> impl Future<Output = Result<Option<ObjectInfo>>> + Send;
    /// Deletes `key`; deleting a missing object succeeds.
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
}

/// The store a deployment is configured with.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    #[cfg(feature = "s3")]
    S3(S3Store),
}

impl Store {
    /// Opens the configured store; `None` when the settings name none.
    pub async fn open(settings: &StoreSettings) -> Result<Option<Store>> {
        match settings {
            StoreSettings::None => Ok(None),
            StoreSettings::Local { dir } => Ok(Some(Store::Local(LocalStore::open(dir).await?))),
            #[cfg(feature = "s3")]
            StoreSettings::S3 {
                bucket,
                endpoint,
                region,
                attempt_timeout,
            } => Ok(Some(Store::S3(
                S3Store::connect(
                    bucket,
                    endpoint.as_deref(),
                    region.as_deref(),
                    *attempt_timeout,
                )
                .await,
            ))),
            #[cfg(not(feature = "s3"))]
            StoreSettings::S3 { .. } => Err(Error::Config(
                "this binary was built without S3 support (cargo feature `s3`)".into(),
            )),
        }
    }

    /// A short description for logs (`s3://bucket` or `file:///dir`).
    pub fn describe(&self) -> String {
        match self {
            Store::Local(s) => format!("file://{}", s.root().display()),
            #[cfg(feature = "s3")]
            Store::S3(s) => format!("s3://{}", s.bucket()),
        }
    }
}

impl ObjectStore for Store {
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<()> {
        match self {
            Store::Local(s) => s.put(key, body, meta).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.put(key, body, meta).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self {
            Store::Local(s) => s.get(key).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.get(key).await,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self {
            Store::Local(s) => s.head(key).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.head(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self {
            Store::Local(s) => s.delete(key).await,
            #[cfg(feature = "s3")]
            Store::S3(s) => s.delete(key).await,
        }
    }
}

/// Refuses keys that could escape a local root or confuse S3: empty, absolute, `.`/`..` segments.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        Err(Error::Config(format!("not a valid object key: {key:?}")))
    } else {
        Ok(())
    }
}
