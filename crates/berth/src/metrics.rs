//! The server's Prometheus metrics, rendered in the OpenMetrics text exposition format at
//! `/metrics`. Owns every metric berth exports: the HTTP API reports each request through
//! [`berth_api::RequestObserver`], the engine its metadata transactions and lock waits through
//! [`berth_store::StoreObserver`], and `serve` its garbage collection and scrub passes. The
//! library crates never name a metrics type; this module must not hold registry logic.
//!
//! Label values are bounded: routes are endpoint kinds (never paths), methods a fixed set,
//! statuses the few the API answers. Storage sizes come from the metadata store's counts,
//! refreshed at most every [`STORAGE_REFRESH`] and only when scraped, never from a disk walk.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use berth_api::{Exchange, RequestObserver, Route};
use berth_store::gc::GcReport;
use berth_store::scrub::ScrubReport;
use berth_store::{Registry, StoreObserver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Storage gauges are recomputed from the metadata store at most this often.
pub const STORAGE_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteMethod {
    route: &'static str,
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request durations: 1 ms to about 33 s.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Metadata transactions and lock waits: 50 µs to about 1.6 s.
fn fast_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Maintenance passes: 0.1 s to about 1.8 h.
fn pass_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 4.0, 9))
}

/// The method as a label: one of the methods the API serves, or `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Whether a request streams blob bytes into an upload session.
fn is_upload(route: Route, method: &Method) -> bool {
    matches!(
        (route, method),
        (Route::UploadStart, &Method::POST) | (Route::Upload, &Method::PATCH | &Method::PUT)
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Counters of one kind of maintenance pass (garbage collection or scrub).
struct PassMetrics {
    runs: Family<ResultLabel, Counter>,
    duration: Histogram,
    last_success: Gauge,
}

impl PassMetrics {
    fn new() -> Self {
        PassMetrics {
            runs: Family::default(),
            duration: pass_buckets(),
            last_success: Gauge::default(),
        }
    }

    fn register(&self, registry: &mut prometheus_client::registry::Registry, pass: &str) {
        registry.register(
            format!("{pass}_runs"),
            format!("{pass} passes by result (success, failure, dry_run)"),
            self.runs.clone(),
        );
        registry.register(
            format!("{pass}_duration_seconds"),
            format!("How long {pass} passes took"),
            self.duration.clone(),
        );
        registry.register(
            format!("{pass}_last_success_timestamp_seconds"),
            format!("When the last successful {pass} pass ended (Unix time; 0: none yet)"),
            self.last_success.clone(),
        );
    }

    fn record(&self, result: &'static str, elapsed: Duration) {
        self.runs.get_or_create(&ResultLabel { result }).inc();
        self.duration.observe(elapsed.as_secs_f64());
        if result == "success" {
            self.last_success.set(unix_now());
        }
    }
}

/// Every metric of a server.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteMethod>,
    request_bytes: Family<RouteLabel, Counter>,
    response_bytes: Family<RouteLabel, Counter>,
    uploads_in_progress: Gauge,
    repositories_loaded: Gauge,
    storage_repositories: Gauge,
    storage_blobs: Gauge,
    storage_shared_blobs: Gauge,
    storage_bytes: Gauge,
    /// When the storage gauges were last computed; held while they are recomputed.
    storage_refreshed: tokio::sync::Mutex<Option<Instant>>,
    gc: PassMetrics,
    gc_removed: Family<KindLabel, Counter>,
    gc_bytes_freed: Counter,
    scrub: PassMetrics,
    scrub_problems: Counter,
    scrub_repaired: Counter,
    scrub_bytes_hashed: Counter,
    meta_transaction: Histogram,
    lock_wait: Histogram,
}

impl Metrics {
    /// Creates and registers every metric (all under the `berth_` prefix).
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics {
            registry: prometheus_client::registry::Registry::with_prefix("berth"),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            uploads_in_progress: Gauge::default(),
            repositories_loaded: Gauge::default(),
            storage_repositories: Gauge::default(),
            storage_blobs: Gauge::default(),
            storage_shared_blobs: Gauge::default(),
            storage_bytes: Gauge::default(),
            storage_refreshed: tokio::sync::Mutex::new(None),
            gc: PassMetrics::new(),
            gc_removed: Family::default(),
            gc_bytes_freed: Counter::default(),
            scrub: PassMetrics::new(),
            scrub_problems: Counter::default(),
            scrub_repaired: Counter::default(),
            scrub_bytes_hashed: Counter::default(),
            meta_transaction: fast_buckets(),
            lock_wait: fast_buckets(),
        };
        let r = &mut m.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route class, method and status (499: the client left)",
            m.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time until the response head was ready, by route class and method",
            m.request_duration.clone(),
        );
        r.register(
            "http_request_bytes",
            "Request body bytes received, by route class",
            m.request_bytes.clone(),
        );
        r.register(
            "http_response_bytes",
            "Response body bytes sent, by route class",
            m.response_bytes.clone(),
        );
        r.register(
            "uploads_in_progress",
            "Blob upload requests (POST, PATCH, PUT) receiving bytes now",
            m.uploads_in_progress.clone(),
        );
        r.register(
            "repositories_loaded",
            "Repositories whose index is cached in memory (idle ones are dropped within a minute)",
            m.repositories_loaded.clone(),
        );
        r.register(
            "storage_repositories",
            "Repositories (from the metadata store, refreshed at most every 30s)",
            m.storage_repositories.clone(),
        );
        r.register(
            "storage_blobs",
            "Blobs linked into repositories, counting each repository's link once",
            m.storage_blobs.clone(),
        );
        r.register(
            "storage_shared_blobs",
            "Distinct blobs and manifests (deduplicated)",
            m.storage_shared_blobs.clone(),
        );
        r.register(
            "storage_bytes",
            "Bytes of the distinct blobs and manifests (deduplicated)",
            m.storage_bytes.clone(),
        );
        m.gc.register(r, "gc");
        r.register(
            "gc_removed",
            "What garbage collection removed, by kind (tag, manifest, blob, shared_blob, upload)",
            m.gc_removed.clone(),
        );
        r.register(
            "gc_bytes_freed",
            "Bytes whose last copy garbage collection removed",
            m.gc_bytes_freed.clone(),
        );
        m.scrub.register(r, "scrub");
        r.register(
            "scrub_problems",
            "Problems scrubs found",
            m.scrub_problems.clone(),
        );
        r.register(
            "scrub_repaired",
            "Problems scrubs repaired",
            m.scrub_repaired.clone(),
        );
        r.register(
            "scrub_bytes_hashed",
            "Bytes scrubs re-hashed",
            m.scrub_bytes_hashed.clone(),
        );
        r.register(
            "metadata_transaction_duration_seconds",
            "Metadata store write transactions, retries included",
            m.meta_transaction.clone(),
        );
        r.register(
            "lock_wait_seconds",
            "Time spent waiting for repository write locks",
            m.lock_wait.clone(),
        );
        // Show every route class from the start, so rates work from the first scrape.
        for route in Route::ALL {
            let label = RouteLabel {
                route: route.as_str(),
            };
            let _ = m.request_bytes.get_or_create(&label);
            let _ = m.response_bytes.get_or_create(&label);
        }
        Arc::new(m)
    }

    /// The metrics as OpenMetrics text ([`CONTENT_TYPE`]), after refreshing the storage gauges
    /// from `registry`'s metadata store if they are older than [`STORAGE_REFRESH`].
    pub async fn render(&self, registry: &Arc<Registry>) -> String {
        self.refresh_storage(registry).await;
        self.repositories_loaded
            .set(i64::try_from(registry.loaded_repositories()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }

    async fn refresh_storage(&self, registry: &Arc<Registry>) {
        let mut refreshed = self.storage_refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < STORAGE_REFRESH) {
            return;
        }
        let reg = registry.clone();
        match tokio::task::spawn_blocking(move || reg.meta_counts()).await {
            Ok(Ok(c)) => {
                let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                self.storage_repositories.set(gauge(c.repositories));
                self.storage_blobs.set(gauge(c.repo_blobs));
                self.storage_shared_blobs.set(gauge(c.shared_blobs));
                self.storage_bytes.set(gauge(c.shared_bytes));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot count the metadata store's records"),
            Err(e) => tracing::warn!(error = %e, "cannot count the metadata store's records"),
        }
        *refreshed = Some(Instant::now());
    }

    /// Records a garbage collection pass that took `elapsed`.
    pub fn gc_finished(&self, outcome: Result<&GcReport, &str>, elapsed: Duration) {
        let result = match outcome {
            Err(_) => "failure",
            Ok(r) if r.dry_run => "dry_run",
            Ok(_) => "success",
        };
        self.gc.record(result, elapsed);
        let Ok(report) = outcome else { return };
        if report.dry_run {
            return;
        }
        for (kind, n) in [
            ("tag", report.tags),
            ("manifest", report.manifests),
            ("blob", report.blobs),
            ("shared_blob", report.shared_blobs),
            ("upload", report.uploads),
        ] {
            self.gc_removed.get_or_create(&KindLabel { kind }).inc_by(n);
        }
        self.gc_bytes_freed.inc_by(report.bytes_freed);
    }

    /// Records a scrub that took `elapsed`.
    pub fn scrub_finished(&self, outcome: Result<&ScrubReport, &str>, elapsed: Duration) {
        self.scrub.record(
            if outcome.is_ok() {
                "success"
            } else {
                "failure"
            },
            elapsed,
        );
        if let Ok(report) = outcome {
            self.scrub_problems.inc_by(report.problems.len() as u64);
            self.scrub_repaired.inc_by(report.repaired);
            self.scrub_bytes_hashed.inc_by(report.bytes_hashed);
        }
    }
}

impl RequestObserver for Metrics {
    fn started(&self, route: Route, method: &Method) {
        if is_upload(route, method) {
            self.uploads_in_progress.inc();
        }
    }

    fn bytes_in(&self, route: Route, n: u64) {
        self.request_bytes
            .get_or_create(&RouteLabel {
                route: route.as_str(),
            })
            .inc_by(n);
    }

    fn bytes_out(&self, route: Route, n: u64) {
        self.response_bytes
            .get_or_create(&RouteLabel {
                route: route.as_str(),
            })
            .inc_by(n);
    }

    fn finished(&self, e: &Exchange<'_>) {
        if is_upload(e.route, e.method) {
            self.uploads_in_progress.dec();
        }
        let (route, method) = (e.route.as_str(), method_label(e.method));
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status: e.status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteMethod { route, method })
            .observe(e.duration.as_secs_f64());
    }
}

