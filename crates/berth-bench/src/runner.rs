//! The measuring loop: `c` workers take op indices until `n` are taken or the duration limit
//! passes, timing each op; a progress line on stderr while it runs.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Res;

/// One op: given its index, returns the bytes it moved.
pub type OpFn = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Res<u64>> + Send>> + Send + Sync>;

/// Wraps an async closure as an [`OpFn`].
pub fn op<F, Fut>(f: F) -> OpFn
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Res<u64>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// What a measured run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latencies of the successful ops, in microseconds.
    pub lat_us: Vec<u64>,
    /// Failed ops (including ops that timed out).
    pub errors: u64,
    /// Bytes moved by successful ops.
    pub bytes: u64,
    /// Wall time from the first op started to the last finished.
    pub elapsed: Duration,
    /// Whether the duration limit stopped the run before `n` ops.
    pub limited: bool,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

#[derive(Default)]
struct Shared {
    next: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    limited: AtomicBool,
    samples: Mutex<Vec<String>>,
}

impl Shared {
    fn note_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock() {
            if s.len() < 5 && !s.contains(&e) {
                s.push(e);
            }
        }
    }
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing.
    Quiet,
    /// One line on stderr, updated in place (TTY) or repeated every few seconds (not a TTY).
    Stderr,
}

/// Prints a status message on stderr unless quiet (clearing a progress line first on a TTY).
pub fn say(progress: Progress, msg: &str) {
    if progress == Progress::Stderr {
        let mut err = std::io::stderr().lock();
        if std::io::stderr().is_terminal() {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{msg}");
    }
}

/// Runs up to `n` ops with `c` workers until `limit` passes; each op may take at most
/// `op_timeout`.
pub async fn drive(
    name: &str,
    n: u64,
    c: usize,
    limit: Duration,
    op_timeout: Duration,
    progress: Progress,
    op: OpFn,
) -> Outcome {
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let deadline = start + limit;
    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress_task = (progress == Progress::Stderr).then(|| {
        let (shared, stop, name) = (shared.clone(), stop_progress.clone(), name.to_owned());
        tokio::spawn(async move { report_progress(&name, n, start, &shared, &stop).await })
    });

    let mut workers = Vec::new();
    for _ in 0..c.max(1) {
        let (shared, op) = (shared.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                if Instant::now() >= deadline {
                    shared.limited.store(true, Ordering::Relaxed);
                    break;
                }
                let i = shared.next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                match tokio::time::timeout(op_timeout, op(i)).await {
                    Ok(Ok(bytes)) => {
                        lat.push(t.elapsed().as_micros() as u64);
                        shared.bytes.fetch_add(bytes, Ordering::Relaxed);
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => shared.note_error(e),
                    Err(_) => shared.note_error(format!("op timed out after {op_timeout:?}")),
                }
            }
            lat
        }));
    }
    let mut lat_us = Vec::new();
    for w in workers {
        match w.await {
            Ok(lat) => lat_us.extend(lat),
            Err(e) => shared.note_error(format!("worker failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(t) = progress_task {
        let _ = t.await;
    }
    let error_samples = shared.samples.lock().map(|s| s.clone()).unwrap_or_default();
    Outcome {
        lat_us,
        errors: shared.errors.load(Ordering::Relaxed),
        bytes: shared.bytes.load(Ordering::Relaxed),
        elapsed,
        limited: shared.limited.load(Ordering::Relaxed)
            && shared.done.load(Ordering::Relaxed) + shared.errors.load(Ordering::Relaxed) < n,
        error_samples,
    }
}

async fn report_progress(name: &str, n: u64, start: Instant, shared: &Shared, stop: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut next = Instant::now() + every;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stopping = stop.load(Ordering::Relaxed);
        if stopping {
            if tty {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            }
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next += every;
        let secs = start.elapsed().as_secs_f64();
        let done = shared.done.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let mib = shared.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
        let line = format!(
            "{name}: {done}/{n} ops, {errors} errors, {:.1} ops/s, {:.1} MiB/s, {secs:.1}s",
            done as f64 / secs.max(1e-9),
            mib / secs.max(1e-9),
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

/// Runs `f(0..count)` with `c` workers (setup work, untimed); stops at the first error.
pub async fn parallel<F, Fut>(count: usize, c: usize, f: F) -> Res<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Res<()>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(None::<String>));
    let mut workers = Vec::new();
    for _ in 0..c.max(1) {
        let (f, next, failed) = (f.clone(), next.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if failed.lock().map(|g| g.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    return;
                }
                if let Err(e) = f(i).await {
                    if let Ok(mut g) = failed.lock() {
                        g.get_or_insert(e);
                    }
                    return;
                }
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| format!("setup worker failed: {e}"))?;
    }
    let err = failed.lock().map(|mut g| g.take()).unwrap_or(None);
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_ops_errors_and_bounds() {
        let out = drive(
            "t",
            10,
            3,
            Duration::from_secs(10),
            Duration::from_secs(1),
            Progress::Quiet,
            op(|i| async move {
                if i % 5 == 4 {
                    Err(format!("boom {i}"))
                } else {
                    Ok(100)
                }
            }),
        )
        .await;
        assert_eq!(out.lat_us.len(), 8);
        assert_eq!(out.errors, 2);
        assert_eq!(out.bytes, 800);
        assert!(!out.limited);
        assert_eq!(out.error_samples.len(), 2);

        let out = drive(
            "t",
            1_000_000,
            2,
            Duration::from_millis(100),
            Duration::from_secs(1),
            Progress::Quiet,
            op(|_| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(1)
            }),
        )
        .await;
        assert!(out.limited);
        assert!(out.lat_us.len() < 100, "{}", out.lat_us.len());
    }
}
