//! Reconciliation: making the metadata store agree with the layouts on disk.
//!
//! The disk is the truth for bytes and `index.json` for what a repository holds; the metadata
//! store is bookkeeping. After a crash or when the store is new (rebuilt, or a root written
//! without it), `index.json` wins: records of manifests it no longer lists are dropped, records
//! for what it lists are added, blob records follow the files in `blobs/`. Nothing on disk is
//! ever deleted here because a record is missing.
//!
//! Each repository is reconciled the first time a process loads it (under its write lock), so a
//! request never sees stale records; a background pass walks every repository at start-up
//! (bounded memory: one repository at a time) and then, with dedupe, replaces each repository's
//! own copy of a blob by a hard link to `_cas` (importing roots written without dedupe).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_driver::DriverPath;
use berth_meta::records::{decode, key, TagRecord};
use berth_meta::{scan_prefix, Durability, Table};
use berth_oci::manifest::Manifest;
use berth_oci::{Algorithm, Digest, RepoName};

use crate::repo::{manifest_record, RepoState};
use crate::{book, layout, Registry, Result};

/// Which repositories this process has reconciled, and whether the start-up pass ran.
#[derive(Default)]
pub(crate) struct Reconciled {
    done: Mutex<HashSet<RepoName>>,
    all: tokio::sync::OnceCell<()>,
}

impl Reconciled {
    pub(crate) fn contains(&self, name: &RepoName) -> bool {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    /// Whether the pass over every repository has finished.
    pub(crate) fn all_done(&self) -> bool {
        self.all.initialized()
    }

    pub(crate) fn insert(&self, name: &RepoName) {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone());
    }
}

/// Which pass over every repository is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcilePhase {
    /// Making the metadata records agree with each layout.
    Reconcile,
    /// Replacing repositories' own copies of blobs by links to `_cas`.
    Dedupe,
}

/// Progress of [`Registry::reconcile_all_with`] and [`Registry::dedupe_all_with`].
#[derive(Debug, Clone, Copy)]
pub enum ReconcileEvent<'a> {
    /// The pass is about to visit this many repositories.
    Started {
        phase: ReconcilePhase,
        repositories: usize,
    },
    /// The pass is at repository `done + 1` of `total` (`done` are finished).
    Repository {
        phase: ReconcilePhase,
        done: usize,
        total: usize,
        name: &'a RepoName,
    },
}

/// What a reconciliation or dedupe pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub repositories: u64,
    pub manifests_added: u64,
    pub manifests_dropped: u64,
    pub tags_fixed: u64,
    pub blobs_added: u64,
    pub blobs_dropped: u64,
    /// Repository copies replaced by hard links to `_cas` (or adopted as the `_cas` copy).
    pub blobs_deduped: u64,
    /// Bytes freed by replacing copies with links.
    pub bytes_saved: u64,
    /// Blob files whose bytes do not match their name (left alone, reported).
    pub blobs_corrupt: u64,
}

