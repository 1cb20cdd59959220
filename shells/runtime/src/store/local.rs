//! A local directory as the object store: keys are relative paths under the root.
//!
//! Writes go to a temporary file in the same directory, are flushed to disk (file, then the
//! directory after the rename), and only then reported done: a reader (or `GetJob`) never sees half
//! an image, and a result the worker acked survives a power cut. Only the bytes are kept: `head`
//! reports the size and no metadata (S3 is the store that carries metadata).
//!
//! Opening the store sweeps what a killed process can leave behind: temporary files older than
//! `TEMP_MAX_AGE` and staged uploads older than `STAGING_MAX_AGE` (the S3 bucket's lifecycle
//! rule does the same there).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{ObjectInfo, ObjectMeta, ObjectStore, check_key};
use crate::error::StoreFailure;
use crate::{Error, Result};

/// A temporary file this old belongs to no live write (a write takes milliseconds).
pub const TEMP_MAX_AGE: Duration = Duration::from_secs(60 * 60);

/// A staged upload this old belongs to no live job: the template's `StagingExpirationDays` default.
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(2 * 24 * 60 * 60);

const TEMP_SUFFIX: &str = ".tmp";

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Uses `root` (created if missing).
    pub async fn open(root: &Path) -> Result<LocalStore> {
        tokio::fs::create_dir_all(root)
            .await
            .map_err(|e| fail("open", &root.display().to_string(), e))?;
        let store = LocalStore {
            root: root.to_path_buf(),
        };
        let swept = store.sweep(SystemTime::now()).await;
        if swept > 0 {
            tracing::info!(root = %root.display(), swept, "removed leftovers of interrupted writes");
        }
        Ok(store)
    }

    /// Removes temporary files older than `TEMP_MAX_AGE` (in the root and the key prefixes'
    /// folders) and staged uploads older than `STAGING_MAX_AGE`, as of `now`; returns how many.
    pub async fn sweep(&self, now: SystemTime) -> usize {
        let mut removed = 0;
        let staging = self
            .root
            .join(crate::jobs::STAGING_PREFIX.trim_end_matches('/'));
        let mut folders = vec![self.root.clone()];
        if let Ok(mut entries) = tokio::fs::read_dir(&self.root).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                    folders.push(entry.path());
                }
            }
        }
        for folder in folders {
            let Ok(mut entries) = tokio::fs::read_dir(&folder).await else {
                continue;
            };
            while let Ok(Some(entry)) = entries.next_entry().await {
                let Ok(meta) = entry.metadata().await else {
                    continue;
                };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                let temporary = entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX);
                let stale = if temporary {
                    age > TEMP_MAX_AGE
                } else {
                    folder == staging && age > STAGING_MAX_AGE
                };
                if meta.is_file() && stale && tokio::fs::remove_file(entry.path()).await.is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

fn fail(op: &'static str, key: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind::*;
    let class = match e.kind() {
        PermissionDenied | ReadOnlyFilesystem => StoreFailure::Denied,
        InvalidFilename | InvalidInput | FileTooLarge => StoreFailure::Rejected,
        _ => StoreFailure::Transient,
    };
    Error::store(op, key, class, e)
}

impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, _meta: &ObjectMeta) -> Result<()> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let tmp = dir.join(format!(
            ".{}.{}{TEMP_SUFFIX}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            uuid::Uuid::new_v4().simple()
        ));
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            let mut file = tokio::fs::File::create(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &body).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&tmp, &path).await?;
            // The rename is durable only once the directory entry is on disk.
            tokio::fs::File::open(&dir).await?.sync_all().await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map_err(|e| fail("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(fail("get", key, e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                size: m.len(),
                content_type: None,
                metadata: Default::default(),
            })),
            Ok(_) => Ok(None),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(fail("head", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(fail("delete", key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "cloudimg-local-store-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ))
    }

    #[tokio::test]
    async fn put_get_head_delete_round_trip() {
        let root = temp_root("roundtrip");
        let store = LocalStore::open(&root).await.unwrap();
        let key = "gray/ab/c.jpg";
        assert_eq!(store.get(key).await.unwrap(), None);
        assert_eq!(store.head(key).await.unwrap(), None);
        store
            .put(key, Bytes::from_static(b"hello"), &ObjectMeta::default())
            .await
            .unwrap();
        assert_eq!(store.get(key).await.unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(store.head(key).await.unwrap().unwrap().size, 5);
        store
            .put(key, Bytes::from_static(b"bye"), &ObjectMeta::default())
            .await
            .unwrap();
        assert_eq!(store.get(key).await.unwrap().unwrap(), &b"bye"[..]);
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(root.join("gray/ab")).unwrap().collect();
        assert_eq!(names.len(), 1);
        store.delete(key).await.unwrap();
        store.delete(key).await.unwrap();
        assert_eq!(store.head(key).await.unwrap(), None);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn opening_sweeps_stale_temporary_files_and_staged_uploads_only() {
        let root = temp_root("sweep");
        let store = LocalStore::open(&root).await.unwrap();
        let meta = ObjectMeta::default();
        for key in ["gray/a.jpg", "staging/old", "staging/new"] {
            store
                .put(key, Bytes::from_static(b"x"), &meta)
                .await
                .unwrap();
        }
        let leftover = root.join("gray/.b.jpg.0123.tmp");
        std::fs::write(&leftover, b"half").unwrap();
        let now = SystemTime::now();
        // Nothing is stale yet: a write in progress and a queued staged upload are kept.
        assert_eq!(store.sweep(now).await, 0);
        let age = |path: PathBuf, by: Duration| {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(now - by).unwrap();
        };
        age(leftover.clone(), TEMP_MAX_AGE + Duration::from_secs(1));
        age(
            root.join("staging/old"),
            STAGING_MAX_AGE + Duration::from_secs(1),
        );
        age(root.join("gray/a.jpg"), STAGING_MAX_AGE * 10);
        assert_eq!(store.sweep(now).await, 2);
        assert!(!leftover.exists());
        assert_eq!(store.head("staging/old").await.unwrap(), None);
        assert!(store.head("staging/new").await.unwrap().is_some());
        assert!(
            store.head("gray/a.jpg").await.unwrap().is_some(),
            "results are never swept"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let root = temp_root("escape");
        let store = LocalStore::open(&root).await.unwrap();
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            assert!(
                store
                    .put(key, Bytes::new(), &ObjectMeta::default())
                    .await
                    .is_err(),
                "{key:?} accepted"
            );
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}
