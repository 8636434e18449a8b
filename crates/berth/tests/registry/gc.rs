//! Garbage collection and retention through the HTTP API with the real server: clients push,
//! pull and delete over HTTP, a test runs passes with `Registry::gc`, and the outcome is checked
//! with `GET`/`HEAD` and on disk (`<root>/_cas/<alg>/<hex>`, `<root>/<repo>/blobs/<alg>/<hex>`).
//!
//! Each test starts its own server: a pass sweeps every repository and the shared store, so
//! tests sharing a root would collect each other's content. Times have one-second resolution:
//! "older than the delay" uses a delay of 0, "younger" a delay of an hour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_store::gc::{GcKind, GcOptions, GcReport};
use berth_store::retention::{glob, tag_pattern, KeepRule, Policy, Retention};
use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{descriptor, random_bytes, TestRegistry};
use serde_json::{json, Value};

use crate::images::*;

const HOUR: Duration = Duration::from_secs(3600);
const ZERO: Duration = Duration::ZERO;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Options of a pass over every repository with the default policy.
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

fn with_policies(mut o: GcOptions, policies: Vec<Policy>) -> GcOptions {
    o.retention.policies = policies;
    o
}

fn policy(
    globs: &[&str],
    delete_untagged: bool,
    delete_referrers: bool,
    keep: Vec<KeepRule>,
) -> Policy {
    Policy {
        repositories: globs.iter().map(|g| glob(g).unwrap()).collect(),
        delete_untagged,
        delete_referrers,
        keep_tags: keep,
    }
}

/// A keep rule over `patterns` with no criterion (keeps every matching tag); set criteria on it.
fn rule(patterns: &[&str]) -> KeepRule {
    KeepRule {
        patterns: patterns.iter().map(|p| tag_pattern(p).unwrap()).collect(),
        most_recently_pushed_count: None,
        most_recently_pulled_count: None,
        pushed_within: None,
        pulled_within: None,
    }
}

/// Runs a pass and checks the report's internal consistency.
async fn gc(reg: &TestRegistry, o: &GcOptions) -> GcReport {
    let report = reg.registry.gc(o, &|_| {}).await.unwrap();
    check_report(&report);
    report
}

/// Counts agree with the actions; every action has a target and a reason naming its rule.
fn check_report(r: &GcReport) {
    let count = |k: GcKind| r.actions.iter().filter(|a| a.kind == k).count() as u64;
    assert_eq!(r.tags, count(GcKind::Tag), "{r:#?}");
    assert_eq!(r.manifests, count(GcKind::Manifest), "{r:#?}");
    assert_eq!(r.blobs, count(GcKind::Blob), "{r:#?}");
    assert_eq!(r.shared_blobs, count(GcKind::SharedBlob), "{r:#?}");
    for a in &r.actions {
        assert!(!a.target.is_empty(), "{a:?}");
        let rule_named = match a.kind {
            GcKind::Tag => a.reason.contains("keep_tags") || a.reason.contains("referrers tag of"),
            GcKind::Manifest => a.reason.contains("untagged") || a.reason.contains("referrer of"),
            GcKind::Blob => a.reason.contains("no manifest"),
            GcKind::SharedBlob => a.reason.contains("no repository links it"),
            GcKind::Upload => !a.reason.is_empty(),
        };
        assert!(rule_named, "reason does not name its rule: {a:?}");
        assert_eq!(
            a.repository.is_none(),
            a.kind == GcKind::SharedBlob || a.kind == GcKind::Upload,
            "{a:?}"
        );
    }
}

/// The action of `kind` on `target` (a tag or digest), if the report has one.
fn action<'a>(
    r: &'a GcReport,
    kind: GcKind,
    target: &str,
) -> Option<&'a berth_store::gc::GcAction> {
    r.actions
        .iter()
        .find(|a| a.kind == kind && a.target == target)
}

fn targets(r: &GcReport, kind: GcKind) -> BTreeSet<String> {
    r.actions
        .iter()
        .filter(|a| a.kind == kind)
        .map(|a| a.target.clone())
        .collect()
}

fn cas_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("_cas").join(d.algorithm().as_str()).join(d.hex())
}

fn blob_path(root: &Path, repo: &str, d: &Digest) -> PathBuf {
    root.join(repo)
        .join("blobs")
        .join(d.algorithm().as_str())
        .join(d.hex())
}

async fn assert_manifest_gone(reg: &TestRegistry, repo: &str, img: &Img) {
    assert_eq!(
        status(reg, &format!("/v2/{repo}/manifests/{}", img.digest)).await,
        404,
        "manifest {repo}@{} should be gone",
        img.digest
    );
}

async fn assert_blob_gone(reg: &TestRegistry, repo: &str, d: &Digest) {
    assert_eq!(
        status(reg, &format!("/v2/{repo}/blobs/{d}")).await,
        404,
        "blob {repo}@{d} should be gone"
    );
    assert!(
        !blob_path(reg.root(), repo, d).exists(),
        "{repo}@{d} still on disk"
    );
}

