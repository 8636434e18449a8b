//! Repository operations: manifests, tags and referrers over one repository's layout.
//!
//! A repository's `index.json` is cached in memory behind its `RwLock` (one server owns a root,
//! so the cache is the truth once loaded); the metadata store keeps what each manifest
//! references, the referrer edges, signatures and times. The first time a repository is loaded
//! in a process, the metadata store is reconciled with its layout (`reconcile.rs`).

use berth_meta::records::{get, key, ManifestRecord, ReferrerRecord, RepoBlobRecord};
use berth_meta::{scan_prefix, Durability, Table};
use berth_oci::manifest::{Descriptor, Manifest};
use berth_oci::{Algorithm, Digest, Reference, RepoName};
use bytes::Bytes;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};

use crate::index::IndexJson;
use crate::{book, layout, Registry, Result, StoreError};

/// The `oci-layout` file's content (image-layout.md).
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A repository's lock and cached state (`None` until loaded).
pub(crate) type RepoCell = RwLock<Option<RepoState>>;

pub(crate) struct RepoState {
    /// False until the layout files exist on disk.
    pub(crate) exists: bool,
    /// `index.json` with its journal applied: what the repository holds.
    pub(crate) index: IndexJson,
    /// Entries in `_index.journal` (0: there is none).
    pub(crate) journal: usize,
    /// The journal may end in a partial line (a failed append, or one found on disk): the next
    /// change rewrites `index.json` instead of appending.
    pub(crate) journal_torn: bool,
}

/// A journal this long is folded into `index.json` by the next addition.
const JOURNAL_MAX: usize = 1000;

impl RepoState {
    /// Applies `_index.journal`: each line is an entry as `index.json` would hold it; a line
    /// naming a tag sets that tag, any other adds the manifest untagged. Replaying an entry the
    /// index already holds changes nothing. A line that does not parse (a write cut short)
    /// is skipped.
    fn replay_journal(&mut self, name: &RepoName, bytes: &[u8]) {
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Descriptor>(line) {
                Ok(entry) => {
                    self.index.apply(&entry);
                    self.journal += 1;
                }
                Err(e) => {
                    tracing::warn!(repository = %name, error = %e,
                        "skipping an unreadable line of _index.journal (a write cut short)");
                    self.journal_torn = true;
                }
            }
        }
    }
}

/// The headers of a manifest: enough to answer `HEAD` without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// The outcome of a manifest `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutManifest {
    pub digest: Digest,
    /// The subject the manifest names, reported back as `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// What the metadata store keeps of a manifest.
pub(crate) fn manifest_record(
    m: Option<&Manifest>,
    media_type: &str,
    size: u64,
    now: u64,
) -> ManifestRecord {
    ManifestRecord {
        media_type: m.map_or_else(|| media_type.to_owned(), |m| m.media_type.clone()),
        size,
        pushed: now,
        last_pulled: None,
        pulls: 0,
        refs: m
            .map(|m| m.references().map(|d| d.digest.clone()).collect())
            .unwrap_or_default(),
        subject: m.and_then(|m| m.subject.as_ref().map(|s| s.digest.clone())),
        artifact_type: m.and_then(|m| m.effective_artifact_type().map(str::to_owned)),
        annotations: m.and_then(|m| m.annotations.clone()),
        is_index: m.is_some_and(|m| m.kind == berth_oci::manifest::Kind::Index),
        readable: m.is_some(),
    }
}

impl Registry {
    /// Loads the repository's state if needed and returns a read guard on it.
    pub(crate) async fn read_state(
        &self,
        name: &RepoName,
    ) -> Result<OwnedRwLockReadGuard<Option<RepoState>>> {
        let cell = self.cell(name);
        {
            let guard = cell.clone().read_owned().await;
            if guard.is_some() {
                return Ok(guard);
            }
        }
        let waiting = std::time::Instant::now();
        let mut w = cell.write_owned().await;
        self.lock_waited(waiting);
        if w.is_none() {
            *w = Some(self.load_state(name).await?);
        }
        Ok(w.downgrade())
    }

