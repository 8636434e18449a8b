//! `berth scrub` through the real binary: offline on a stopped root, through the admin socket of
//! a running server, limited to one repository, as JSON; its exit status (0 clean or all
//! repaired, 2 problems remain, 1 error); the scheduled scrub; and the `[scrub]` configuration.
//!
//! Each test owns its root. Damage is planted with `[storage] dedupe = false`, so every
//! repository holds its own copy of a blob and flipping a byte in one leaves a good twin in
//! another, from which repair relinks.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{TestImage, TestRegistry};
use serde_json::Value;

use crate::cli::{berth, stderr, stdout};

/// Runs `berth scrub` with `args`, expecting exit status `code`.
fn scrub(args: &[&str], code: i32) -> Output {
    let mut all = vec!["scrub"];
    all.extend_from_slice(args);
    let out = berth(&all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "berth {all:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(output)))
}

fn blob_file(root: &Path, repo: &str, d: &Digest) -> PathBuf {
    root.join(repo)
        .join("blobs")
        .join(d.algorithm().as_str())
        .join(d.hex())
}

/// Pushes `image` (its blobs, then its manifest under `tag`) to `repo`.
async fn push(reg: &TestRegistry, repo: &str, tag: &str, image: &TestImage) {
    for (_, bytes) in image.blobs() {
        reg.push_blob(repo, bytes).await;
    }
    let r = reg
        .put_manifest(repo, tag, media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 201, "PUT manifest: {}", r.text().await.unwrap());
}

/// Flips one byte of `repo`'s copy of `d`.
fn flip_a_byte(root: &Path, repo: &str, d: &Digest) {
    let path = blob_file(root, repo, d);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
}

/// The summary line `berth scrub` prints for a corrupt manifest of `repo` tagged `v1`.
fn corrupt_manifest_line(repo: &str, d: &Digest) -> String {
    format!("corrupt_blob {repo} [v1] {d}: the bytes do not match the digest")
}

/// A stopped root (without dedupe) where `app:v1` and `mirror:v1` are the same image and `app`'s
/// copy of the manifest has a flipped byte, and beside it a configuration that says so.
struct Planted {
    dir: tempfile::TempDir,
    image: TestImage,
}

impl Planted {
    async fn new() -> Planted {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("berth.toml"),
            "[storage]\ndedupe = false\n[gc]\ninterval = \"0s\"\n",
        )
        .unwrap();
        let root = dir.path().join("root");
        let image = TestImage::random(1);
        let mut reg = TestRegistry::start_at(&root, |c| c.storage.dedupe = false);
        push(&reg, "app", "v1", &image).await;
        push(&reg, "mirror", "v1", &image).await;
        reg.stop();
        flip_a_byte(&root, "app", &image.digest);
        Planted { dir, image }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `--config FILE --root DIR` followed by `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--config".to_owned(),
            self.dir
                .path()
                .join("berth.toml")
                .to_str()
                .unwrap()
                .to_owned(),
            "--root".to_owned(),
            self.root().to_str().unwrap().to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    fn scrub(&self, extra: &[&str], code: i32) -> Output {
        let args = self.args(extra);
        scrub(&args.iter().map(String::as_str).collect::<Vec<_>>(), code)
    }

    fn manifest_on_disk(&self, repo: &str) -> Vec<u8> {
        std::fs::read(blob_file(&self.root(), repo, &self.image.digest)).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_scrub_reports_a_flipped_byte_with_repository_tag_and_digest_and_exits_2() {
    let t = Planted::new().await;
    let damaged = t.manifest_on_disk("app");
    let out = t.scrub(&[], 2);
    let summary = stdout(&out);
    assert!(
        summary.starts_with(&format!("scrub of {}\n", t.root().display())),
        "{summary}"
    );
    for line in [
        "  repositories: 2\n",
        "  manifests: 2\n",
        "  problems: 1\n",
        "  repaired: 0\n",
    ] {
        assert!(summary.contains(line), "{line:?} in {summary}");
    }
    assert!(summary.contains("  bytes hashed: "), "{summary}");
    assert!(
        summary.contains(&corrupt_manifest_line("app", &t.image.digest)),
        "{summary}"
    );
    assert!(
        !summary.contains("-> repaired"),
        "a scrub without --repair repairs nothing: {summary}"
    );
    let err = stderr(&out);
    assert!(err.contains("1 problem(s) that remain unrepaired"), "{err}");
    assert!(err.contains("--repair"), "{err}");
    assert!(err.contains("scrub: [1/2] app"), "progress lines: {err}");
    assert_eq!(
        t.manifest_on_disk("app"),
        damaged,
        "a scrub without --repair changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_repair_relinks_the_verified_twin_and_a_second_scrub_exits_0() {
    let t = Planted::new().await;
    let out = t.scrub(&["--repair"], 0);
    let summary = stdout(&out);
    assert!(summary.contains(" (repair)\n"), "{summary}");
    assert!(summary.contains("  repaired: 1\n"), "{summary}");
    assert!(
        summary.contains(&format!(
            "{} -> repaired: relinked from a verified copy",
            corrupt_manifest_line("app", &t.image.digest)
        )),
        "{summary}"
    );
    assert_eq!(t.manifest_on_disk("app"), t.image.manifest);
    assert_eq!(
        t.manifest_on_disk("mirror"),
        t.image.manifest,
        "the good copy stays"
    );

    let out = t.scrub(&[], 0);
    assert!(stdout(&out).contains("  problems: 0\n"), "{}", stdout(&out));

    let reg = TestRegistry::start_at(&t.root(), |c| c.storage.dedupe = false);
    let r = reg.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        t.image.manifest.as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_json_parses_and_lists_the_problems() {
    let t = Planted::new().await;
    let out = t.scrub(&["--json"], 2);
    let report = json(&out);
    assert!(report.get("event").is_none(), "{report}");
    assert_eq!(report["repair"], false, "{report}");
    assert_eq!(report["repositories"], 2, "{report}");
    assert!(report["bytes_hashed"].as_u64().unwrap() > 0, "{report}");
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{report}");
    let p = &problems[0];
    assert_eq!(p["kind"], "corrupt_blob", "{report}");
    assert_eq!(p["repository"], "app", "{report}");
    assert_eq!(p["tags"], serde_json::json!(["v1"]), "{report}");
    assert_eq!(p["digest"], t.image.digest.to_string().as_str(), "{report}");
    assert!(p.get("repaired").is_none(), "{report}");

    let report = json(&t.scrub(&["--json", "--repair"], 0));
    assert_eq!(report["repair"], true, "{report}");
    assert_eq!(report["repaired"], 1, "{report}");
    assert_eq!(
        report["problems"][0]["repaired"], "relinked from a verified copy",
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scrub_against_a_running_server_runs_in_it_over_the_admin_socket() {
    let reg = TestRegistry::start_with(|c| c.storage.dedupe = false);
    let image = TestImage::random(2);
    push(&reg, "app", "v1", &image).await;
    push(&reg, "mirror", "v1", &image).await;
    flip_a_byte(reg.root(), "app", &image.digest);
    let root = reg.root().to_str().unwrap();

    // The server owns the root, so only the admin socket can run this scrub; without --config
    // this command's own configuration would dedupe, the server's does not.
    let out = scrub(&["--root", root], 2);
    let summary = stdout(&out);
    assert!(
        summary.contains(&corrupt_manifest_line("app", &image.digest)),
        "{summary}\nstderr: {}",
        stderr(&out)
    );
    assert!(summary.contains("  problems: 1\n"), "{summary}");
    let err = stderr(&out);
    assert!(err.contains("scrub: repositories to check: 2"), "{err}");
    assert!(err.contains("scrub: [2/2] mirror"), "{err}");
    assert!(
        err.contains("scrub: checking the shared blob store"),
        "{err}"
    );

    let out = scrub(&["--root", root, "--repair"], 0);
    assert!(
        stdout(&out).contains("-> repaired: relinked from a verified copy"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        reg.get("/v2/").await.status(),
        200,
        "the server keeps serving"
    );
    let r = reg.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    let out = scrub(&["--root", root], 0);
    assert!(stdout(&out).contains("  problems: 0\n"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn scrub_with_repo_checks_only_that_repository() {
    let reg = TestRegistry::start_with(|c| c.storage.dedupe = false);
    let (one, two) = (TestImage::random(1), TestImage::random(1));
    push(&reg, "one", "v1", &one).await;
    push(&reg, "two", "v1", &two).await;
    flip_a_byte(reg.root(), "one", &one.digest);
    flip_a_byte(reg.root(), "two", &two.digest);
    let root = reg.root().to_str().unwrap();

    let report = json(&scrub(&["--root", root, "--repo", "two", "--json"], 2));
    assert_eq!(report["repositories"], 1, "{report}");
    assert_eq!(report["manifests_checked"], 1, "{report}");
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["repository"], "two", "{report}");
    assert_eq!(problems[0]["digest"], two.digest.to_string().as_str());

    let report = json(&scrub(&["--root", root, "--json"], 2));
    assert_eq!(report["repositories"], 2, "{report}");
    assert_eq!(report["problems"].as_array().unwrap().len(), 2, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_root_scrubs_with_exit_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = TestRegistry::start_at(dir.path(), |_| {});
    push(&reg, "app", "v1", &TestImage::random(1)).await;
    reg.stop();
    // Offline, with the default configuration (dedupe on, as the server had it).
    let out = scrub(&["--root", dir.path().to_str().unwrap()], 0);
    let summary = stdout(&out);
    assert!(summary.contains("  problems: 0\n"), "{summary}");
    assert!(summary.contains("  blobs: 3\n"), "{summary}");
    assert!(stderr(&out).is_empty() || !stderr(&out).contains("error"));
}

#[test]
fn scrub_refuses_a_root_held_by_a_process_without_an_admin_socket() {
    let dir = tempfile::tempdir().unwrap();
    let _held = berth::serve::RootLock::acquire(dir.path()).unwrap();
    let out = scrub(&["--root", dir.path().to_str().unwrap()], 1);
    let err = stderr(&out);
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains("admin.sock"), "{err}");
}

#[test]
fn scrub_rejects_an_invalid_repository_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(&[
        "scrub",
        "--root",
        dir.path().to_str().unwrap(),
        "--repo",
        "Bad",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--repo"), "{}", stderr(&out));
}

#[test]
fn scrub_help_explains_repair_and_the_exit_status() {
    let out = berth(&["scrub", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for word in [
        "--repair",
        "--repo",
        "--json",
        "--config",
        "--root",
        "admin.sock",
        "quarantine",
        "never deletes the only copy",
        "Exit status: 0",
        "2 when problems were found",
        "[scrub] interval",
    ] {
        assert!(help.contains(word), "{word:?} in {help}");
    }
    let out = berth(&["--help"]);
    assert!(stdout(&out).contains("berth scrub"), "{}", stdout(&out));
}

// ---------------------------------------------------------------------------------------------
// The scheduled scrub

/// Starts a server on `root` that scrubs every second, repairing.
fn scrubbing_server(root: &Path, read_only: bool) -> TestRegistry {
    TestRegistry::start_at(root, |c| {
        c.storage.dedupe = false;
        c.storage.read_only = read_only;
        c.scrub.interval = Duration::from_secs(1);
        c.scrub.repair = true;
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_scrub_repairs_after_each_interval() {
    let t = Planted::new().await;
    let _reg = scrubbing_server(&t.root(), false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.manifest_on_disk("app") != t.image.manifest {
        assert!(
            Instant::now() < deadline,
            "no scheduled scrub repaired the manifest"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repairing_scheduled_scrub_is_skipped_while_read_only() {
    let t = Planted::new().await;
    let damaged = t.manifest_on_disk("app");
    let reg = scrubbing_server(&t.root(), true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.manifest_on_disk("app"), damaged, "nothing was repaired");
    // An explicit scrub still reports it.
    let root = reg.root().to_str().unwrap();
    let out = scrub(&["--root", root], 2);
    assert!(
        stdout(&out).contains(&corrupt_manifest_line("app", &t.image.digest)),
        "{}",
        stdout(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Runs `berth config check` on `text`; returns the output.
fn config_check(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, text).unwrap();
    berth(&["config", "check", "--config", path.to_str().unwrap()])
}

#[test]
fn config_check_rejects_a_bad_scrub_interval_naming_the_key() {
    let out = config_check("[scrub]\ninterval = \"weekly\"\n");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    assert!(stderr(&out).contains("interval"), "{}", stderr(&out));
    assert!(stderr(&out).contains("weekly"), "{}", stderr(&out));

    let out = config_check("[scrub]\ninterval = \"10ms\"\n");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    assert!(
        stderr(&out)
            .contains("scrub.interval: must be \"0s\" (no scheduled scrubs) or at least 1s"),
        "{}",
        stderr(&out)
    );

    let out = config_check("[scrub]\nrepair = \"yes\"\n");
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    assert!(stderr(&out).contains("repair"), "{}", stderr(&out));
}

#[test]
fn config_check_accepts_a_scrub_schedule_and_prints_it() {
    let out = config_check("[scrub]\ninterval = \"7days\"\nrepair = true\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[scrub]\ninterval = \"7days\"\nrepair = true\n"),
        "{text}"
    );
}

#[test]
fn scrub_with_an_invalid_config_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, "[scrub]\ninterval = \"weekly\"\n").unwrap();
    let out = scrub(
        &[
            "--config",
            path.to_str().unwrap(),
            "--root",
            dir.path().to_str().unwrap(),
        ],
        1,
    );
    assert!(stderr(&out).contains("interval"), "{}", stderr(&out));
}

#[test]
fn the_template_documents_scrub_off_by_default() {
    let out = berth(&["config", "default"]);
    let text = stdout(&out);
    assert!(
        text.contains("[scrub]")
            && text.contains("interval = \"0s\"\n")
            && text.contains("repair = false\n"),
        "{text}"
    );
}
