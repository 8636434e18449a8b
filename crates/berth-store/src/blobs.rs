//! How blobs enter, show in and leave a repository.
//!
//! With dedupe, a blob's bytes live once in `_cas/<alg>/<hex>` and each repository's
//! `blobs/<alg>/<hex>` is a hard link to them; without it, each repository keeps a copy.
//! Every entry follows one order: the metadata store records the link, then the file appears
//! (so the store's references are a superset of the disk's); every exit the reverse. A digest
//! enters `_cas` only under its stripe lock, which garbage collection takes to remove it.

use berth_driver::{DriverError, DriverPath};
use berth_meta::records::{get, key, CasRecord, ManifestRecord, RepoBlobRecord};
use berth_meta::{scan_prefix, Durability, Table};
use berth_oci::{Digest, RepoName};

use crate::{book, layout, Registry, Result, StoreError};

/// A finished upload's data file, about to be published.
pub(crate) struct Finished {
    pub path: DriverPath,
    /// The session is durable (its `info` is on disk): the move out of the upload area must
    /// durably remove the old name, or a crash could bring back a resumable session whose data
    /// file is the published blob's inode (and a resumed `PATCH` would append to the blob).
    /// Otherwise a name that comes back is removed, unread, when the registry opens.
    pub resumable: bool,
}

/// Where the bytes of a blob being linked into a repository come from.
pub(crate) enum Source {
    /// `_cas` holds them: hard-link.
    Cas,
    /// A finished upload's file: move it into the repository (without dedupe).
    Move(Finished),
    /// A finished upload's file entering `_cas` (unless `_cas` has the bytes already), then
    /// hard-linked. It enters `_cas` only after its record exists, so a crash never leaves a
    /// `_cas` file that no record names.
    ToCas(Finished),
    /// Another repository's file: hard-link (dedupe) or copy.
    Repo(DriverPath),
}