async fn tags(reg: &TestRegistry, repo: &str) -> Vec<String> {
    let r = reg.get(&format!("/v2/{repo}/tags/list")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let mut t: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    t.sort();
    t
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Garbage

#[tokio::test]
async fn an_unreferenced_blob_goes_after_the_delay_with_its_shared_copy() {
    let reg = TestRegistry::start();
    let bytes = random_bytes(3000);
    let d = reg.push_blob("app", &bytes).await;
    assert!(cas_path(reg.root(), &d).exists());

    // Unreferenced for less than the delay: kept.
    let r = gc(&reg, &opts(HOUR, ZERO)).await;
    assert!(action(&r, GcKind::Blob, &d.to_string()).is_none(), "{r:#?}");
    assert_blob_pulls(&reg, "app", &bytes).await;
    assert!(cas_path(reg.root(), &d).exists());

    // Unreferenced for longer (delay 0): the repository's link and, as no repository links it
    // any more, the shared copy go in the same pass.
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    let a = action(&r, GcKind::Blob, &d.to_string()).expect("blob action");
    assert_eq!(a.repository.as_deref(), Some("app"));
    assert_eq!(a.bytes, bytes.len() as u64);
    let s = action(&r, GcKind::SharedBlob, &d.to_string()).expect("shared blob action");
    assert_eq!(s.bytes, bytes.len() as u64);
    assert!(r.bytes_freed >= bytes.len() as u64);
    assert_blob_gone(&reg, "app", &d).await;
    assert!(!cas_path(reg.root(), &d).exists());
    assert_eq!(head(&reg, &format!("/v2/other/blobs/{d}")).await, 404);

    // Nothing is left for the next pass.
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert!(r.actions.is_empty(), "{r:#?}");
}

#[tokio::test]
async fn a_blob_deleted_by_a_client_leaves_the_shared_store_after_the_delay() {
    let reg = TestRegistry::start();
    let bytes = random_bytes(2000);
    let d = reg.push_blob("app", &bytes).await;
    assert_eq!(delete(&reg, &format!("/v2/app/blobs/{d}")).await, 202);
    // No repository links it, but it was unlinked less than the delay ago: kept.
    let r = gc(&reg, &opts(HOUR, ZERO)).await;
    assert!(r.actions.is_empty(), "{r:#?}");
    assert!(cas_path(reg.root(), &d).exists());
    // And never offered again: a HEAD does not revive it.
    assert_eq!(head(&reg, &format!("/v2/other/blobs/{d}")).await, 404);
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::SharedBlob),
        BTreeSet::from([d.to_string()])
    );
    assert!(!cas_path(reg.root(), &d).exists());
}

#[tokio::test]
async fn a_blob_shared_with_another_repository_stays_there() {
    let reg = TestRegistry::start();
    let shared = random_bytes(4000);
    let d = reg.push_blob("a", &shared).await;
    // "b" references the same bytes from an image.
    let img = Img::with_shared(std::slice::from_ref(&shared), 0);
    push(&reg, "b", Some("v1"), &img).await;

    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Blob),
        BTreeSet::from([d.to_string()]),
        "{r:#?}"
    );
    assert_eq!(
        action(&r, GcKind::Blob, &d.to_string())
            .unwrap()
            .repository
            .as_deref(),
        Some("a")
    );
    assert!(targets(&r, GcKind::SharedBlob).is_empty(), "{r:#?}");
    assert_blob_gone(&reg, "a", &d).await;
    assert!(cas_path(reg.root(), &d).exists());
    assert_pulls(&reg, "b", "v1", &img).await;
}

#[tokio::test]
async fn referenced_blobs_are_never_removed() {
    let reg = TestRegistry::start();
    let tagged = Img::oci(2);
    push(&reg, "app", Some("v1"), &tagged).await;
    // Untagged but younger than the retention delay: it and its blobs stay.
    let young = Img::oci(2);
    push(&reg, "app", None, &young).await;
    // An index entry may be a plain blob: it is referenced too.
    let plain = random_bytes(700);
    reg.push_blob("app", &plain).await;
    let ix = Img::from_json(
        media::OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [tagged.descriptor(), descriptor("application/octet-stream", &plain)],
        }),
        Vec::new(),
    );
    push(&reg, "app", Some("ix"), &ix).await;

    for _ in 0..2 {
        let r = gc(&reg, &opts(ZERO, HOUR)).await;
        assert!(r.actions.is_empty(), "{r:#?}");
    }
    assert_pulls(&reg, "app", "v1", &tagged).await;
    assert_pulls(&reg, "app", &young.digest.to_string(), &young).await;
    assert_pulls(&reg, "app", "ix", &ix).await;
    assert_blob_pulls(&reg, "app", &plain).await;
    for b in tagged.blob_digests().iter().chain(&young.blob_digests()) {
        assert!(cas_path(reg.root(), b).exists());
    }
}

