//! Images as the garbage-collection suites push them: a manifest (image, index, artifact or
//! referrer, OCI or Docker) with its blobs, and the HTTP helpers that push and check them.

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::reqwest::Response;
use berth_testkit::{descriptor, random_bytes, TestImage, TestRegistry};
use serde_json::{json, Value};

/// A manifest or artifact as a client pushes it: its blobs, then its bytes.
#[derive(Clone)]
pub struct Img {
    pub media_type: &'static str,
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub blobs: Vec<Vec<u8>>,
}

pub fn nonce() -> String {
    hex(&random_bytes(8))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Img {
    pub fn from_json(media_type: &'static str, m: &Value, blobs: Vec<Vec<u8>>) -> Img {
        let manifest = serde_json::to_vec(m).unwrap();
        Img {
            media_type,
            digest: Digest::sha256(&manifest),
            manifest,
            blobs,
        }
    }

    pub fn from_test_image(t: TestImage) -> Img {
        let mut blobs = vec![t.config.clone()];
        blobs.extend(t.layers.iter().cloned());
        Img {
            media_type: media::OCI_MANIFEST,
            digest: t.digest.clone(),
            manifest: t.manifest,
            blobs,
        }
    }

    /// A random OCI image (config + `layers` layers).
    pub fn oci(layers: usize) -> Img {
        Img::from_test_image(TestImage::random(layers))
    }

    /// An OCI image with a random config, `own` random layers and then `shared` (layers other
    /// images have too).
    pub fn with_shared(shared: &[Vec<u8>], own: usize) -> Img {
        let config = format!(r#"{{"os":"linux","nonce":"{}"}}"#, nonce());
        let mut layers: Vec<Vec<u8>> = (0..own).map(|i| random_bytes(1000 + 300 * i)).collect();
        layers.extend(shared.iter().cloned());
        Img::from_test_image(TestImage::from_parts(config.into_bytes(), layers, None))
    }

    /// An artifact whose `subject` is `subject` (a referrer), or a plain artifact without one.
    pub fn artifact(subject: Option<&Img>, artifact_type: &str) -> Img {
        let config = br#"{}"#.to_vec();
        let payload = format!("payload {}", nonce()).into_bytes();
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(media::OCI_EMPTY, &config),
            "layers": [descriptor("application/octet-stream", &payload)],
        });
        if let Some(s) = subject {
            m["subject"] = s.descriptor();
        }
        Img::from_json(media::OCI_MANIFEST, &m, vec![config, payload])
    }

    /// A Docker schema 2 image.
    pub fn docker() -> Img {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","nonce":"{}"}}"#,
            nonce()
        )
        .into_bytes();
        let layer = random_bytes(1500);
        let m = json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": descriptor("application/vnd.docker.container.image.v1+json", &config),
            "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer)],
        });
        Img::from_json(media::DOCKER_MANIFEST, &m, vec![config, layer])
    }

    /// An index (OCI index or Docker manifest list) of `children`.
    pub fn index(media_type: &'static str, children: &[&Img]) -> Img {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": children.iter().enumerate().map(|(i, c)| {
                let mut d = c.descriptor();
                d["platform"] = json!({"architecture": format!("arch{i}"), "os": "linux"});
                d
            }).collect::<Vec<_>>(),
        });
        Img::from_json(media_type, &m, Vec::new())
    }

    pub fn descriptor(&self) -> Value {
        descriptor(self.media_type, &self.manifest)
    }

    pub fn blob_digests(&self) -> Vec<Digest> {
        self.blobs.iter().map(|b| Digest::sha256(b)).collect()
    }

    /// `sha256-<hex>`: the referrers tag schema's name for this manifest.
    pub fn schema_tag(&self) -> String {
        format!("sha256-{}", self.digest.hex())
    }
}

pub async fn put(reg: &TestRegistry, repo: &str, reference: &str, img: &Img) -> Response {
    reg.put_manifest(repo, reference, img.media_type, &img.manifest)
        .await
}

/// Pushes `img`'s blobs.
pub async fn push_blobs(reg: &TestRegistry, repo: &str, img: &Img) {
    for b in &img.blobs {
        reg.push_blob(repo, b).await;
    }
}

/// Pushes `img`'s blobs and then its manifest under `tag` (by digest when `None`).
pub async fn push(reg: &TestRegistry, repo: &str, tag: Option<&str>, img: &Img) {
    push_blobs(reg, repo, img).await;
    let reference = tag.map_or_else(|| img.digest.to_string(), str::to_owned);
    let r = put(reg, repo, &reference, img).await;
    assert_eq!(
        r.status(),
        201,
        "PUT {repo}:{reference}: {}",
        r.text().await.unwrap()
    );
}

pub async fn status(reg: &TestRegistry, path: &str) -> u16 {
    reg.get(path).await.status().as_u16()
}

pub async fn head(reg: &TestRegistry, path: &str) -> u16 {
    reg.client
        .head(reg.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub async fn delete(reg: &TestRegistry, path: &str) -> u16 {
    reg.client
        .delete(reg.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub async fn assert_blob_pulls(reg: &TestRegistry, repo: &str, bytes: &[u8]) {
    let d = Digest::sha256(bytes);
    let r = reg.get(&format!("/v2/{repo}/blobs/{d}")).await;
    assert_eq!(r.status(), 200, "blob {repo}@{d}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), bytes, "blob {repo}@{d}");
}

/// The manifest pulls byte-identical by `reference` and by digest, and so does every blob.
pub async fn assert_pulls(reg: &TestRegistry, repo: &str, reference: &str, img: &Img) {
    for r in [reference.to_owned(), img.digest.to_string()] {
        let resp = reg.get(&format!("/v2/{repo}/manifests/{r}")).await;
        assert_eq!(resp.status(), 200, "manifest {repo}:{r}");
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            img.manifest.as_slice()
        );
    }
    for b in &img.blobs {
        assert_blob_pulls(reg, repo, b).await;
    }
}
