//! A local directory as an object store.
//!
//! Keys map to files under the root (`a/b.bin` is `ROOT/a/b.bin`). A write
//! goes to a temporary file beside its target and is renamed into place,
//! so a reader never sees half a file. A multipart upload keeps its parts
//! as files in `ROOT/.skyweave/uploads/ID/` until it is finished (parts
//! concatenated into the target) or aborted. Keys that would leave the
//! root (`..`, absolute paths) are refused.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ByteStream, ObjectMeta, ObjectStore, Part, PartDone, StoreError};

/// Where a local store keeps its unfinished uploads, under its root.
pub const UPLOADS_DIR: &str = ".skyweave/uploads";

/// Read in pieces of this size.
const READ_CHUNK: usize = 1 << 20;

pub struct Local {
    root: PathBuf,
}

impl Local {
    pub fn new(root: impl Into<PathBuf>) -> Local {
        Local { root: root.into() }
    }

    fn at(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }

    fn io(&self, key: &str, error: std::io::Error) -> StoreError {
        if error.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound { at: self.at(key) }
        } else {
            StoreError::Io { at: self.at(key), message: error.to_string() }
        }
    }

    /// The file of `key`, refusing keys that would leave the root.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let inside =
            !key.is_empty() && relative.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(StoreError::Io {
                at: self.at(key),
                message: "the key leaves the directory (empty, absolute, or with `..`)".into(),
            });
        }
        Ok(self.root.join(relative))
    }

    fn upload_dir(&self, upload: &str) -> Result<PathBuf, StoreError> {
        if upload.is_empty() || !upload.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StoreError::Protocol {
                at: self.root.display().to_string(),
                message: format!("`{upload}` is not an upload id of this store"),
            });
        }
        Ok(self.root.join(UPLOADS_DIR).join(upload))
    }

    /// Writes `data` to `target` through a temporary file and a rename.
    async fn write_atomically(
        &self,
        key: &str,
        target: &Path,
        data: &[u8],
    ) -> Result<(), StoreError> {
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| self.io(key, e))?;
        }
        let temporary = temporary_beside(target);
        let mut file = tokio::fs::File::create(&temporary).await.map_err(|e| self.io(key, e))?;
        file.write_all(data).await.map_err(|e| self.io(key, e))?;
        file.flush().await.map_err(|e| self.io(key, e))?;
        drop(file);
        tokio::fs::rename(&temporary, target).await.map_err(|e| self.io(key, e))
    }

    async fn meta(&self, key: String, path: &Path) -> Result<Option<ObjectMeta>, StoreError> {
        match tokio::fs::metadata(path).await {
            Ok(m) if m.is_file() => {
                Ok(Some(ObjectMeta { version: version(&m), size: m.len(), key }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(&key, e)),
        }
    }
}

/// A file's version: modification time, change time (which no tool can
/// set back, unlike `cp -p` or `touch -r` do the modification time), inode
/// and size.
fn version(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let nanos = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos}-{}.{}-{}-{}",
        metadata.ctime(),
        metadata.ctime_nsec(),
        metadata.ino(),
        metadata.len()
    )
}