#[tokio::test]
async fn abandoned_uploads_are_removed() {
    let reg = TestRegistry::start_with(|c| c.storage.upload_timeout = Duration::from_secs(1));
    let (loc, id) = open_session(&reg).await;
    let r = reg
        .client
        .patch(reg.url(&loc))
        .header("content-type", "application/octet-stream")
        .body(random_bytes(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(reg.root().join("_uploads").join(&id).exists());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // The pass expires it (unless the server's own expiry task got there first).
    let report = gc(&reg, &opts(HOUR, HOUR)).await;
    assert!(report.uploads <= 1, "{report:#?}");
    assert!(!reg.root().join("_uploads").join(&id).exists());
    assert_eq!(status(&reg, &loc).await, 404);
}

/// Opens an upload session in `app`: its location and id.
async fn open_session(reg: &TestRegistry) -> (String, String) {
    let r = reg
        .client
        .post(reg.url("/v2/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let id = loc.rsplit('/').next().unwrap().to_owned();
    (loc, id)
}

/// A session that never received a byte lives in memory only (a monolithic upload writes
/// nothing before its `PUT`), and still expires.
#[tokio::test]
async fn abandoned_sessions_without_bytes_are_removed() {
    let reg = TestRegistry::start_with(|c| c.storage.upload_timeout = Duration::from_secs(1));
    let (loc, id) = open_session(&reg).await;
    assert_eq!(status(&reg, &loc).await, 204);
    assert!(
        !reg.root().join("_uploads").join(&id).exists(),
        "opening a session wrote to disk"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = gc(&reg, &opts(HOUR, HOUR)).await;
    assert!(report.uploads <= 1, "{report:#?}");
    assert_eq!(status(&reg, &loc).await, 404);
}

// ---------------------------------------------------------------------------------------------
// Retention with the default policy

#[tokio::test]
async fn untagged_manifests_go_after_the_retention_delay() {
    let reg = TestRegistry::start();
    let kept = Img::oci(1);
    push(&reg, "app", Some("v1"), &kept).await;
    // Untagged from the start (pushed by digest) ...
    let by_digest = Img::oci(1);
    push(&reg, "app", None, &by_digest).await;
    // ... and left untagged when its tag moved.
    let moved = Img::oci(1);
    push(&reg, "app", Some("latest"), &moved).await;
    let newer = Img::oci(1);
    push(&reg, "app", Some("latest"), &newer).await;

    let r = gc(&reg, &opts(ZERO, HOUR)).await;
    assert!(
        r.actions.is_empty(),
        "younger than the retention delay: {r:#?}"
    );
    assert_pulls(&reg, "app", &by_digest.digest.to_string(), &by_digest).await;
    assert_pulls(&reg, "app", &moved.digest.to_string(), &moved).await;

    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([by_digest.digest.to_string(), moved.digest.to_string()]),
        "{r:#?}"
    );
    for a in r.actions.iter().filter(|a| a.kind == GcKind::Manifest) {
        assert!(a.reason.contains("untagged"), "{a:?}");
        assert_eq!(a.repository.as_deref(), Some("app"));
    }
    assert!(r.tags == 0, "{r:#?}");
    for gone in [&by_digest, &moved] {
        assert_manifest_gone(&reg, "app", gone).await;
        assert!(!cas_path(reg.root(), &gone.digest).exists());
        for d in gone.blob_digests() {
            assert_blob_gone(&reg, "app", &d).await;
            assert!(!cas_path(reg.root(), &d).exists());
        }
    }
    assert_pulls(&reg, "app", "v1", &kept).await;
    assert_pulls(&reg, "app", "latest", &newer).await;
    assert_eq!(tags(&reg, "app").await, sorted(&["latest", "v1"]));
}

#[tokio::test]
async fn an_index_keeps_its_children_and_goes_with_them() {
    let reg = TestRegistry::start();
    let (c1, c2) = (Img::oci(1), Img::oci(1));
    push(&reg, "app", None, &c1).await;
    push(&reg, "app", None, &c2).await;
    let tagged = Img::index(media::OCI_INDEX, &[&c1, &c2]);
    push(&reg, "app", Some("multi"), &tagged).await;

    let (c3, c4) = (Img::oci(1), Img::oci(1));
    push(&reg, "app", None, &c3).await;
    push(&reg, "app", None, &c4).await;
    let untagged = Img::index(media::OCI_INDEX, &[&c3, &c4]);
    push(&reg, "app", None, &untagged).await;

    // A young untagged index keeps its (old) children.
    let r = gc(&reg, &opts(ZERO, HOUR)).await;
    assert!(r.actions.is_empty(), "{r:#?}");

    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    // The tagged index keeps its untagged children; the untagged one goes with its children.
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([
            untagged.digest.to_string(),
            c3.digest.to_string(),
            c4.digest.to_string()
        ]),
        "{r:#?}"
    );
    assert_pulls(&reg, "app", "multi", &tagged).await;
    for c in [&c1, &c2] {
        assert_pulls(&reg, "app", &c.digest.to_string(), c).await;
    }
    for gone in [&untagged, &c3, &c4] {
        assert_manifest_gone(&reg, "app", gone).await;
    }

    // Once its tag is deleted, the index and its children go together.
    assert_eq!(delete(&reg, "/v2/app/manifests/multi").await, 202);
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([
            tagged.digest.to_string(),
            c1.digest.to_string(),
            c2.digest.to_string()
        ]),
        "{r:#?}"
    );
    for gone in [&tagged, &c1, &c2] {
        assert_manifest_gone(&reg, "app", gone).await;
    }
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert!(r.actions.is_empty(), "{r:#?}");
}

#[tokio::test]
async fn referrers_follow_their_subject() {
    let reg = TestRegistry::start();
    let subject = Img::oci(1);
    push(&reg, "app", Some("v1"), &subject).await;
    let sbom = Img::artifact(Some(&subject), "application/spdx+json");
    push(&reg, "app", None, &sbom).await;
    // A referrer of a referrer is kept through the chain.
    let sig = Img::artifact(
        Some(&sbom),
        "application/vnd.dev.cosign.artifact.sig.v1+json",
    );
    push(&reg, "app", None, &sig).await;
    // A referrer pushed before its subject.
    let early_subject = Img::oci(1);
    let early = Img::artifact(Some(&early_subject), "application/spdx+json");
    push(&reg, "app", None, &early).await;

    // Everything is kept while young; the live subject keeps its referrers even when old.
    let r = gc(&reg, &opts(ZERO, HOUR)).await;
    assert!(r.actions.is_empty(), "{r:#?}");
    assert_pulls(&reg, "app", &early.digest.to_string(), &early).await;

    // Old: the early referrer's subject never arrived, so it goes; the others stay.
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([early.digest.to_string()]),
        "{r:#?}"
    );
    let a = action(&r, GcKind::Manifest, &early.digest.to_string()).unwrap();
    assert!(
        a.reason.contains("referrer of") && a.reason.contains(&early_subject.digest.to_string()),
        "{a:?}"
    );
    assert_manifest_gone(&reg, "app", &early).await;
    assert_pulls(&reg, "app", "v1", &subject).await;
    assert_pulls(&reg, "app", &sbom.digest.to_string(), &sbom).await;
    assert_pulls(&reg, "app", &sig.digest.to_string(), &sig).await;

    // The subject is deleted: its referrers (and theirs) go.
    assert_eq!(
        delete(&reg, &format!("/v2/app/manifests/{}", subject.digest)).await,
        202
    );
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([sbom.digest.to_string(), sig.digest.to_string()]),
        "{r:#?}"
    );
    for gone in [&sbom, &sig] {
        assert_manifest_gone(&reg, "app", gone).await;
        for d in gone.blob_digests() {
            assert_blob_gone(&reg, "app", &d).await;
        }
    }
    let r = reg
        .get(&format!("/v2/app/referrers/{}", subject.digest))
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["manifests"], json!([]), "{v}");
}

