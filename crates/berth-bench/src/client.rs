//! A minimal OCI Distribution client: blob uploads in the three styles, manifest push, verified
//! pulls, tag and catalog listing with `Link` pagination. Errors are strings that say which
//! request failed and how.

use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION};
use reqwest::{Body, Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::gen;
use crate::workload::PushMode;

/// The manifest media types a pull accepts.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// The media type of every manifest the bench pushes.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A request-level failure, as text.
pub type Res<T> = Result<T, String>;

/// A blob whose bytes are generated from a seed (see [`gen`]), with its precomputed digest.
#[derive(Debug, Clone)]
pub struct GenBlob {
    /// Generator seed.
    pub seed: u64,
    /// Length in bytes.
    pub len: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

impl GenBlob {
    /// Generates the blob's digest (CPU-bound: hashes `len` bytes).
    pub fn new(seed: u64, len: u64) -> GenBlob {
        GenBlob {
            seed,
            len,
            digest: gen::digest(seed, len),
        }
    }
}

/// A small blob held in memory.
#[derive(Debug, Clone)]
pub struct MemBlob {
    /// The bytes.
    pub data: Bytes,
    /// `sha256:<hex>`.
    pub digest: String,
}

impl MemBlob {
    /// Wraps `data` with its digest.
    pub fn new(data: impl Into<Bytes>) -> MemBlob {
        let data = data.into();
        let digest = sha256(&data);
        MemBlob { data, digest }
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An image to push: a small config, generated layers, and its manifest.
#[derive(Debug, Clone)]
pub struct Image {
    /// Config blob.
    pub config: MemBlob,
    /// Layer blobs.
    pub layers: Vec<GenBlob>,
    /// The manifest.
    pub manifest: MemBlob,
}

impl Image {
    /// An image of `layers` generated layers splitting `total` bytes evenly, from `seed` (hashes
    /// `total` bytes: call off the runtime for big images).
    pub fn generate(seed: u64, total: u64, layers: usize) -> Image {
        let layers = layers.max(1) as u64;
        let blobs: Vec<GenBlob> = (0..layers)
            .map(|i| {
                let len = total / layers + u64::from(i < total % layers);
                GenBlob::new(gen::word(seed, 1_000_000 + i), len)
            })
            .collect();
        let descriptors: Vec<(u64, String)> =
            blobs.iter().map(|b| (b.len, b.digest.clone())).collect();
        let (config, manifest) = manifest_for(seed, &descriptors, None);
        Image {
            config,
            layers: blobs,
            manifest,
        }
    }

    /// Bytes a push or pull of this image moves (config + layers + manifest).
    pub fn bytes(&self) -> u64 {
        self.config.data.len() as u64
            + self.manifest.data.len() as u64
            + self.layers.iter().map(|l| l.len).sum::<u64>()
    }
}

/// A config and an OCI image manifest referencing it and the given layers `(len, digest)`;
/// `annotation` makes otherwise identical manifests distinct.
pub fn manifest_for(
    seed: u64,
    layers: &[(u64, String)],
    annotation: Option<&str>,
) -> (MemBlob, MemBlob) {
    let config = MemBlob::new(
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.1).collect::<Vec<_>>()},
            "config": {"Labels": {"berth-bench.seed": seed.to_string()}},
        }))
        .unwrap_or_default(),
    );
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": layers.iter().map(|(len, digest)| json!({
            "mediaType": OCI_LAYER, "digest": digest, "size": len,
        })).collect::<Vec<_>>(),
    });
    if let Some(a) = annotation {
        manifest["annotations"] = json!({ "berth-bench.id": a });
    }
    let manifest = MemBlob::new(serde_json::to_vec(&manifest).unwrap_or_default());
    (config, manifest)
}

/// A registry at a base URL.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    base: String,
}

fn expect(resp: &Response, want: &[StatusCode], what: &str) -> Res<()> {
    if want.contains(&resp.status()) {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {}", resp.status()))
    }
}

