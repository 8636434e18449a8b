//! The berth storage engine: per-repository OCI Image Layouts over a storage [`Driver`], upload
//! sessions, manifests, tags, referrers and the catalog.
//!
//! Locking: one `RwLock` per repository guards its `index.json` (readers share it; tag and
//! manifest changes and blob publication take it briefly). Upload sessions have their own lock,
//! so streaming blob bytes holds no repository lock. There is no global lock.
//!
//! Crash safety: every file is published with the driver's atomic `put`/`rename`, which sync
//! before they return when the driver syncs. A method returns `Ok` only after its writes are
//! durable, so the API acknowledges nothing that could be lost.
//!
//! This crate never names an HTTP type.

mod blobs;
mod book;
mod catalog;
mod error;
pub mod gc;
pub mod index;
pub mod layout;
mod reconcile;
mod repo;
pub mod retention;
pub mod scrub;
mod stats;
mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_driver::Driver;
use berth_meta::{Durability, MetaStore, WriteTx};
use berth_oci::{Digest, RepoName};

pub use berth_driver::{ByteStream, DriverError, Small};
pub use berth_meta::MetaError;
pub use error::{Result, StoreError};
pub use reconcile::{ReconcileEvent, ReconcilePhase, ReconcileSummary};
pub use repo::{ManifestHead, PutManifest};
pub use upload::UploadId;

/// A request body handed to the engine: chunks as they arrive.
pub type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// Engine settings (the API and composition root own the rest of the configuration).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Upload sessions untouched for this long are removed by [`Registry::expire_uploads`].
    pub upload_timeout: Duration,
    /// Store each blob once in `_cas` and hard-link it into repositories (`[storage] dedupe`).
    pub dedupe: bool,
    /// Below this many free bytes, new uploads and manifests are refused while reads,
    /// deletes and garbage collection go on (`[storage] min_free_space`; 0 disables).
    pub min_free_space: u64,
    /// Repositories whose `index.json` lists at least this many entries record additions in
    /// `_index.journal` instead of rewriting `index.json` for each one (`[storage]
    /// index_journal_from`; 0 never journals).
    pub index_journal_from: usize,
}

/// The default of [`StoreConfig::index_journal_from`].
pub const DEFAULT_INDEX_JOURNAL_FROM: usize = 1000;

/// Record counts of the metadata store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaCounts {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub repo_blobs: u64,
    pub shared_blobs: u64,
    /// Bytes of every distinct blob and manifest (the sizes in the `Cas` records): what the
    /// registry holds once deduplicated.
    pub shared_bytes: u64,
}

/// Timings the engine reports to whoever composes it (metrics live in the composition root;
/// this crate names no metrics library). Calls are cheap and made on the hot path: an
/// implementation must not block.
pub trait StoreObserver: Send + Sync {
    /// A metadata write transaction finished (successfully or not) after `elapsed`, retries
    /// and the hop to a blocking thread included.
    fn meta_transaction(&self, elapsed: Duration);
    /// A task waited `elapsed` for a repository's write lock.
    fn lock_wait(&self, elapsed: Duration);
}

/// The registry's storage: every repository under one driver root.
pub struct Registry {
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    config: StoreConfig,
    /// Whether blobs are hard links into `_cas` (the setting, and the driver can link).
    dedupe: bool,
    /// Repositories whose state a request has loaded (`index.json` parsed, lookups built), and
    /// whether one used it since the last [`Registry::evict_idle`].
    repos: Mutex<HashMap<RepoName, (Arc<repo::RepoCell>, bool)>>,
    uploads: upload::Sessions,
    /// Striped per-digest locks serialising a digest's entry into and removal from `_cas`.
    stripes: Vec<tokio::sync::Mutex<()>>,
    pulls: stats::Pulls,
    reconciled: reconcile::Reconciled,
    /// Repositories whose `_index.journal` holds entries not yet folded into `index.json`.
    journals: Mutex<std::collections::HashSet<RepoName>>,
    gc_hook: Mutex<Option<gc::GcHook>>,
    /// Held by the one garbage collection pass that may run at a time.
    gc_running: tokio::sync::Mutex<()>,
    observer: std::sync::OnceLock<Arc<dyn StoreObserver>>,
}