#[tokio::test]
async fn tag_schema_tags_go_with_their_subject() {
    let reg = TestRegistry::start();
    let subject = Img::oci(1);
    push(&reg, "app", Some("v1"), &subject).await;
    // cosign's tag scheme: the signature is an image tagged sha256-<hex>.sig.
    let cosign = Img::artifact(None, "application/vnd.dev.cosign.artifact.sig.v1+json");
    let sig_tag = format!("{}.sig", subject.schema_tag());
    push(&reg, "app", Some(&sig_tag), &cosign).await;
    // The referrers tag schema: an index of referrers tagged sha256-<hex>.
    let attached = Img::artifact(None, "application/spdx+json");
    push(&reg, "app", None, &attached).await;
    let schema_index = Img::index(media::OCI_INDEX, &[&attached]);
    push(&reg, "app", Some(&subject.schema_tag()), &schema_index).await;
    // Tags naming a digest that is no manifest of the repository.
    let stranger = Img::oci(1);
    let orphan_sig = Img::artifact(None, "application/vnd.dev.cosign.artifact.sig.v1+json");
    let orphan_tag = format!("{}.sig", stranger.schema_tag());
    push(&reg, "app", Some(&orphan_tag), &orphan_sig).await;

    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Tag),
        BTreeSet::from([orphan_tag.clone()]),
        "{r:#?}"
    );
    assert!(action(&r, GcKind::Tag, &orphan_tag)
        .unwrap()
        .reason
        .contains("referrers tag of"));
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([orphan_sig.digest.to_string()]),
        "{r:#?}"
    );
    assert_manifest_gone(&reg, "app", &orphan_sig).await;
    assert_pulls(&reg, "app", &sig_tag, &cosign).await;
    assert_pulls(&reg, "app", &subject.schema_tag(), &schema_index).await;
    assert_pulls(&reg, "app", &attached.digest.to_string(), &attached).await;

    // The subject goes: so do its tag-schema tags and what they held.
    assert_eq!(
        delete(&reg, &format!("/v2/app/manifests/{}", subject.digest)).await,
        202
    );
    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Tag),
        BTreeSet::from([sig_tag.clone(), subject.schema_tag()]),
        "{r:#?}"
    );
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([
            cosign.digest.to_string(),
            schema_index.digest.to_string(),
            attached.digest.to_string()
        ]),
        "{r:#?}"
    );
    assert!(tags(&reg, "app").await.is_empty());
    for gone in [&cosign, &schema_index, &attached] {
        assert_manifest_gone(&reg, "app", gone).await;
    }
}

