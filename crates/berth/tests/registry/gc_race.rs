//! Garbage collection racing clients, deterministically: a pass is paused by its hook between
//! choosing candidates and removing them (`GcPoint`), a client changes the repository over
//! HTTP, and the pass resumes. Whatever the client changed wins. Then a bounded stress test:
//! clients push, tag, untag and delete while passes run back to back, and every tag the
//! clients believe in pulls complete at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_store::gc::{GcKind, GcOptions, GcPoint, GcReport};
use berth_store::retention::Retention;
use berth_testkit::berth_oci::{media, Digest, RepoName};
use berth_testkit::reqwest::Response;
use berth_testkit::{random_bytes, TestRegistry};
use serde_json::{json, Value};

use crate::images::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const HOUR: Duration = Duration::from_secs(3600);
const ZERO: Duration = Duration::ZERO;
/// How long a test waits for a paused pass to reach its point.
const REACH: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers

fn opts(delay: Duration, retention_delay: Duration) -> GcOptions {
    GcOptions {
        delay,
        retention: Retention {
            delay: retention_delay,
            policies: Vec::new(),
        },
        dry_run: false,
        repo: None,
    }
}

fn cas_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("_cas").join(d.algorithm().as_str()).join(d.hex())
}

fn targets(r: &GcReport, kind: GcKind) -> BTreeSet<String> {
    r.actions
        .iter()
        .filter(|a| a.kind == kind)
        .map(|a| a.target.clone())
        .collect()
}

/// A pass running in the background, paused at one point of its hook.
struct Paused {
    resume: oneshot::Sender<()>,
    pass: JoinHandle<GcReport>,
}

impl Paused {
    /// Starts a pass that pauses at `point`, and waits until it is there.
    async fn at(reg: &TestRegistry, point: GcPoint, o: GcOptions) -> Paused {
        let (reached_tx, reached_rx) = oneshot::channel::<()>();
        let (resume_tx, resume_rx) = oneshot::channel::<()>();
        let slot = Arc::new(Mutex::new(Some((reached_tx, resume_rx))));
        reg.registry.set_gc_hook(Some(Arc::new(move |p: GcPoint| {
            let slot = slot.clone();
            let point = point.clone();
            Box::pin(async move {
                if p != point {
                    return;
                }
                let taken = slot.lock().unwrap().take();
                if let Some((reached, resume)) = taken {
                    let _ = reached.send(());
                    let _ = resume.await;
                }
            })
        })));
        let registry = reg.registry.clone();
        let pass = tokio::spawn(async move { registry.gc(&o, &|_| {}).await.unwrap() });
        tokio::time::timeout(REACH, reached_rx)
            .await
            .expect("the pass did not reach its point")
            .expect("the pass ended before its point");
        Paused {
            resume: resume_tx,
            pass,
        }
    }

    /// Lets the pass go on and returns its report.
    async fn finish(self, reg: &TestRegistry) -> GcReport {
        self.resume.send(()).unwrap();
        let report = self.pass.await.unwrap();
        reg.registry.set_gc_hook(None);
        report
    }
}

