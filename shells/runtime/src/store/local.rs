//! A local directory as the object store: keys are relative paths under the root.
//!
//! Writes go to a temporary file in the same directory and are renamed into place, so a reader
//! (or `GetJob`) never sees half an image. Only the bytes are kept: `head` reports the size and
//! no metadata (S3 is the store that carries metadata).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ObjectInfo, ObjectMeta, ObjectStore, check_key};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Uses `root` (created if missing).
    pub async fn open(root: &Path) -> Result<LocalStore> {
        tokio::fs::create_dir_all(root)
            .await
            .map_err(|e| Error::store("open", &root.display().to_string(), e))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
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

impl ObjectStore for LocalStore {
    async fn put(&self, key: &str, body: Bytes, _meta: &ObjectMeta) -> Result<()> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            uuid::Uuid::new_v4().simple()
        ));
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(&tmp, &body).await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map_err(|e| Error::store("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::store("get", key, e)),
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
            Err(e) => Err(Error::store("head", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(Error::store("delete", key, e)),
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
