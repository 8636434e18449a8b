//! Blob upload sessions (spec "Pushing blobs"): bytes stream into `_uploads/<id>/data` while a
//! hasher digests them, across chunks and requests, so finishing never re-reads the file.
//!
//! Each session has its own lock: streaming holds no repository lock. The hasher lives in
//! memory; after a restart (or a failed write) it is rebuilt by hashing the bytes on disk once.
//! Publishing moves the data file into `_cas` (or the repository's `blobs/`) and links it.
//!
//! A session costs nothing on disk until bytes arrive, and nothing durable until a chunk is
//! acknowledged: a monolithic upload (`POST` then `PUT` with the body) syncs only the blob's
//! bytes and its published names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_oci::{Algorithm, Digest, Hasher, RepoName};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{layout, BodyStream, Registry, Result, StoreError};

/// A validated upload session id (a UUID in its hyphenated form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    fn new() -> UploadId {
        UploadId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// Accepts only the hyphenated UUID form berth hands out.
    pub fn parse(s: &str) -> Option<UploadId> {
        uuid::Uuid::try_parse(s)
            .ok()
            .map(|u| u.hyphenated().to_string())
            .filter(|h| h == s)
            .map(UploadId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `_uploads/<id>/info`: what survives a restart of a session. Written, durably, with the first
/// acknowledged chunk (`PATCH`): until then the session lives in memory only and vanishes in a
/// restart (the client then gets `BLOB_UPLOAD_UNKNOWN` and starts over), which saves a
/// monolithic upload every fsync but the blob's own.
#[derive(Debug, Serialize, Deserialize)]
struct Info {
    repository: String,
    algorithm: String,
    created_unix: u64,
}

struct Session {
    repo: RepoName,
    size: u64,
    /// Digest of bytes `0..size`; `None` when it must be rebuilt from disk.
    hasher: Option<Hasher>,
    algorithm: Algorithm,
    closed: bool,
    /// `info` (and so the session) is durable: set by the first acknowledged chunk.
    durable: bool,
    created_unix: u64,
    /// When a request last used the session: expires a session with nothing on disk.
    touched: SystemTime,
}

#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
}

impl Sessions {
    fn get(&self, id: &UploadId) -> Option<Arc<tokio::sync::Mutex<Session>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id.as_str())
            .cloned()
    }
    fn insert(
        &self,
        id: &UploadId,
        s: Arc<tokio::sync::Mutex<Session>>,
    ) -> Arc<tokio::sync::Mutex<Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.as_str().to_owned())
            .or_insert(s)
            .clone()
    }
    fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    /// Every session held in memory.
    fn all(&self) -> Vec<(UploadId, Arc<tokio::sync::Mutex<Session>>)> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, s)| (UploadId(id.clone()), Arc::clone(s)))
            .collect()
    }
}

fn algorithm_named(s: &str) -> Algorithm {
    if s == Algorithm::Sha512.as_str() {
        Algorithm::Sha512
    } else {
        Algorithm::Sha256
    }
}

impl Registry {
    /// Opens an upload session in `repo`, hashing with `algorithm` as bytes arrive.
    pub async fn upload_start(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadId> {
        self.check_space().await?;
        let id = UploadId::new();
        let now = SystemTime::now();
        // Nothing on disk yet: the data file is created by the first bytes (or by an empty
        // finish), `info` by the first acknowledged chunk.
        let session = Session {
            repo: repo.clone(),
            size: 0,
            hasher: Some(algorithm.hasher()),
            algorithm,
            closed: false,
            durable: false,
            created_unix: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            touched: now,
        };
        self.uploads
            .insert(&id, Arc::new(tokio::sync::Mutex::new(session)));
        Ok(id)
    }

    /// The session, from memory or recovered from disk; `UploadUnknown` unless it belongs to `repo`.
    async fn session(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<Arc<tokio::sync::Mutex<Session>>> {
        let unknown = || StoreError::UploadUnknown(id.to_string());
        let session = match self.uploads.get(id) {
            Some(s) => s,
            None => {
                let info = match self.driver.get(&layout::upload_info(id.as_str())?).await {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => return Err(unknown()),
                    Err(e) => return Err(e.into()),
                };
                let info: Info = serde_json::from_slice(&info).map_err(|_| unknown())?;
                let owner = RepoName::parse(&info.repository).map_err(|_| unknown())?;
                // Found on disk after a restart: without a data file the session never had an
                // acknowledged chunk, or its bytes were already moved by a finish.
                let size = match self.driver.stat(&layout::upload_data(id.as_str())?).await {
                    Ok(m) => m.size,
                    Err(e) if e.is_not_found() => return Err(unknown()),
                    Err(e) => return Err(e.into()),
                };
                let algorithm = algorithm_named(&info.algorithm);
                let s = Session {
                    repo: owner,
                    size,
                    hasher: None,
                    algorithm,
                    closed: false,
                    // Its `info` is on disk: a crash must not bring back its data file once
                    // published (see `Registry::publish_blob`).
                    durable: true,
                    created_unix: info.created_unix,
                    touched: SystemTime::now(),
                };
                self.uploads
                    .insert(id, Arc::new(tokio::sync::Mutex::new(s)))
            }
        };
        if &session.lock().await.repo != repo {
            return Err(unknown());
        }
        Ok(session)
    }

    /// Bytes received so far by an upload session.
    pub async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        let session = self.session(repo, id).await?;
        let s = session.lock().await;
        if s.closed {
            return Err(StoreError::UploadUnknown(id.to_string()));
        }
        Ok(s.size)
    }

    /// Appends a chunk. `start`, from `Content-Range`, must equal the bytes received so far
    /// (else `ChunkOutOfOrder`). Returns the new size. A body that fails midway keeps what was
    /// written, so the client can resume from the reported range.
    pub async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: BodyStream,
    ) -> Result<u64> {
        let session = self.session(repo, id).await?;
        self.check_space().await?;
        let mut s = session.lock().await;
        let mut result = self.append_locked(id, &mut s, start, body).await;
        if result.is_ok() && !s.durable {
            // The chunk is acknowledged: from now on the session survives a crash.
            match self.write_info(id, &s).await {
                Ok(()) => s.durable = true,
                Err(e) => result = Err(e),
            }
        }
        self.drop_if_full(id, &mut s, result).await
    }