/// Repositories with more index entries than this keep their cached state when idle.
const EVICT_MAX_ENTRIES: usize = 256;

impl Registry {
    /// Opens (or initialises) a root. Checks the on-disk format stamp and writes it on a new
    /// root. Does not walk the repositories: they are loaded on first use.
    pub async fn open(
        driver: Arc<dyn Driver>,
        meta: Arc<dyn MetaStore>,
        config: StoreConfig,
    ) -> Result<Arc<Registry>> {
        let stamp = layout::format_file()?;
        match driver.get(&stamp).await {
            Ok(found) if found.as_ref() == layout::FORMAT_STAMP.as_bytes() => {}
            Ok(found) => {
                return Err(StoreError::Internal(format!(
                    "the root has on-disk format {:?}, this berth understands {:?}",
                    String::from_utf8_lossy(&found).trim(),
                    layout::FORMAT_STAMP.trim()
                )))
            }
            Err(e) if e.is_not_found() => {
                driver
                    .put(
                        &stamp,
                        bytes::Bytes::from_static(layout::FORMAT_STAMP.as_bytes()),
                    )
                    .await?
            }
            Err(e) => return Err(e.into()),
        }
        let dedupe = config.dedupe && driver.capabilities().hardlink;
        if config.dedupe && !dedupe {
            tracing::warn!(
                "the storage cannot hard-link: each repository keeps its own copy of its blobs"
            );
        }
        let registry = Arc::new(Registry {
            driver,
            meta,
            config,
            dedupe,
            repos: Mutex::new(HashMap::new()),
            uploads: upload::Sessions::default(),
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            pulls: stats::Pulls::default(),
            reconciled: reconcile::Reconciled::default(),
            journals: Mutex::default(),
            gc_hook: Mutex::new(None),
            gc_running: tokio::sync::Mutex::new(()),
            observer: std::sync::OnceLock::new(),
        });
        registry.clean_upload_area().await?;
        Ok(registry)
    }