impl Registry {
    pub(crate) async fn exists(&self, path: &DriverPath) -> Result<bool> {
        match self.driver.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn blob_exists(&self, name: &RepoName, digest: &Digest) -> Result<bool> {
        self.exists(&layout::blob(name, digest)?).await
    }

    /// Links `digest` into `name` from `source`: records the link, then makes the file.
    /// The caller holds the digest's stripe when `source` is `Cas`.
    ///
    /// Links take the repository's lock shared once its layout exists, so concurrent uploads
    /// into one repository publish in parallel; what must not interleave with a link (a blob
    /// DELETE, garbage collection, a manifest PUT checking its references) takes it exclusively.
    pub(crate) async fn link_into(
        &self,
        name: &RepoName,
        digest: &Digest,
        size: u64,
        source: Source,
    ) -> Result<()> {
        {
            let guard = self.read_state(name).await?;
            if guard.as_ref().is_some_and(|s| s.exists) {
                return self.link_locked(name, digest, size, &source).await;
            }
        }
        self.with_state(name, async |reg, state| {
            reg.ensure_layout(name, state).await?;
            reg.link_locked(name, digest, size, &source).await
        })
        .await
    }

    /// [`Registry::link_into`] once the caller holds the repository's lock (either way).
    async fn link_locked(
        &self,
        name: &RepoName,
        digest: &Digest,
        size: u64,
        source: &Source,
    ) -> Result<()> {
        let target = layout::blob(name, digest)?;
        let (n, d) = (name.clone(), digest.clone());
        let now = book::now();
        self.meta_write(Durability::Durable, move |tx| {
            book::link(tx, &n, &d, size, now)
        })
        .await?;
        if let Source::ToCas(from) = source {
            let cas = layout::cas_blob(digest)?;
            if self.exists(&cas).await? {
                self.driver.delete(&from.path).await?;
            } else {
                self.move_finished(from, &cas).await?;
            }
        }
        if self.exists(&target).await? {
            if let Source::Move(from) = source {
                self.driver.delete(&from.path).await?;
            }
            return Ok(());
        }
        match source {
            Source::Cas | Source::ToCas(_) => {
                self.hard_link(&layout::cas_blob(digest)?, &target).await
            }
            Source::Move(from) => self.move_finished(from, &target).await,
            Source::Repo(from) if self.dedupe => self.hard_link(from, &target).await,
            Source::Repo(from) => self.copy_file(from, &target).await,
        }
    }

    /// Moves a finished upload's file to `to`, durably (see [`Finished::resumable`]).
    async fn move_finished(&self, from: &Finished, to: &DriverPath) -> Result<()> {
        if from.resumable {
            self.driver.rename(&from.path, to).await?;
        } else {
            self.driver.rename_from_scratch(&from.path, to).await?;
        }
        Ok(())
    }

    async fn hard_link(&self, from: &DriverPath, to: &DriverPath) -> Result<()> {
        match self.driver.link(from, to).await {
            Ok(()) | Err(DriverError::PreconditionFailed(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes a finished, verified upload's file (`from`) as `digest` in `name`.
    pub(crate) async fn publish_blob(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: Finished,
        size: u64,
    ) -> Result<()> {
        if !self.dedupe {
            return self.link_into(name, digest, size, Source::Move(from)).await;
        }
        let _stripe = self.stripe(digest).lock().await;
        self.link_into(name, digest, size, Source::ToCas(from))
            .await
    }

    /// Finds bytes of `digest` that a repository currently holds, preferring `prefer`. Blobs
    /// that no repository links (deleted by clients, awaiting collection) are not offered.
    async fn find_source(
        &self,
        digest: &Digest,
        prefer: Option<&RepoName>,
    ) -> Result<Option<(Source, u64)>> {
        let (cas, holders) = {
            let snap = self.meta.read()?;
            let cas = get::<CasRecord>(snap.as_ref(), Table::Cas, digest.to_string().as_bytes())?;
            let holders = scan_prefix(
                snap.as_ref(),
                Table::BlobRepos,
                &key::prefix(&[&digest.to_string()]),
                64,
            )?;
            (cas, holders)
        };
        if let Some(cas) = cas.filter(|c| self.dedupe && c.repos > 0) {
            if self.exists(&layout::cas_blob(digest)?).await? {
                return Ok(Some((Source::Cas, cas.size)));
            }
        }
        let mut candidates: Vec<RepoName> = prefer.into_iter().cloned().collect();
        for (k, _) in holders {
            if let Some(r) = key::parts(&k).get(1).and_then(|r| RepoName::parse(r).ok()) {
                candidates.push(r);
            }
        }
        for repo in candidates {
            let path = layout::blob(&repo, digest)?;
            if let Ok(meta) = self.driver.stat(&path).await {
                // Unlike `_cas`, a repository's own copy may come from another tool unverified:
                // check its bytes before another repository takes them.
                let hashed = self.hash_file(&path, digest.algorithm()).await;
                if hashed.is_ok_and(|h| &h.finish() == digest) {
                    return Ok(Some((Source::Repo(path), meta.size)));
                }
                tracing::warn!(repo = %repo, %digest, "blob bytes do not match their digest; not offered to other repositories");
            }
        }
        Ok(None)
    }

    /// Links `digest` into `name` from wherever berth holds it (spec "Mounting a blob from
    /// another repository", with `from` preferred and the v1.1 automatic mount otherwise).
    /// Returns false when no repository holds it.
    pub async fn blob_mount(
        &self,
        name: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        if self.blob_exists(name, digest).await? {
            return Ok(true);
        }
        for attempt in 0..2 {
            {
                let _stripe = self.stripe(digest).lock().await;
                if let Some((source, size)) = self.find_source(digest, from).await? {
                    self.link_into(name, digest, size, source).await?;
                    return Ok(true);
                }
            }
            // Right after start-up (or a rebuild) the records of repositories not yet
            // reconciled are missing: wait for the reconciliation, outside the stripe, and look
            // once more.
            if attempt == 0 && !self.reconciled() {
                self.reconcile_all().await?;
            } else {
                break;
            }
        }
        Ok(false)
    }

    /// Size of a blob of the repository (`HEAD`). With dedupe, a blob that another repository
    /// holds is linked in first, so a client never uploads bytes berth already has.
    pub async fn blob_head(&self, name: &RepoName, digest: &Digest) -> Result<u64> {
        match self.blob_size(name, digest).await {
            Ok(size) => self.protect_unreferenced(name, digest, size).await,
            Err(StoreError::BlobUnknown(_)) if self.dedupe => {
                if self.blob_mount(name, digest, None).await? {
                    self.blob_size(name, digest).await
                } else {
                    Err(StoreError::BlobUnknown(digest.clone()))
                }
            }
            other => other,
        }
    }

    /// A client that learns a blob exists will reference it without uploading it: if no
    /// manifest references it yet, restart its grace period under the repository lock (the lock
    /// collection re-checks under), and answer only if it is still there.
    async fn protect_unreferenced(
        &self,
        name: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<u64> {
        let key = book::repo_blob_key(name, digest);
        let rec: Option<RepoBlobRecord> = get(self.meta.read()?.as_ref(), Table::RepoBlobs, &key)?;
        if rec.is_none_or(|r| r.referenced_by > 0) {
            return Ok(size);
        }
        self.with_state(name, async |reg, _| {
            let size = reg.blob_size(name, digest).await?;
            let (n, d, now) = (name.clone(), digest.clone(), book::now());
            reg.meta_write(Durability::Lazy, move |tx| {
                book::link(tx, &n, &d, size, now)
            })
            .await?;
            Ok(size)
        })
        .await
    }

    /// Size of a blob of the repository.
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64> {
        match self.driver.stat(&layout::blob(name, digest)?).await {
            Ok(meta) => Ok(meta.size),
            Err(e) if e.is_not_found() => Err(StoreError::BlobUnknown(digest.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// A blob of at most `max` bytes, whole, or the size of a larger one (read it with
    /// [`Registry::blob_read`]): a small blob's `GET` in one storage call.
    pub async fn blob_read_small(
        &self,
        name: &RepoName,
        digest: &Digest,
        max: u64,
    ) -> Result<berth_driver::Small> {
        match self
            .driver
            .read_small(&layout::blob(name, digest)?, max)
            .await
        {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Err(StoreError::BlobUnknown(digest.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `len` bytes of a blob from `offset` (bounds checked by the caller).
    pub async fn blob_read(
        &self,
        name: &RepoName,
        digest: &Digest,
        offset: u64,
        len: u64,
    ) -> Result<crate::ByteStream> {
        match self
            .driver
            .read_range(&layout::blob(name, digest)?, offset, Some(len))
            .await
        {
            Ok(s) => Ok(s),
            Err(e) if e.is_not_found() => Err(StoreError::BlobUnknown(digest.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a blob from one repository (other repositories keep theirs). Refused while a
    /// manifest of the repository references it or it is itself a manifest of the repository.
    pub async fn blob_delete(&self, name: &RepoName, digest: &Digest) -> Result<()> {
        self.with_state(name, async |reg, state| {
            let path = layout::blob(name, digest)?;
            if !reg.exists(&path).await? {
                return Err(StoreError::BlobUnknown(digest.clone()));
            }
            if state.index.by_digest(digest).is_some() {
                return Err(StoreError::Unsupported(format!(
                    "{digest} is a manifest of this repository; delete it through the manifests endpoint"
                )));
            }
            let snap = reg.meta.read()?;
            let rec: Option<RepoBlobRecord> = get(snap.as_ref(), Table::RepoBlobs, &book::repo_blob_key(name, digest))?;
            if rec.is_some_and(|r| r.referenced_by > 0) {
                let by = scan_prefix(snap.as_ref(), Table::Manifests, &key::prefix(&[name.as_str()]), usize::MAX)?
                    .into_iter()
                    .find(|(_, v)| {
                        berth_meta::records::decode::<ManifestRecord>(Table::Manifests, v).is_ok_and(|m| m.refs.contains(digest))
                    })
                    .and_then(|(k, _)| key::parts(&k).get(1).cloned())
                    .unwrap_or_else(|| "of this repository".into());
                return Err(StoreError::Unsupported(format!(
                    "blob {digest} is referenced by manifest {by}; delete the manifest first"
                )));
            }
            drop(snap);
            reg.driver.delete(&path).await?;
            let (n, d, now) = (name.clone(), digest.clone(), book::now());
            reg.meta_write(Durability::Durable, move |tx| book::unlink(tx, &n, &d, now)).await?;
            Ok(())
        })
        .await
    }

    async fn copy_file(&self, source: &DriverPath, target: &DriverPath) -> Result<()> {
        use futures_util::StreamExt;
        let mut stream = self.driver.read_range(source, 0, None).await?;
        let scratch = layout::upload_data(&format!("copy-{}", uuid::Uuid::new_v4().simple()))?;
        let result = async {
            let mut w = self.driver.append(&scratch).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| DriverError::io(source.to_string(), e))?;
                w.write(&chunk).await?;
            }
            w.close().await?;
            self.driver.rename(&scratch, target).await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Some(dir) = scratch.parent() {
            self.driver.delete_all(&dir).await?;
        }
        result
    }
}