async fn expect_body(resp: Response, want: &[StatusCode], what: &str) -> Res<Bytes> {
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{what}: reading body: {e}"))?;
    if want.contains(&status) {
        Ok(body)
    } else {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        Err(format!("{what}: HTTP {status}: {}", text.trim()))
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

impl Registry {
    /// A client for `base` (`http://host:port`), keeping up to `connections` idle connections.
    pub fn new(base: &str, connections: usize, timeout: std::time::Duration) -> Res<Registry> {
        let client = Client::builder()
            .pool_max_idle_per_host(connections.max(1) * 2)
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Registry {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.base)
        } else {
            format!("{}/{path_or_url}", self.base)
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Res<Response> {
        req.send().await.map_err(|e| format!("{what}: {e}"))
    }

    fn location(&self, headers: &HeaderMap, what: &str) -> Res<String> {
        let loc = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("{what}: no Location header"))?;
        Ok(self.url(loc))
    }

    /// `GET /v2/`: the registry answers.
    pub async fn ping(&self) -> Res<()> {
        let resp = self
            .send(self.client.get(self.url("/v2/")), "GET /v2/")
            .await?;
        expect_body(resp, &[StatusCode::OK], "GET /v2/").await?;
        Ok(())
    }

    async fn start_upload(&self, repo: &str) -> Res<String> {
        let what = format!("POST /v2/{repo}/blobs/uploads/");
        let resp = self
            .send(
                self.client
                    .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
                    .header(CONTENT_LENGTH, 0),
                &what,
            )
            .await?;
        expect(&resp, &[StatusCode::ACCEPTED], &what)?;
        let loc = self.location(resp.headers(), &what)?;
        expect_body(resp, &[StatusCode::ACCEPTED], &what).await?;
        Ok(loc)
    }

    async fn finish_upload(
        &self,
        location: &str,
        digest: &str,
        body: Option<Body>,
        len: u64,
    ) -> Res<()> {
        let mut req = self
            .client
            .put(with_digest(location, digest))
            .header(CONTENT_LENGTH, len);
        if let Some(body) = body {
            req = req
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body);
        }
        let resp = self.send(req, "PUT upload").await?;
        expect_body(resp, &[StatusCode::CREATED], "PUT upload").await?;
        Ok(())
    }

    /// Pushes a small in-memory blob (`POST`, then `PUT ?digest=` with the bytes).
    pub async fn push_mem(&self, repo: &str, blob: &MemBlob) -> Res<()> {
        let loc = self.start_upload(repo).await?;
        let len = blob.data.len() as u64;
        self.finish_upload(&loc, &blob.digest, Some(Body::from(blob.data.clone())), len)
            .await
    }

    /// Pushes a generated blob in the given style; `chunk` is the `PATCH` size of chunked pushes.
    pub async fn push_gen(
        &self,
        repo: &str,
        blob: &GenBlob,
        mode: PushMode,
        chunk: u64,
    ) -> Res<()> {
        let loc = self.start_upload(repo).await?;
        match mode {
            PushMode::Mono => {
                let body = Body::wrap_stream(gen::stream(blob.seed, 0, blob.len));
                self.finish_upload(&loc, &blob.digest, Some(body), blob.len)
                    .await
            }
            PushMode::Stream => {
                let body = Body::wrap_stream(gen::stream(blob.seed, 0, blob.len));
                let resp = self
                    .send(
                        self.client
                            .patch(&loc)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .body(body),
                        "PATCH (streamed)",
                    )
                    .await?;
                expect(&resp, &[StatusCode::ACCEPTED], "PATCH (streamed)")?;
                let loc = self.location(resp.headers(), "PATCH (streamed)")?;
                expect_body(resp, &[StatusCode::ACCEPTED], "PATCH (streamed)").await?;
                self.finish_upload(&loc, &blob.digest, None, 0).await
            }
            PushMode::Chunked => {
                let chunk = chunk.max(1);
                let mut loc = loc;
                let mut off = 0;
                while off < blob.len {
                    let n = (blob.len - off).min(chunk);
                    let body = Body::wrap_stream(gen::stream(blob.seed, off, n));
                    let resp = self
                        .send(
                            self.client
                                .patch(&loc)
                                .header(CONTENT_TYPE, "application/octet-stream")
                                .header(CONTENT_LENGTH, n)
                                .header("Content-Range", format!("{off}-{}", off + n - 1))
                                .body(body),
                            "PATCH (chunk)",
                        )
                        .await?;
                    let what = format!("PATCH (chunk at {off})");
                    expect(&resp, &[StatusCode::ACCEPTED], &what)?;
                    loc = self.location(resp.headers(), &what)?;
                    expect_body(resp, &[StatusCode::ACCEPTED], &what).await?;
                    off += n;
                }
                self.finish_upload(&loc, &blob.digest, None, 0).await
            }
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>`.
    pub async fn put_manifest(&self, repo: &str, reference: &str, manifest: &MemBlob) -> Res<()> {
        let what = format!("PUT /v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                self.client
                    .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                    .header(CONTENT_TYPE, OCI_MANIFEST)
                    .body(manifest.data.clone()),
                &what,
            )
            .await?;
        expect_body(resp, &[StatusCode::CREATED], &what).await?;
        Ok(())
    }

    /// Pushes config, layers and manifest under `tag`; returns the bytes sent.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        mode: PushMode,
        chunk: u64,
    ) -> Res<u64> {
        self.push_mem(repo, &image.config).await?;
        for layer in &image.layers {
            self.push_gen(repo, layer, mode, chunk).await?;
        }
        self.put_manifest(repo, tag, &image.manifest).await?;
        Ok(image.bytes())
    }

    /// `HEAD` a manifest: `Some(Docker-Content-Digest)` (empty if absent) when it exists.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Res<Option<String>> {
        let what = format!("HEAD /v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                self.client
                    .head(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                    .header(ACCEPT, MANIFEST_ACCEPT),
                &what,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(Some(
                resp.headers()
                    .get("Docker-Content-Digest")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(format!("{what}: HTTP {s}")),
        }
    }

    /// `GET` a manifest and verify its bytes against `expected` (or `Docker-Content-Digest`).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        expected: Option<&str>,
    ) -> Res<Bytes> {
        let what = format!("GET /v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                self.client
                    .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                    .header(ACCEPT, MANIFEST_ACCEPT),
                &what,
            )
            .await?;
        let header = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = expect_body(resp, &[StatusCode::OK], &what).await?;
        let actual = sha256(&body);
        for want in [expected, header.as_deref()].into_iter().flatten() {
            if !want.is_empty() && want != actual {
                return Err(format!("{what}: body digest {actual}, expected {want}"));
            }
        }
        Ok(body)
    }

    /// `GET` a blob, hashing it as it streams in; fails unless it matches `digest`. Returns its
    /// length.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Res<u64> {
        let what = format!("GET /v2/{repo}/blobs/{digest}");
        self.get_verified(
            &self.url(&format!("/v2/{repo}/blobs/{digest}")),
            digest,
            &what,
        )
        .await
    }

    /// `GET url` and verify the streamed body's sha256 against `digest`.
    pub async fn get_verified(&self, url: &str, digest: &str, what: &str) -> Res<u64> {
        let mut resp = self.send(self.client.get(url), what).await?;
        expect(&resp, &[StatusCode::OK], what)?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{what}: reading body: {e}"))?
        {
            hasher.update(&chunk);
            len += chunk.len() as u64;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(format!(
                "{what}: body digest {actual} ({len} bytes), expected {digest}"
            ));
        }
        Ok(len)
    }

    /// Pulls `repo:tag` as a client does (manifest HEAD, manifest GET, config, layers), verifying
    /// every body; returns the bytes received.
    pub async fn pull_image(&self, repo: &str, tag: &str) -> Res<u64> {
        let digest = self
            .head_manifest(repo, tag)
            .await?
            .ok_or_else(|| format!("HEAD /v2/{repo}/manifests/{tag}: HTTP 404"))?;
        let body = self.get_manifest(repo, tag, Some(&digest)).await?;
        let manifest: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("manifest of {repo}:{tag} is not JSON: {e}"))?;
        let mut bytes = body.len() as u64;
        let blobs = std::iter::once(&manifest["config"]).chain(
            manifest["layers"]
                .as_array()
                .map(|a| a.iter())
                .into_iter()
                .flatten(),
        );
        for desc in blobs {
            let d = desc["digest"]
                .as_str()
                .ok_or_else(|| format!("manifest of {repo}:{tag}: descriptor without digest"))?;
            bytes += self.get_blob(repo, d).await?;
        }
        Ok(bytes)
    }

    /// Every tag of `repo` (following `Link`); an unknown repository has none.
    pub async fn tags(&self, repo: &str) -> Res<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(format!("/v2/{repo}/tags/list"));
        while let Some(path) = next.take() {
            let what = format!("GET {path}");
            let resp = self.send(self.client.get(self.url(&path)), &what).await?;
            if resp.status() == StatusCode::NOT_FOUND && out.is_empty() {
                return Ok(out);
            }
            next = next_link(resp.headers());
            let body = expect_body(resp, &[StatusCode::OK], &what).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| format!("{what}: not JSON: {e}"))?;
            out.extend(
                v["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
        }
        Ok(out)
    }

    /// One `tags/list` request (no pagination); returns the number of tags.
    pub async fn tag_list_once(&self, repo: &str) -> Res<usize> {
        let what = format!("GET /v2/{repo}/tags/list");
        let resp = self
            .send(
                self.client.get(self.url(&format!("/v2/{repo}/tags/list"))),
                &what,
            )
            .await?;
        let body = expect_body(resp, &[StatusCode::OK], &what).await?;
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| format!("{what}: not JSON: {e}"))?;
        Ok(v["tags"].as_array().map_or(0, Vec::len))
    }

    /// Lists the whole catalog with pages of `page` (following `Link`); returns (repositories,
    /// requests).
    pub async fn catalog(&self, page: usize) -> Res<(usize, usize)> {
        let mut count = 0;
        let mut requests = 0;
        let mut next = Some(format!("/v2/_catalog?n={page}"));
        while let Some(path) = next.take() {
            requests += 1;
            if requests > 100_000 {
                return Err("catalog: more than 100000 pages".into());
            }
            let what = format!("GET {path}");
            let resp = self.send(self.client.get(self.url(&path)), &what).await?;
            next = next_link(resp.headers());
            let body = expect_body(resp, &[StatusCode::OK], &what).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| format!("{what}: not JSON: {e}"))?;
            count += v["repositories"].as_array().map_or(0, Vec::len);
        }
        Ok((count, requests))
    }

    /// A request with an arbitrary method (for the ceiling server and tests).
    pub fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(url))
    }
}

/// The target of a `Link: <...>; rel="next"` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers.get_all(LINK).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        if !v.contains("rel=\"next\"") && !v.contains("rel=next") {
            return None;
        }
        let start = v.find('<')? + 1;
        let end = start + v[start..].find('>')?;
        Some(v[start..end].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn link_and_digest_helpers() {
        let mut h = HeaderMap::new();
        assert_eq!(next_link(&h), None);
        h.insert(
            LINK,
            HeaderValue::from_static("</v2/_catalog?n=2&last=b>; rel=\"next\""),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?n=2&last=b"));
        assert_eq!(with_digest("/u/1", "sha256:ab"), "/u/1?digest=sha256:ab");
        assert_eq!(
            with_digest("/u/1?_state=x", "sha256:ab"),
            "/u/1?_state=x&digest=sha256:ab"
        );
    }

    #[test]
    fn images_split_layers_and_differ_by_seed() {
        let a = Image::generate(1, 1000, 3);
        assert_eq!(
            a.layers.iter().map(|l| l.len).collect::<Vec<_>>(),
            vec![334, 333, 333]
        );
        let b = Image::generate(2, 1000, 3);
        assert_ne!(a.manifest.digest, b.manifest.digest);
        assert_ne!(a.layers[0].digest, b.layers[0].digest);
        assert_eq!(
            Image::generate(1, 1000, 3).manifest.digest,
            a.manifest.digest
        );
    }
}