fn temporary_beside(target: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(
        ".{name}.skyweave-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn part_name(index: u32) -> String {
    format!("{index:08}")
}

#[async_trait::async_trait]
impl ObjectStore for Local {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn list(&self) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut found = Vec::new();
        let mut pending = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                // A missing root is an empty store: the destination of a
                // first copy.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && prefix.is_empty() => {
                    return Ok(found)
                }
                Err(e) => return Err(self.io(&prefix, e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(|e| self.io(&prefix, e))? {
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(StoreError::Io {
                        at: entry.path().display().to_string(),
                        message: "the file name is not UTF-8; rename it to copy it".into(),
                    });
                };
                // Our own bookkeeping and half-written files are not data.
                if (prefix.is_empty() && name == ".skyweave")
                    || name.ends_with(".tmp") && name.contains(".skyweave-")
                {
                    continue;
                }
                let key = format!("{prefix}{name}");
                let kind = entry.file_type().await.map_err(|e| self.io(&key, e))?;
                if kind.is_dir() {
                    pending.push((entry.path(), format!("{key}/")));
                } else if let Some(meta) = self.meta(key, &entry.path()).await? {
                    found.push(meta);
                }
            }
        }
        Ok(found)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key)?;
        self.meta(key.to_string(), &path).await
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| self.io(key, e))?;
        let size = file.metadata().await.map_err(|e| self.io(key, e))?.len();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(StoreError::Io {
                at: self.at(key),
                message: format!("range {range:?} is outside the file's {size} bytes"),
            });
        }
        file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(|e| self.io(key, e))?;
        let at = self.at(key);
        let stream = futures::stream::unfold(
            (file, range.end - range.start, at),
            |(mut file, left, at)| async move {
                if left == 0 {
                    return None;
                }
                let mut buffer = vec![0u8; READ_CHUNK.min(left as usize)];
                match file.read(&mut buffer).await {
                    Ok(0) => Some((
                        Err(StoreError::Integrity {
                            at: at.clone(),
                            message: "the file ended early (truncated while being read?)".into(),
                        }),
                        (file, 0, at),
                    )),
                    Ok(n) => {
                        buffer.truncate(n);
                        Some((Ok(Bytes::from(buffer)), (file, left - n as u64, at)))
                    }
                    Err(e) => {
                        let message = e.to_string();
                        Some((Err(StoreError::Io { at: at.clone(), message }), (file, 0, at)))
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn get_if(&self, key: &str, version: &str) -> Result<ByteStream, StoreError> {
        // Checked when opened; a change during the read shows in the
        // version the caller compares afterwards.
        match self.head(key).await? {
            Some(meta) if meta.version == version => self.get(key, None).await,
            Some(_) => Err(StoreError::Changed { at: self.at(key) }),
            None => Err(StoreError::NotFound { at: self.at(key) }),
        }
    }

    async fn put(&self, key: &str, data: Bytes, md5: [u8; 16]) -> Result<String, StoreError> {
        check_md5(&self.at(key), &data, md5)?;
        let path = self.path(key)?;
        self.write_atomically(key, &path, &data).await?;
        let meta = self.meta(key.to_string(), &path).await?;
        Ok(meta.map(|m| m.version).unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(key, e)),
        }
        // Remove directories the deletion emptied, up to the root.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(current) = dir {
            if current == self.root || tokio::fs::remove_dir(&current).await.is_err() {
                break;
            }
            dir = current.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn start_upload(
        &self,
        key: &str,
        _size: u64,
        _part_size: u64,
    ) -> Result<String, StoreError> {
        self.path(key)?;
        let id: String = {
            use std::fmt::Write as _;
            let mut id = String::new();
            for byte in rand_bytes() {
                let _ = write!(id, "{byte:02x}");
            }
            id
        };
        let dir = self.upload_dir(&id)?;
        tokio::fs::create_dir_all(&dir).await.map_err(|e| self.io(key, e))?;
        tokio::fs::write(dir.join("key"), key.as_bytes()).await.map_err(|e| self.io(key, e))?;
        Ok(id)
    }

    async fn put_part(&self, key: &str, upload: &str, part: Part) -> Result<PartDone, StoreError> {
        let Part { index, data, md5, .. } = part;
        check_md5(&self.at(key), &data, md5)?;
        let dir = self.upload_dir(upload)?;
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Err(StoreError::NotFound { at: format!("{} upload {upload}", self.at(key)) });
        }
        let size = data.len() as u64;
        self.write_atomically(key, &dir.join(part_name(index)), &data).await?;
        Ok(PartDone { index, size, tag: part_name(index) })
    }

    async fn uploaded_parts(
        &self,
        key: &str,
        upload: &str,
    ) -> Result<Option<Vec<PartDone>>, StoreError> {
        let dir = self.upload_dir(upload)?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(key, e)),
        };
        let mut parts = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| self.io(key, e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(index) = name.parse::<u32>() else { continue };
            let size = entry.metadata().await.map_err(|e| self.io(key, e))?.len();
            parts.push(PartDone { index, size, tag: name });
        }
        parts.sort_by_key(|p| p.index);
        Ok(Some(parts))
    }

    async fn finish_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[PartDone],
        size: u64,
    ) -> Result<String, StoreError> {
        let dir = self.upload_dir(upload)?;
        let target = self.path(key)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| self.io(key, e))?;
        }
        let temporary = temporary_beside(&target);
        let mut out = tokio::fs::File::create(&temporary).await.map_err(|e| self.io(key, e))?;
        let mut written = 0u64;
        for (expected, part) in parts.iter().enumerate() {
            if part.index as usize != expected {
                let _ = tokio::fs::remove_file(&temporary).await;
                return Err(StoreError::Protocol {
                    at: self.at(key),
                    message: format!("part {} is missing", expected),
                });
            }
            let mut file =
                tokio::fs::File::open(dir.join(&part.tag)).await.map_err(|e| self.io(key, e))?;
            written += tokio::io::copy(&mut file, &mut out).await.map_err(|e| self.io(key, e))?;
        }
        out.flush().await.map_err(|e| self.io(key, e))?;
        drop(out);
        if written != size {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(StoreError::Integrity {
                at: self.at(key),
                message: format!("the parts hold {written} bytes, not {size}"),
            });
        }
        tokio::fs::rename(&temporary, &target).await.map_err(|e| self.io(key, e))?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let meta = self.meta(key.to_string(), &target).await?;
        Ok(meta.map(|m| m.version).unwrap_or_default())
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(upload)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(key, e)),
        }
    }
}

/// The local store checks MD5s like the clouds do, so that the engine's
/// digests are exercised on every backend.
fn check_md5(at: &str, data: &[u8], md5: [u8; 16]) -> Result<(), StoreError> {
    use md5::Digest as _;
    let actual: [u8; 16] = md5::Md5::digest(data).into();
    if actual != md5 {
        return Err(StoreError::Integrity {
            at: at.to_string(),
            message: "the data does not match its MD5".into(),
        });
    }
    Ok(())
}

fn rand_bytes() -> [u8; 12] {
    let mut bytes = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system random source works");
    bytes
}