    /// Reads `index.json` as it is on disk now, with its journal applied, without reconciling.
    pub(crate) async fn load_fresh(&self, name: &RepoName) -> Result<RepoState> {
        let index = match self.driver.get(&layout::index_json(name)?).await {
            Ok(bytes) => Some(
                IndexJson::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{name}/index.json: {e}")))?,
            ),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let journal = match self.driver.get(&layout::index_journal(name)?).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let exists = index.is_some() || journal.is_some();
        let mut state = RepoState {
            exists,
            index: index.unwrap_or_else(IndexJson::empty),
            journal: 0,
            journal_torn: false,
        };
        if let Some(bytes) = journal {
            state.replay_journal(name, &bytes);
        }
        Ok(state)
    }

    /// Reads `index.json` (and its journal) and, the first time in this process, reconciles
    /// the metadata store with the layout. The caller holds the repository's write lock.
    pub(crate) async fn load_state(&self, name: &RepoName) -> Result<RepoState> {
        let state = self.load_fresh(name).await?;
        if state.journal > 0 || state.journal_torn {
            self.journal_pending(name);
        }
        if !self.reconciled.contains(name) {
            self.reconcile_repo(name, &state).await?;
            self.reconciled.insert(name);
        }
        Ok(state)
    }

    /// Runs `f` with the repository's state write-locked (loaded first).
    pub(crate) async fn with_state<T>(
        &self,
        name: &RepoName,
        f: impl AsyncFnOnce(&Registry, &mut RepoState) -> Result<T>,
    ) -> Result<T> {
        let cell = self.cell(name);
        let waiting = std::time::Instant::now();
        let mut guard = cell.write().await;
        self.lock_waited(waiting);
        if guard.is_none() {
            *guard = Some(self.load_state(name).await?);
        }
        match guard.as_mut() {
            Some(state) => f(self, state).await,
            None => Err(StoreError::Internal("repository state vanished".into())),
        }
    }

    /// Creates the layout files of a repository that has none yet.
    pub(crate) async fn ensure_layout(&self, name: &RepoName, state: &mut RepoState) -> Result<()> {
        if state.exists {
            return Ok(());
        }
        self.driver
            .put(&layout::oci_layout(name)?, Bytes::from_static(OCI_LAYOUT))
            .await?;
        self.driver
            .put(&layout::index_json(name)?, state.index.to_bytes().into())
            .await?;
        state.exists = true;
        Ok(())
    }

    /// Writes the whole `index.json` and then drops the journal, whose entries it now holds
    /// (a crash in between replays them onto the new file, where they change nothing).
    async fn write_index(&self, name: &RepoName, state: &mut RepoState) -> Result<()> {
        self.driver
            .put(&layout::index_json(name)?, state.index.to_bytes().into())
            .await?;
        if state.journal > 0 || state.journal_torn {
            self.driver.delete(&layout::index_journal(name)?).await?;
            state.journal = 0;
            state.journal_torn = false;
        }
        Ok(())
    }

    /// Makes an entry just added to the cached index durable: appended to the journal (one
    /// short fsynced write) when the repository is large, else by rewriting `index.json`.
    async fn commit_addition(
        &self,
        name: &RepoName,
        state: &mut RepoState,
        entry: &Descriptor,
    ) -> Result<()> {
        let from = self.config.index_journal_from;
        if from == 0
            || state.index.manifests.len() < from
            || state.journal >= JOURNAL_MAX
            || state.journal_torn
        {
            return self.write_index(name, state).await;
        }
        let mut line =
            serde_json::to_vec(entry).map_err(|e| StoreError::Internal(e.to_string()))?;
        line.push(b'\n');
        let mut writer = self.driver.append(&layout::index_journal(name)?).await?;
        let written = match writer.write(&line).await {
            Ok(()) => writer.close().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Part of the line may be on disk: the next change rewrites index.json instead.
            state.journal_torn = true;
            self.journal_pending(name);
            return Err(e.into());
        }
        state.journal += 1;
        self.journal_pending(name);
        Ok(())
    }

    fn journal_pending(&self, name: &RepoName) {
        self.journals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone());
    }