    /// Writes the session's `info` and syncs it with the directories above it, which makes the
    /// data file's name (created as scratch) durable too.
    async fn write_info(&self, id: &UploadId, s: &Session) -> Result<()> {
        let info = Info {
            repository: s.repo.as_str().to_owned(),
            algorithm: s.algorithm.as_str().to_owned(),
            created_unix: s.created_unix,
        };
        let bytes = serde_json::to_vec(&info).map_err(|e| StoreError::Internal(e.to_string()))?;
        let path = layout::upload_info(id.as_str())?;
        self.driver.put_scratch(&path, Bytes::from(bytes)).await?;
        Ok(self.driver.persist(&path).await?)
    }

    /// A session whose write hit a full disk is removed with its bytes, so a full disk is left
    /// with no partial upload; the client starts over once space is freed.
    async fn drop_if_full<T>(
        &self,
        id: &UploadId,
        s: &mut Session,
        result: Result<T>,
    ) -> Result<T> {
        let full = matches!(
            &result,
            Err(StoreError::Driver(berth_driver::DriverError::NoSpace(_)))
                | Err(StoreError::Meta(berth_meta::MetaError::NoSpace(_)))
        );
        if full && !s.closed {
            s.closed = true;
            if let Err(e) = self.remove_session(id, s.durable).await {
                tracing::warn!(upload = %id, error = %e, "removing an upload after a full disk failed");
            }
        }
        result
    }

