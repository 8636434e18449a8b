//! Operating a server: Prometheus metrics after a push and a pull, `/livez` and `/readyz`, the
//! access log and request ids, `berth config check` on the new keys, configuration reload on
//! SIGHUP, and graceful shutdown on SIGTERM with an upload in flight.
//!
//! The metrics and health tests run an in-process server each (counters are per server); the
//! log, reload and signal tests run the real binary and signal only the child they started.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testkit::berth_oci::Digest;
use berth_testkit::{random_bytes, unique_repo, TestRegistry};
use serde_json::Value;

use crate::cli::berth as berth_cli;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

// ---------------------------------------------------------------------------------------------
// Helpers

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let have: Vec<(&str, &str)> = rest
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|want| have.contains(want))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn scrape(base: &str) -> String {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    r.text().await.unwrap()
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(base: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A `berth serve` child process whose stderr (JSON log lines) is collected as it arrives.
struct Berth {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl Berth {
    /// Starts `berth serve --config <config>` and waits until it says it serves.
    fn start(config: &Path) -> Berth {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .env_remove("BERTH_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start berth");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut berth = Berth {
            child,
            lines,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let serving = berth.wait_for_log("the serving line", |v| {
            v["fields"]["message"] == "berth is serving"
        });
        berth.addr = serving["fields"]["addr"].as_str().unwrap().parse().unwrap();
        berth
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every log line so far, parsed (each must be JSON).
    fn logs(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
            })
            .collect()
    }

    /// Waits (at most 20 s, or 1 s after the process exited) for a log line matching `pred`
    /// and returns it.
    fn wait_for_log(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut exited: Option<Instant> = None;
        loop {
            if let Some(v) = self.logs().into_iter().find(|v| pred(v)) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let since = *exited.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(1),
                    "berth exited ({status}) without logging {what}: {:#?}",
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no log line for {what}: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to this child, and only to it.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most `limit`) for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "berth did not exit: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A configuration file in `dir` for a server on `root` at an ephemeral port, logging JSON.
fn write_config(dir: &Path, root: &Path, extra: &str) -> PathBuf {
    let path = dir.join("berth.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nroot = {root:?}\n{extra}\n[log]\nformat = \"json\"\n",
            root = root.to_str().unwrap()
        ),
    )
    .unwrap();
    path
}

/// One HTTP/1.1 connection kept open across requests.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeepAlive {
            reader: BufReader::new(stream),
        }
    }

    /// Sends `GET path` on this connection and returns the status and body.
    fn get(&mut self, path: &str) -> (u16, String) {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: berth\r\n\r\n"
        )
        .unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
                assert!(
                    !(k.eq_ignore_ascii_case("connection") && v.trim() == "close"),
                    "the server is closing the connection"
                );
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_a_push_and_a_pull() {
    let reg = TestRegistry::start();
    let repo = unique_repo("ops/metrics");
    let image = reg.push_image(&repo, "v1", 2).await;
    let blobs = image.blobs();
    let blob_bytes: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), image.manifest.len());
    for (d, bytes) in &blobs {
        let r = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), bytes.len());
    }

    let text = scrape(&reg.base).await;
    let requests = |route: &str, method: &str, status: &str| {
        metric(
            &text,
            "berth_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    let n = blobs.len() as f64;
    assert_eq!(requests("upload_start", "POST", "202"), n, "{text}");
    assert_eq!(requests("upload", "PUT", "201"), n, "{text}");
    assert_eq!(requests("manifest", "PUT", "201"), 1.0, "{text}");
    assert_eq!(requests("manifest", "GET", "200"), 1.0, "{text}");
    assert_eq!(requests("blob", "GET", "200"), n, "{text}");
    assert_eq!(
        metric(
            &text,
            "berth_http_request_duration_seconds_count",
            &[("route", "blob"), ("method", "GET")]
        ),
        n
    );
    // Bytes in: every blob and the manifest; bytes out: every blob and the manifest.
    let bytes_in = metric(&text, "berth_http_request_bytes_total", &[]);
    assert!(
        bytes_in >= (blob_bytes + image.manifest.len()) as f64,
        "{bytes_in} < pushed bytes\n{text}"
    );
    assert!(
        metric(
            &text,
            "berth_http_request_bytes_total",
            &[("route", "upload")]
        ) >= blob_bytes as f64
    );
    let blob_out = metric(
        &text,
        "berth_http_response_bytes_total",
        &[("route", "blob")],
    );
    assert!(blob_out >= blob_bytes as f64, "{blob_out}\n{text}");
    let manifest_out = metric(
        &text,
        "berth_http_response_bytes_total",
        &[("route", "manifest")],
    );
    assert!(manifest_out >= image.manifest.len() as f64, "{text}");
    assert_eq!(
        metric(&text, "berth_uploads_in_progress", &[]),
        0.0,
        "{text}"
    );
    // Storage, from the metadata store: one repository, its blobs and manifest once each.
    assert_eq!(
        metric(&text, "berth_storage_repositories", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "berth_storage_blobs", &[]), n + 1.0, "{text}");
    assert_eq!(
        metric(&text, "berth_storage_shared_blobs", &[]),
        n + 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "berth_storage_bytes", &[]),
        (blob_bytes + image.manifest.len()) as f64,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "berth_metadata_transaction_duration_seconds_count",
            &[]
        ) > 0.0
    );
    assert!(metric(&text, "berth_lock_wait_seconds_count", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_that_fail_by_their_status() {
    let reg = TestRegistry::start();
    let repo = unique_repo("ops/fail");
    let r = reg.get(&format!("/v2/{repo}/manifests/nope")).await;
    assert_eq!(r.status(), 404);
    let r = reg.get("/v2/some/where/else").await;
    assert_eq!(r.status(), 404);
    let text = scrape(&reg.base).await;
    let count = |route: &str| {
        metric(
            &text,
            "berth_http_requests_total",
            &[("route", route), ("status", "404")],
        )
    };
    assert_eq!(count("manifest"), 1.0, "{text}");
    assert_eq!(count("unknown"), 1.0, "{text}");
    // Scrapes and health checks are not API requests.
    assert_eq!(
        metric(&text, "berth_http_requests_total", &[]),
        2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_garbage_collection_passes() {
    let reg = TestRegistry::start_with(|c| c.gc.interval = Duration::ZERO);
    let root = reg.root().to_str().unwrap().to_owned();
    let out = berth_cli(&["gc", "--dry-run", "--json", "--root", &root]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = berth_cli(&["gc", "--json", "--root", &root]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = scrape(&reg.base).await;
    assert_eq!(
        metric(&text, "berth_gc_runs_total", &[("result", "dry_run")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "berth_gc_runs_total", &[("result", "success")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "berth_gc_duration_seconds_count", &[]),
        2.0,
        "{text}"
    );
    assert!(metric(&text, "berth_gc_last_success_timestamp_seconds", &[]) > 1.6e9);
}

/// Idle repositories' cached state is dropped (the server sweeps every 30 s; the test calls the
/// sweep itself): `berth_repositories_loaded` falls, and every repository still serves from
/// disk, tags recorded in a journal included.
#[tokio::test(flavor = "multi_thread")]
async fn idle_repositories_are_dropped_from_memory_and_still_served() {
    let reg = TestRegistry::start_with(|c| c.storage.index_journal_from = 2);
    let repos: Vec<String> = (0..3).map(|_| unique_repo("ops/evict")).collect();
    let mut images = Vec::new();
    for repo in &repos {
        let image = reg.push_image(repo, "a", 1).await;
        for tag in ["b", "c"] {
            let r = reg
                .put_manifest(
                    repo,
                    tag,
                    berth_testkit::berth_oci::media::OCI_MANIFEST,
                    &image.manifest,
                )
                .await;
            assert_eq!(r.status(), 201);
        }
        images.push(image);
    }
    let loaded = metric(&scrape(&reg.base).await, "berth_repositories_loaded", &[]);
    assert!(
        loaded >= 3.0,
        "{loaded} repositories loaded after pushing to 3"
    );

    // A repository with more than 256 entries keeps its state.
    let big = unique_repo("ops/evict-big");
    let image = reg.push_image(&big, "t0", 1).await;
    for i in 1..=256 {
        let r = reg
            .put_manifest(
                &big,
                &format!("t{i}"),
                berth_testkit::berth_oci::media::OCI_MANIFEST,
                &image.manifest,
            )
            .await;
        assert_eq!(r.status(), 201);
    }

    // Used since the last sweep: kept by the first, dropped by a later one once the background
    // fold has emptied its journal (a journaled repository is never dropped).
    let mut dropped = 0;
    for _ in 0..20 {
        dropped += reg.registry.evict_idle();
        if dropped >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(dropped, 3, "the three small repositories are dropped");
    assert_eq!(reg.registry.loaded_repositories(), 1, "the large one stays");
    let after = metric(&scrape(&reg.base).await, "berth_repositories_loaded", &[]);
    assert!(
        after < loaded,
        "{after} loaded after the sweeps, {loaded} before"
    );

    for (repo, image) in repos.iter().zip(&images) {
        for tag in ["a", "b", "c"] {
            let r = reg.get(&format!("/v2/{repo}/manifests/{tag}")).await;
            assert_eq!(r.status(), 200, "{repo}:{tag} after eviction");
            assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
        }
        let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["tags"], serde_json::json!(["a", "b", "c"]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_have_their_own_listener() {
    // The testkit does not expose the metrics listener's address: start a server directly.
    let dir = tempfile::tempdir().unwrap();
    let config = berth::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        root: dir.path().to_owned(),
        metrics: berth::config::MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:0".into(),
        },
        ..Default::default()
    };
    let running = berth::serve::start(config).await.unwrap();
    let metrics = format!(
        "http://{}",
        running.metrics_addr.expect("a metrics listener")
    );
    let text = scrape(&metrics).await;
    assert!(text.contains("berth_http_requests"), "{text}");
    let r = reqwest::get(format!("{metrics}/livez")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("http://{}/metrics", running.addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not on the main listener");
    running.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Health

#[tokio::test(flavor = "multi_thread")]
async fn livez_answers_while_the_process_runs() {
    let reg = TestRegistry::start();
    let r = reg.get("/livez").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_root_is_not_writable() {
    let reg = TestRegistry::start();
    eventually(Duration::from_secs(20), "readiness", || async {
        (readyz(&reg.base).await.0 == 200).then_some(())
    })
    .await;
    let (_, body) = readyz(&reg.base).await;
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["checks"]["storage"], "ok", "{body}");

    // Every write goes through `<root>/.tmp/`: a file in its place makes the root unwritable
    // (chmod would not stop a test running as root).
    let tmp = reg.root().join(".tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let body = eventually(Duration::from_secs(20), "unreadiness", || async {
        let (status, body) = readyz(&reg.base).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["failed"], serde_json::json!(["storage"]), "{body}");
    assert!(
        body["checks"]["storage"]
            .as_str()
            .unwrap()
            .contains("not writable"),
        "{body}"
    );
    assert_eq!(body["checks"]["metadata"], "ok", "{body}");
    assert_eq!(reg.get("/livez").await.status(), 200, "still live");

    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    eventually(Duration::from_secs(20), "readiness again", || async {
        (readyz(&reg.base).await.0 == 200).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Logs and request ids

#[tokio::test(flavor = "multi_thread")]
async fn error_details_carry_the_request_id() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("ops/ids");
    let r = reg.get(&format!("/v2/{repo}/manifests/nope")).await;
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.ends_with(&format!(" (request id {id})")), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_line_carries_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("root"), "");
    let mut berth = Berth::start(&config);
    let repo = unique_repo("ops/log");
    let r = reqwest::get(format!("{}/v2/{repo}/manifests/v1", berth.base()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let line = berth.wait_for_log("the access log line", |v| {
        v["target"] == "berth::access" && v["fields"]["request_id"] == id.as_str()
    });
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(f["method"], "GET", "{line}");
    assert_eq!(f["route"], "manifest", "{line}");
    assert_eq!(f["repository"], repo.as_str(), "{line}");
    assert_eq!(f["status"], 404, "{line}");
    assert_eq!(f["bytes_in"], 0, "{line}");
    assert!(f["bytes_out"].as_u64().unwrap() > 0, "{line}");
    assert!(f["duration_ms"].as_f64().is_some(), "{line}");
    assert_eq!(f["user"], "-", "{line}");
    // One line per request.
    let n = berth
        .logs()
        .iter()
        .filter(|v| v["target"] == "berth::access" && v["fields"]["request_id"] == id.as_str())
        .count();
    assert_eq!(n, 1);
    berth.signal("TERM");
    assert!(berth.wait_exit(Duration::from_secs(20)).success());
}

// ---------------------------------------------------------------------------------------------
// berth config check

#[test]
fn config_check_rejects_bad_operability_keys_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[log]\nlevel = \"berth=loud\"\n", "log.level"),
        ("[log]\nformat = \"xml\"\n", "format"),
        ("[metrics]\nlisten = \"nowhere\"\n", "metrics.listen"),
        ("[metrics]\nenable = true\n", "enable"),
        ("[api]\nshutdown_timeout = \"soon\"\n", "shutdown_timeout"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = berth_cli(&["config", "check", "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
    let path = dir.path().join("good.toml");
    std::fs::write(&path, "[metrics]\nlisten = \"127.0.0.1:9090\"\n").unwrap();
    let out = berth_cli(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "[metrics]",
        "listen = \"127.0.0.1:9090\"",
        "[log]",
        "level = \"info\"",
        "format = \"auto\"",
        "shutdown_timeout = \"30s\"",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Reload on SIGHUP

/// Runs `berth gc --dry-run --json` against the server owning `root` and returns the tags it
/// would remove.
fn tags_gc_would_remove(root: &Path) -> Vec<String> {
    let out = berth_cli(&[
        "gc",
        "--dry-run",
        "--json",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "tag")
        .map(|a| a["target"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_new_retention_policy_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let repo = unique_repo("ops/reload");
    {
        let mut reg = TestRegistry::start_at(&root, |_| {});
        let image = reg.push_image(&repo, "v1", 1).await;
        let r = reg
            .put_manifest(
                &repo,
                "old",
                berth_testkit::berth_oci::media::OCI_MANIFEST,
                &image.manifest,
            )
            .await;
        assert_eq!(r.status(), 201);
        reg.stop();
    }
    let base = "[gc]\ninterval = \"0s\"\ndelay = \"0s\"\n";
    let config = write_config(dir.path(), &root, base);
    let mut berth = Berth::start(&config);
    let mut conn = KeepAlive::open(berth.addr);
    assert_eq!(conn.get("/v2/").0, 200);
    assert!(tags_gc_would_remove(&root).is_empty());

    // A policy keeping only v* tags, and a key that needs a restart.
    let policy = "[storage]\ncommit = false\n[[retention.policies]]\nrepositories = [\"**\"]\n\
                  [[retention.policies.keep_tags]]\npatterns = [\"v.*\"]\n";
    write_config(dir.path(), &root, &format!("{base}{policy}"));
    berth.signal("HUP");
    let applied = berth.wait_for_log("the reload line", |v| {
        v["fields"]["message"] == "configuration reloaded and applied"
    });
    assert_eq!(
        applied["fields"]["changed"], "retention.policies",
        "{applied}"
    );
    let restart = berth.wait_for_log("the restart line", |v| {
        v["fields"]["message"] == "configuration keys changed that take effect only after a restart"
    });
    assert_eq!(restart["fields"]["keys"], "storage.commit", "{restart}");
    assert_eq!(
        conn.get("/v2/").0,
        200,
        "the keep-alive connection survives"
    );
    assert_eq!(tags_gc_would_remove(&root), ["old"]);

    // An invalid file is refused; the running configuration stays.
    std::fs::write(&config, "[retention]\ndelay = \"whenever\"\n").unwrap();
    berth.signal("HUP");
    let refused = berth.wait_for_log("the refusal", |v| {
        v["fields"]["message"] == "configuration reload refused; the running configuration stays"
    });
    assert!(
        refused["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("delay"),
        "{refused}"
    );
    assert_eq!(conn.get("/v2/").0, 200);
    assert_eq!(tags_gc_would_remove(&root), ["old"]);

    berth.signal("TERM");
    assert!(berth.wait_exit(Duration::from_secs(20)).success());
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_an_upload_leaves_it_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let config = write_config(dir.path(), &root, "[api]\nshutdown_timeout = \"1s\"\n");
    let mut berth = Berth::start(&config);
    let client = reqwest::Client::new();
    let repo = unique_repo("ops/term");
    let data = random_bytes(3 << 20);
    let first = 1 << 20;

    let r = client
        .post(format!("{}/v2/{repo}/blobs/uploads/", berth.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client
        .patch(format!("{}{location}", berth.base()))
        .header("content-range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // A second chunk is in flight, half sent, when SIGTERM arrives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let half = data[first..first + (1 << 20)].to_vec();
    tx.send(Ok(half)).await.unwrap();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let in_flight = tokio::spawn(
        client
            .patch(format!("{}{location}", berth.base()))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    let base = berth.base();
    eventually(Duration::from_secs(20), "the chunk to arrive", || async {
        let text = scrape(&base).await;
        let received = metric(
            &text,
            "berth_http_request_bytes_total",
            &[("route", "upload")],
        );
        (metric(&text, "berth_uploads_in_progress", &[]) == 1.0 && received >= (2 << 20) as f64)
            .then_some(())
    })
    .await;
    berth.signal("TERM");
    let status = berth.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    berth.wait_for_log("the timeout warning", |v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutdown_timeout"))
    });
    drop(tx);
    let _ = in_flight.await;
    let leftovers: Vec<_> = std::fs::read_dir(root.join(".tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let berth = Berth::start(&config);
    let r = client
        .get(format!("{}{location}", berth.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let range = r.headers()["range"].to_str().unwrap().to_owned();
    let have: usize = range.strip_prefix("0-").unwrap().parse::<usize>().unwrap() + 1;
    assert!(have >= first && have <= 2 << 20, "{range}");
    let r = client
        .patch(format!("{}{location}", berth.base()))
        .header("content-range", format!("{have}-{}", data.len() - 1))
        .body(data[have..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let digest = Digest::sha256(&data);
    let r = client
        .put(format!("{}{location}?digest={digest}", berth.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = client
        .get(format!("{}/v2/{repo}/blobs/{digest}", berth.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
}