#[tokio::test]
async fn a_policy_can_keep_untagged_manifests_and_orphaned_referrers() {
    let reg = TestRegistry::start();
    let o = with_policies(
        opts(ZERO, ZERO),
        vec![
            policy(&["keep-untagged"], false, true, vec![]),
            policy(&["keep-referrers"], true, false, vec![]),
        ],
    );
    let mut pushed = Vec::new();
    for repo in ["keep-untagged", "keep-referrers", "default"] {
        let untagged = Img::oci(1);
        push(&reg, repo, None, &untagged).await;
        let ghost = Img::oci(1);
        let orphan = Img::artifact(Some(&ghost), "application/spdx+json");
        push(&reg, repo, None, &orphan).await;
        let sig = Img::artifact(None, "application/vnd.dev.cosign.artifact.sig.v1+json");
        let sig_tag = format!("{}.sig", ghost.schema_tag());
        push(&reg, repo, Some(&sig_tag), &sig).await;
        pushed.push((repo, untagged, orphan, sig, sig_tag));
    }
    let r = gc(&reg, &o).await;
    for (repo, untagged, orphan, sig, sig_tag) in &pushed {
        let removed = |kind, target: &str| {
            r.actions.iter().any(|a| {
                a.kind == kind && a.target == target && a.repository.as_deref() == Some(repo)
            })
        };
        let (untagged_goes, referrers_go) = match *repo {
            "keep-untagged" => (false, true),
            "keep-referrers" => (true, false),
            _ => (true, true),
        };
        assert_eq!(
            removed(GcKind::Manifest, &untagged.digest.to_string()),
            untagged_goes,
            "{repo} {r:#?}"
        );
        assert_eq!(
            removed(GcKind::Manifest, &orphan.digest.to_string()),
            referrers_go,
            "{repo} {r:#?}"
        );
        assert_eq!(removed(GcKind::Tag, sig_tag), referrers_go, "{repo} {r:#?}");
        if untagged_goes {
            assert_manifest_gone(&reg, repo, untagged).await;
        } else {
            assert_pulls(&reg, repo, &untagged.digest.to_string(), untagged).await;
        }
        if referrers_go {
            assert_manifest_gone(&reg, repo, orphan).await;
            assert_eq!(
                status(&reg, &format!("/v2/{repo}/manifests/{sig_tag}")).await,
                404
            );
        } else {
            assert_pulls(&reg, repo, &orphan.digest.to_string(), orphan).await;
            assert_pulls(&reg, repo, sig_tag, sig).await;
        }
        // The signature image lost its tag: with delete_untagged it goes as untagged.
        let sig_gone = untagged_goes && referrers_go;
        if sig_gone {
            assert_manifest_gone(&reg, repo, sig).await;
        }
    }
}

#[tokio::test]
async fn docker_media_types_behave_like_oci() {
    let reg = TestRegistry::start();
    let (a, b) = (Img::docker(), Img::docker());
    push(&reg, "app", None, &a).await;
    push(&reg, "app", None, &b).await;
    let list = Img::index(media::DOCKER_MANIFEST_LIST, &[&a, &b]);
    push(&reg, "app", Some("latest"), &list).await;
    let (c, d) = (Img::docker(), Img::docker());
    push(&reg, "app", None, &c).await;
    push(&reg, "app", None, &d).await;
    let untagged_list = Img::index(media::DOCKER_MANIFEST_LIST, &[&c, &d]);
    push(&reg, "app", None, &untagged_list).await;
    let lone = Img::docker();
    push(&reg, "app", None, &lone).await;
    let tagged = Img::docker();
    push(&reg, "app", Some("single"), &tagged).await;

    let r = gc(&reg, &opts(ZERO, ZERO)).await;
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([
            untagged_list.digest.to_string(),
            c.digest.to_string(),
            d.digest.to_string(),
            lone.digest.to_string()
        ]),
        "{r:#?}"
    );
    assert_pulls(&reg, "app", "latest", &list).await;
    assert_pulls(&reg, "app", "single", &tagged).await;
    for kept in [&a, &b] {
        assert_pulls(&reg, "app", &kept.digest.to_string(), kept).await;
    }
    for gone in [&untagged_list, &c, &d, &lone] {
        assert_manifest_gone(&reg, "app", gone).await;
        for bd in gone.blob_digests() {
            assert_blob_gone(&reg, "app", &bd).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// keep_tags policies

/// Pushes one image per tag, `gap` apart, and returns them in push order.
async fn push_tags(reg: &TestRegistry, repo: &str, names: &[&str], gap: Duration) -> Vec<Img> {
    let mut out = Vec::new();
    for (i, t) in names.iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let img = Img::oci(1);
        push(reg, repo, Some(t), &img).await;
        out.push(img);
    }
    out
}

#[tokio::test]
async fn keep_the_most_recently_pushed_tags() {
    let reg = TestRegistry::start();
    let mut keep = rule(&["v.*"]);
    keep.most_recently_pushed_count = Some(2);
    let o = with_policies(
        opts(ZERO, HOUR),
        vec![policy(&["app"], true, true, vec![keep])],
    );
    // Oldest first; with ties broken by name "a" would win, so only push times keep b and c.
    let imgs = push_tags(
        &reg,
        "app",
        &["va", "vb", "vc"],
        Duration::from_millis(1100),
    )
    .await;
    let r = gc(&reg, &o).await;
    assert_eq!(
        targets(&r, GcKind::Tag),
        BTreeSet::from(["va".to_owned()]),
        "{r:#?}"
    );
    assert!(action(&r, GcKind::Tag, "va")
        .unwrap()
        .reason
        .contains("keep_tags"));
    assert_eq!(tags(&reg, "app").await, sorted(&["vb", "vc"]));
    // The untagged manifest is younger than the retention delay: it stays, by digest.
    assert_pulls(&reg, "app", &imgs[0].digest.to_string(), &imgs[0]).await;
    assert_eq!(status(&reg, "/v2/app/manifests/va").await, 404);
    // With retention delay 0 the next pass takes the manifest it left.
    let mut o0 = o.clone();
    o0.retention.delay = ZERO;
    let r = gc(&reg, &o0).await;
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([imgs[0].digest.to_string()]),
        "{r:#?}"
    );
    assert_pulls(&reg, "app", "vb", &imgs[1]).await;
    assert_pulls(&reg, "app", "vc", &imgs[2]).await;
}

