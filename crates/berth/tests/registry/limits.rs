//! Operating limits: read-only mode, the free-space floor, idle request bodies, and a disk that
//! really fills up (a small tmpfs; skipped loudly where this process cannot mount one).

use std::time::Duration;

use berth_testkit::{random_bytes, unique_repo, TestRegistry};
use serde_json::Value;

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["errors"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_serves_pulls_and_refuses_every_write_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let repo = unique_repo("limits/ro");
    let image = {
        let mut reg = TestRegistry::start_at(dir.path(), |_| {});
        let image = reg.push_image(&repo, "v1", 1).await;
        reg.stop();
        image
    };
    let reg = TestRegistry::start_at(dir.path(), |c| c.storage.read_only = true);
    let r = reg.get(&format!("/v2/{repo}/manifests/v1")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), image.manifest.as_slice());
    let writes = [
        reg.client
            .post(reg.url(&format!("/v2/{repo}/blobs/uploads/"))),
        reg.client
            .put(reg.url(&format!("/v2/{repo}/manifests/v2")))
            .body(image.manifest.clone()),
        reg.client
            .delete(reg.url(&format!("/v2/{repo}/manifests/v1"))),
        reg.client
            .delete(reg.url(&format!("/v2/{repo}/blobs/{}", image.blobs()[0].0))),
    ];
    for w in writes {
        let r = w.send().await.unwrap();
        assert_eq!(r.headers()["allow"], "GET, HEAD");
        let (status, code, detail) = error_of(r).await;
        assert_eq!((status, code.as_str()), (405, "UNSUPPORTED"));
        assert!(detail.contains("read-only"), "{detail}");
    }
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/v1")).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn below_the_free_space_floor_uploads_are_refused_while_reads_and_deletes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let repo = unique_repo("limits/floor");
    let image = {
        let mut reg = TestRegistry::start_at(dir.path(), |_| {});
        let image = reg.push_image(&repo, "v1", 1).await;
        reg.stop();
        image
    };
    let reg = TestRegistry::start_at(dir.path(), |c| c.storage.min_free_space = u64::MAX / 2);
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    let (status, code, detail) = error_of(r).await;
    assert_eq!((status, code.as_str()), (507, "DENIED"));
    assert!(detail.contains("min_free_space"), "{detail}");
    let r = reg
        .put_manifest(&repo, "v2", berth_oci::media::OCI_MANIFEST, &image.manifest)
        .await;
    assert_eq!(r.status(), 507);
    assert_eq!(
        reg.get(&format!("/v2/{repo}/manifests/v1")).await.status(),
        200
    );
    let r = reg
        .client
        .delete(reg.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// A client that never finishes its request head is disconnected after `[api]
/// header_read_timeout`, while a complete request on another connection is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = TestRegistry::start_with(|c| c.api.header_read_timeout = Duration::from_secs(1));
    let mut slow = tokio::net::TcpStream::connect(&reg.host).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(15), slow.read(&mut buf))
        .await
        .expect("the server kept a connection without a complete request head");
    // Closed: end of stream, a reset, or at most an error response before the close.
    if let Ok(n) = read {
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let r = reg.get("/v2/").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_body_fails_and_the_bytes_before_it_stay_resumable() {
    let reg = TestRegistry::start_with(|c| c.api.body_idle_timeout = Duration::from_secs(1));
    let repo = unique_repo("limits/idle");
    let r = reg
        .client
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let stalled = futures_util::stream::unfold(0u8, |n| async move {
        match n {
            0 => Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"0123456789")),
                1,
            )),
            _ => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                None
            }
        }
    });
    let started = std::time::Instant::now();
    let sent = tokio::time::timeout(
        Duration::from_secs(20),
        reg.client
            .patch(reg.url(&location))
            .body(reqwest::Body::wrap_stream(stalled))
            .send(),
    )
    .await
    .expect("the server gave up on the idle body");
    if let Ok(r) = sent {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let r = reg.client.get(reg.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-9");
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_cleanly_keeps_reads_and_recovers_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount("24m") else {
        eprintln!("*** SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run ***");
        return;
    };
    let root = fs.0.path().join("root");
    let reg = TestRegistry::start_at(&root, |c| {
        c.storage.min_free_space = 0;
        c.storage.dedupe = false;
    });
    let repo = unique_repo("limits/full");
    let mut stored = Vec::new();
    let mut failure = None;
    for _ in 0..12 {
        let data = random_bytes(3 << 20);
        let digest = berth_oci::Digest::sha256(&data);
        let r = reg
            .client
            .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 201 {
            stored.push((digest, data));
        } else {
            failure = Some(error_of(r).await);
            break;
        }
    }
    let (status, _, detail) = failure.expect("the disk never filled");
    assert_eq!(status, 507, "{detail}");
    assert!(
        detail.contains("full") || detail.contains("space"),
        "{detail}"
    );
    assert!(!stored.is_empty());
    for (d, data) in &stored {
        let r = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            data.as_slice(),
            "reads go on"
        );
    }
    let leftovers = |dir: &str| {
        std::fs::read_dir(root.join(dir))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(leftovers(".tmp"), 0, "no partial temporary files");
    assert_eq!(
        leftovers("_uploads"),
        0,
        "no partial upload left on a full disk"
    );
    // Freeing space makes writes work again.
    for (d, _) in stored.iter().take(2) {
        let r = reg
            .client
            .delete(reg.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let data = random_bytes(1 << 20);
    reg.push_blob(&repo, &data).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_interrupted_work_are_removed_at_start_and_live_sessions_kept() {
    let dir = tempfile::tempdir().unwrap();
    let repo = unique_repo("limits/leftovers");
    let location = {
        let mut reg = TestRegistry::start_at(dir.path(), |_| {});
        let r = reg
            .client
            .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let r = reg
            .client
            .patch(reg.url(&location))
            .body(b"abc".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        reg.stop();
        location
    };
    let uploads = dir.path().join("_uploads");
    std::fs::create_dir_all(uploads.join("copy-0123")).unwrap();
    std::fs::write(uploads.join("copy-0123/data"), vec![7u8; 4096]).unwrap();
    let dead = uploads.join("6f1c0f9e-2b7a-4a57-9d1e-3c2f2b9a0c11");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("info"), b"{}").unwrap();
    let reg = TestRegistry::start_at(dir.path(), |_| {});
    assert!(
        !uploads.join("copy-0123").exists(),
        "scratch of an interrupted copy is removed"
    );
    assert!(
        !dead.exists(),
        "a session without data can never resume and is removed"
    );
    let r = reg.client.get(reg.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204, "a live session stays resumable");
    assert_eq!(r.headers()["range"], "0-2");
}