async fn error_code(r: Response) -> String {
    let v: Value = r.json().await.unwrap();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Blobs

#[tokio::test]
async fn a_manifest_put_while_its_blobs_are_planned_keeps_them() {
    let reg = TestRegistry::start();
    let img = Img::oci(2);
    push_blobs(&reg, "app", &img).await;
    let paused = Paused::at(&reg, GcPoint::BlobsPlanned(repo("app")), opts(ZERO, ZERO)).await;
    let r = put(&reg, "app", "v1", &img).await;
    assert_eq!(r.status(), 201);
    let report = paused.finish(&reg).await;
    assert!(targets(&report, GcKind::Blob).is_empty(), "{report:#?}");
    assert!(
        targets(&report, GcKind::SharedBlob).is_empty(),
        "{report:#?}"
    );
    assert_pulls(&reg, "app", "v1", &img).await;
    for d in img.blob_digests() {
        assert!(cas_path(reg.root(), &d).exists());
    }
}

#[tokio::test]
async fn a_blob_pushed_again_while_its_shared_copy_is_planned_stays() {
    let reg = TestRegistry::start();
    let img = Img::oci(1);
    push(&reg, "a", Some("v1"), &img).await;
    assert_eq!(
        delete(&reg, &format!("/v2/a/manifests/{}", img.digest)).await,
        202
    );
    for d in img.blob_digests() {
        assert_eq!(delete(&reg, &format!("/v2/a/blobs/{d}")).await, 202);
    }
    // No repository links the image's blobs or its manifest: all are shared-store candidates.
    let paused = Paused::at(&reg, GcPoint::SharedPlanned, opts(ZERO, ZERO)).await;
    let (config, layer) = (&img.blobs[0], &img.blobs[1]);
    let (config_d, layer_d) = (Digest::sha256(config), Digest::sha256(layer));
    // Deleted content is not offered to other repositories ...
    assert_eq!(head(&reg, &format!("/v2/b/blobs/{layer_d}")).await, 404);
    // ... so the client pushes it again, and others mount it from there.
    assert_eq!(reg.push_blob("b", layer).await, layer_d);
    assert_eq!(reg.push_blob("b", config).await, config_d);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/c/blobs/uploads/?mount={layer_d}&from=b")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(head(&reg, &format!("/v2/d/blobs/{config_d}")).await, 200);
    let report = paused.finish(&reg).await;
    // Only the manifest's bytes, which nobody brought back, left the shared store.
    assert_eq!(
        targets(&report, GcKind::SharedBlob),
        BTreeSet::from([img.digest.to_string()]),
        "{report:#?}"
    );
    assert!(!cas_path(reg.root(), &img.digest).exists());
    for d in [&config_d, &layer_d] {
        assert!(cas_path(reg.root(), d).exists());
    }
    assert_blob_pulls(&reg, "b", layer).await;
    assert_blob_pulls(&reg, "b", config).await;
    assert_blob_pulls(&reg, "c", layer).await;
    assert_blob_pulls(&reg, "d", config).await;
    // And they make an image again.
    let r = put(&reg, "b", "again", &img).await;
    assert_eq!(r.status(), 201);
    assert_pulls(&reg, "b", "again", &img).await;
}

#[tokio::test]
async fn a_head_mount_while_the_last_link_is_planned_keeps_the_shared_copy() {
    let reg = TestRegistry::start();
    let bytes = random_bytes(2500);
    let d = reg.push_blob("a", &bytes).await;
    let paused = Paused::at(&reg, GcPoint::BlobsPlanned(repo("a")), opts(ZERO, ZERO)).await;
    // "a" still links it: a HEAD in "b" links it there (the v1.1 automatic mount).
    assert_eq!(head(&reg, &format!("/v2/b/blobs/{d}")).await, 200);
    let report = paused.finish(&reg).await;
    assert_eq!(
        targets(&report, GcKind::Blob),
        BTreeSet::from([d.to_string()]),
        "{report:#?}"
    );
    assert!(
        targets(&report, GcKind::SharedBlob).is_empty(),
        "{report:#?}"
    );
    assert_eq!(status(&reg, &format!("/v2/a/blobs/{d}")).await, 404);
    assert_blob_pulls(&reg, "b", &bytes).await;
    assert!(cas_path(reg.root(), &d).exists());
}

#[tokio::test]
async fn a_manifest_put_after_its_blobs_went_is_manifest_blob_unknown() {
    let reg = TestRegistry::start();
    // Deterministic: the blobs go, then the manifest arrives.
    let img = Img::oci(1);
    push_blobs(&reg, "app", &img).await;
    let paused = Paused::at(&reg, GcPoint::BlobsPlanned(repo("app")), opts(ZERO, ZERO)).await;
    let report = paused.finish(&reg).await;
    assert_eq!(targets(&report, GcKind::Blob).len(), 2, "{report:#?}");
    let r = put(&reg, "app", "v1", &img).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(status(&reg, "/v2/app/manifests/v1").await, 404);
    assert_eq!(
        status(&reg, &format!("/v2/app/manifests/{}", img.digest)).await,
        404
    );

    // Racing: the pass resumes while the PUT is in flight. Either the PUT wins (201, and then
    // the whole image pulls) or the pass does (a clean 400); never a 201 with a missing blob.
    let mut outcomes = BTreeMap::<u16, usize>::new();
    let mut accepted = Vec::new();
    for i in 0..8u8 {
        let name = format!("race-{i}");
        let img = Img::oci(2);
        push_blobs(&reg, &name, &img).await;
        let paused = Paused::at(&reg, GcPoint::BlobsPlanned(repo(&name)), opts(ZERO, HOUR)).await;
        // Vary who starts first and by how much.
        let [a, b] = <[u8; 2]>::try_from(random_bytes(2)).unwrap();
        let wait = Duration::from_micros(u64::from(a) * 16);
        let put_first = b % 2 == 0;
        let (report, r) = tokio::join!(
            async {
                if put_first {
                    tokio::time::sleep(wait).await;
                }
                paused.finish(&reg).await
            },
            async {
                if !put_first {
                    tokio::time::sleep(wait).await;
                }
                put(&reg, &name, "v1", &img).await
            }
        );
        let code = r.status().as_u16();
        *outcomes.entry(code).or_default() += 1;
        match code {
            201 => {
                assert_pulls(&reg, &name, "v1", &img).await;
                accepted.push((name, img));
            }
            400 => {
                assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");
                assert_eq!(status(&reg, &format!("/v2/{name}/manifests/v1")).await, 404);
                assert!(!targets(&report, GcKind::Blob).is_empty(), "{report:#?}");
            }
            other => panic!("PUT racing a pass answered {other}"),
        }
    }
    // What was accepted survives later passes.
    let r = reg.registry.gc(&opts(ZERO, ZERO), &|_| {}).await.unwrap();
    assert!(targets(&r, GcKind::Manifest).is_empty(), "{r:#?}");
    for (name, img) in &accepted {
        assert_pulls(&reg, name, "v1", img).await;
    }
    println!("manifest PUT racing blob removal: {outcomes:?}");
}

/// The delay protects a blob between its upload and the manifest that references it. A blob
/// the repository already held unreferenced (an earlier push whose manifest never came, or was
/// deleted) and that a client uploads again must be protected from that upload on, or the
/// client's next manifest PUT fails although its upload just succeeded.
#[tokio::test]
async fn a_blob_uploaded_again_is_protected_for_the_delay() {
    let reg = TestRegistry::start();
    let img = Img::oci(1);
    push_blobs(&reg, "app", &img).await;
    // Unreferenced for longer than a two-second delay ...
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // ... then uploaded again, as a client about to push a manifest does.
    push_blobs(&reg, "app", &img).await;
    let report = reg
        .registry
        .gc(&opts(Duration::from_secs(2), ZERO), &|_| {})
        .await
        .unwrap();
    assert!(targets(&report, GcKind::Blob).is_empty(), "{report:#?}");
    let r = put(&reg, "app", "v1", &img).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_pulls(&reg, "app", "v1", &img).await;
}

/// A pass expires upload sessions untouched for `upload_timeout`. A session starts as an empty
/// directory under `_uploads` until its `info` file lands; judging such a directory by files
/// it does not have yet must not make it "abandoned".
#[tokio::test]
async fn an_upload_directory_younger_than_the_timeout_is_not_expired() {
    let reg = TestRegistry::start();
    // The state of a session between its directory's creation and its `info` file's rename.
    let id = "0a3c2f4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
    let dir = reg.root().join("_uploads").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let report = reg.registry.gc(&opts(HOUR, HOUR), &|_| {}).await.unwrap();
    assert_eq!(report.uploads, 0, "{report:#?}");
    assert!(
        dir.exists(),
        "a session directory created just now was expired"
    );
}

// ---------------------------------------------------------------------------------------------
// Retention

#[tokio::test]
async fn tagging_a_planned_manifest_keeps_it() {
    let reg = TestRegistry::start();
    let img = Img::oci(1);
    push(&reg, "app", None, &img).await;
    let paused = Paused::at(
        &reg,
        GcPoint::RetentionPlanned(repo("app")),
        opts(ZERO, ZERO),
    )
    .await;
    let r = put(&reg, "app", "v1", &img).await;
    assert_eq!(r.status(), 201);
    let report = paused.finish(&reg).await;
    // The report says what went, not what was planned.
    assert!(report.actions.is_empty(), "{report:#?}");
    assert_pulls(&reg, "app", "v1", &img).await;
    let tags: Value = reg.get("/v2/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], json!(["v1"]));
}

#[tokio::test]
async fn tagging_a_planned_index_keeps_its_children() {
    let reg = TestRegistry::start();
    let (c1, c2) = (Img::oci(1), Img::oci(1));
    push(&reg, "app", None, &c1).await;
    push(&reg, "app", None, &c2).await;
    let ix = Img::index(media::OCI_INDEX, &[&c1, &c2]);
    push(&reg, "app", None, &ix).await;
    let paused = Paused::at(
        &reg,
        GcPoint::RetentionPlanned(repo("app")),
        opts(ZERO, ZERO),
    )
    .await;
    let r = put(&reg, "app", "multi", &ix).await;
    assert_eq!(r.status(), 201);
    let report = paused.finish(&reg).await;
    assert!(report.actions.is_empty(), "{report:#?}");
    assert_pulls(&reg, "app", "multi", &ix).await;
    for c in [&c1, &c2] {
        assert_pulls(&reg, "app", &c.digest.to_string(), c).await;
    }
}

#[tokio::test]
async fn tagging_a_planned_subject_keeps_its_referrers() {
    let reg = TestRegistry::start();
    let subject = Img::oci(1);
    push(&reg, "app", None, &subject).await;
    let sbom = Img::artifact(Some(&subject), "application/spdx+json");
    push(&reg, "app", None, &sbom).await;
    let paused = Paused::at(
        &reg,
        GcPoint::RetentionPlanned(repo("app")),
        opts(ZERO, ZERO),
    )
    .await;
    let r = put(&reg, "app", "v1", &subject).await;
    assert_eq!(r.status(), 201);
    let report = paused.finish(&reg).await;
    assert!(report.actions.is_empty(), "{report:#?}");
    assert_pulls(&reg, "app", "v1", &subject).await;
    assert_pulls(&reg, "app", &sbom.digest.to_string(), &sbom).await;
    let v: Value = reg
        .get(&format!("/v2/app/referrers/{}", subject.digest))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["manifests"][0]["digest"], sbom.digest.to_string(), "{v}");
}

#[tokio::test]
async fn pushing_the_subject_of_a_planned_referrer_keeps_it() {
    let reg = TestRegistry::start();
    let subject = Img::oci(1);
    let sbom = Img::artifact(Some(&subject), "application/spdx+json");
    push(&reg, "app", None, &sbom).await;
    let paused = Paused::at(
        &reg,
        GcPoint::RetentionPlanned(repo("app")),
        opts(ZERO, ZERO),
    )
    .await;
    push(&reg, "app", Some("v1"), &subject).await;
    let report = paused.finish(&reg).await;
    assert!(targets(&report, GcKind::Manifest).is_empty(), "{report:#?}");
    assert_pulls(&reg, "app", "v1", &subject).await;
    assert_pulls(&reg, "app", &sbom.digest.to_string(), &sbom).await;
}

// ---------------------------------------------------------------------------------------------
// Stress

/// A small deterministic generator (xorshift64*), seeded from the OS.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one client believes its repository holds.
#[derive(Default)]
struct Model {
    images: Vec<Img>,
    tags: BTreeMap<String, usize>,
}

const GC_DELAY: Duration = Duration::from_secs(5);
const CLIENTS: usize = 3;
const ITERATIONS: usize = 30;
const WALL: Duration = Duration::from_secs(60);

/// What the stress test's tasks observed, besides their models.
#[derive(Default)]
struct Tally {
    /// Unexpected answers and failed passes.
    errors: Mutex<Vec<String>>,
    /// MANIFEST_BLOB_UNKNOWN after the blobs were older than the delay (allowed).
    explained: AtomicU64,
    /// Passes whose upload expiry reported that race.
    upload_races: AtomicU64,
}

fn record(tally: &Tally, e: String) {
    tally.errors.lock().unwrap().push(e);
}

/// Checks a response's status; any other is recorded as an error.
async fn expect(tally: &Tally, what: &str, r: Response, want: u16) -> bool {
    let got = r.status().as_u16();
    if got == want {
        return true;
    }
    let body = r.text().await.unwrap_or_default();
    record(tally, format!("{what}: {got} (wanted {want}): {body}"));
    false
}

async fn pulls_complete(
    reg: &TestRegistry,
    repo: &str,
    reference: &str,
    img: &Img,
) -> Result<(), String> {
    let r = reg.get(&format!("/v2/{repo}/manifests/{reference}")).await;
    if r.status() != 200 {
        return Err(format!("GET {repo}:{reference}: {}", r.status()));
    }
    if r.bytes().await.unwrap().as_ref() != img.manifest.as_slice() {
        return Err(format!("GET {repo}:{reference}: other bytes"));
    }
    for b in &img.blobs {
        let d = Digest::sha256(b);
        let r = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
        if r.status() != 200 {
            return Err(format!("GET {repo}@{d} (of {reference}): {}", r.status()));
        }
        if r.bytes().await.unwrap().as_ref() != b.as_slice() {
            return Err(format!("GET {repo}@{d}: other bytes"));
        }
    }
    Ok(())
}

/// One client: pushes images (own layers plus shared ones), tags, re-tags, untags, deletes and
/// pulls in its own repository, keeping a model of what it was acknowledged.
async fn client(
    reg: Arc<TestRegistry>,
    name: String,
    shared: Arc<Vec<Vec<u8>>>,
    seed: u64,
    deadline: Instant,
    tally: Arc<Tally>,
) -> Model {
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    for _ in 0..ITERATIONS {
        if Instant::now() > deadline {
            break;
        }
        // Spread the run over more than the delay, so passes also collect blobs meanwhile.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(250) as u64)).await;
        let tag = format!("t{}", rng.below(5));
        let op = rng.below(100);
        let tagged: Vec<String> = m.tags.keys().cloned().collect();
        if op < 50 || tagged.is_empty() {
            // Push a new image under `tag` (moving it if it exists).
            let picks: Vec<Vec<u8>> = (0..rng.below(3))
                .map(|_| shared[rng.below(shared.len())].clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let img = Img::with_shared(&picks, 1 + rng.below(2));
            let started = Instant::now();
            for b in &img.blobs {
                let upload = async || {
                    reg.client
                        .post(reg.url(&format!(
                            "/v2/{name}/blobs/uploads/?digest={}",
                            Digest::sha256(b)
                        )))
                        .header("content-type", "application/octet-stream")
                        .body(b.clone())
                        .send()
                        .await
                        .unwrap()
                };
                let r = upload().await;
                expect(&tally, &format!("{name}: blob upload"), r, 201).await;
            }
            let r = put(&reg, &name, &tag, &img).await;
            match r.status().as_u16() {
                201 => {
                    m.images.push(img);
                    m.tags.insert(tag, m.images.len() - 1);
                }
                400 if started.elapsed() >= GC_DELAY => {
                    // Older than the delay by the time the manifest came: GC may take them.
                    tally.explained.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    expect(&tally, &format!("{name}: PUT manifest {tag}"), r, 201).await;
                }
            }
        } else if op < 65 {
            // Re-tag: point `tag` at a tagged image too.
            let from = &tagged[rng.below(tagged.len())];
            let i = m.tags[from];
            let r = put(&reg, &name, &tag, &m.images[i]).await;
            if expect(&tally, &format!("{name}: re-tag {from} as {tag}"), r, 201).await {
                m.tags.insert(tag, i);
            }
        } else if op < 80 {
            // Untag.
            let t = &tagged[rng.below(tagged.len())];
            let code = delete(&reg, &format!("/v2/{name}/manifests/{t}")).await;
            if code == 202 {
                m.tags.remove(t);
            } else {
                record(&tally, format!("{name}: DELETE tag {t}: {code}"));
            }
        } else if op < 92 {
            // Delete a tagged image by digest (its tags go with it).
            let t = &tagged[rng.below(tagged.len())];
            let i = m.tags[t];
            let d = m.images[i].digest.clone();
            let code = delete(&reg, &format!("/v2/{name}/manifests/{d}")).await;
            if code == 202 {
                m.tags.retain(|_, v| *v != i);
            } else {
                record(&tally, format!("{name}: DELETE {d} (tagged {t}): {code}"));
            }
        } else {
            let t = &tagged[rng.below(tagged.len())];
            if let Err(e) = pulls_complete(&reg, &name, t, &m.images[m.tags[t]]).await {
                record(&tally, format!("{name}: pull during the run: {e}"));
            }
        }
    }
    m
}

/// Every blob file under `<root>/<repo>/blobs/sha256`.
fn repo_files(root: &Path, repo: &str) -> BTreeSet<String> {
    std::fs::read_dir(root.join(repo).join("blobs").join("sha256"))
        .map(|rd| {
            rd.map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_racing_back_to_back_passes_lose_nothing_acknowledged() {
    // The server's warnings and internal errors (with request ids) show in a failure's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let reg = Arc::new(TestRegistry::start_with(|c| c.storage.commit = false));
    let seed = u64::from_le_bytes(random_bytes(8).try_into().unwrap());
    println!("stress seed {seed:#x}");
    let started = Instant::now();
    let deadline = started + WALL;
    let shared: Arc<Vec<Vec<u8>>> = Arc::new((0..4).map(|_| random_bytes(2048)).collect());
    // Each client's repository keeps one image with every shared layer, so the shared layers
    // are always referenced there: a re-pushed shared layer is then never an old candidate.
    let base = Img::with_shared(&shared, 0);
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("client-{i}")).collect();
    for n in &names {
        push(&reg, n, Some("base"), &base).await;
    }

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let gc_loop = {
        let (reg, stop, tally) = (reg.clone(), stop.clone(), tally.clone());
        tokio::spawn(async move {
            let mut passes = 0u64;
            let mut removed = BTreeMap::<String, u64>::new();
            while !stop.load(Ordering::Relaxed) {
                match reg.registry.gc(&opts(GC_DELAY, ZERO), &|_| {}).await {
                    Ok(r) => {
                        for p in &r.problems {
                            if p.starts_with("expiring abandoned uploads") {
                                tally.upload_races.fetch_add(1, Ordering::Relaxed);
                            } else {
                                record(&tally, format!("gc pass problem: {p}"));
                            }
                        }
                        for a in &r.actions {
                            *removed.entry(format!("{:?}", a.kind)).or_default() += 1;
                        }
                    }
                    Err(e) => record(&tally, format!("gc pass: {e}")),
                }
                passes += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (passes, removed)
        })
    };
    let clients: Vec<JoinHandle<Model>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            tokio::spawn(client(
                reg.clone(),
                n.clone(),
                shared.clone(),
                seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                deadline,
                tally.clone(),
            ))
        })
        .collect();
    let mut models = Vec::new();
    for c in clients {
        models.push(c.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (passes, removed) = gc_loop.await.unwrap();
    println!(
        "stress: {passes} passes in {:?}, removed {removed:?}, {} explained \
         MANIFEST_BLOB_UNKNOWN, {} upload-expiry races in passes",
        started.elapsed(),
        tally.explained.load(Ordering::Relaxed),
        tally.upload_races.load(Ordering::Relaxed),
    );
    assert!(passes > 0);
    let errors = tally.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} errors:\n{}",
        errors.len(),
        errors.join("\n")
    );

    // Every tag the clients believe in pulls complete, before and after a final pass that
    // takes everything unreferenced (delay 0), and nothing else is left on disk.
    let check = async |when: &str| {
        for (n, m) in names.iter().zip(&models) {
            let r = reg.get(&format!("/v2/{n}/tags/list")).await;
            let v: Value = r.json().await.unwrap();
            let mut listed: Vec<String> = v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect();
            listed.sort();
            let mut believed: Vec<String> = m.tags.keys().cloned().collect();
            believed.push("base".into());
            believed.sort();
            assert_eq!(listed, believed, "{n} {when}");
            for (t, i) in &m.tags {
                pulls_complete(&reg, n, t, &m.images[*i])
                    .await
                    .unwrap_or_else(|e| panic!("{when}: {e}"));
            }
            pulls_complete(&reg, n, "base", &base).await.unwrap();
        }
    };
    check("after the run").await;
    let last = reg.registry.gc(&opts(ZERO, ZERO), &|_| {}).await.unwrap();
    check("after a final pass").await;
    let mut dry = opts(ZERO, ZERO);
    dry.dry_run = true;
    let r = reg.registry.gc(&dry, &|_| {}).await.unwrap();
    assert!(
        r.actions.is_empty(),
        "left after the final pass {last:#?}: {r:#?}"
    );
    let mut live_cas = BTreeSet::new();
    for (n, m) in names.iter().zip(&models) {
        let mut expected: BTreeSet<String> = BTreeSet::new();
        for img in m.tags.values().map(|i| &m.images[*i]).chain([&base]) {
            expected.insert(img.digest.to_string());
            expected.extend(img.blob_digests().iter().map(|d| d.to_string()));
        }
        assert_eq!(repo_files(reg.root(), n), expected, "{n}: blobs on disk");
        live_cas.extend(expected);
    }
    let cas: BTreeSet<String> = std::fs::read_dir(reg.root().join("_cas").join("sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(cas, live_cas, "shared store");
}