    async fn append_locked(
        &self,
        id: &UploadId,
        s: &mut Session,
        start: Option<u64>,
        mut body: BodyStream,
    ) -> Result<u64> {
        if s.closed {
            return Err(StoreError::UploadUnknown(id.to_string()));
        }
        s.touched = SystemTime::now();
        let path = layout::upload_data(id.as_str())?;
        let mut writer = self.driver.append_scratch(&path).await?;
        if writer.size() != s.size || s.hasher.is_none() {
            s.size = writer.size();
            s.hasher = Some(self.hash_file(&path, s.algorithm).await?);
        }
        if let Some(start) = start {
            if start != s.size {
                return Err(StoreError::ChunkOutOfOrder {
                    start,
                    size: s.size,
                });
            }
        }
        let mut hasher = s.hasher.take().unwrap_or_else(|| s.algorithm.hasher());
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    if let Err(e) = writer.write(&chunk).await {
                        // Part of the chunk may be on disk: the hasher no longer matches.
                        s.size = writer.size();
                        return Err(e.into());
                    }
                    hasher.update(&chunk);
                }
                Err(e) => {
                    failure = Some(StoreError::Body(e));
                    break;
                }
            }
        }
        s.size = writer.close().await?;
        s.hasher = Some(hasher);
        match failure {
            Some(e) => Err(e),
            None => Ok(s.size),
        }
    }

    pub(crate) async fn hash_file(
        &self,
        path: &berth_driver::DriverPath,
        algorithm: Algorithm,
    ) -> Result<Hasher> {
        let mut hasher = algorithm.hasher();
        let mut stream = self.driver.read_range(path, 0, None).await?;
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk.map_err(|e| berth_driver::DriverError::io(path.to_string(), e))?);
        }
        Ok(hasher)
    }

    /// Completes an upload: appends the final chunk (if any), checks the digest and publishes
    /// the blob. A wrong digest ends the session and leaves nothing behind (`DigestInvalid`).
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        body: Option<BodyStream>,
    ) -> Result<u64> {
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if let Some(body) = body {
            let appended = self.append_locked(id, &mut s, start, body).await;
            self.drop_if_full(id, &mut s, appended).await?;
        } else if s.closed {
            return Err(StoreError::UploadUnknown(id.to_string()));
        }
        let path = layout::upload_data(id.as_str())?;
        if s.size == 0 && !self.exists(&path).await? {
            // An empty blob finished without a body: its (empty) data file.
            self.driver.append_scratch(&path).await?.close().await?;
        }
        let actual = match (&s.hasher, digest.algorithm() == s.algorithm) {
            (Some(h), true) => h.current(),
            // The client chose another algorithm than the session hashed with: hash once more.
            _ => self.hash_file(&path, digest.algorithm()).await?.finish(),
        };
        let size = s.size;
        if &actual != digest {
            s.closed = true;
            self.remove_session(id, s.durable).await?;
            return Err(StoreError::DigestInvalid {
                expected: digest.clone(),
                actual,
            });
        }
        let from = crate::blobs::Finished {
            path,
            resumable: s.durable,
        };
        let published = self.publish_blob(repo, digest, from, size).await;
        self.drop_if_full(id, &mut s, published).await?;
        s.closed = true;
        self.remove_session(id, s.durable).await?;
        Ok(size)
    }

    /// Cancels an upload session and removes its bytes.
    pub async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let session = self.session(repo, id).await?;
        let mut s = session.lock().await;
        if s.closed {
            return Err(StoreError::UploadUnknown(id.to_string()));
        }
        s.closed = true;
        self.remove_session(id, s.durable).await
    }

    /// Removes a session's files. A durable session's `info` goes first, durably, so that a
    /// crash cannot bring the session back (the rest of the directory is scratch).
    async fn remove_session(&self, id: &UploadId, durable: bool) -> Result<()> {
        if durable {
            self.driver
                .delete(&layout::upload_info(id.as_str())?)
                .await?;
        }
        self.driver
            .delete_all(&layout::upload_dir(id.as_str())?)
            .await?;
        self.uploads.remove(id.as_str());
        Ok(())
    }

    /// Removes what a crash can leave in the upload area: scratch files of copies, dedupe and
    /// repairs (anything that is not a session id) and sessions whose `info` or data file is gone
    /// (a session that never acknowledged a chunk, or whose bytes a finish had already moved: it
    /// can never resume). Called when the registry opens, before it serves.
    pub(crate) async fn clean_upload_area(&self) -> Result<usize> {
        let mut removed = 0;
        for name in self.driver.list(&layout::uploads_dir()?).await? {
            let Ok(dir) = layout::upload_dir(&name) else {
                continue;
            };
            let dead = match UploadId::parse(&name) {
                None => true,
                Some(_) => {
                    !self.exists(&layout::upload_info(&name)?).await?
                        || !self.exists(&layout::upload_data(&name)?).await?
                }
            };
            if dead {
                self.driver.delete_all(&dir).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed leftovers of interrupted work from the upload area"
            );
        }
        Ok(removed)
    }

    /// Removes upload sessions untouched for longer than `upload_timeout`, skipping sessions a
    /// request is using. Returns how many were removed.
    pub async fn expire_uploads(&self) -> Result<usize> {
        let timeout = self.config.upload_timeout;
        let now = SystemTime::now();
        let mut removed = 0;
        for name in self.driver.list(&layout::uploads_dir()?).await? {
            let Ok(dir) = layout::upload_dir(&name) else {
                continue;
            };
            let touched = match self.driver.stat(&layout::upload_data(&name)?).await {
                Ok(m) => m.modified,
                Err(_) => match self.driver.stat(&layout::upload_info(&name)?).await {
                    Ok(m) => m.modified,
                    // Neither file yet: a session being created right now (a crash's leftovers
                    // of this kind are removed when the registry opens).
                    Err(_) => continue,
                },
            };
            if now.duration_since(touched).unwrap_or(Duration::ZERO) <= timeout {
                continue;
            }
            let in_use = UploadId::parse(&name)
                .and_then(|id| self.uploads.get(&id))
                .map(|s| s.try_lock().is_err())
                .unwrap_or(false);
            if in_use {
                continue;
            }
            self.driver.delete_all(&dir).await?;
            self.uploads.remove(&name);
            removed += 1;
            tracing::info!(upload = %name, "expired an abandoned upload session");
        }
        // Sessions that never received a byte have nothing on disk to judge by.
        let before = now.checked_sub(timeout).unwrap_or(UNIX_EPOCH);
        for (id, session) in self.uploads.all() {
            // Skipped while a request uses it.
            let Ok(mut s) = session.try_lock() else {
                continue;
            };
            if s.durable || s.closed || s.touched >= before {
                continue;
            }
            s.closed = true;
            self.remove_session(&id, false).await?;
            removed += 1;
            tracing::info!(upload = %id, "expired an abandoned upload session");
        }
        Ok(removed)
    }
}
