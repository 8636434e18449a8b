//! Test support: a real berth server on 127.0.0.1:0 in a temporary root, and small typed OCI
//! client helpers. Dev-only; nothing here ships.
//!
//! The server runs on its own thread and runtime, so tests may use any runtime (or none).
//! Tests in one binary share [`TestRegistry::shared`] and keep out of each other's way with
//! [`unique_repo`] names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use berth::config::Config;
use berth_oci::{media, Digest};
use serde_json::{json, Value};

pub mod faults;

pub use berth_oci;
pub use reqwest;

/// A berth server running on an ephemeral loopback port over a temporary root.
pub struct TestRegistry {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// `127.0.0.1:<port>`, as real clients spell a registry.
    pub host: String,
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    /// The server's storage engine (for garbage collection passes and test hooks).
    pub registry: std::sync::Arc<berth_store::Registry>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub client: reqwest::Client,
}

impl TestRegistry {
    /// Starts a server on a fresh temporary root with the default configuration.
    pub fn start() -> TestRegistry {
        Self::start_with(|_| {})
    }

    /// Starts a server on a fresh temporary root after `tweak` adjusts the configuration.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Self::start_at(dir.path(), tweak);
        reg._dir = Some(dir);
        reg
    }

    /// Starts a server on an existing root (for restart tests).
    pub fn start_at(root: &Path, tweak: impl FnOnce(&mut Config)) -> TestRegistry {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            root: root.to_owned(),
            ..Default::default()
        };
        tweak(&mut config);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match berth::serve::start(config).await {
                    Ok(running) => {
                        tx.send(Ok((
                            running.addr,
                            running.stopper(),
                            running.registry.clone(),
                        )))
                        .unwrap();
                        running.wait().await.unwrap();
                    }
                    Err(e) => tx.send(Err(e.to_string())).unwrap(),
                }
            });
        });
        let (addr, stop, registry) = rx.recv().unwrap().expect("berth failed to start");
        TestRegistry {
            base: format!("http://{addr}"),
            host: addr.to_string(),
            root: root.to_owned(),
            _dir: None,
            registry,
            stop: Some(stop),
            thread: Some(thread),
            // Each `#[tokio::test]` has its own runtime, and a pooled connection dies with the
            // runtime that opened it ("runtime dropped the dispatch task"); a client shared
            // through `shared()` must therefore not keep idle connections.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// One server shared by every test of a test binary.
    pub fn shared() -> &'static TestRegistry {
        static SHARED: OnceLock<TestRegistry> = OnceLock::new();
        SHARED.get_or_init(TestRegistry::start)
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `base` + `path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the server and waits for it, keeping the root (for restart tests).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Pushes a blob monolithically (POST then PUT) and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256(data);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "POST upload: {}", r.text().await.unwrap());
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .client
            .put(self.url(&format!("{loc}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "PUT upload: {}", r.text().await.unwrap());
        digest
    }

    /// PUTs a manifest and returns the response.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a small image (config + `layers` random layers) under `tag` and returns it.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: usize) -> TestImage {
        let image = TestImage::random(layers);
        for (_, bytes) in image.blobs() {
            self.push_blob(repo, bytes).await;
        }
        let r = self
            .put_manifest(repo, tag, media::OCI_MANIFEST, &image.manifest)
            .await;
        assert_eq!(r.status(), 201, "PUT manifest: {}", r.text().await.unwrap());
        image
    }

    /// GETs a path and returns the response.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A repository name no other test uses: `<prefix>-<n>-<random>`.
pub fn unique_repo(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{:08x}",
        N.fetch_add(1, Ordering::Relaxed),
        rand_u32()
    )
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom(&mut b);
    u32::from_le_bytes(b)
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .unwrap();
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom(&mut v);
    v
}

/// A descriptor as JSON.
pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": Digest::sha256(data).to_string(), "size": data.len() })
}

/// An image built in memory: config, layers and its OCI manifest bytes.
pub struct TestImage {
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub digest: Digest,
}

impl TestImage {
    /// A random image with `layers` layers of a few KiB each.
    pub fn random(layers: usize) -> TestImage {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","nonce":"{:x}"}}"#,
            rand_u32()
        )
        .into_bytes();
        let layers: Vec<Vec<u8>> = (0..layers).map(|i| random_bytes(1024 + i * 512)).collect();
        Self::from_parts(config, layers, None)
    }

    /// An image from given parts, with an optional `subject` descriptor (making it a referrer).
    pub fn from_parts(config: Vec<u8>, layers: Vec<Vec<u8>>, subject: Option<Value>) -> TestImage {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        });
        if let Some(s) = subject {
            m["subject"] = s;
        }
        let manifest = serde_json::to_vec(&m).unwrap();
        let digest = Digest::sha256(&manifest);
        TestImage {
            config,
            layers,
            manifest,
            digest,
        }
    }

    /// `(digest, bytes)` of the config and each layer.
    pub fn blobs(&self) -> Vec<(Digest, &[u8])> {
        std::iter::once(self.config.as_slice())
            .chain(self.layers.iter().map(Vec::as_slice))
            .map(|b| (Digest::sha256(b), b))
            .collect()
    }

    /// This image's manifest as a descriptor (e.g. a subject or an index entry).
    pub fn descriptor(&self) -> Value {
        descriptor(media::OCI_MANIFEST, &self.manifest)
    }
}

/// Asserts an error response: its status and the `code` of its first error.
pub async fn assert_error(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status, "status");
    let body: Value = r.json().await.expect("an error body in JSON");
    assert_eq!(body["errors"][0]["code"], code, "error body: {body}");
}

/// A response header that must be present, as text.
pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}
