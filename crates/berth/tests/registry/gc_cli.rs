//! `berth gc` through the real binary: offline on a stopped root, through the admin socket of a
//! running server, limited to one repository; the scheduled pass; and the `[gc]`/`[retention]`
//! configuration as `berth config` sees it.
//!
//! Each test owns its root: a pass sweeps every repository and the shared store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use berth::config::{Config, DEFAULT_TEMPLATE};
use berth_testkit::berth_oci::Digest;
use berth_testkit::{random_bytes, TestRegistry};
use serde_json::Value;

use crate::cli::{berth, stderr, stdout};

/// Runs `berth gc` with `args`, expecting success.
fn gc_ok(args: &[&str]) -> Output {
    let mut all = vec!["gc"];
    all.extend_from_slice(args);
    let out = berth(&all);
    assert!(
        out.status.success(),
        "berth {all:?} failed\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(output)))
}

/// A root and, beside it, a configuration file that collects unreferenced blobs at once.
struct Offline {
    dir: tempfile::TempDir,
}

impl Offline {
    fn new() -> Offline {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("berth.toml"),
            "[gc]\ndelay = \"0s\"\ninterval = \"0s\"\n",
        )
        .unwrap();
        Offline { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn args<'a>(&'a self, root: &'a str, config: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--config", config, "--root", root];
        args.extend_from_slice(extra);
        args
    }

    fn config(&self) -> String {
        self.dir
            .path()
            .join("berth.toml")
            .to_str()
            .unwrap()
            .to_owned()
    }
}

/// Starts a server on `root`, pushes `data` as a blob of `repo` with no manifest, stops it.
async fn push_orphan_blob_offline(root: &Path, repo: &str, data: &[u8]) -> Digest {
    let mut reg = TestRegistry::start_at(root, |_| {});
    let d = reg.push_blob(repo, data).await;
    reg.stop();
    d
}

fn blob_file(root: &Path, repo: &str, d: &Digest) -> PathBuf {
    let s = d.to_string();
    let (alg, hex) = s.split_once(':').unwrap();
    root.join(repo).join("blobs").join(alg).join(hex)
}

async fn head_blob(reg: &TestRegistry, repo: &str, d: &Digest) -> u16 {
    reg.client
        .head(reg.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A server on a fresh root that collects unreferenced blobs at once and runs no schedule.
fn eager_server() -> TestRegistry {
    TestRegistry::start_with(|c| {
        c.gc.delay = Duration::ZERO;
        c.gc.interval = Duration::ZERO;
    })
}

fn actions(report: &Value) -> &Vec<Value> {
    report["actions"].as_array().expect("actions")
}

fn has_blob_action(report: &Value, repo: &str, d: &Digest) -> bool {
    actions(report).iter().any(|a| {
        a["kind"] == "blob" && a["repository"] == repo && a["target"] == d.to_string().as_str()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_dry_run_reports_an_unreferenced_blob_and_removes_nothing() {
    let t = Offline::new();
    let root = t.root();
    let d = push_orphan_blob_offline(&root, "app", &random_bytes(2048)).await;
    let (root_s, config) = (root.to_str().unwrap(), t.config());
    let out = gc_ok(&t.args(root_s, &config, &["--dry-run", "--json"]));
    let report = json(&out);
    assert_eq!(report["dry_run"], true, "{report}");
    assert!(report["blobs"].as_u64().unwrap() >= 1, "{report}");
    assert!(has_blob_action(&report, "app", &d), "{report}");
    assert!(blob_file(&root, "app", &d).exists());
    let reg = TestRegistry::start_at(&root, |_| {});
    assert_eq!(head_blob(&reg, "app", &d).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_gc_removes_an_unreferenced_blob_and_explains_why() {
    let t = Offline::new();
    let root = t.root();
    let d = push_orphan_blob_offline(&root, "app", &random_bytes(2048)).await;
    let (root_s, config) = (root.to_str().unwrap(), t.config());
    let out = gc_ok(&t.args(root_s, &config, &[]));
    let summary = stdout(&out);
    assert!(summary.contains("  blobs: 1\n"), "{summary}");
    assert!(summary.contains("bytes freed: "), "{summary}");
    assert!(
        summary.contains(&format!("blob app {d}: no manifest")),
        "{summary}"
    );
    assert!(
        summary.contains("shared_blob - sha256:"),
        "the shared copy goes too: {summary}"
    );
    assert!(!blob_file(&root, "app", &d).exists());
    let reg = TestRegistry::start_at(&root, |_| {});
    assert_eq!(head_blob(&reg, "app", &d).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_gc_keeps_blobs_younger_than_the_configured_delay() {
    let dir = tempfile::tempdir().unwrap();
    let d = push_orphan_blob_offline(dir.path(), "app", &random_bytes(100)).await;
    // No --config: the default [gc] delay of one hour keeps a blob pushed just now.
    let out = gc_ok(&["--root", dir.path().to_str().unwrap(), "--json"]);
    let report = json(&out);
    assert_eq!(report["blobs"], 0, "{report}");
    assert!(blob_file(dir.path(), "app", &d).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_against_a_running_server_runs_in_it_over_the_admin_socket() {
    let reg = eager_server();
    let d = reg.push_blob("app", &random_bytes(4096)).await;
    // Without --config this command's own delay would be an hour; the server's is zero, so the
    // blob going proves the pass ran in the server.
    let out = gc_ok(&["--root", reg.root().to_str().unwrap()]);
    let summary = stdout(&out);
    assert!(
        summary.contains(&format!("blob app {d}: ")),
        "{summary}\nstderr: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("gc: [1/1] app"),
        "progress lines: {}",
        stderr(&out)
    );
    assert_eq!(head_blob(&reg, "app", &d).await, 404);
    assert_eq!(
        reg.get("/v2/").await.status(),
        200,
        "the server keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_over_the_admin_socket_removes_nothing() {
    let reg = eager_server();
    let d = reg.push_blob("app", &random_bytes(512)).await;
    let out = gc_ok(&[
        "--root",
        reg.root().to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["dry_run"], true);
    assert!(report.get("event").is_none(), "{report}");
    assert!(has_blob_action(&report, "app", &d), "{report}");
    assert_eq!(head_blob(&reg, "app", &d).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_with_repo_touches_only_that_repository() {
    let reg = eager_server();
    let one = reg.push_blob("one", &random_bytes(300)).await;
    let two = reg.push_blob("two", &random_bytes(300)).await;
    let out = gc_ok(&[
        "--root",
        reg.root().to_str().unwrap(),
        "--repo",
        "one",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["repositories"], 1, "{report}");
    assert!(has_blob_action(&report, "one", &one), "{report}");
    assert!(
        actions(&report).iter().all(|a| a["repository"] == "one"),
        "{report}"
    );
    assert_eq!(head_blob(&reg, "one", &one).await, 404);
    assert_eq!(head_blob(&reg, "two", &two).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_rejects_an_invalid_repository_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(&[
        "gc",
        "--root",
        dir.path().to_str().unwrap(),
        "--repo",
        "Bad",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--repo"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_refuses_a_root_held_by_a_process_without_an_admin_socket() {
    let dir = tempfile::tempdir().unwrap();
    let _held = berth::serve::RootLock::acquire(dir.path()).unwrap();
    let out = berth(&["gc", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains("admin.sock"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_socket_is_private_and_removed_at_shutdown() {
    let mut reg = eager_server();
    let socket = berth::admin::socket_path(reg.root());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    reg.stop();
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_admin_socket_is_replaced_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = berth::admin::socket_path(dir.path());
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let reg = TestRegistry::start_at(dir.path(), |c| c.gc.delay = Duration::ZERO);
    let d = reg.push_blob("app", &random_bytes(64)).await;
    gc_ok(&["--root", dir.path().to_str().unwrap()]);
    assert_eq!(head_blob(&reg, "app", &d).await, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_collects_after_each_interval() {
    let reg = TestRegistry::start_with(|c| {
        c.gc.delay = Duration::ZERO;
        c.gc.interval = Duration::from_secs(1);
    });
    let d = reg.push_blob("app", &random_bytes(64)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while head_blob(&reg, "app", &d).await != 404 {
        assert!(
            Instant::now() < deadline,
            "no scheduled pass removed the blob"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Runs `berth config check` on `text`, expecting failure; returns stderr.
fn check_fails(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    let out = berth(&["config", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    stderr(&out)
}

#[test]
fn config_check_rejects_a_bad_tag_regex_naming_the_key() {
    let err = check_fails(
        "[[retention.policies]]\nrepositories = [\"team/**\"]\n\
         [[retention.policies.keep_tags]]\npatterns = [\"v(\"]\n",
    );
    assert!(
        err.contains("retention.policies[0].keep_tags[0].patterns[0]: regex parse error"),
        "{err}"
    );
}

#[test]
fn config_check_rejects_a_bad_repository_glob_naming_the_key() {
    let err = check_fails("[[retention.policies]]\nrepositories = [\"team/[a\"]\n");
    assert!(
        err.contains("retention.policies[0].repositories[0]:"),
        "{err}"
    );
}

#[test]
fn config_check_accepts_policies_and_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "[gc]\ndelay = \"0s\"\n[[retention.policies]]\nrepositories = [\"team/**\"]\n\
         [[retention.policies.keep_tags]]\npatterns = [\"v.*\"]\npushed_within = \"30days\"\n",
    )
    .unwrap();
    let out = berth(&["config", "check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("[[retention.policies]]"), "{text}");
    assert!(text.contains("pushed_within = \"30days\""), "{text}");
    assert!(text.contains("delay = \"0s\""), "{text}");
}

#[test]
fn the_template_still_parses_to_the_default() {
    let out = berth(&["config", "default"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), DEFAULT_TEMPLATE);
    assert_eq!(
        Config::from_toml_str(&stdout(&out)).unwrap(),
        Config::default()
    );
    assert!(DEFAULT_TEMPLATE.contains("[gc]") && DEFAULT_TEMPLATE.contains("[retention]"));
}