#[tokio::test]
async fn keep_tags_pushed_within() {
    let reg = TestRegistry::start();
    let mut keep = rule(&[".*"]);
    keep.pushed_within = Some(Duration::from_secs(1));
    let o = with_policies(
        opts(ZERO, ZERO),
        vec![policy(&["app"], true, true, vec![keep])],
    );
    let imgs = push_tags(&reg, "app", &["old", "new"], Duration::from_millis(2100)).await;
    let r = gc(&reg, &o).await;
    assert_eq!(
        targets(&r, GcKind::Tag),
        BTreeSet::from(["old".to_owned()]),
        "{r:#?}"
    );
    // Untagged and older than the retention delay (0): its manifest goes in the same pass.
    assert_eq!(
        targets(&r, GcKind::Manifest),
        BTreeSet::from([imgs[0].digest.to_string()]),
        "{r:#?}"
    );
    assert_eq!(tags(&reg, "app").await, sorted(&["new"]));
    assert_manifest_gone(&reg, "app", &imgs[0]).await;
    assert_pulls(&reg, "app", "new", &imgs[1]).await;
}

#[tokio::test]
async fn keep_tags_pulled_within_and_most_recently_pulled() {
    let reg = TestRegistry::start();
    let mut within = rule(&[".*"]);
    within.pulled_within = Some(HOUR);
    let mut count = rule(&[".*"]);
    count.most_recently_pulled_count = Some(1);
    let o = with_policies(
        opts(ZERO, HOUR),
        vec![
            policy(&["within"], true, true, vec![within]),
            policy(&["count"], true, true, vec![count]),
        ],
    );
    push_tags(&reg, "within", &["pulled", "idle"], ZERO).await;
    push_tags(&reg, "count", &["first", "second", "idle"], ZERO).await;
    assert_eq!(status(&reg, "/v2/within/manifests/pulled").await, 200);
    assert_eq!(status(&reg, "/v2/count/manifests/first").await, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A HEAD counts as a pull (containerd resolves tags with HEAD).
    assert_eq!(head(&reg, "/v2/count/manifests/second").await, 200);
    reg.registry.flush_pull_stats().await.unwrap();

    let r = gc(&reg, &o).await;
    let gone: BTreeSet<(String, String)> = r
        .actions
        .iter()
        .filter(|a| a.kind == GcKind::Tag)
        .map(|a| (a.repository.clone().unwrap(), a.target.clone()))
        .collect();
    let expected: BTreeSet<(String, String)> =
        [("within", "idle"), ("count", "first"), ("count", "idle")]
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
    assert_eq!(gone, expected, "{r:#?}");
    assert_eq!(tags(&reg, "within").await, sorted(&["pulled"]));
    assert_eq!(tags(&reg, "count").await, sorted(&["second"]));
}

#[tokio::test]
async fn patterns_select_tags_and_any_rule_keeps_a_tag() {
    let reg = TestRegistry::start();
    // Rule 1 keeps every release-* tag; rule 2 keeps pulled tags; nothing keeps the rest.
    let releases = rule(&["release-.*"]);
    let mut pulled = rule(&[".*"]);
    pulled.pulled_within = Some(HOUR);
    // Rule 3 would keep the most recently pushed tag, but only among dev-* tags.
    let mut dev = rule(&["dev-.*"]);
    dev.most_recently_pushed_count = Some(1);
    let o = with_policies(
        opts(ZERO, HOUR),
        vec![policy(&["app"], true, true, vec![releases, pulled, dev])],
    );
    push_tags(
        &reg,
        "app",
        &[
            "release-1",
            "release-2",
            "used",
            "unused",
            "dev-a",
            "feature",
        ],
        ZERO,
    )
    .await;
    assert_eq!(status(&reg, "/v2/app/manifests/used").await, 200);
    reg.registry.flush_pull_stats().await.unwrap();
    let r = gc(&reg, &o).await;
    assert_eq!(
        targets(&r, GcKind::Tag),
        BTreeSet::from(["unused".to_owned(), "feature".to_owned()]),
        "{r:#?}"
    );
    assert_eq!(
        tags(&reg, "app").await,
        sorted(&["dev-a", "release-1", "release-2", "used"])
    );
}

#[tokio::test]
async fn the_first_matching_policy_wins_and_unnamed_repositories_keep_every_tag() {
    let reg = TestRegistry::start();
    let mut nothing = rule(&[".*"]);
    nothing.most_recently_pushed_count = Some(0);
    let o = with_policies(
        opts(ZERO, HOUR),
        vec![
            // team/<one component>: keep v* tags.
            policy(&["team/*"], true, true, vec![rule(&["v.*"])]),
            // Everything under team/ that the first did not take: keep no tag.
            policy(&["team/**"], true, true, vec![nothing]),
        ],
    );
    for repo in ["team/app", "team/app/sub", "other/app"] {
        push_tags(&reg, repo, &["v1", "dev"], ZERO).await;
    }
    let r = gc(&reg, &o).await;
    assert_eq!(tags(&reg, "team/app").await, sorted(&["v1"]), "{r:#?}");
    assert!(tags(&reg, "team/app/sub").await.is_empty(), "{r:#?}");
    assert_eq!(
        tags(&reg, "other/app").await,
        sorted(&["dev", "v1"]),
        "{r:#?}"
    );
    assert_eq!(r.tags, 3, "{r:#?}");
}

// ---------------------------------------------------------------------------------------------
// Dry runs

/// (kind, repository, target) of every action.
fn action_set(r: &GcReport) -> BTreeSet<(String, Option<String>, String)> {
    r.actions
        .iter()
        .map(|a| {
            (
                format!("{:?}", a.kind),
                a.repository.clone(),
                a.target.clone(),
            )
        })
        .collect()
}

/// A repository with one of everything a pass removes, and what must survive.
struct Mixed {
    kept: Img,
    untagged: Img,
    orphan: Img,
    dropped_tag: Img,
    stray: Vec<u8>,
}

async fn mixed(reg: &TestRegistry) -> Mixed {
    let kept = Img::oci(1);
    push(reg, "app", Some("v1"), &kept).await;
    let untagged = Img::oci(1);
    push(reg, "app", None, &untagged).await;
    let ghost = Img::oci(1);
    let orphan = Img::artifact(Some(&ghost), "application/spdx+json");
    push(reg, "app", None, &orphan).await;
    let dropped_tag = Img::oci(1);
    push(reg, "app", Some("dev"), &dropped_tag).await;
    let stray = random_bytes(1234);
    reg.push_blob("app", &stray).await;
    Mixed {
        kept,
        untagged,
        orphan,
        dropped_tag,
        stray,
    }
}

async fn assert_everything_pulls(reg: &TestRegistry, m: &Mixed) {
    assert_pulls(reg, "app", "v1", &m.kept).await;
    assert_pulls(reg, "app", &m.untagged.digest.to_string(), &m.untagged).await;
    assert_pulls(reg, "app", &m.orphan.digest.to_string(), &m.orphan).await;
    assert_pulls(reg, "app", "dev", &m.dropped_tag).await;
    assert_blob_pulls(reg, "app", &m.stray).await;
}

#[tokio::test]
async fn a_dry_run_reports_exactly_what_a_pass_removes() {
    let reg = TestRegistry::start();
    let m = mixed(&reg).await;
    // Let the stray blob be unreferenced for longer than a two-second delay; what the pass
    // itself unreferences is then younger than the delay (even if the pass crosses a second
    // boundary) and stays for a later pass.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let o = with_policies(
        opts(Duration::from_secs(2), ZERO),
        vec![policy(&["app"], true, true, vec![rule(&["v.*"])])],
    );
    let mut dry = o.clone();
    dry.dry_run = true;
    let planned = gc(&reg, &dry).await;
    assert!(planned.dry_run);
    assert_eq!(
        targets(&planned, GcKind::Tag),
        BTreeSet::from(["dev".to_owned()]),
        "{planned:#?}"
    );
    assert_eq!(
        targets(&planned, GcKind::Manifest),
        BTreeSet::from([
            m.untagged.digest.to_string(),
            m.orphan.digest.to_string(),
            m.dropped_tag.digest.to_string()
        ]),
        "{planned:#?}"
    );
    assert_eq!(
        targets(&planned, GcKind::Blob),
        BTreeSet::from([Digest::sha256(&m.stray).to_string()]),
        "{planned:#?}"
    );
    // Nothing was removed.
    assert_everything_pulls(&reg, &m).await;
    assert_eq!(gc(&reg, &dry).await.actions.len(), planned.actions.len());

    let done = gc(&reg, &o).await;
    assert!(!done.dry_run);
    assert_eq!(
        action_set(&done),
        action_set(&planned),
        "{planned:#?}\n{done:#?}"
    );
    for (p, d) in planned.actions.iter().zip(&done.actions) {
        assert_eq!((p.kind, &p.target, p.bytes), (d.kind, &d.target, d.bytes));
        if p.kind != GcKind::Blob {
            assert_eq!(p.reason, d.reason);
        }
    }
    assert_pulls(&reg, "app", "v1", &m.kept).await;
    for gone in [&m.untagged, &m.orphan, &m.dropped_tag] {
        assert_manifest_gone(&reg, "app", gone).await;
    }
    assert_blob_gone(&reg, "app", &Digest::sha256(&m.stray)).await;
}