    /// Installs the observer of the engine's timings. Only the first call has an effect (the
    /// composition root installs one right after opening); returns whether this one did.
    pub fn set_observer(&self, observer: Arc<dyn StoreObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Whether the start-up reconciliation pass ([`Registry::reconcile_all`]) has finished.
    pub fn reconciled(&self) -> bool {
        self.reconciled.all_done()
    }

    /// Checks that the storage accepts writes: puts and deletes a tiny file through the
    /// driver, with the same atomic-write path every real write takes.
    pub async fn probe_storage(&self) -> Result<()> {
        let probe = layout::ready_probe()?;
        self.driver
            .put(&probe, bytes::Bytes::from_static(b"ok\n"))
            .await?;
        self.driver.delete(&probe).await?;
        Ok(())
    }

    /// Checks that the metadata store answers a read (its schema version record).
    pub fn probe_meta(&self) -> Result<()> {
        self.meta
            .read()?
            .get(berth_meta::Table::Info, berth_meta::records::SCHEMA_KEY)?;
        Ok(())
    }

    /// The engine's settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// How many records of each kind the metadata store holds.
    pub fn meta_counts(&self) -> Result<MetaCounts> {
        let snap = self.meta.read()?;
        let count = |t: berth_meta::Table| -> Result<u64> {
            let mut n = 0u64;
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let start = match &cursor {
                    Some(c) => std::ops::Bound::Excluded(c.as_slice()),
                    None => std::ops::Bound::Unbounded,
                };
                let batch = snap.range(t, start, std::ops::Bound::Unbounded, 4096)?;
                match batch.last() {
                    Some((k, _)) => cursor = Some(k.clone()),
                    None => return Ok(n),
                }
                n += batch.len() as u64;
            }
        };
        let (mut shared_blobs, mut shared_bytes) = (0u64, 0u64);
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let start = match &cursor {
                Some(c) => std::ops::Bound::Excluded(c.as_slice()),
                None => std::ops::Bound::Unbounded,
            };
            let batch = snap.range(
                berth_meta::Table::Cas,
                start,
                std::ops::Bound::Unbounded,
                4096,
            )?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (_, v) in &batch {
                let rec: berth_meta::records::CasRecord =
                    berth_meta::records::decode(berth_meta::Table::Cas, v)?;
                shared_blobs += 1;
                shared_bytes += rec.size;
            }
        }
        Ok(MetaCounts {
            repositories: count(berth_meta::Table::Repos)?,
            manifests: count(berth_meta::Table::Manifests)?,
            tags: count(berth_meta::Table::Tags)?,
            repo_blobs: count(berth_meta::Table::RepoBlobs)?,
            shared_blobs,
            shared_bytes,
        })
    }

    /// Refuses a write that would eat into the space kept free for cleanup.
    pub(crate) async fn check_space(&self) -> Result<()> {
        if self.config.min_free_space == 0 {
            return Ok(());
        }
        match self.driver.free_space().await? {
            Some(free) if free < self.config.min_free_space => Err(StoreError::InsufficientSpace {
                free,
                min: self.config.min_free_space,
            }),
            _ => Ok(()),
        }
    }

    /// Whether blobs are stored once and hard-linked into repositories.
    pub fn dedupe(&self) -> bool {
        self.dedupe
    }

    /// The lock of `digest`'s stripe: held while a digest enters or leaves `_cas`.
    fn stripe(&self, digest: &Digest) -> &tokio::sync::Mutex<()> {
        let b = u8::from_str_radix(digest.hex().get(..2).unwrap_or("00"), 16).unwrap_or(0);
        &self.stripes[b as usize % self.stripes.len()]
    }

    /// Runs `body` in a durable metadata transaction on a blocking thread.
    async fn meta_write<T: Send + 'static>(
        &self,
        durability: Durability,
        mut body: impl FnMut(&mut dyn WriteTx) -> berth_meta::Result<T> + Send + 'static,
    ) -> Result<T> {
        let meta = self.meta.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            berth_meta::write(meta.as_ref(), durability, &mut body)
        })
        .await;
        if let Some(o) = self.observer.get() {
            o.meta_transaction(started.elapsed());
        }
        result
            .map_err(|e| StoreError::Internal(format!("metadata task: {e}")))?
            .map_err(StoreError::from)
    }

    /// Reports how long a task waited for a repository's write lock.
    fn lock_waited(&self, started: std::time::Instant) {
        if let Some(o) = self.observer.get() {
            o.lock_wait(started.elapsed());
        }
    }

    fn cell(&self, name: &RepoName) -> Arc<repo::RepoCell> {
        let mut repos = self
            .repos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = repos.entry(name.clone()).or_default();
        slot.1 = true;
        slot.0.clone()
    }

    /// Forgets the cached state of every small repository (at most [`EVICT_MAX_ENTRIES`]
    /// entries, no journal) that no request has used since the previous call and that nobody
    /// holds now; its next use reads `index.json` again. Memory then follows the repositories
    /// in use rather than every one ever touched. Large indexes stay: re-reading and parsing
    /// megabytes costs more than keeping them, and fragments the heap. Returns how many were
    /// dropped. Run periodically by the server.
    pub fn evict_idle(&self) -> usize {
        let mut repos = self
            .repos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = repos.len();
        repos.retain(|_, (cell, used)| {
            // Only the map holds an idle cell: no request waits on or reads its lock.
            if std::mem::take(used) || Arc::strong_count(cell) > 1 {
                return true;
            }
            let Ok(state) = cell.try_read() else {
                return true;
            };
            state.as_ref().is_some_and(|s| {
                s.journal > 0 || s.journal_torn || s.index.manifests.len() > EVICT_MAX_ENTRIES
            })
        });
        before - repos.len()
    }

    /// Repositories whose state is cached in memory now.
    pub fn loaded_repositories(&self) -> usize {
        self.repos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}