impl Registry {
    /// The digests of the blob files of a repository.
    pub(crate) async fn blob_files(&self, name: &RepoName) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for f in self
                .driver
                .list(&layout::blob_dir(name, alg)?)
                .await
                .unwrap_or_default()
            {
                if let Ok(d) = Digest::parse(&format!("{}:{f}", alg.as_str())) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Makes the metadata records of `name` agree with its layout. The caller holds the
    /// repository's write lock.
    pub(crate) async fn reconcile_repo(
        &self,
        name: &RepoName,
        state: &RepoState,
    ) -> Result<ReconcileSummary> {
        self.reconcile_repo_with(name, state, true).await
    }

    /// Compares (and with `apply`, reconciles) the metadata records of `name` with its layout,
    /// returning what differs.
    pub(crate) async fn reconcile_repo_with(
        &self,
        name: &RepoName,
        state: &RepoState,
        apply: bool,
    ) -> Result<ReconcileSummary> {
        let mut summary = ReconcileSummary {
            repositories: 1,
            ..Default::default()
        };
        let disk_manifests: HashMap<Digest, String> = state
            .index
            .manifests
            .iter()
            .map(|d| (d.digest.clone(), d.media_type.clone()))
            .collect();
        let disk_tags: HashMap<String, Digest> = state
            .index
            .tags()
            .into_iter()
            .filter_map(|t| {
                let tag = berth_oci::Tag::parse(&t).ok()?;
                state.index.tagged(&tag).map(|d| (t, d.digest.clone()))
            })
            .collect();
        let files: HashSet<Digest> = self.blob_files(name).await?.into_iter().collect();
        let prefix = key::prefix(&[name.as_str()]);
        let (meta_manifests, meta_tags, meta_blobs) = {
            let snap = self.meta.read()?;
            let digests_of = |t: Table| -> Result<HashSet<Digest>> {
                Ok(scan_prefix(snap.as_ref(), t, &prefix, usize::MAX)?
                    .into_iter()
                    .filter_map(|(k, _)| key::parts(&k).get(1).and_then(|d| Digest::parse(d).ok()))
                    .collect())
            };
            let tags: HashMap<String, Digest> =
                scan_prefix(snap.as_ref(), Table::Tags, &prefix, usize::MAX)?
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let t = key::parts(&k).get(1).cloned()?;
                        decode::<TagRecord>(Table::Tags, &v)
                            .ok()
                            .map(|r| (t, r.digest))
                    })
                    .collect();
            (
                digests_of(Table::Manifests)?,
                tags,
                digests_of(Table::RepoBlobs)?,
            )
        };
        let now = book::now();
        let mut new_blobs = Vec::new();
        for d in files.difference(&meta_blobs) {
            let size = self.blob_size(name, d).await?;
            new_blobs.push((d.clone(), size));
        }
        let gone_blobs: Vec<Digest> = meta_blobs.difference(&files).cloned().collect();
        let mut new_manifests = Vec::new();
        for (d, media_type) in &disk_manifests {
            if meta_manifests.contains(d) || !files.contains(d) {
                continue;
            }
            let bytes = self.driver.get(&layout::blob(name, d)?).await?;
            let parsed = Manifest::parse(&bytes, Some(media_type));
            if let Err(e) = &parsed {
                tracing::warn!(repo = %name, digest = %d, error = %e,
                    "a manifest listed in index.json cannot be parsed; garbage collection keeps this repository's blobs");
            }
            new_manifests.push((
                d.clone(),
                manifest_record(parsed.as_ref().ok(), media_type, bytes.len() as u64, now),
            ));
        }
        let dropped: Vec<(Digest, Vec<String>)> = meta_manifests
            .iter()
            .filter(|d| !disk_manifests.contains_key(*d))
            .map(|d| {
                (
                    d.clone(),
                    meta_tags
                        .iter()
                        .filter(|(_, t)| *t == d)
                        .map(|(n, _)| n.clone())
                        .collect(),
                )
            })
            .collect();
        let stale_tags: Vec<String> = meta_tags
            .iter()
            .filter(|(t, d)| disk_tags.get(*t) != Some(*d))
            .map(|(t, _)| t.clone())
            .collect();
        let missing_tags: Vec<(String, Digest)> = disk_tags
            .iter()
            .filter(|(t, d)| meta_tags.get(*t) != Some(*d) && files.contains(*d))
            .map(|(t, d)| (t.clone(), d.clone()))
            .collect();
        summary.blobs_added = new_blobs.len() as u64;
        summary.blobs_dropped = gone_blobs.len() as u64;
        summary.manifests_added = new_manifests.len() as u64;
        summary.manifests_dropped = dropped.len() as u64;
        summary.tags_fixed = (stale_tags.len() + missing_tags.len()) as u64;
        if summary
            == (ReconcileSummary {
                repositories: 1,
                ..Default::default()
            })
        {
            return Ok(summary);
        }
        if !apply {
            return Ok(summary);
        }
        tracing::info!(repo = %name, ?summary, "reconciled the metadata store with the layout");
        let n = name.clone();
        self.meta_write(Durability::Durable, move |tx| {
            for (d, size) in &new_blobs {
                book::link(tx, &n, d, *size, now)?;
            }
            for (d, tags) in &dropped {
                book::remove_manifest(tx, &n, d, tags, now)?;
            }
            for t in &stale_tags {
                book::remove_tag(tx, &n, t)?;
            }
            for (d, rec) in &new_manifests {
                book::put_manifest(tx, &n, d, rec, None, now)?;
            }
            for (t, d) in &missing_tags {
                let rec = TagRecord {
                    digest: d.clone(),
                    pushed: now,
                    last_pulled: None,
                    pulls: 0,
                };
                berth_meta::records::put(tx, Table::Tags, &book::tag_key(&n, t), &rec)?;
            }
            for d in &gone_blobs {
                book::unlink(tx, &n, d, now)?;
            }
            Ok(())
        })
        .await?;
        Ok(summary)
    }

    /// The repositories a maintenance pass visits: the one named (`NameUnknown` if it has no
    /// layout), or every one.
    pub(crate) async fn pass_targets(&self, only: Option<&RepoName>) -> Result<Vec<RepoName>> {
        match only {
            Some(r) if self.repo_exists(r).await? => Ok(vec![r.clone()]),
            Some(r) => Err(crate::StoreError::NameUnknown(r.clone())),
            None => self.walk_repositories().await,
        }
    }

    /// Every repository directory under the root (directories holding `index.json`), found by
    /// walking directories only (never `blobs/`).
    pub(crate) async fn walk_repositories(&self) -> Result<Vec<RepoName>> {
        let mut found = Vec::new();
        let mut stack = vec![DriverPath::root()];
        while let Some(dir) = stack.pop() {
            let children = self.driver.list(&dir).await.unwrap_or_default();
            if !dir.is_root() && children.iter().any(|c| c == "index.json") {
                if let Ok(name) = RepoName::parse(dir.as_str()) {
                    found.push(name);
                }
            }
            for child in children {
                if child.starts_with('_') || layout::LAYOUT_FILES.contains(&child.as_str()) {
                    continue;
                }
                if let Ok(p) = dir.join(&child) {
                    stack.push(p);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Reconciles every repository once per process (the catalog waits for this). Progress is
    /// logged; memory holds one repository at a time.
    pub async fn reconcile_all(&self) -> Result<()> {
        self.reconcile_all_with(&|_| {}).await
    }

    /// [`Registry::reconcile_all`], also handing its progress to `progress` (nothing when the
    /// pass already ran in this process).
    pub async fn reconcile_all_with(
        &self,
        progress: &(dyn Fn(ReconcileEvent<'_>) + Send + Sync),
    ) -> Result<()> {
        self.reconciled
            .all
            .get_or_try_init(|| async {
                let started = Instant::now();
                let repos = self.walk_repositories().await?;
                progress(ReconcileEvent::Started {
                    phase: ReconcilePhase::Reconcile,
                    repositories: repos.len(),
                });
                let mut last_log = Instant::now();
                for (i, name) in repos.iter().enumerate() {
                    progress(ReconcileEvent::Repository {
                        phase: ReconcilePhase::Reconcile,
                        done: i,
                        total: repos.len(),
                        name,
                    });
                    let cell = self.cell(name);
                    let waiting = Instant::now();
                    let guard = cell.write().await;
                    self.lock_waited(waiting);
                    if guard.is_none() && !self.reconciled.contains(name) {
                        // Reconcile without keeping the state cached.
                        let _ = self.load_state(name).await?;
                    }
                    drop(guard);
                    if last_log.elapsed() > Duration::from_secs(5) {
                        tracing::info!(
                            done = i + 1,
                            total = repos.len(),
                            "reconciling repositories"
                        );
                        last_log = Instant::now();
                    }
                }
                tracing::info!(
                    repositories = repos.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "metadata store reconciled with the layouts"
                );
                Ok::<(), crate::StoreError>(())
            })
            .await?;
        Ok(())
    }

    /// With dedupe, replaces each repository's own copy of a blob by a hard link to `_cas`,
    /// adopting a verified copy into `_cas` where it has none. Safe to run while serving.
    pub async fn dedupe_all(&self) -> Result<ReconcileSummary> {
        self.dedupe_all_with(&|_| {}).await
    }

    /// [`Registry::dedupe_all`], also handing its progress to `progress`.
    pub async fn dedupe_all_with(
        &self,
        progress: &(dyn Fn(ReconcileEvent<'_>) + Send + Sync),
    ) -> Result<ReconcileSummary> {
        let mut summary = ReconcileSummary::default();
        if !self.dedupe {
            return Ok(summary);
        }
        self.reconcile_all_with(progress).await?;
        let started = Instant::now();
        let mut last_log = Instant::now();
        let repos = self.walk_repositories().await?;
        progress(ReconcileEvent::Started {
            phase: ReconcilePhase::Dedupe,
            repositories: repos.len(),
        });
        for (i, name) in repos.iter().enumerate() {
            progress(ReconcileEvent::Repository {
                phase: ReconcilePhase::Dedupe,
                done: i,
                total: repos.len(),
                name,
            });
            summary.repositories += 1;
            for d in self.blob_files(name).await? {
                self.dedupe_one(name, &d, &mut summary).await?;
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(
                    done = i + 1,
                    total = repos.len(),
                    deduped = summary.blobs_deduped,
                    "deduplicating blobs"
                );
                last_log = Instant::now();
            }
        }
        if summary.blobs_deduped > 0 || summary.blobs_corrupt > 0 {
            tracing::info!(
                ?summary,
                seconds = started.elapsed().as_secs_f64(),
                "deduplication pass finished"
            );
        }
        Ok(summary)
    }

    async fn dedupe_one(
        &self,
        name: &RepoName,
        d: &Digest,
        summary: &mut ReconcileSummary,
    ) -> Result<()> {
        let path = layout::blob(name, d)?;
        let cas = layout::cas_blob(d)?;
        let _stripe = self.stripe(d).lock().await;
        let Ok(mine) = self.driver.stat(&path).await else {
            return Ok(());
        };
        match self.driver.stat(&cas).await {
            Ok(shared) if shared.id.is_some() && shared.id == mine.id => {}
            Ok(_) => {
                // Another copy exists in `_cas` (verified when it entered): link it in place of ours.
                let scratch =
                    layout::upload_data(&format!("dedupe-{}", uuid::Uuid::new_v4().simple()))?;
                self.driver.link(&cas, &scratch).await?;
                let replaced = self
                    .with_state(name, async |reg, _| {
                        if reg.exists(&path).await? {
                            reg.driver.rename(&scratch, &path).await?;
                            Ok(true)
                        } else {
                            Ok(false)
                        }
                    })
                    .await;
                if let Some(dir) = scratch.parent() {
                    self.driver.delete_all(&dir).await?;
                }
                if replaced? {
                    summary.blobs_deduped += 1;
                    summary.bytes_saved += mine.size;
                }
            }
            Err(e) if e.is_not_found() => {
                // Adopt this copy into `_cas`, once its bytes are proven to match their name.
                let mut hasher = d.algorithm().hasher();
                let mut stream = self.driver.read_range(&path, 0, None).await?;
                use futures_util::StreamExt;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => hasher.update(&c),
                        Err(_) => return Ok(()),
                    }
                }
                if &hasher.finish() != d {
                    tracing::warn!(repo = %name, digest = %d, "blob bytes do not match their digest; left out of the shared store");
                    summary.blobs_corrupt += 1;
                    return Ok(());
                }
                match self.driver.link(&path, &cas).await {
                    Ok(()) | Err(berth_driver::DriverError::PreconditionFailed(_)) => {
                        summary.blobs_deduped += 1
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}