/// With a delay of 0, what the pass unreferences (the blobs of the manifests it removes, and
/// shared copies whose last link it removes) goes in the same pass: a dry run must say so.
#[tokio::test]
async fn a_dry_run_with_zero_delay_reports_what_the_pass_unreferences() {
    let reg = TestRegistry::start();
    let m = mixed(&reg).await;
    let o = with_policies(
        opts(ZERO, ZERO),
        vec![policy(&["app"], true, true, vec![rule(&["v.*"])])],
    );
    let mut dry = o.clone();
    dry.dry_run = true;
    let planned = gc(&reg, &dry).await;
    assert_everything_pulls(&reg, &m).await;
    let done = gc(&reg, &o).await;
    assert_eq!(
        action_set(&done),
        action_set(&planned),
        "{planned:#?}\n{done:#?}"
    );
    let mut gone_blobs: BTreeSet<String> = [&m.untagged, &m.orphan, &m.dropped_tag]
        .iter()
        .flat_map(|i| i.blob_digests())
        .map(|d| d.to_string())
        .collect();
    gone_blobs.insert(Digest::sha256(&m.stray).to_string());
    assert_eq!(targets(&done, GcKind::Blob), gone_blobs, "{done:#?}");
}

// ---------------------------------------------------------------------------------------------
// Scale

