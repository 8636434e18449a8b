//! The operational endpoints of a server, outside the distribution API's `/v2/`: `/livez`,
//! `/readyz` and (when enabled) `/metrics`. Owns the readiness checks and their cache; it must
//! not contain registry logic (the probes are the engine's) nor routes of the OCI API (those
//! are `berth-api`'s one dispatch, which the composition root places behind these routes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_store::Registry;
use serde::Serialize;

use crate::metrics::{self, Metrics};

/// How long the storage write probe's result is reused: probes are cheap, but a readiness
/// check polled every second should not write every second.
pub const STORAGE_PROBE_CACHE: Duration = Duration::from_secs(2);

/// What the readiness checks work with.
pub struct Health {
    registry: Arc<Registry>,
    /// With `[storage] read_only` nothing is written, so writability is not required.
    read_only: bool,
    /// The last storage probe: when, and its outcome. Held while a probe runs.
    storage: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// The `/readyz` answer: each check's outcome ("ok" or why not) and which failed.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Checks,
    /// The names of the failed checks.
    pub failed: Vec<&'static str>,
}

/// The outcome of each readiness check: "ok", or why not.
#[derive(Debug, Serialize)]
pub struct Checks {
    /// A tiny file can be written and removed under the root through the storage driver.
    pub storage: String,
    /// The metadata store answers a read.
    pub metadata: String,
    /// The start-up reconciliation of the metadata store with the layouts has finished.
    pub reconciliation: String,
}

const OK: &str = "ok";

impl Health {
    pub fn new(registry: Arc<Registry>, read_only: bool) -> Arc<Health> {
        Arc::new(Health {
            registry,
            read_only,
            storage: tokio::sync::Mutex::new(None),
        })
    }

    /// Runs every readiness check (the storage probe at most every [`STORAGE_PROBE_CACHE`]).
    pub async fn readiness(&self) -> Readiness {
        let storage = if self.read_only {
            "ok (not probed: [storage] read_only)".to_owned()
        } else {
            self.storage_probe().await
        };
        let reg = self.registry.clone();
        let metadata = match tokio::task::spawn_blocking(move || reg.probe_meta()).await {
            Ok(Ok(())) => OK.to_owned(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        let reconciliation = if self.registry.reconciled() {
            OK.to_owned()
        } else {
            "in progress".to_owned()
        };
        let mut failed = Vec::new();
        if !storage.starts_with(OK) {
            failed.push("storage");
        }
        if metadata != OK {
            failed.push("metadata");
        }
        if reconciliation != OK {
            failed.push("reconciliation");
        }
        Readiness {
            ready: failed.is_empty(),
            checks: Checks {
                storage,
                metadata,
                reconciliation,
            },
            failed,
        }
    }

    async fn storage_probe(&self) -> String {
        let mut last = self.storage.lock().await;
        let outcome = match &*last {
            Some((at, outcome)) if at.elapsed() < STORAGE_PROBE_CACHE => outcome.clone(),
            _ => {
                let outcome = self
                    .registry
                    .probe_storage()
                    .await
                    .map_err(|e| format!("the root is not writable: {e}"));
                *last = Some((Instant::now(), outcome.clone()));
                outcome
            }
        };
        match outcome {
            Ok(()) => OK.to_owned(),
            Err(why) => why,
        }
    }
}

/// What the operational routes serve.
#[derive(Clone)]
struct Ops {
    health: Arc<Health>,
    metrics: Option<Arc<Metrics>>,
}

/// `/livez` and `/readyz`, and `/metrics` when `metrics` is given.
pub fn routes(health: Arc<Health>, metrics: Option<Arc<Metrics>>) -> Router {
    let with_metrics = metrics.is_some();
    let mut router = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz));
    if with_metrics {
        router = router.route("/metrics", get(scrape));
    }
    router.with_state(Ops { health, metrics })
}

/// 200 while the process runs.
async fn livez() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"live\":true}",
    )
        .into_response()
}

/// 200 when every readiness check passes, 503 otherwise; the JSON body says which failed.
async fn readyz(State(ops): State<Ops>) -> Response {
    let readiness = ops.health.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&readiness)
        .unwrap_or_else(|e| format!("{{\"ready\":false,\"error\":\"{e}\"}}"));
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn scrape(State(ops): State<Ops>) -> Response {
    match &ops.metrics {
        Some(m) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            m.render(&ops.health.registry).await,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