impl StoreObserver for Metrics {
    fn meta_transaction(&self, elapsed: Duration) {
        self.meta_transaction.observe(elapsed.as_secs_f64());
    }

    fn lock_wait(&self, elapsed: Duration) {
        self.lock_wait.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(route: Route, method: &Method, status: u16) -> Exchange<'_> {
        Exchange {
            request_id: "1",
            method,
            route,
            repository: Some("a"),
            status,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::from_millis(3),
        }
    }

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        out
    }

    #[test]
    fn requests_are_counted_by_route_method_and_status() {
        let m = Metrics::new();
        let get = Method::GET;
        m.started(Route::Manifest, &get);
        m.finished(&exchange(Route::Manifest, &get, 200));
        let odd = Method::from_bytes(b"BREW").unwrap();
        m.started(Route::Unknown, &odd);
        m.finished(&exchange(Route::Unknown, &odd, 404));
        let t = text(&m);
        assert!(
            t.contains(
                r#"berth_http_requests_total{route="manifest",method="GET",status="200"} 1"#
            ),
            "{t}"
        );
        assert!(
            t.contains(
                r#"berth_http_requests_total{route="unknown",method="other",status="404"} 1"#
            ),
            "{t}"
        );
        assert!(
            t.contains(
                r#"berth_http_request_duration_seconds_count{route="manifest",method="GET"} 1"#
            ),
            "{t}"
        );
    }

    #[test]
    fn upload_requests_are_in_progress_until_they_finish() {
        let m = Metrics::new();
        let patch = Method::PATCH;
        m.started(Route::Upload, &patch);
        assert_eq!(m.uploads_in_progress.get(), 1);
        m.bytes_in(Route::Upload, 10);
        m.finished(&exchange(Route::Upload, &patch, 202));
        assert_eq!(m.uploads_in_progress.get(), 0);
        assert!(text(&m).contains(r#"berth_http_request_bytes_total{route="upload"} 10"#));
    }

    #[test]
    fn gc_passes_count_removals_but_dry_runs_only_as_runs() {
        let m = Metrics::new();
        let report = GcReport {
            tags: 2,
            blobs: 3,
            bytes_freed: 100,
            ..Default::default()
        };
        m.gc_finished(Ok(&report), Duration::from_secs(1));
        let dry = GcReport {
            dry_run: true,
            tags: 5,
            ..Default::default()
        };
        m.gc_finished(Ok(&dry), Duration::from_secs(1));
        m.gc_finished(Err("boom"), Duration::from_secs(1));
        let t = text(&m);
        for want in [
            r#"berth_gc_runs_total{result="success"} 1"#,
            r#"berth_gc_runs_total{result="dry_run"} 1"#,
            r#"berth_gc_runs_total{result="failure"} 1"#,
            r#"berth_gc_removed_total{kind="tag"} 2"#,
            r#"berth_gc_removed_total{kind="blob"} 3"#,
            "berth_gc_bytes_freed_total 100",
            "berth_gc_duration_seconds_count 3",
        ] {
            assert!(t.contains(want), "{want} missing from\n{t}");
        }
        assert!(m.gc.last_success.get() > 0);
    }
}