/// Times a pass over one repository holding `n` untagged manifests (pushed over HTTP by
/// digest, so untagged from the start), which removes them all.
async fn time_pass(n: usize) -> (Duration, Duration) {
    let reg = TestRegistry::start_with(|c| c.storage.commit = false);
    let config = br#"{"os":"linux"}"#.to_vec();
    let layer = random_bytes(512);
    reg.push_blob("big", &config).await;
    reg.push_blob("big", &layer).await;
    for i in 0..n {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
            "annotations": {"n": i.to_string()},
        });
        let img = Img::from_json(media::OCI_MANIFEST, &m, Vec::new());
        let r = put(&reg, "big", &img.digest.to_string(), &img).await;
        assert_eq!(r.status(), 201);
    }
    // Planning alone (a dry run reads everything a pass reads, removes nothing) ...
    let mut dry = opts(ZERO, ZERO);
    dry.dry_run = true;
    let started = Instant::now();
    let r = gc(&reg, &dry).await;
    let planned = started.elapsed();
    assert_eq!(r.manifests, n as u64);
    // ... and the real pass, split at the shared-store sweep.
    let shared_at = std::sync::Mutex::new(None);
    let started = Instant::now();
    let r = reg
        .registry
        .gc(&opts(ZERO, ZERO), &|e| {
            if matches!(e, berth_store::gc::GcEvent::SharedStore) {
                *shared_at.lock().unwrap() = Some(Instant::now());
            }
        })
        .await
        .unwrap();
    let took = started.elapsed();
    check_report(&r);
    assert_eq!(r.manifests, n as u64);
    assert_eq!(r.blobs, 2);
    let repo_part = shared_at.lock().unwrap().unwrap() - started;
    println!(
        "{n} manifests: dry run {planned:?}; pass {took:?} = repository {repo_part:?} + \
         shared store {:?}",
        took - repo_part
    );
    (planned, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark figure; run by hand"]
async fn gc_pass_time_over_2000_and_4000_manifests() {
    let (d2, t2) = time_pass(2000).await;
    let (d4, t4) = time_pass(4000).await;
    println!(
        "gc pass: 2000 manifests {t2:?} (dry run {d2:?}), 4000 manifests {t4:?} (dry run {d4:?}), \
         ratio {:.2} (dry run {:.2})",
        t4.as_secs_f64() / t2.as_secs_f64(),
        d4.as_secs_f64() / d2.as_secs_f64()
    );
}

#[tokio::test]
async fn a_pass_over_a_repository_that_does_not_exist_says_so() {
    let reg = TestRegistry::start();
    let mut o = opts(Duration::ZERO, Duration::ZERO);
    o.repo = Some(berth_testkit::berth_oci::RepoName::parse("no/such/repo").unwrap());
    let err = reg.registry.gc(&o, &|_| {}).await.unwrap_err();
    assert!(
        matches!(err, berth_store::StoreError::NameUnknown(_)),
        "{err}"
    );
    let scrub = berth_store::scrub::ScrubOptions {
        repo: o.repo.clone(),
        repair: false,
    };
    assert!(reg.registry.scrub(&scrub, &|_| {}).await.is_err());
}