    /// Folds every pending journal into its `index.json`, so that other tools reading the
    /// layouts see every entry. Run about once a second while serving, and at shutdown.
    /// Returns how many repositories were written; a repository that fails stays pending (the
    /// others are still folded) and the first failure is returned.
    pub async fn compact_journals(&self) -> Result<usize> {
        let pending: Vec<RepoName> = self
            .journals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .collect();
        let mut written = 0;
        let mut failure = None;
        for name in pending {
            let compacted = self
                .with_state(&name, async |reg, state| {
                    if state.journal == 0 && !state.journal_torn {
                        return Ok(false);
                    }
                    reg.write_index(&name, state).await.map(|()| true)
                })
                .await;
            match compacted {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    self.journal_pending(&name);
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// True if the repository has a layout on disk.
    pub async fn repo_exists(&self, name: &RepoName) -> Result<bool> {
        Ok(self
            .read_state(name)
            .await?
            .as_ref()
            .is_some_and(|s| s.exists))
    }

    /// Resolves a reference to the manifest's digest, media type and size, and counts a pull
    /// (containerd resolves tags with `HEAD`).
    pub async fn manifest_head(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead> {
        let guard = self.read_state(name).await?;
        let state = guard
            .as_ref()
            .ok_or_else(|| StoreError::Internal("unloaded".into()))?;
        let desc = match reference {
            Reference::Tag(t) => state.index.tagged(t),
            Reference::Digest(d) => state.index.by_digest(d),
        }
        .ok_or_else(|| StoreError::ManifestUnknown(reference.to_string()))?;
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str()),
            Reference::Digest(_) => None,
        };
        self.pulls.record(name, &desc.digest, tag);
        Ok(ManifestHead {
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            size: desc.size,
        })
    }

    /// Reads a manifest's bytes, verified against its digest.
    pub async fn manifest_get(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(ManifestHead, Bytes)> {
        let head = self.manifest_head(name, reference).await?;
        let bytes = match self.driver.get(&layout::blob(name, &head.digest)?).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                tracing::warn!(repo = %name, digest = %head.digest, "index.json lists a manifest whose blob is missing");
                return Err(StoreError::ManifestUnknown(reference.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let actual = Digest::of(head.digest.algorithm(), &bytes);
        if actual != head.digest {
            return Err(StoreError::Corrupt(format!(
                "{name}: manifest {} reads back as {actual}",
                head.digest
            )));
        }
        Ok((
            ManifestHead {
                size: bytes.len() as u64,
                ..head
            },
            bytes,
        ))
    }

    /// Sizes of the blobs `manifest` references, or `ManifestBlobUnknown` for the first missing.
    async fn check_references(
        &self,
        name: &RepoName,
        manifest: &Manifest,
    ) -> Result<Vec<(Digest, u64)>> {
        let mut found = Vec::new();
        for d in manifest.references() {
            match self.blob_size(name, &d.digest).await {
                Ok(size) => found.push((d.digest.clone(), size)),
                Err(StoreError::BlobUnknown(_)) => {
                    return Err(StoreError::ManifestBlobUnknown(d.digest.clone()))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Validates and stores a manifest under a tag or its digest (spec "Pushing Manifests").
    /// The bytes are stored exactly as sent. Order: one metadata transaction (link, manifest,
    /// references, tag), then the bytes into `_cas`, then the repository's link, then
    /// `index.json`.
    pub async fn manifest_put(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PutManifest> {
        let alg = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let digest = Digest::of(alg, &body);
        if let Reference::Digest(expected) = reference {
            if expected != &digest {
                return Err(StoreError::DigestInvalid {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
        }
        let manifest = Manifest::parse(&body, content_type)?;
        self.check_space().await?;
        // Fail fast, before writing anything; checked again under the lock.
        self.check_references(name, &manifest).await?;
        let desc = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: digest.clone(),
            size: body.len() as u64,
            artifact_type: None,
            annotations: None,
            platform: None,
            urls: None,
        };
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        let _stripe = self.stripe(&digest).lock().await;
        let cas = layout::cas_blob(&digest)?;
        self.with_state(name, async |reg, state| {
            let refs = reg.check_references(name, &manifest).await?;
            reg.ensure_layout(name, state).await?;
            let now = book::now();
            let record = manifest_record(Some(&manifest), &manifest.media_type, desc.size, now);
            let tag = match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            };
            let (n, d, size) = (name.clone(), digest.clone(), desc.size);
            reg.meta_write(Durability::Durable, move |tx| {
                for (r, rsize) in &refs {
                    book::link(tx, &n, r, *rsize, now)?;
                }
                book::link(tx, &n, &d, size, now)?;
                book::put_manifest(tx, &n, &d, &record, tag.as_ref(), now)
            })
            .await?;
            // The bytes enter `_cas` only now that their record exists.
            if reg.dedupe && !reg.exists(&cas).await? {
                reg.driver.put(&cas, body.clone()).await?;
            }
            let path = layout::blob(name, &digest)?;
            if !reg.exists(&path).await? {
                if reg.dedupe {
                    match reg.driver.link(&cas, &path).await {
                        Ok(()) | Err(berth_driver::DriverError::PreconditionFailed(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    reg.driver.put(&path, body.clone()).await?;
                }
            }
            let entry = match reference {
                Reference::Tag(t) => state.index.set_tag(t, &desc),
                Reference::Digest(_) => state.index.add(&desc),
            };
            if let Some(entry) = entry {
                reg.commit_addition(name, state, &entry).await?;
            }
            Ok(())
        })
        .await?;
        Ok(PutManifest { digest, subject })
    }

    /// Deletes a tag (only the tag goes) or a manifest by digest (it and every tag pointing at
    /// it go; its bytes leave the repository, while `_cas` keeps them for other repositories and
    /// garbage collection). Refused while a manifest of the repository (an index) lists it, and,
    /// with `detect_collision`, while several tags point at it. `index.json` changes first, the
    /// metadata store after, so the store's references stay a superset of the disk's.
    pub async fn manifest_delete(
        &self,
        name: &RepoName,
        reference: &Reference,
        detect_collision: bool,
    ) -> Result<()> {
        self.with_state(name, async |reg, state| match reference {
            Reference::Tag(t) => {
                if state.index.tagged(t).is_none() {
                    return Err(StoreError::ManifestUnknown(reference.to_string()));
                }
                reg.remove_locked(name, state, &[t.as_str().to_owned()], &[])
                    .await
            }
            Reference::Digest(d) => {
                if state.index.by_digest(d).is_none() {
                    return Err(StoreError::ManifestUnknown(reference.to_string()));
                }
                let tags = state.index.tags_of(d);
                if detect_collision && tags.len() > 1 {
                    return Err(StoreError::Unsupported(format!(
                        "manifest {d} is tagged {}; delete the tags one by one",
                        tags.join(", ")
                    )));
                }
                if let Some(parent) = reg.referencing_manifest(name, d)? {
                    return Err(StoreError::Unsupported(format!(
                        "manifest {d} is listed by index {parent}; delete the index first"
                    )));
                }
                reg.remove_locked(name, state, &[], std::slice::from_ref(d))
                    .await
            }
        })
        .await
    }

    /// Removes `tags` and the manifests `digests` (with every tag pointing at them) from a
    /// repository whose write lock the caller holds, after the caller checked they may go.
    /// Order: `index.json` first, then the metadata records, then the repository's links to
    /// the manifests' bytes (file first, record after), so the store's references stay a
    /// superset of the disk's at every instant.
    pub(crate) async fn remove_locked(
        &self,
        name: &RepoName,
        state: &mut RepoState,
        tags: &[String],
        digests: &[Digest],
    ) -> Result<()> {
        let tags: Vec<berth_oci::Tag> = tags
            .iter()
            .filter_map(|t| berth_oci::Tag::parse(t).ok())
            .collect();
        let (gone_tags, gone) = state.index.remove_many(&tags, digests);
        if gone_tags.is_empty() && gone.is_empty() {
            return Ok(());
        }
        self.write_index(name, state).await?;
        let now = book::now();
        let (n, records) = (name.clone(), gone.clone());
        self.meta_write(Durability::Durable, move |tx| {
            for t in &gone_tags {
                book::remove_tag(tx, &n, t)?;
            }
            for (d, tags_of) in &records {
                book::remove_manifest(tx, &n, d, tags_of, now)?;
            }
            Ok(())
        })
        .await?;
        for (d, _) in &gone {
            self.driver.delete(&layout::blob(name, d)?).await?;
        }
        let n = name.clone();
        self.meta_write(Durability::Durable, move |tx| {
            for (d, _) in &gone {
                book::unlink(tx, &n, d, now)?;
            }
            Ok(())
        })
        .await
    }

    /// A manifest of the repository that references `digest`, if any.
    fn referencing_manifest(&self, name: &RepoName, digest: &Digest) -> Result<Option<String>> {
        let snap = self.meta.read()?;
        let rec: Option<RepoBlobRecord> = get(
            snap.as_ref(),
            Table::RepoBlobs,
            &book::repo_blob_key(name, digest),
        )?;
        if rec.is_none_or(|r| r.referenced_by == 0) {
            return Ok(None);
        }
        let by = scan_prefix(
            snap.as_ref(),
            Table::Manifests,
            &key::prefix(&[name.as_str()]),
            usize::MAX,
        )?
        .into_iter()
        .find(|(_, v)| {
            berth_meta::records::decode::<ManifestRecord>(Table::Manifests, v)
                .is_ok_and(|m| m.refs.contains(digest))
        })
        .and_then(|(k, _)| key::parts(&k).get(1).cloned());
        Ok(Some(by.unwrap_or_else(|| "of this repository".into())))
    }

    /// The repository's tags in the spec's lexical order. `NameUnknown` if it has no layout.
    pub async fn tags(&self, name: &RepoName) -> Result<Vec<String>> {
        let guard = self.read_state(name).await?;
        match guard.as_ref() {
            Some(s) if s.exists => Ok(s.index.tags()),
            _ => Err(StoreError::NameUnknown(name.clone())),
        }
    }

    /// Descriptors of the manifests whose `subject` is `digest`, plus those listed in a
    /// referrers tag-schema index (`<alg>-<hex>`) (spec "Listing Referrers").
    pub async fn referrers(&self, name: &RepoName, digest: &Digest) -> Result<Vec<Descriptor>> {
        // Loading the repository reconciles its records with the layout.
        drop(self.read_state(name).await?);
        let snap = self.meta.read()?;
        let prefix = key::prefix(&[name.as_str(), &digest.to_string()]);
        let mut out = Vec::new();
        for (k, v) in scan_prefix(snap.as_ref(), Table::Referrers, &prefix, usize::MAX)? {
            let Some(Ok(d)) = key::parts(&k).get(2).map(|d| Digest::parse(d)) else {
                continue;
            };
            let r: ReferrerRecord = berth_meta::records::decode(Table::Referrers, &v)?;
            out.push(Descriptor {
                media_type: r.media_type,
                digest: d,
                size: r.size,
                artifact_type: r.artifact_type,
                annotations: r.annotations.map(Into::into),
                platform: None,
                urls: None,
            });
        }
        drop(snap);
        let schema_tag = format!("{}-{}", digest.algorithm().as_str(), digest.hex());
        if let Ok(tag) = berth_oci::Tag::parse(&schema_tag) {
            match self.manifest_get(name, &Reference::Tag(tag)).await {
                Ok((_, bytes)) => {
                    // Only an index lists referrers; an image's entries are its layers.
                    let index = Manifest::parse(&bytes, None)
                        .ok()
                        .filter(|m| m.kind == berth_oci::manifest::Kind::Index);
                    if let Some(m) = index {
                        for d in m.entries {
                            if !out.iter().any(|o| o.digest == d.digest) {
                                out.push(d);
                            }
                        }
                    }
                }
                Err(StoreError::ManifestUnknown(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
