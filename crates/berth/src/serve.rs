//! `berth serve`: takes ownership of the root, opens the storage engine on it and serves the
//! HTTP API (and the admin channel) until SIGINT or SIGTERM, then drains in-flight requests. Also
//! runs the background work of a server: upload expiry, pull statistics, reconciliation,
//! scheduled garbage collection and scheduled scrubs.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_api::{Api, ApiConfig};
use berth_driver::local::LocalFs;
use berth_meta::records::{SCHEMA_KEY, SCHEMA_VERSION};
use berth_meta::redb::RedbStore;
use berth_meta::{Durability, MetaStore, Table};
use berth_store::gc::{GcEvent, GcKind, GcOptions, GcReport};
use berth_store::scrub::{ScrubEvent, ScrubOptions, ScrubReport};
use berth_store::{layout, Registry, StoreConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::health::{self, Health};
use crate::logging::Logging;
use crate::metrics::Metrics;
use crate::reload::{self, ConfigSource, Live, Reloader};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the root {root} is in use by another berth process{holder}; stop it first (one process owns a root at a time)")]
    RootInUse { root: PathBuf, holder: String },
    #[error("cannot prepare the root {root}: {source}")]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open storage at {root}: {message}")]
    Storage { root: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Exclusive ownership of a root for the life of this value (an advisory `flock` on
/// `_berth/lock`, released by the OS if the process dies).
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the root's lock, or fails with [`ServeError::RootInUse`] naming the holder's pid.
    pub fn acquire(root: &Path) -> Result<RootLock, ServeError> {
        let path = root.join(layout::LOCK_FILE);
        let err = |source| ServeError::Root {
            root: root.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(ServeError::RootInUse {
                    root: root.to_owned(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
        file.set_len(0).map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        Ok(RootLock { _file: file })
    }
}

/// A running server.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    /// The address of the separate metrics listener (`[metrics] listen`), if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The storage engine it serves.
    pub registry: Arc<Registry>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServeError>>,
    config: Config,
    live: Arc<watch::Sender<Live>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
        }
    }

    /// A handle that stops the server when `true` is sent.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// A handle that applies new configurations to this server (SIGHUP), changing the log
    /// level through `logging`.
    pub fn reloader(&self, logging: Logging) -> Reloader {
        Reloader::new(self.config.clone(), self.live.clone(), logging)
    }
}

/// Opens the storage engine on `config.root` after taking the root's lock.
pub async fn open_registry(config: &Config) -> Result<(RootLock, Arc<Registry>), ServeError> {
    std::fs::create_dir_all(&config.root).map_err(|source| ServeError::Root {
        root: config.root.clone(),
        source,
    })?;
    let lock = RootLock::acquire(&config.root)?;
    Ok((lock, open_locked(config).await?))
}

/// Opens the storage engine on `config.root`, whose lock the caller holds.
async fn open_locked(config: &Config) -> Result<Arc<Registry>, ServeError> {
    let root = config.root.clone();
    let storage = |e: &dyn std::fmt::Display| ServeError::Storage {
        root: root.clone(),
        message: e.to_string(),
    };
    let commit = config.storage.commit;
    let driver_root = root.clone();
    let driver = tokio::task::spawn_blocking(move || LocalFs::new(driver_root, commit))
        .await
        .map_err(|e| storage(&e))?
        .map_err(|e| storage(&e))?;
    let meta_root = root.clone();
    let meta = tokio::task::spawn_blocking(move || open_meta(&meta_root))
        .await
        .map_err(|e| storage(&e))??;
    let store_config = StoreConfig {
        upload_timeout: config.storage.upload_timeout,
        dedupe: config.storage.dedupe,
        min_free_space: config.storage.min_free_space,
        index_journal_from: config.storage.index_journal_from,
    };
    let registry = Registry::open(Arc::new(driver), meta, store_config)
        .await
        .map_err(|e| storage(&e))?;
    Ok(registry)
}

/// What `berth meta rebuild` did.
#[derive(Debug, Clone, Default)]
pub struct RebuildSummary {
    pub counts: berth_store::MetaCounts,
    pub dedupe: berth_store::ReconcileSummary,
}

/// Rebuilds the metadata store of `config.root` from its layouts, offline (takes the root's
/// lock, so it refuses while a server runs), handing the passes' progress to `progress`.
pub async fn meta_rebuild(
    config: &Config,
    progress: &(dyn Fn(berth_store::ReconcileEvent<'_>) + Send + Sync),
) -> Result<RebuildSummary, ServeError> {
    let root = config.root.clone();
    let storage = |e: &dyn std::fmt::Display| ServeError::Storage {
        root: root.clone(),
        message: e.to_string(),
    };
    let _lock = RootLock::acquire(&root)?;
    let path = root.join(layout::META_FILE);
    if path.exists() {
        let aside = aside_name(&path);
        std::fs::rename(&path, &aside).map_err(|e| storage(&e))?;
        tracing::info!(aside = %aside.display(), "moved the old metadata store aside");
    }
    let registry = open_locked(config).await?;
    registry
        .reconcile_all_with(progress)
        .await
        .map_err(|e| storage(&e))?;
    let dedupe = registry
        .dedupe_all_with(progress)
        .await
        .map_err(|e| storage(&e))?;
    let counts = registry.meta_counts().map_err(|e| storage(&e))?;
    Ok(RebuildSummary { counts, dedupe })
}

/// A name for setting a metadata store aside that no earlier one has: the time in
/// nanoseconds, plus a counter if that is taken (a container's berth is always pid 1).
fn aside_name(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut n = 0u32;
    loop {
        let candidate = path.with_extension(format!("redb.{nanos}-{n}.old"));
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

/// Opens the metadata store of a root. A missing store is created; a store with an unknown
/// schema version (or one that cannot be opened) is moved aside and a new one is created.
/// Either way the records are rebuilt from the layouts by reconciliation.
pub fn open_meta(root: &Path) -> Result<Arc<dyn MetaStore>, ServeError> {
    let path = root.join(layout::META_FILE);
    let storage = |message: String| ServeError::Storage {
        root: root.to_owned(),
        message,
    };
    let fresh = |path: &Path| -> Result<Arc<dyn MetaStore>, ServeError> {
        let store = RedbStore::open(path).map_err(|e| storage(e.to_string()))?;
        berth_meta::write(&store, Durability::Durable, |tx| {
            tx.insert(Table::Info, SCHEMA_KEY, SCHEMA_VERSION.as_bytes())
        })
        .map_err(|e| storage(e.to_string()))?;
        Ok(Arc::new(store))
    };
    if !path.exists() {
        tracing::info!(path = %path.display(), "creating the metadata store; it is rebuilt from the layouts in the background");
        return fresh(&path);
    }
    let problem = match RedbStore::open(&path) {
        Ok(store) => match store.read().and_then(|r| r.get(Table::Info, SCHEMA_KEY)) {
            Ok(Some(v)) if v == SCHEMA_VERSION.as_bytes() => return Ok(Arc::new(store)),
            Ok(v) => format!(
                "schema version {:?}, expected {SCHEMA_VERSION:?}",
                v.map(|v| String::from_utf8_lossy(&v).into_owned())
            ),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    let aside = aside_name(&path);
    tracing::warn!(path = %path.display(), aside = %aside.display(), %problem,
        "the metadata store cannot be used; moving it aside and rebuilding it from the layouts");
    std::fs::rename(&path, &aside)
        .map_err(|e| storage(format!("moving {} aside: {e}", path.display())))?;
    fresh(&path)
}

/// Starts serving on `config.listen` and returns once the socket is bound.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let live = Arc::new(watch::channel(Live::of(&config)?).0);
    let (lock, registry) = open_registry(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let metrics = Metrics::new();
    registry.set_observer(metrics.clone());
    let api = Api::with_observer(
        registry.clone(),
        ApiConfig {
            max_manifest_size: config.api.max_manifest_size,
            delete_enabled: config.api.delete_enabled,
            detect_manifest_collision: config.api.detect_manifest_collision,
            read_only: config.storage.read_only,
            body_idle_timeout: config.api.body_idle_timeout,
        },
        metrics.clone(),
    );
    let health = Health::new(registry.clone(), config.storage.read_only);
    let metrics_listen = config
        .metrics
        .enabled
        .then(|| config.metrics.listen_addr())
        .flatten();
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr = match (&metrics_listener, metrics_listen) {
        (Some(l), Some(addr)) => Some(
            l.local_addr()
                .map_err(|source| ServeError::Listen { addr, source })?,
        ),
        _ => None,
    };
    // The operational routes sit in front of the distribution API's one dispatch; they are
    // outside `/v2/`, so they never shadow an API route.
    let on_main = (config.metrics.enabled && metrics_addr.is_none()).then(|| metrics.clone());
    let app = health::routes(health.clone(), on_main).merge(berth_api::router(api));
    let (stop, mut stopped) = watch::channel(false);
    let header_read_timeout = config.api.header_read_timeout;
    let metrics_server = metrics_listener.map(|listener| {
        let routes = health::routes(health, Some(metrics.clone()));
        let mut stop = stop.subscribe();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            crate::listener::serve(listener, routes, header_read_timeout, shutdown).await;
        })
    });
    let expiry = spawn_upload_expiry(
        registry.clone(),
        config.storage.upload_timeout,
        stop.subscribe(),
    );
    let stats = spawn_pull_stats(registry.clone(), stop.subscribe());
    let housekeeping = spawn_housekeeping(registry.clone(), stop.subscribe());
    let background = spawn_reconcile(registry.clone());
    let passes = GcPasses::new(registry.clone(), metrics.clone());
    let schedule = spawn_schedule(
        passes.clone(),
        Scheduled::Gc,
        live.subscribe(),
        stop.subscribe(),
    );
    let scrub_schedule = spawn_schedule(
        passes.clone(),
        Scheduled::Scrub {
            read_only: config.storage.read_only,
        },
        live.subscribe(),
        stop.subscribe(),
    );
    let admin = match admin::bind(&config.root) {
        Ok(listener) => Some(admin::spawn(
            listener,
            &config.root,
            admin::Admin {
                passes: passes.clone(),
                live: live.subscribe(),
            },
            stop.subscribe(),
        )),
        Err(e) => {
            tracing::warn!(socket = %admin::socket_path(&config.root).display(), error = %e,
                "cannot open the admin channel; `berth gc` and `berth scrub` work only while the server is stopped");
            None
        }
    };
    tracing::info!(%addr, metrics = ?metrics_addr, root = %config.root.display(), "berth is serving");
    let grace = config.api.shutdown_timeout;
    let mut stopping = stop.subscribe();
    let registry_at_exit = registry.clone();
    let task = tokio::spawn(async move {
        let _lock = lock;
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let serving = crate::listener::serve(listener, app, header_read_timeout, shutdown);
        let deadline = async move {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        // Requests still running at the deadline are cut off when the process exits; their
        // temporary files go with their drop guards, and an upload's bytes stay resumable.
        let served = tokio::select! {
            () = serving => Ok(()),
            () = deadline => {
                tracing::warn!(timeout = %humantime::format_duration(grace),
                    "requests still in flight after [api] shutdown_timeout; stopping without them");
                Ok(())
            }
        };
        expiry.abort();
        background.abort();
        if passes.busy() {
            tracing::info!("waiting for the garbage collection or scrub pass to finish");
        }
        for task in [Some(schedule), Some(scrub_schedule), admin, metrics_server]
            .into_iter()
            .flatten()
        {
            let _ = task.await;
        }
        passes.idle().await;
        let _ = stats.await;
        let _ = housekeeping.await;
        // Requests have finished: fold the last journal entries into index.json.
        if let Err(e) = registry_at_exit.compact_journals().await {
            tracing::warn!(error = %e, "folding index journals into index.json failed; they are replayed at the next start");
        }
        tracing::info!("berth stopped");
        served
    });
    Ok(Running {
        addr,
        metrics_addr,
        registry,
        stop,
        task,
        config,
        live,
    })
}

/// Reconciles the metadata store with every layout, then (with dedupe) replaces per-repository
/// copies of blobs by links to the shared store, while the registry serves.
fn spawn_reconcile(registry: Arc<Registry>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = registry.reconcile_all().await {
            tracing::error!(error = %e, "reconciling the metadata store failed");
            return;
        }
        if let Err(e) = registry.dedupe_all().await {
            tracing::error!(error = %e, "deduplicating blobs failed");
        }
    })
}

/// Runs the server's maintenance passes, garbage collection and scrubs (scheduled, or asked for
/// over the admin channel), one at a time (a scrub never sees a half-applied collection), logs
/// their outcome, and lets shutdown wait for a pass in progress instead of cancelling it
/// half-way.
#[derive(Clone)]
pub(crate) struct GcPasses {
    registry: Arc<Registry>,
    running: Arc<tokio::sync::Mutex<()>>,
    metrics: Arc<Metrics>,
}

impl GcPasses {
    fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Self {
            registry,
            running: Arc::default(),
            metrics,
        }
    }

    /// Runs one garbage collection pass with `opts`, handing its progress to `progress`;
    /// `trigger` names who asked for it in the log. The error is the engine's message.
    pub(crate) async fn run(
        &self,
        opts: &GcOptions,
        trigger: &'static str,
        progress: impl Fn(GcEvent) + Send + Sync,
    ) -> Result<GcReport, String> {
        let pass = self.registry.gc(opts, &progress);
        let metrics = &self.metrics;
        self.one_at_a_time(
            "garbage collection pass",
            trigger,
            pass,
            log_gc_report,
            |r, t| metrics.gc_finished(r, t),
        )
        .await
    }

    /// Runs one scrub with `opts`, handing its progress to `progress`; `trigger` names who asked
    /// for it in the log. The error is the engine's message.
    pub(crate) async fn run_scrub(
        &self,
        opts: &ScrubOptions,
        trigger: &'static str,
        progress: impl Fn(ScrubEvent) + Send + Sync,
    ) -> Result<ScrubReport, String> {
        let pass = self.registry.scrub(opts, &progress);
        let metrics = &self.metrics;
        self.one_at_a_time("scrub", trigger, pass, log_scrub_report, |r, t| {
            metrics.scrub_finished(r, t)
        })
        .await
    }

    /// Runs `pass` once no other pass runs, then logs its report with `log`, or its failure,
    /// and hands the outcome and the pass's duration to `measure` (metrics).
    async fn one_at_a_time<R>(
        &self,
        what: &str,
        trigger: &'static str,
        pass: impl Future<Output = berth_store::Result<R>>,
        log: impl FnOnce(&R, &'static str),
        measure: impl FnOnce(Result<&R, &str>, Duration),
    ) -> Result<R, String> {
        let _running = self.running.lock().await;
        let started = Instant::now();
        let outcome = pass.await.map_err(|e| e.to_string());
        measure(outcome.as_ref().map_err(String::as_str), started.elapsed());
        match outcome {
            Ok(report) => {
                log(&report, trigger);
                Ok(report)
            }
            Err(e) => {
                tracing::warn!(trigger, error = %e, "{what} failed; the next pass tries again");
                Err(e)
            }
        }
    }

    fn busy(&self) -> bool {
        self.running.try_lock().is_err()
    }

    /// Waits until no pass runs.
    async fn idle(&self) {
        drop(self.running.lock().await);
    }
}

/// Logs a pass: one summary line, one line per removal, one warning per problem.
fn log_gc_report(report: &GcReport, trigger: &'static str) {
    let dry_run = report.dry_run;
    tracing::info!(
        trigger,
        repositories = report.repositories,
        tags = report.tags,
        manifests = report.manifests,
        blobs = report.blobs,
        shared_blobs = report.shared_blobs,
        uploads = report.uploads,
        bytes_freed = report.bytes_freed,
        dry_run,
        "garbage collection pass finished"
    );
    for action in &report.actions {
        let kind = match action.kind {
            GcKind::Tag => "tag",
            GcKind::Manifest => "manifest",
            GcKind::Blob => "blob",
            GcKind::SharedBlob => "shared_blob",
            GcKind::Upload => "upload",
        };
        tracing::info!(
            trigger,
            kind,
            repository = action.repository.as_deref().unwrap_or("-"),
            target = %action.target,
            reason = %action.reason,
            bytes = action.bytes,
            dry_run,
            "{}",
            if dry_run {
                "garbage collection would remove"
            } else {
                "garbage collection removed"
            }
        );
    }
    for problem in &report.problems {
        tracing::warn!(trigger, %problem, "garbage collection kept more than it might have");
    }
}

/// Logs a scrub: one summary line, then one warning per problem naming its repository, tags and
/// digest, and what repair did about it.
fn log_scrub_report(report: &ScrubReport, trigger: &'static str) {
    tracing::info!(
        trigger,
        repositories = report.repositories,
        manifests = report.manifests_checked,
        blobs = report.blobs_checked,
        bytes_hashed = report.bytes_hashed,
        problems = report.problems.len(),
        repaired = report.repaired,
        repair = report.repair,
        "scrub finished"
    );
    for problem in &report.problems {
        // The kind as the report's JSON spells it (`corrupt_blob`, ...).
        let kind = serde_json::to_value(problem.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", problem.kind));
        tracing::warn!(
            trigger,
            %kind,
            repository = problem.repository.as_deref().unwrap_or("-"),
            tags = %problem.tags.join(","),
            digest = problem.digest.as_deref().unwrap_or("-"),
            detail = %problem.detail,
            repaired = problem.repaired.as_deref(),
            "scrub found a problem"
        );
    }
}

/// A pass the server runs on a schedule (its settings are read from [`Live`] each time).
#[derive(Clone, Copy)]
enum Scheduled {
    /// Garbage collection and retention with the server's settings.
    Gc,
    /// A scrub of the whole root; one that would repair is skipped while the registry is
    /// read-only.
    Scrub { read_only: bool },
}

/// Runs `job` `interval` after start-up and then `interval` after each pass ends, until
/// shutdown (a pass in progress finishes first). A zero interval pauses the schedule. A failed
/// pass is logged and simply tried again at the next interval. The interval and the pass's
/// settings come from `live`, so a reload reaches them: a new interval counts from the end of
/// the last pass (or from start-up).
fn spawn_schedule(
    passes: GcPasses,
    job: Scheduled,
    mut live: watch::Receiver<Live>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut since = tokio::time::Instant::now();
        loop {
            let interval = match job {
                Scheduled::Gc => live.borrow_and_update().gc_interval,
                Scheduled::Scrub { .. } => live.borrow_and_update().scrub_interval,
            };
            let due = async {
                if interval.is_zero() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep_until(since + interval).await;
            };
            tokio::select! {
                () = due => {}
                changed = live.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                _ = stop.wait_for(|s| *s) => return,
            }
            let settings = live.borrow_and_update().clone();
            match job {
                Scheduled::Gc => {
                    let _ = passes.run(&settings.gc, "schedule", |_| {}).await;
                }
                Scheduled::Scrub { read_only: true } if settings.scrub_repair => {
                    tracing::info!(
                        "skipping the scheduled scrub: [scrub] repair is on and the registry \
                         is read-only ([storage] read_only)"
                    );
                }
                Scheduled::Scrub { .. } => {
                    let opts = ScrubOptions {
                        repo: None,
                        repair: settings.scrub_repair,
                    };
                    let _ = passes.run_scrub(&opts, "schedule", |_| {}).await;
                }
            }
            since = tokio::time::Instant::now();
        }
    })
}

/// Writes pull statistics every few seconds, and once more at shutdown.
fn spawn_pull_stats(registry: Arc<Registry>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if let Err(e) = registry.flush_pull_stats().await {
                tracing::warn!(error = %e, "writing pull statistics failed; will retry");
            }
            if stopping {
                return;
            }
        }
    })
}

/// Seconds between sweeps that drop the cached state of idle repositories: a repository
/// unused for one to two sweeps is read from disk again when next used.
const EVICT_EVERY: u32 = 30;

/// Folds index journals into their `index.json` about once a second, so other tools reading
/// the layouts see new tags soon (the final fold runs after the last request, at shutdown), and
/// every [`EVICT_EVERY`] seconds forgets the cached state of idle repositories.
fn spawn_housekeeping(registry: Arc<Registry>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        for tick in 1u32.. {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = registry.compact_journals().await {
                tracing::warn!(error = %e, "folding index journals into index.json failed; will retry");
            }
            if tick % EVICT_EVERY == 0 {
                let dropped = registry.evict_idle();
                if dropped > 0 {
                    tracing::debug!(dropped, "forgot the cached state of idle repositories");
                }
            }
        }
    })
}

fn spawn_upload_expiry(
    registry: Arc<Registry>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let every = (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = registry.expire_uploads().await {
                tracing::warn!(error = %e, "expiring abandoned uploads failed; will retry");
            }
        }
    })
}

/// Runs the registry until SIGINT or SIGTERM. On SIGHUP the configuration is read again from
/// `source` (when a file was given) and what can change while serving is applied; `logging`
/// is the process's subscriber, whose level a reload may change.
pub async fn run(
    config: Config,
    source: Option<ConfigSource>,
    logging: Logging,
) -> Result<(), ServeError> {
    // Listen for SIGHUP before serving, so that one sent as soon as berth says it serves
    // reloads rather than ends the process.
    let hangups = reload::listen_for_sighup();
    let running = start(config).await?;
    let stop = running.stopper();
    tokio::spawn(reload::on_sighup(
        running.reloader(logging),
        source,
        hangups,
        stop.subscribe(),
    ));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop.send(true);
    });
    running.wait().await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
