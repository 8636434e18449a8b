//! Large payloads: a 1 GiB blob streamed through one `PATCH` in bounded memory (berth hashes
//! while streaming and never holds a blob in memory), and a 4 MiB manifest — the size the
//! spec says registries should expect ("Pushing Manifests") — sent without `Content-Length`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_testkit::berth_oci::{media, Algorithm, Digest, Hasher};
use berth_testkit::{descriptor, header, unique_repo, TestImage, TestRegistry};
use bytes::Bytes;
use futures_util::stream;
use serde_json::{json, Map, Value};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Pseudo-random bytes made 1 MiB at a time (xorshift64), hashed as they are made, so the
/// whole blob never exists in memory on the client side either.
struct Generator {
    state: u64,
    remaining: u64,
    hasher: Arc<Mutex<Hasher>>,
}

impl Generator {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(MIB) as usize;
        let mut buf = vec![0u8; n];
        let mut x = self.state;
        for word in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        self.state = x;
        self.remaining -= n as u64;
        self.hasher.lock().unwrap().update(&buf);
        Some(Bytes::from(buf))
    }
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The resident size the peak is measured from: the peak is reset to the current size when
/// the kernel allows it (`clear_refs` 5), else the peak so far is the baseline.
fn rss_baseline_kib() -> u64 {
    if std::fs::write("/proc/self/clear_refs", "5").is_ok() {
        proc_status_kib("VmRSS")
    } else {
        proc_status_kib("VmHWM")
    }
}

#[tokio::test]
async fn one_gib_blob_streams_through_one_patch_in_bounded_memory() {
    // Its own server, so the gigabyte goes away with its temporary root when the test ends.
    let reg = TestRegistry::start();
    let repo = unique_repo("large/gib");
    let hasher = Arc::new(Mutex::new(Algorithm::Sha256.hasher()));
    let generator = Generator {
        state: 0x9E37_79B9_7F4A_7C15,
        remaining: GIB,
        hasher: hasher.clone(),
    };
    let body = stream::unfold(generator, |mut g| async move {
        g.next_chunk().map(|c| (Ok::<_, std::io::Error>(c), g))
    });
    let baseline = rss_baseline_kib();
    let push = async {
        let r = reg
            .client
            .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let location = header(&r, "location").to_owned();
        let r = reg
            .client
            .patch(reg.url(&location))
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(header(&r, "range"), format!("0-{}", GIB - 1));
        let location = header(&r, "location").to_owned();
        let digest: Digest = hasher.lock().unwrap().current();
        let r = reg
            .client
            .put(reg.url(&format!("{location}?digest={digest}")))
            .header("content-length", "0")
            .send()
            .await
            .unwrap();
        (r, digest)
    };
    let (r, digest) = tokio::time::timeout(Duration::from_secs(900), push)
        .await
        .expect("pushing 1 GiB took longer than 15 minutes");
    let growth_mib = proc_status_kib("VmHWM").saturating_sub(baseline) / 1024;
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    let r = reg
        .client
        .head(reg.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), GIB.to_string());
    assert!(
        growth_mib < 200,
        "peak RSS grew by {growth_mib} MiB while pushing 1 GiB"
    );
}

/// An image manifest over `image`'s blobs whose annotations bring it to exactly `size` bytes.
fn manifest_with_annotations_of_size(image: &TestImage, size: usize) -> Vec<u8> {
    let build = |annotations: &Map<String, Value>| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &image.config),
            "layers": image.layers.iter()
                .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l))
                .collect::<Vec<_>>(),
            "annotations": annotations,
        }))
        .unwrap()
    };
    let mut annotations = Map::new();
    let note = "n".repeat(1000);
    for i in 0..4000 {
        annotations.insert(
            format!("org.example.note.{i:05}"),
            Value::from(note.as_str()),
        );
    }
    annotations.insert("org.example.zpad".into(), Value::from(""));
    let short = build(&annotations).len();
    annotations.insert(
        "org.example.zpad".into(),
        Value::from("p".repeat(size - short)),
    );
    let manifest = build(&annotations);
    assert_eq!(manifest.len(), size);
    manifest
}

#[tokio::test]
async fn four_mib_manifest_without_content_length_is_accepted() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("large/manifest");
    let image = TestImage::random(1);
    for (_, bytes) in image.blobs() {
        reg.push_blob(&repo, bytes).await;
    }
    let manifest = manifest_with_annotations_of_size(&image, 4 * MIB as usize);
    let digest = Digest::sha256(&manifest);
    let chunks: Vec<Result<Bytes, std::io::Error>> = manifest
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let r = reg
        .client
        .put(reg.url(&format!("/v2/{repo}/manifests/big")))
        .header("content-type", media::OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), digest.to_string());
    let r = reg.get(&format!("/v2/{repo}/manifests/big")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
}
