//! Crash at any instant: the real `berth` binary is killed with SIGKILL at a random moment while
//! clients push images (monolithic, chunked, single-POST and mounted blobs), move tags and delete
//! tags and manifests, then restarted on the same root, again and again (the root accumulates).
//!
//! After every kill, before berth runs again, the disk itself is checked: every `index.json`
//! parses, lists only manifests whose bytes are on disk, every blob file (repositories and
//! `_cas`) hashes to its name, and the metadata store holds a record of everything the disk shows
//! (the ordering rule: records are a superset of the disk). After every restart: berth starts
//! without manual repair within a bounded time, `.tmp/` is empty, every acknowledged (2xx) tag,
//! manifest and blob pulls byte-identical (a request in flight at the kill may have happened or
//! not, nothing else), nothing unacknowledged shows up, the catalog and `tags/list` agree with
//! the `index.json` files, upload sessions in flight at the kill either resume (their reported
//! range covers every acknowledged chunk; finishing them stores exactly the right bytes) or
//! answer `BLOB_UPLOAD_UNKNOWN`. Then berth is stopped at that quiet point and the metadata store
//! must agree with the disk exactly (tags, manifests, blob links, reference and link counts).
//!
//! A kill lands either at a uniformly random instant of the load or, to hit the short windows
//! inside manifest and tag changes as often as the long uploads, a random few (up to 60)
//! milliseconds after a chosen kind of request starts. Some restarts are killed again a few
//! milliseconds after they begin serving (a crash during recovery, while the background
//! reconciliation runs).
//!
//! Reproduce a run with `BERTH_CRASH_SEED=<seed>` (printed at the start; thread scheduling still
//! varies). `BERTH_CRASH_ITERATIONS` sets how many kills under load a run goes through (default
//! 12, about 15 s in a debug build). With `BERTH_CRASH_KEEP=1` the temporary directory (root and
//! server logs) is kept for inspection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::records::{
    decode, key, CasRecord, ManifestRecord, RepoBlobRecord, RepoRecord, TagRecord,
};
use berth_meta::redb::RedbStore;
use berth_meta::{MetaStore, Table};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

/// Repositories the clients write to, nested ones included (`app/web` lives inside `app/`).
const REPOS: [&str; 4] = ["app", "app/web", "team/svc/api", "lib"];
/// Concurrent clients. Each owns its tags (`c<n>-t<k>`) and manifests (unique configs), so the
/// expected state of each is a sequence of acknowledged operations; blobs are shared.
const CLIENTS: u64 = 3;
const TAGS_PER_CLIENT: u64 = 4;
/// Upload sessions kept open (parked) across kills at most.
const MAX_SESSIONS: usize = 6;
/// Operations a client attempts per iteration at most (the kill comes long before).
const MAX_OPS: usize = 5_000;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

// ---------------------------------------------------------------------------------------------
// Randomness: a seeded splitmix64, so a printed seed reproduces content, choices and kill times.

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, n: usize) -> Bytes {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        Bytes::from(v)
    }

    /// A layer size: mostly small, sometimes up to 2 MiB.
    fn layer_size(&mut self) -> usize {
        let kib = match self.below(100) {
            0..=59 => self.range(1, 32),
            60..=89 => self.range(32, 512),
            _ => self.range(512, 2048),
        };
        (kib * 1024 - self.below(1000)) as usize
    }
}

fn sha256(b: &[u8]) -> String {
    berth_oci::Digest::sha256(b).to_string()
}

// ---------------------------------------------------------------------------------------------
// The ledger: what the server acknowledged, and what was in flight at a kill.

/// The values a fact may have: one once acknowledged; two when the request that would change it
/// was in flight at a kill (either outcome is correct). Verification collapses it to what it
/// observed.
#[derive(Debug, Clone, PartialEq)]
struct Allowed<T>(Vec<T>);

impl<T: PartialEq + Clone + Debug> Allowed<T> {
    fn is(v: T) -> Self {
        Allowed(vec![v])
    }

    fn allows(&self, v: &T) -> bool {
        self.0.contains(v)
    }

    fn maybe(&mut self, v: T) {
        if !self.0.contains(&v) {
            self.0.push(v);
        }
    }

    /// The value, when it is known.
    fn known(&self) -> Option<&T> {
        match self.0.as_slice() {
            [v] => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct RepoModel {
    /// tag -> manifest digest (None: deleted).
    tags: BTreeMap<String, Allowed<Option<String>>>,
    /// manifest digest -> listed in the repository.
    manifests: BTreeMap<String, Allowed<bool>>,
    /// Blobs whose upload (or mount) was acknowledged. Blobs are never deleted here.
    blobs: BTreeSet<String>,
    /// Blobs whose upload was in flight at a kill.
    maybe_blobs: BTreeSet<String>,
}

/// An upload session that was open at a kill (or parked on purpose): after the restart it must
/// resume from a range covering `acked` bytes (at most `sent`) or be unknown.
#[derive(Debug, Clone)]
struct OpenSession {
    repo: String,
    /// The session's path (`/v2/<repo>/blobs/uploads/<uuid>`), valid across ports.
    path: String,
    data: Bytes,
    digest: String,
    /// Bytes acknowledged by a 202.
    acked: u64,
    /// Bytes sent, acknowledged or not.
    sent: u64,
    /// The closing PUT was in flight.
    finishing: bool,
}

#[derive(Debug, Default)]
struct Counts {
    blobs: u64,
    manifests: u64,
    tag_deletes: u64,
    manifest_deletes: u64,
    reads: u64,
    in_flight: u64,
    /// Operations in flight at a kill found done / not done after the restart.
    in_flight_done: u64,
    in_flight_undone: u64,
    sessions_resumed: u64,
    sessions_unknown: u64,
    /// Sessions answering BLOB_UPLOAD_UNKNOWN although no closing PUT was in flight.
    sessions_forgotten: u64,
}

#[derive(Default)]
struct Ledger {
    repos: BTreeMap<String, RepoModel>,
    /// Manifest bytes by digest (every manifest any client sent).
    manifests: HashMap<String, Bytes>,
    /// Blob sizes by digest.
    sizes: HashMap<String, u64>,
    /// (repo, manifest digest) each client has sent, per client.
    owned: Vec<Vec<(String, String)>>,
    sessions: Vec<OpenSession>,
    failures: Vec<String>,
    counts: Counts,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            owned: vec![Vec::new(); CLIENTS as usize],
            ..Default::default()
        }
    }

    fn repo(&mut self, repo: &str) -> &mut RepoModel {
        self.repos.entry(repo.to_owned()).or_default()
    }

    fn blob(&mut self, repo: &str, digest: &str, size: u64, acked: bool) {
        self.sizes.insert(digest.to_owned(), size);
        let m = self.repo(repo);
        if acked {
            m.maybe_blobs.remove(digest);
            m.blobs.insert(digest.to_owned());
        } else if !m.blobs.contains(digest) {
            m.maybe_blobs.insert(digest.to_owned());
        }
    }

    fn put_manifest(&mut self, repo: &str, tag: Option<&str>, digest: &str, acked: bool) {
        let m = self.repo(repo);
        let present = m
            .manifests
            .entry(digest.to_owned())
            .or_insert_with(|| Allowed::is(false));
        if acked {
            *present = Allowed::is(true);
        } else {
            present.maybe(true);
        }
        if let Some(tag) = tag {
            let t = m
                .tags
                .entry(tag.to_owned())
                .or_insert_with(|| Allowed::is(None));
            if acked {
                *t = Allowed::is(Some(digest.to_owned()));
            } else {
                t.maybe(Some(digest.to_owned()));
            }
        }
    }

    fn delete_tag(&mut self, repo: &str, tag: &str, acked: bool) {
        let t = self
            .repo(repo)
            .tags
            .entry(tag.to_owned())
            .or_insert_with(|| Allowed::is(None));
        if acked {
            *t = Allowed::is(None);
        } else {
            t.maybe(None);
        }
    }

    /// Deleting a manifest removes every tag pointing at it.
    fn delete_manifest(&mut self, repo: &str, digest: &str, acked: bool) {
        let m = self.repo(repo);
        let present = m
            .manifests
            .entry(digest.to_owned())
            .or_insert_with(|| Allowed::is(false));
        if acked {
            *present = Allowed::is(false);
        } else {
            present.maybe(false);
        }
        let target = Some(digest.to_owned());
        for t in m.tags.values_mut() {
            if !t.allows(&target) {
                continue;
            }
            if acked {
                let mut values: Vec<Option<String>> = Vec::new();
                for v in &t.0 {
                    let v = if *v == target { None } else { v.clone() };
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
                t.0 = values;
            } else {
                t.maybe(None);
            }
        }
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fail(l: &Shared, msg: String) {
    eprintln!("crash test failure: {msg}");
    lock(l).failures.push(msg);
}

// ---------------------------------------------------------------------------------------------
// The server under test: the real binary, killed only through its own `Child` handle.

struct Server {
    child: Option<Child>,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Server {
    /// Starts `berth serve` on `root` (with `config`, if any) and waits (bounded) until
    /// `GET /v2/` answers 200.
    async fn start(root: &Path, log: PathBuf, config: Option<&Path>) -> (Server, Duration) {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        'attempt: for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
            if let Some(config) = config {
                command.arg("serve").arg("--config").arg(config);
            } else {
                command.arg("serve");
            }
            let child = command
                .arg("--root")
                .arg(root)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "info")
                .env_remove("BERTH_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawning berth");
            let mut server = Server {
                child: Some(child),
                base: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
                http: http_client(),
            };
            loop {
                let exited = server.child.as_mut().unwrap().try_wait().unwrap();
                if let Some(status) = exited {
                    server.child = None;
                    let text = server.log_text();
                    if text.contains("cannot listen") && attempt < 2 {
                        continue 'attempt; // someone took the port in between: try another
                    }
                    panic!("berth exited during start-up ({status}); after a crash it must start without manual repair:\n{text}");
                }
                assert!(
                    Instant::now() < deadline,
                    "berth did not answer GET /v2/ within {START_TIMEOUT:?}:\n{}",
                    server.log_text()
                );
                let probe = server
                    .http
                    .get(format!("{}/v2/", server.base))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if probe.is_ok_and(|r| r.status() == 200) {
                    let text = server.log_text();
                    assert!(
                        text.contains("berth is serving"),
                        "no start-up line:\n{text}"
                    );
                    return (server, started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        unreachable!("three free ports taken in a row")
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL, then reap: the root's lock is free once this returns.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

struct Ctx {
    base: String,
    http: reqwest::Client,
    ledger: Shared,
    /// Layers every client uses in every repository (dedupe, mounts, concurrent uploads of one
    /// digest).
    shared: Vec<(String, Bytes)>,
    seed: u64,
    iteration: u64,
    /// Each request, as it starts: the killer may aim at one kind.
    events: tokio::sync::mpsc::UnboundedSender<Kind>,
}

/// Kinds of requests, so a kill can land inside a chosen kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Post,
    Patch,
    PutBlob,
    PutManifest,
    DeleteTag,
    DeleteManifest,
    Other,
}

/// The kinds a kill aims at (manifest changes, several fsyncs each, twice as often).
const TARGETS: [Kind; 9] = [
    Kind::Post,
    Kind::Patch,
    Kind::PutBlob,
    Kind::PutManifest,
    Kind::PutManifest,
    Kind::DeleteTag,
    Kind::DeleteTag,
    Kind::DeleteManifest,
    Kind::DeleteManifest,
];

impl Kind {
    fn of(req: &reqwest::Request) -> Kind {
        let path = req.url().path();
        match req.method().as_str() {
            "POST" => Kind::Post,
            "PATCH" => Kind::Patch,
            "PUT" if path.contains("/blobs/uploads/") => Kind::PutBlob,
            "PUT" => Kind::PutManifest,
            "DELETE"
                if path
                    .rsplit('/')
                    .next()
                    .is_some_and(|r| r.starts_with("sha256:")) =>
            {
                Kind::DeleteManifest
            }
            "DELETE" => Kind::DeleteTag,
            _ => Kind::Other,
        }
    }
}

/// Why a client stops: the server went away (the request's outcome is unknown), or it answered
/// something it must not (recorded as a failure).
#[derive(Debug)]
enum Halt {
    Down,
    Bug,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Halt> {
        let req = rb.build().map_err(|_| Halt::Bug)?;
        let _ = self.events.send(Kind::of(&req));
        self.http.execute(req).await.map_err(|_| Halt::Down)
    }

    /// Checks the status; anything else is recorded as a failure.
    async fn expect(
        &self,
        what: &str,
        r: reqwest::Response,
        want: u16,
    ) -> Result<reqwest::Response, Halt> {
        if r.status().as_u16() == want {
            return Ok(r);
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        fail(
            &self.ledger,
            format!(
                "iteration {}: {what}: expected {want}, got {status}: {body}",
                self.iteration
            ),
        );
        Err(Halt::Bug)
    }
}

/// The path part of a `Location` (the port changes across restarts).
fn location_path(r: &reqwest::Response) -> Option<String> {
    let loc = r.headers().get("location")?.to_str().ok()?;
    Some(match loc.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/')?..].to_owned(),
        None => loc.to_owned(),
    })
}

fn with_query(path: &str, q: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{q}")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Pushes one blob into `repo` by a random method; records the outcome in the ledger (an upload
/// in flight at the kill is "maybe", an open session is kept for the post-restart check).
async fn push_blob(ctx: &Ctx, rng: &mut Rng, repo: &str, data: &Bytes) -> Result<(), Halt> {
    let digest = sha256(data);
    let mut open: Option<OpenSession> = None;
    let result = push_blob_inner(ctx, rng, repo, &digest, data, &mut open).await;
    let mut l = lock(&ctx.ledger);
    match &result {
        Ok(()) => {
            l.blob(repo, &digest, data.len() as u64, true);
            l.counts.blobs += 1;
        }
        Err(_) => {
            l.blob(repo, &digest, data.len() as u64, false);
            l.counts.in_flight += 1;
            if let Some(s) = open {
                l.sessions.push(s);
            }
        }
    }
    result
}

async fn push_blob_inner(
    ctx: &Ctx,
    rng: &mut Rng,
    repo: &str,
    digest: &str,
    data: &Bytes,
    open: &mut Option<OpenSession>,
) -> Result<(), Halt> {
    let len = data.len() as u64;
    let uploads = format!("/v2/{repo}/blobs/uploads/");
    if rng.chance(15) {
        // With dedupe, HEAD links a blob that another repository holds.
        let r = ctx
            .send(
                ctx.http
                    .head(ctx.url(&format!("/v2/{repo}/blobs/{digest}"))),
            )
            .await?;
        match r.status().as_u16() {
            200 => {
                if header(&r, "content-length").as_deref() != Some(&len.to_string()) {
                    fail(
                        &ctx.ledger,
                        format!(
                            "HEAD {repo}@{digest}: wrong length {:?}",
                            header(&r, "content-length")
                        ),
                    );
                    return Err(Halt::Bug);
                }
                return Ok(());
            }
            404 => {}
            _ => {
                ctx.expect(&format!("HEAD blob {repo}@{digest}"), r, 404)
                    .await?;
            }
        }
    }
    let method = rng.below(100);
    if method < 15 {
        // Single POST with the digest.
        let r = ctx
            .send(
                ctx.http
                    .post(ctx.url(&with_query(&uploads, &format!("digest={digest}"))))
                    .header("content-type", "application/octet-stream")
                    .body(data.clone()),
            )
            .await?;
        ctx.expect(&format!("single-POST blob {repo}@{digest}"), r, 201)
            .await?;
        return Ok(());
    }
    let post = if method < 30 {
        // Mount from another repository (201), or a plain session when none has it (202).
        let from = rng.pick(&REPOS);
        let r = ctx
            .send(ctx.http.post(ctx.url(&with_query(
                &uploads,
                &format!("mount={digest}&from={from}"),
            ))))
            .await?;
        if r.status() == 201 {
            return Ok(());
        }
        r
    } else {
        ctx.send(ctx.http.post(ctx.url(&uploads))).await?
    };
    let r = ctx
        .expect(&format!("POST upload {repo}"), post, 202)
        .await?;
    let Some(path) = location_path(&r) else {
        fail(&ctx.ledger, format!("POST upload {repo}: no Location"));
        return Err(Halt::Bug);
    };
    *open = Some(OpenSession {
        repo: repo.to_owned(),
        path: path.clone(),
        data: data.clone(),
        digest: digest.to_owned(),
        acked: 0,
        sent: 0,
        finishing: false,
    });
    // Chunked (PATCH with Content-Range) or monolithic (one PUT).
    let mut at = 0u64;
    if method >= 60 {
        let chunks = rng.range(1, 3);
        for _ in 0..chunks {
            if at + 1 >= len {
                break;
            }
            let end = rng.range(at + 1, len - 1); // exclusive; leaves at least one byte
            if let Some(s) = open.as_mut() {
                s.sent = end;
            }
            let r = ctx
                .send(
                    ctx.http
                        .patch(ctx.url(&path))
                        .header("content-type", "application/octet-stream")
                        .header("content-range", format!("{at}-{}", end - 1))
                        .body(data.slice(at as usize..end as usize)),
                )
                .await?;
            let r = ctx
                .expect(&format!("PATCH {repo} {at}-{}", end - 1), r, 202)
                .await?;
            let range = header(&r, "range");
            if range.as_deref() != Some(&format!("0-{}", end - 1)) {
                fail(
                    &ctx.ledger,
                    format!("PATCH {repo}: Range {range:?} after {end} bytes"),
                );
                return Err(Halt::Bug);
            }
            at = end;
            if let Some(s) = open.as_mut() {
                s.acked = end;
            }
        }
    }
    // Close, with the rest as the body (or no body when a chunk happened to be the rest).
    if let Some(s) = open.as_mut() {
        s.sent = len;
        s.finishing = true;
    }
    let mut put = ctx
        .http
        .put(ctx.url(&with_query(&path, &format!("digest={digest}"))))
        .header("content-type", "application/octet-stream");
    if at > 0 {
        put = put.header("content-range", format!("{at}-{}", len - 1));
    }
    let r = ctx.send(put.body(data.slice(at as usize..))).await?;
    let r = ctx
        .expect(&format!("PUT upload {repo}@{digest}"), r, 201)
        .await?;
    if header(&r, "docker-content-digest").as_deref() != Some(digest) {
        fail(
            &ctx.ledger,
            format!(
                "PUT upload {repo}: digest header {:?}",
                header(&r, "docker-content-digest")
            ),
        );
        return Err(Halt::Bug);
    }
    *open = None;
    Ok(())
}

/// Builds an image with a unique config and 1-3 layers (some from the shared pool).
fn new_image(ctx: &Ctx, rng: &mut Rng, client: u64, n: usize) -> (Bytes, Vec<Bytes>) {
    let config = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "crash": { "seed": ctx.seed, "iteration": ctx.iteration, "client": client, "n": n },
        }))
        .unwrap(),
    );
    let mut blobs = vec![config.clone()];
    for _ in 0..rng.range(1, 3) {
        let layer = if rng.chance(35) {
            rng.pick(&ctx.shared).1.clone()
        } else {
            let size = rng.layer_size();
            rng.bytes(size)
        };
        if !blobs.contains(&layer) {
            blobs.push(layer);
        }
    }
    let descriptor = |media: &str, b: &Bytes| serde_json::json!({ "mediaType": media, "digest": sha256(b), "size": b.len() });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": blobs[1..].iter().map(|l| descriptor(LAYER_TYPE, l)).collect::<Vec<_>>(),
    });
    (Bytes::from(serde_json::to_vec(&manifest).unwrap()), blobs)
}

/// PUTs a manifest under a tag or its digest and records the outcome.
async fn put_manifest(
    ctx: &Ctx,
    client: u64,
    repo: &str,
    tag: Option<&str>,
    bytes: &Bytes,
) -> Result<(), Halt> {
    let digest = sha256(bytes);
    {
        let mut l = lock(&ctx.ledger);
        l.manifests.insert(digest.clone(), bytes.clone());
        let entry = (repo.to_owned(), digest.clone());
        if !l.owned[client as usize].contains(&entry) {
            l.owned[client as usize].push(entry);
        }
    }
    let reference = tag.unwrap_or(&digest);
    let result = async {
        let r = ctx
            .send(
                ctx.http
                    .put(ctx.url(&format!("/v2/{repo}/manifests/{reference}")))
                    .header("content-type", MANIFEST_TYPE)
                    .body(bytes.clone()),
            )
            .await?;
        let r = ctx
            .expect(&format!("PUT manifest {repo}:{reference}"), r, 201)
            .await?;
        if header(&r, "docker-content-digest").as_deref() != Some(&digest) {
            fail(
                &ctx.ledger,
                format!(
                    "PUT manifest {repo}:{reference}: digest header {:?}",
                    header(&r, "docker-content-digest")
                ),
            );
            return Err(Halt::Bug);
        }
        Ok(())
    }
    .await;
    let mut l = lock(&ctx.ledger);
    l.put_manifest(repo, tag, &digest, result.is_ok());
    if result.is_ok() {
        l.counts.manifests += 1;
    } else {
        l.counts.in_flight += 1;
    }
    result
}

async fn delete(ctx: &Ctx, repo: &str, reference: &str, tag: bool) -> Result<(), Halt> {
    let result = async {
        let r = ctx
            .send(
                ctx.http
                    .delete(ctx.url(&format!("/v2/{repo}/manifests/{reference}"))),
            )
            .await?;
        ctx.expect(&format!("DELETE {repo}:{reference}"), r, 202)
            .await
            .map(drop)
    }
    .await;
    let mut l = lock(&ctx.ledger);
    if tag {
        l.delete_tag(repo, reference, result.is_ok());
        l.counts.tag_deletes += u64::from(result.is_ok());
    } else {
        l.delete_manifest(repo, reference, result.is_ok());
        l.counts.manifest_deletes += u64::from(result.is_ok());
    }
    l.counts.in_flight += u64::from(result.is_err());
    result
}

/// Reads one of this client's tags (its state is exact: only this client changes it) and one
/// acknowledged blob, under load.
async fn read_check(ctx: &Ctx, rng: &mut Rng, client: u64) -> Result<(), Halt> {
    let repo = *rng.pick(&REPOS);
    let tag = format!("c{client}-t{}", rng.below(TAGS_PER_CLIENT));
    let (expected, blob) = {
        let l = lock(&ctx.ledger);
        let m = l.repos.get(repo);
        let expected = m
            .and_then(|m| m.tags.get(&tag))
            .map_or(Some(None), |t| t.known().cloned());
        let blobs: Vec<&String> = m.map(|m| m.blobs.iter().collect()).unwrap_or_default();
        let blob = (!blobs.is_empty())
            .then(|| (*rng.pick(&blobs)).clone())
            .filter(|d| l.sizes.get(d).is_some_and(|s| *s <= 256 * 1024));
        (
            expected.map(|e| (e.clone(), e.and_then(|d| l.manifests.get(&d).cloned()))),
            blob,
        )
    };
    if let Some((expected, bytes)) = expected {
        let r = ctx
            .send(
                ctx.http
                    .get(ctx.url(&format!("/v2/{repo}/manifests/{tag}")))
                    .header("accept", MANIFEST_TYPE),
            )
            .await?;
        let status = r.status().as_u16();
        let got = r.bytes().await.map_err(|_| Halt::Down)?;
        let ok = match (&expected, status) {
            (None, 404) => true,
            (Some(_), 200) => bytes.as_ref() == Some(&got),
            _ => false,
        };
        if !ok {
            fail(
                &ctx.ledger,
                format!(
                    "iteration {}: under load, {repo}:{tag} answered {status} ({} bytes, {}); acknowledged state {expected:?}",
                    ctx.iteration,
                    got.len(),
                    sha256(&got)
                ),
            );
            return Err(Halt::Bug);
        }
    }
    if let Some(d) = blob {
        let r = ctx
            .send(ctx.http.get(ctx.url(&format!("/v2/{repo}/blobs/{d}"))))
            .await?;
        let status = r.status().as_u16();
        let got = r.bytes().await.map_err(|_| Halt::Down)?;
        if status != 200 || sha256(&got) != d {
            fail(
                &ctx.ledger,
                format!(
                    "iteration {}: under load, blob {repo}@{d} answered {status} with {} bytes hashing to {}",
                    ctx.iteration,
                    got.len(),
                    sha256(&got)
                ),
            );
            return Err(Halt::Bug);
        }
    }
    lock(&ctx.ledger).counts.reads += 1;
    Ok(())
}

/// Opens a session, sends part of a blob and leaves it open (it is checked after the kill).
async fn park_session(ctx: &Ctx, rng: &mut Rng) -> Result<(), Halt> {
    let repo = *rng.pick(&REPOS);
    let size = rng.range(2, 256) as usize * 1024;
    let data = rng.bytes(size);
    let r = ctx
        .send(
            ctx.http
                .post(ctx.url(&format!("/v2/{repo}/blobs/uploads/"))),
        )
        .await?;
    let r = ctx.expect(&format!("POST upload {repo}"), r, 202).await?;
    let Some(path) = location_path(&r) else {
        fail(&ctx.ledger, format!("POST upload {repo}: no Location"));
        return Err(Halt::Bug);
    };
    let mut session = OpenSession {
        repo: repo.to_owned(),
        path: path.clone(),
        digest: sha256(&data),
        data: data.clone(),
        acked: 0,
        sent: 0,
        finishing: false,
    };
    let end = rng.range(1, size as u64 - 1);
    session.sent = end;
    let r = ctx
        .send(
            ctx.http
                .patch(ctx.url(&path))
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("0-{}", end - 1))
                .body(data.slice(..end as usize)),
        )
        .await;
    let acked = match r {
        Ok(r) => ctx
            .expect(&format!("PATCH parked {repo}"), r, 202)
            .await
            .is_ok(),
        Err(_) => false,
    };
    if acked {
        session.acked = end;
    }
    lock(&ctx.ledger).sessions.push(session);
    if acked {
        Ok(())
    } else {
        Err(Halt::Down)
    }
}

/// One client: random operations until the server goes away.
async fn client(ctx: Arc<Ctx>, c: u64, mut rng: Rng) {
    let started = Instant::now();
    for n in 0..MAX_OPS {
        if started.elapsed() > Duration::from_secs(20) {
            fail(
                &ctx.ledger,
                format!("client {c} ran 20 s without seeing the kill"),
            );
            return;
        }
        let my_tag = |rng: &mut Rng| format!("c{c}-t{}", rng.below(TAGS_PER_CLIENT));
        // What this client may act on (its own tags and manifests; exact within an iteration).
        let (owned, present, tagged) = {
            let l = lock(&ctx.ledger);
            let owned = l.owned[c as usize].clone();
            let present: Vec<(String, String)> = owned
                .iter()
                .filter(|(r, d)| {
                    l.repos
                        .get(r)
                        .and_then(|m| m.manifests.get(d))
                        .is_some_and(|p| p.known() == Some(&true))
                })
                .cloned()
                .collect();
            let prefix = format!("c{c}-");
            let tagged: Vec<(String, String)> = l
                .repos
                .iter()
                .flat_map(|(r, m)| {
                    m.tags
                        .iter()
                        .filter(|(t, v)| {
                            t.starts_with(&prefix) && matches!(v.known(), Some(Some(_)))
                        })
                        .map(move |(t, _)| (r.clone(), t.clone()))
                })
                .collect();
            (owned, present, tagged)
        };
        let sessions = lock(&ctx.ledger).sessions.len();
        let roll = rng.below(100);
        let result = match roll {
            40..=59 if !owned.is_empty() => {
                // Move a tag to one of this client's manifests.
                let (repo, d) = rng.pick(&owned).clone();
                let bytes = lock(&ctx.ledger).manifests[&d].clone();
                let tag = my_tag(&mut rng);
                put_manifest(&ctx, c, &repo, Some(&tag), &bytes).await
            }
            60..=69 if !tagged.is_empty() => {
                let (repo, tag) = rng.pick(&tagged).clone();
                delete(&ctx, &repo, &tag, true).await
            }
            70..=79 if !present.is_empty() => {
                let (repo, d) = rng.pick(&present).clone();
                delete(&ctx, &repo, &d, false).await
            }
            80..=84 if !owned.is_empty() => {
                // Re-push by digest (untagged; revives a deleted manifest).
                let (repo, d) = rng.pick(&owned).clone();
                let bytes = lock(&ctx.ledger).manifests[&d].clone();
                put_manifest(&ctx, c, &repo, None, &bytes).await
            }
            85..=89 if sessions < MAX_SESSIONS => park_session(&ctx, &mut rng).await,
            90..=99 => read_check(&ctx, &mut rng, c).await,
            _ => {
                // Push a new image, sometimes to a second repository too.
                let (manifest, blobs) = new_image(&ctx, &mut rng, c, n);
                let mut repos = vec![*rng.pick(&REPOS)];
                if rng.chance(25) {
                    repos.push(*rng.pick(&REPOS));
                }
                let mut result = Ok(());
                for repo in repos {
                    for b in &blobs {
                        result = push_blob(&ctx, &mut rng, repo, b).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    if result.is_ok() {
                        let tag = rng.chance(75).then(|| my_tag(&mut rng));
                        result = put_manifest(&ctx, c, repo, tag.as_deref(), &manifest).await;
                    }
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if result.is_err() {
            return;
        }
    }
    fail(
        &ctx.ledger,
        format!("client {c} did {MAX_OPS} operations without seeing the kill"),
    );
}

// ---------------------------------------------------------------------------------------------
// The disk, read directly.

#[derive(Debug, Default)]
struct DiskRepo {
    /// Distinct manifest digests listed in `index.json`.
    manifests: BTreeSet<String>,
    /// tag -> digest, from the `org.opencontainers.image.ref.name` annotations.
    tags: BTreeMap<String, String>,
    /// Digests of the files in `blobs/<alg>/`.
    files: BTreeSet<String>,
}

/// Files already proven to hash to their name, by (device, inode, size, mtime): named files are
/// immutable, and hard links share one inode.
type Hashed = HashMap<(u64, u64, u64, i64, i64), String>;

/// Checks that the file `path` holds exactly the bytes its name `digest` says.
fn check_blob_file(path: &Path, digest: &str, hashed: &mut Hashed, failures: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            failures.push(format!("{}: {e}", path.display()));
            return;
        }
    };
    let id = (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    );
    if hashed.get(&id).is_some_and(|d| d == digest) {
        return;
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    let actual = sha256(&bytes);
    if actual == digest {
        hashed.insert(id, actual);
    } else {
        failures.push(format!(
            "{} holds {} bytes hashing to {actual}: a name points at wrong or half-written bytes",
            path.display(),
            bytes.len()
        ));
    }
}

fn list_dir(path: &Path) -> Vec<(String, std::fs::FileType)> {
    let Ok(rd) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, std::fs::FileType)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().ok()?)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Reads every repository layout under `root`, checking each `index.json`, `oci-layout` and
/// blob file, and `_cas`.
fn read_disk(
    root: &Path,
    hashed: &mut Hashed,
    failures: &mut Vec<String>,
) -> BTreeMap<String, DiskRepo> {
    let mut repos = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(&rel)
        };
        let entries = list_dir(&dir);
        if !rel.is_empty() && entries.iter().any(|(n, _)| n == "index.json") {
            repos.insert(rel.clone(), read_repo(&dir, hashed, failures));
        }
        for (name, ty) in entries {
            let skip = name.starts_with('.')
                || (rel.is_empty() && name.starts_with('_'))
                || ["blobs", "index.json", "oci-layout"].contains(&name.as_str());
            if ty.is_dir() && !skip {
                stack.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
        }
    }
    for (alg, _) in list_dir(&root.join("_cas")) {
        for (hex, _) in list_dir(&root.join("_cas").join(&alg)) {
            let path = root.join("_cas").join(&alg).join(&hex);
            check_blob_file(&path, &format!("{alg}:{hex}"), hashed, failures);
        }
    }
    repos
}

fn read_repo(dir: &Path, hashed: &mut Hashed, failures: &mut Vec<String>) -> DiskRepo {
    let mut repo = DiskRepo::default();
    let layout = std::fs::read(dir.join("oci-layout")).unwrap_or_default();
    let version = serde_json::from_slice::<Value>(&layout)
        .ok()
        .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_owned));
    if version.is_none() {
        failures.push(format!(
            "{}/oci-layout is missing or invalid: {:?}",
            dir.display(),
            String::from_utf8_lossy(&layout)
        ));
    }
    for (alg, _) in list_dir(&dir.join("blobs")) {
        for (hex, _) in list_dir(&dir.join("blobs").join(&alg)) {
            let digest = format!("{alg}:{hex}");
            check_blob_file(
                &dir.join("blobs").join(&alg).join(&hex),
                &digest,
                hashed,
                failures,
            );
            repo.files.insert(digest);
        }
    }
    let raw = std::fs::read(dir.join("index.json")).unwrap_or_default();
    let index: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => {
            failures.push(format!(
                "{}/index.json does not parse ({e}): {:?}",
                dir.display(),
                String::from_utf8_lossy(&raw)
            ));
            return repo;
        }
    };
    let Some(entries) = index["manifests"].as_array() else {
        failures.push(format!(
            "{}/index.json has no manifests array: {index}",
            dir.display()
        ));
        return repo;
    };
    for e in entries {
        let (Some(digest), Some(size)) = (e["digest"].as_str(), e["size"].as_u64()) else {
            failures.push(format!("{}/index.json: malformed entry {e}", dir.display()));
            continue;
        };
        repo.manifests.insert(digest.to_owned());
        let file = dir.join("blobs").join(digest.replacen(':', "/", 1));
        match std::fs::metadata(&file) {
            Ok(m) if m.len() == size => {}
            Ok(m) => failures.push(format!(
                "{}/index.json lists {digest} with size {size}, its file has {}",
                dir.display(),
                m.len()
            )),
            Err(_) => failures.push(format!(
                "{}/index.json lists {digest} but its bytes are not on disk (ordering rule)",
                dir.display()
            )),
        }
        if let Some(tag) = e["annotations"]["org.opencontainers.image.ref.name"].as_str() {
            if let Some(other) = repo.tags.insert(tag.to_owned(), digest.to_owned()) {
                failures.push(format!(
                    "{}/index.json names tag {tag} twice ({other}, {digest})",
                    dir.display()
                ));
            }
        }
    }
    repo
}

// ---------------------------------------------------------------------------------------------
// The metadata store, read directly from a copy (the server's own file is left for the server
// to open, repair included).

#[derive(Debug, Default)]
struct MetaRepo {
    manifests: BTreeMap<String, Vec<String>>,
    tags: BTreeMap<String, String>,
    /// blob -> referenced_by
    blobs: BTreeMap<String, u64>,
    count: Option<u64>,
}

/// The metadata store's records, by repository, plus the blob-side link tables.
struct Meta {
    repos: BTreeMap<String, MetaRepo>,
    /// (blob, repository) from `BlobRepos`.
    blob_repos: BTreeSet<(String, String)>,
    /// blob -> repositories linking it, from `Cas`.
    cas: BTreeMap<String, u64>,
}

fn read_meta(root: &Path, scratch: &Path) -> Meta {
    let copy = scratch.join("meta-copy.redb");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(root.join("_berth/meta.redb"), &copy).expect("copying the metadata store");
    let store = RedbStore::open(&copy).expect("the metadata store opens after a kill");
    let snap = store.read().unwrap();
    let all = |t: Table| {
        snap.range(t, Bound::Unbounded, Bound::Unbounded, usize::MAX)
            .unwrap()
    };
    let mut repos: BTreeMap<String, MetaRepo> = BTreeMap::new();
    for (k, v) in all(Table::Tags) {
        let p = key::parts(&k);
        let rec: TagRecord = decode(Table::Tags, &v).unwrap();
        repos
            .entry(p[0].clone())
            .or_default()
            .tags
            .insert(p[1].clone(), rec.digest.to_string());
    }
    for (k, v) in all(Table::Manifests) {
        let p = key::parts(&k);
        let rec: ManifestRecord = decode(Table::Manifests, &v).unwrap();
        repos.entry(p[0].clone()).or_default().manifests.insert(
            p[1].clone(),
            rec.refs.iter().map(ToString::to_string).collect(),
        );
    }
    for (k, v) in all(Table::RepoBlobs) {
        let p = key::parts(&k);
        let rec: RepoBlobRecord = decode(Table::RepoBlobs, &v).unwrap();
        repos
            .entry(p[0].clone())
            .or_default()
            .blobs
            .insert(p[1].clone(), rec.referenced_by);
    }
    for (k, v) in all(Table::Repos) {
        let rec: RepoRecord = decode(Table::Repos, &v).unwrap();
        repos
            .entry(String::from_utf8_lossy(&k).into_owned())
            .or_default()
            .count = Some(rec.manifests);
    }
    let blob_repos = all(Table::BlobRepos)
        .into_iter()
        .map(|(k, _)| {
            let p = key::parts(&k);
            (p[0].clone(), p[1].clone())
        })
        .collect();
    let cas = all(Table::Cas)
        .into_iter()
        .map(|(k, v)| {
            let rec: CasRecord = decode(Table::Cas, &v).unwrap();
            (String::from_utf8_lossy(&k).into_owned(), rec.repos)
        })
        .collect();
    Meta {
        repos,
        blob_repos,
        cas,
    }
}

/// After a kill the store must hold a record of everything the disk shows (it may hold more).
/// At a quiet point after reconciliation it must agree exactly, counts included.
fn check_meta(
    root: &Path,
    scratch: &Path,
    disk: &BTreeMap<String, DiskRepo>,
    exact: bool,
    failures: &mut Vec<String>,
) {
    let Meta {
        repos: meta,
        blob_repos,
        cas,
    } = read_meta(root, scratch);
    let empty = MetaRepo::default();
    for (name, d) in disk {
        let m = meta.get(name).unwrap_or(&empty);
        for x in d.manifests.iter().filter(|x| !m.manifests.contains_key(*x)) {
            failures.push(format!(
                "metadata store misses manifest {name}@{x} that index.json lists"
            ));
        }
        for x in d.files.iter().filter(|x| !m.blobs.contains_key(*x)) {
            failures.push(format!(
                "metadata store misses the link {name}@{x} that is on disk"
            ));
        }
        for t in d.tags.keys().filter(|t| !m.tags.contains_key(*t)) {
            failures.push(format!(
                "metadata store misses tag {name}:{t} that index.json lists"
            ));
        }
    }
    if !exact {
        return;
    }
    let empty_disk = DiskRepo::default();
    let names: BTreeSet<&String> = meta.keys().chain(disk.keys()).collect();
    for name in names {
        let m = meta.get(name).unwrap_or(&empty);
        let d = disk.get(name).unwrap_or(&empty_disk);
        let keys: BTreeSet<String> = m.manifests.keys().cloned().collect();
        if keys != d.manifests {
            failures.push(format!(
                "{name}: manifests only in the metadata store {:?}, only in index.json {:?}",
                keys.difference(&d.manifests).collect::<Vec<_>>(),
                d.manifests.difference(&keys).collect::<Vec<_>>()
            ));
        }
        let tags: BTreeSet<(&String, &String)> = m.tags.iter().collect();
        let disk_tags: BTreeSet<(&String, &String)> = d.tags.iter().collect();
        if tags != disk_tags {
            failures.push(format!(
                "{name}: tags only in the metadata store {:?}, only in index.json {:?}",
                tags.difference(&disk_tags).collect::<Vec<_>>(),
                disk_tags.difference(&tags).collect::<Vec<_>>()
            ));
        }
        let blobs: BTreeSet<String> = m.blobs.keys().cloned().collect();
        if blobs != d.files {
            failures.push(format!(
                "{name}: blob links only in the metadata store {:?}, only on disk {:?}",
                blobs.difference(&d.files).collect::<Vec<_>>(),
                d.files.difference(&blobs).collect::<Vec<_>>()
            ));
        }
        if m.count.unwrap_or(0) != m.manifests.len() as u64 {
            failures.push(format!(
                "{name}: repository record counts {:?} manifests, store has {}",
                m.count,
                m.manifests.len()
            ));
        }
        for (b, by) in &m.blobs {
            let refs = m.manifests.values().filter(|r| r.contains(b)).count() as u64;
            if *by != refs {
                failures.push(format!(
                    "{name}@{b}: referenced_by {by}, but {refs} manifests reference it"
                ));
            }
        }
    }
    let links: BTreeSet<(String, String)> = meta
        .iter()
        .flat_map(|(r, m)| m.blobs.keys().map(move |b| (b.clone(), r.clone())))
        .collect();
    if links != blob_repos {
        failures.push(format!(
            "blob_repos disagrees with repo_blobs: only in blob_repos {:?}, only in repo_blobs {:?}",
            blob_repos.difference(&links).collect::<Vec<_>>(),
            links.difference(&blob_repos).collect::<Vec<_>>()
        ));
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (b, _) in &links {
        *counts.entry(b.clone()).or_default() += 1;
    }
    for (b, n) in &counts {
        if cas.get(b) != Some(n) {
            failures.push(format!(
                "cas record of {b} counts {:?} repositories, {n} link it",
                cas.get(b)
            ));
        }
    }
    for (b, n) in cas
        .iter()
        .filter(|(b, n)| **n > 0 && !counts.contains_key(*b))
    {
        failures.push(format!(
            "cas record of {b} counts {n} repositories, none links it"
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Verification after a restart.

async fn get(server: &Server, path: &str) -> (u16, Option<String>, Bytes) {
    let r = server
        .http
        .get(server.url(path))
        .header("accept", MANIFEST_TYPE)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} after the restart: {e}"));
    let status = r.status().as_u16();
    let digest = header(&r, "docker-content-digest");
    (status, digest, r.bytes().await.unwrap())
}

/// Checks every acknowledged fact through the API against the ledger and the disk, collapses
/// facts that were in flight to what is observed, and resumes (or keeps) open upload sessions.
async fn verify(
    server: &Server,
    root: &Path,
    ledger: &Shared,
    rng: &mut Rng,
    hashed: &mut Hashed,
    last: bool,
) {
    let mut failures = Vec::new();
    let disk = read_disk(root, hashed, &mut failures);
    let (models, manifests, sizes) = {
        let l = lock(ledger);
        let models = l.repos.clone();
        (models, l.manifests.clone(), l.sizes.clone())
    };
    let mut models = models;
    for repo in disk.keys() {
        models.entry(repo.clone()).or_default();
    }
    let no_disk = DiskRepo::default();
    let mut tag_obs: Vec<(String, String, Option<String>)> = Vec::new();
    let mut manifest_obs: Vec<(String, String, bool)> = Vec::new();
    let mut blob_obs: Vec<(String, String, bool)> = Vec::new();
    for (repo, m) in &models {
        let (tags, mans, blobs, maybe) = (&m.tags, &m.manifests, &m.blobs, &m.maybe_blobs);
        let d = disk.get(repo).unwrap_or(&no_disk);
        for (tag, allowed) in tags {
            let (status, digest, body) = get(server, &format!("/v2/{repo}/manifests/{tag}")).await;
            let observed = match status {
                200 => {
                    let digest = digest.unwrap_or_default();
                    if sha256(&body) != digest || manifests.get(&digest) != Some(&body) {
                        failures.push(format!("{repo}:{tag} serves {} bytes hashing to {} as {digest}, not the bytes pushed", body.len(), sha256(&body)));
                    }
                    Some(digest)
                }
                404 => None,
                s => {
                    failures.push(format!(
                        "GET {repo}:{tag} answered {s}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                    continue;
                }
            };
            if !allowed.allows(&observed) {
                failures.push(format!(
                    "tag {repo}:{tag} resolves to {observed:?}; acknowledged state {:?}",
                    allowed.0
                ));
            }
            if d.tags.get(tag) != observed.as_ref() {
                failures.push(format!(
                    "tag {repo}:{tag}: the API says {observed:?}, index.json {:?}",
                    d.tags.get(tag)
                ));
            }
            tag_obs.push((repo.clone(), tag.clone(), observed));
        }
        for t in d.tags.keys().filter(|t| !tags.iter().any(|(k, _)| k == *t)) {
            failures.push(format!("tag {repo}:{t} exists but was never pushed"));
        }
        for (digest, allowed) in mans {
            let (status, _, body) = get(server, &format!("/v2/{repo}/manifests/{digest}")).await;
            let present = match status {
                200 => {
                    if manifests.get(digest) != Some(&body) {
                        failures.push(format!(
                            "{repo}@{digest} serves {} bytes hashing to {}, not the bytes pushed",
                            body.len(),
                            sha256(&body)
                        ));
                    }
                    true
                }
                404 => false,
                s => {
                    failures.push(format!(
                        "GET {repo}@{digest} answered {s}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                    continue;
                }
            };
            if !allowed.allows(&present) {
                failures.push(format!(
                    "manifest {repo}@{digest} present={present}; acknowledged state {:?}",
                    allowed.0
                ));
            }
            if d.manifests.contains(digest) != present {
                failures.push(format!("manifest {repo}@{digest}: the API says present={present}, index.json disagrees"));
            }
            manifest_obs.push((repo.clone(), digest.clone(), present));
        }
        for x in d
            .manifests
            .iter()
            .filter(|x| !mans.iter().any(|(k, _)| k == *x))
        {
            failures.push(format!(
                "manifest {repo}@{x} is listed but was never pushed"
            ));
        }
        // Blobs, a few at a time.
        let jobs: Vec<(String, bool)> = blobs
            .iter()
            .map(|b| (b.clone(), true))
            .chain(maybe.iter().map(|b| (b.clone(), false)))
            .collect();
        let results: Vec<(String, bool, u16, usize, String)> = futures_util::stream::iter(jobs)
            .map(|(b, acked)| async move {
                let (status, _, body) = get(server, &format!("/v2/{repo}/blobs/{b}")).await;
                (b, acked, status, body.len(), sha256(&body))
            })
            .buffer_unordered(6)
            .collect()
            .await;
        for (b, acked, status, len, hash) in results {
            match status {
                200 if hash == b && sizes.get(&b) == Some(&(len as u64)) => {
                    blob_obs.push((repo.clone(), b, true))
                }
                200 => failures.push(format!(
                    "blob {repo}@{b} serves {len} bytes hashing to {hash}"
                )),
                404 if !acked => blob_obs.push((repo.clone(), b, false)),
                s => failures.push(format!(
                    "acknowledged blob {repo}@{b} answered {s} after the restart"
                )),
            }
        }
    }
    // The catalog (from the metadata store, after reconciliation) against the disk.
    let (status, _, body) = get(server, "/v2/_catalog?n=10000").await;
    let catalog: BTreeSet<String> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["repositories"].as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let listed: BTreeSet<String> = disk
        .iter()
        .filter(|(_, d)| !d.manifests.is_empty())
        .map(|(r, _)| r.clone())
        .collect();
    if status != 200 || catalog != listed {
        failures.push(format!(
            "catalog ({status}) lists {catalog:?}; repositories with manifests on disk: {listed:?}"
        ));
    }
    for (repo, tag, observed) in &tag_obs {
        if observed.is_some() && !catalog.contains(repo) {
            failures.push(format!("catalog misses {repo}, which has tag {tag}"));
        }
    }
    for (repo, d) in &disk {
        let (status, _, body) = get(server, &format!("/v2/{repo}/tags/list")).await;
        let listed: Option<BTreeSet<String>> =
            serde_json::from_slice::<Value>(&body).ok().map(|v| {
                v["tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            });
        let on_disk: BTreeSet<String> = d.tags.keys().cloned().collect();
        if status != 200 || listed.as_ref() != Some(&on_disk) {
            failures.push(format!(
                "tags/list of {repo} ({status}) is {listed:?}; index.json has {on_disk:?}"
            ));
        }
    }
    {
        let mut l = lock(ledger);
        let (mut done, mut undone) = (0, 0);
        for (repo, tag, observed) in tag_obs {
            let t = l
                .repo(&repo)
                .tags
                .insert(tag, Allowed::is(observed.clone()));
            if let Some(Allowed(before)) = t.filter(|t| t.0.len() > 1) {
                if before[0] == observed {
                    undone += 1
                } else {
                    done += 1
                }
            }
        }
        for (repo, digest, present) in manifest_obs {
            let m = l.repo(&repo).manifests.insert(digest, Allowed::is(present));
            if let Some(Allowed(before)) = m.filter(|m| m.0.len() > 1) {
                if before[0] == present {
                    undone += 1
                } else {
                    done += 1
                }
            }
        }
        l.counts.in_flight_done += done;
        l.counts.in_flight_undone += undone;
        for (repo, b, present) in blob_obs {
            let m = l.repo(&repo);
            m.maybe_blobs.remove(&b);
            if present {
                m.blobs.insert(b);
            }
        }
        l.failures.append(&mut failures);
    }
    verify_sessions(server, ledger, rng, last).await;
}

/// Upload sessions open at the kill: `204` with a range covering every acknowledged byte (then
/// finishing them must store exactly the right bytes), or `404 BLOB_UPLOAD_UNKNOWN`.
async fn verify_sessions(server: &Server, ledger: &Shared, rng: &mut Rng, last: bool) {
    let sessions = std::mem::take(&mut lock(ledger).sessions);
    let mut keep = Vec::new();
    for mut s in sessions {
        let what = format!(
            "upload session {} ({} of {} bytes acknowledged, {} sent{})",
            s.path,
            s.acked,
            s.data.len(),
            s.sent,
            if s.finishing { ", closing" } else { "" }
        );
        let r = server
            .http
            .get(server.url(&s.path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: status after the restart: {e}"));
        let status = r.status().as_u16();
        let range = header(&r, "range");
        let body = r.text().await.unwrap_or_default();
        match status {
            404 if body.contains("BLOB_UPLOAD_UNKNOWN") => {
                let mut l = lock(ledger);
                l.counts.sessions_unknown += 1;
                l.counts.sessions_forgotten += u64::from(!s.finishing);
                if s.finishing {
                    // The closing PUT may have published the blob: check it next time.
                    let size = s.data.len() as u64;
                    l.blob(&s.repo, &s.digest, size, false);
                }
                continue;
            }
            204 => {}
            _ => {
                fail(
                    ledger,
                    format!("{what}: status answered {status} {range:?}: {body}"),
                );
                continue;
            }
        }
        let Some(last_byte) = range
            .as_deref()
            .and_then(|r| r.strip_prefix("0-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            fail(ledger, format!("{what}: 204 with Range {range:?}"));
            continue;
        };
        // "0-0" is ambiguous: zero bytes or one.
        let candidates: Vec<u64> = if last_byte == 0 {
            vec![1, 0]
        } else {
            vec![last_byte + 1]
        };
        let candidates: Vec<u64> = candidates
            .into_iter()
            .filter(|k| *k >= s.acked && *k <= s.sent)
            .collect();
        if candidates.is_empty() {
            fail(
                ledger,
                format!(
                    "{what}: resumes at Range {range:?}, outside what was acknowledged and sent"
                ),
            );
            continue;
        }
        if !last && !s.finishing && keep.len() < MAX_SESSIONS / 2 && rng.chance(40) {
            // Leave it open across another kill.
            if candidates.len() == 1 {
                s.acked = candidates[0];
                s.sent = candidates[0];
            }
            keep.push(s);
            continue;
        }
        resume(server, ledger, &s, &candidates, &what).await;
    }
    lock(ledger).sessions.extend(keep);
}

async fn resume(server: &Server, ledger: &Shared, s: &OpenSession, candidates: &[u64], what: &str) {
    let len = s.data.len() as u64;
    let patch = |from: u64, to: u64| {
        server
            .http
            .patch(server.url(&s.path))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", to - 1))
            .body(s.data.slice(from as usize..to as usize))
            .send()
    };
    let mut k = candidates[0];
    if candidates.len() > 1 {
        // "0-0": probe with the second byte alone (a large body refused early could race the
        // connection's close): 202 means the session held one byte, 416 none.
        let r = patch(1, 2)
            .await
            .unwrap_or_else(|e| panic!("{what}: probing PATCH after the restart: {e}"));
        k = match (r.status().as_u16(), header(&r, "range").as_deref()) {
            (202, Some("0-1")) => 2,
            (416, _) => 0,
            (status, range) => {
                fail(
                    ledger,
                    format!("{what}: probing PATCH 1-1 answered {status} {range:?}"),
                );
                return;
            }
        };
    }
    if k < len {
        let r = patch(k, len)
            .await
            .unwrap_or_else(|e| panic!("{what}: resuming PATCH after the restart: {e}"));
        let status = r.status().as_u16();
        let range = header(&r, "range");
        if status != 202 || range.as_deref() != Some(&format!("0-{}", len - 1)) {
            fail(
                ledger,
                format!(
                    "{what}: resuming at {k} answered {status} {range:?}: {}",
                    r.text().await.unwrap_or_default()
                ),
            );
            return;
        }
    }
    let r = server
        .http
        .put(server.url(&with_query(&s.path, &format!("digest={}", s.digest))))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: closing PUT after the restart: {e}"));
    let status = r.status().as_u16();
    if status != 201 {
        fail(ledger, format!("{what}: closing after the restart answered {status} (the session kept wrong bytes?): {}", r.text().await.unwrap_or_default()));
        return;
    }
    let (status, _, body) = get(server, &format!("/v2/{}/blobs/{}", s.repo, s.digest)).await;
    if status != 200 || body != s.data {
        fail(
            ledger,
            format!(
                "{what}: after resuming, the blob answers {status} with {} bytes hashing to {}",
                body.len(),
                sha256(&body)
            ),
        );
        return;
    }
    let mut l = lock(ledger);
    l.blob(&s.repo, &s.digest, len, true);
    l.counts.sessions_resumed += 1;
}

// ---------------------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Fails the test with context when failures were recorded.
fn assert_clean(ledger: &Shared, seed: u64, iteration: u64, phase: &str, root: &Path, logs: &Path) {
    let failures = std::mem::take(&mut lock(ledger).failures);
    if failures.is_empty() {
        return;
    }
    let kept = if std::env::var_os("BERTH_CRASH_KEEP").is_some() {
        "kept"
    } else {
        "removed; BERTH_CRASH_KEEP=1 keeps them"
    };
    let shown: Vec<&String> = failures.iter().take(25).collect();
    panic!(
        "crash test failed (BERTH_CRASH_SEED={seed}, iteration {iteration}, {phase}): {} failure(s):\n  {}\n\
         root {} and server logs {} are {kept}",
        failures.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        root.display(),
        logs.display(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_any_instant_loses_no_acknowledged_write() {
    let seed = env_u64("BERTH_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let iterations = env_u64("BERTH_CRASH_ITERATIONS").unwrap_or(12);
    eprintln!(
        "crash test: seed {seed}, {iterations} kills (reproduce with BERTH_CRASH_SEED={seed})"
    );
    let dir = tempfile::Builder::new()
        .prefix("berth-crash-")
        .tempdir()
        .unwrap();
    let (root, logs, scratch) = (
        dir.path().join("root"),
        dir.path().join("logs"),
        dir.path().join("scratch"),
    );
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let dir = if std::env::var_os("BERTH_CRASH_KEEP").is_some() {
        let _ = dir.keep();
        None
    } else {
        Some(dir)
    };
    let mut rng = Rng::new(seed);
    let shared: Vec<(String, Bytes)> = [1024usize, 3000, 40 << 10, 300 << 10, 900 << 10, 2 << 20]
        .iter()
        .map(|n| {
            let b = rng.bytes(*n);
            (sha256(&b), b)
        })
        .collect();
    let ledger: Shared = Arc::new(Mutex::new(Ledger::new()));
    let mut hashed = Hashed::new();
    let test_started = Instant::now();
    let mut starts = Vec::new();
    let mut kills: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut recovery_kills = 0;
    let mut upload_scratch = 0;
    // Some starts keep a copy of each blob per repository instead of hard links: switching is
    // safe both ways, and the background pass turns copies into links again (crashes included).
    let no_dedupe = scratch.join("no-dedupe.toml");
    std::fs::write(&no_dedupe, "[storage]\ndedupe = false\n").unwrap();
    let mut copies = 0;
    let mut pick = |rng: &mut Rng| {
        let off = rng.chance(30);
        copies += u64::from(off);
        off.then_some(no_dedupe.as_path())
    };
    for it in 0..=iterations {
        let last = it == iterations;
        let (mut server, startup) =
            Server::start(&root, logs.join(format!("start-{it}.log")), pick(&mut rng)).await;
        starts.push(startup);
        if it > 0 && rng.chance(25) {
            // Crash again during recovery: reconciliation runs in the background once serving.
            tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
            server.kill();
            recovery_kills += 1;
            let (again, startup) = Server::start(
                &root,
                logs.join(format!("start-{it}-again.log")),
                pick(&mut rng),
            )
            .await;
            starts.push(startup);
            server = again;
        }
        // The driver empties .tmp when it opens the root, before serving.
        let leftovers: Vec<String> = list_dir(&root.join(".tmp"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if !leftovers.is_empty() {
            fail(
                &ledger,
                format!("after start-up, .tmp still holds {leftovers:?}"),
            );
        }
        // Not asserted (reported): scratch directories that blob copies and the dedupe pass
        // keep under _uploads/ (not .tmp/) survive a crash until upload expiry removes them.
        let scratch_dirs = list_dir(&root.join("_uploads"))
            .into_iter()
            .filter(|(n, _)| n.starts_with("copy-") || n.starts_with("dedupe-"))
            .count();
        upload_scratch = upload_scratch.max(scratch_dirs);
        verify(&server, &root, &ledger, &mut rng, &mut hashed, last).await;
        assert_clean(
            &ledger,
            seed,
            it,
            "verification after restart",
            &root,
            &logs,
        );

        // A quiet point after reconciliation: the store must agree with the disk exactly.
        server.kill();
        let mut failures = Vec::new();
        let disk = read_disk(&root, &mut hashed, &mut failures);
        check_meta(&root, &scratch, &disk, true, &mut failures);
        lock(&ledger).failures.append(&mut failures);
        assert_clean(
            &ledger,
            seed,
            it,
            "metadata store after reconciliation",
            &root,
            &logs,
        );
        if last {
            break;
        }

        // Load, and a kill at a random instant.
        let (server, startup) =
            Server::start(&root, logs.join(format!("run-{it}.log")), pick(&mut rng)).await;
        starts.push(startup);
        let mut server = server;
        let (events, mut started) = tokio::sync::mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            base: server.base.clone(),
            http: http_client(),
            ledger: ledger.clone(),
            shared: shared.clone(),
            seed,
            iteration: it,
            events,
        });
        // Either a uniformly random instant, or (to land inside short metadata operations as
        // often as inside long uploads) a random delay of up to 60 ms after a request of a
        // chosen kind starts.
        let target = rng.chance(70).then(|| *rng.pick(&TARGETS));
        let delay = Duration::from_millis(match target {
            None => rng.range(50, 600),
            Some(_) => rng.range(50, 300),
        });
        // A manifest change takes a few fsyncs (milliseconds each): aim over its whole length.
        let window = [3_000, 15_000, 60_000][rng.below(3) as usize];
        let after = Duration::from_micros(rng.below(window));
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let rng = Rng::new(seed ^ (it << 32) ^ (c + 1).wrapping_mul(0xA076_1D64_78BD_642F));
                tokio::spawn(client(ctx.clone(), c, rng))
            })
            .collect();
        tokio::time::sleep(delay).await;
        let how = match target {
            None => format!("at random {delay:?} in"),
            Some(kind) => {
                while started.try_recv().is_ok() {}
                let seen = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(k) = started.recv().await {
                        if k == kind {
                            return true;
                        }
                    }
                    false
                })
                .await;
                if seen == Ok(true) {
                    // Sub-millisecond precision: block this worker thread briefly.
                    std::thread::sleep(after);
                    *kills.entry(kind).or_default() += 1;
                    format!("{after:?} after a {kind:?} request started")
                } else {
                    format!("at random ({kind:?} awaited in vain) {delay:?} in")
                }
            }
        };
        server.kill();
        for h in handles {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("a client did not stop within 30 s of the kill")
                .expect("a client panicked");
        }
        drop(server);

        // The crash state itself, before berth heals anything.
        let mut failures = Vec::new();
        let disk = read_disk(&root, &mut hashed, &mut failures);
        check_meta(&root, &scratch, &disk, false, &mut failures);
        lock(&ledger).failures.append(&mut failures);
        assert_clean(&ledger, seed, it, "disk right after the kill", &root, &logs);
        let l = lock(&ledger);
        eprintln!(
            "iteration {it}: killed {how}; {:?}; open sessions {}; {:.1?} elapsed",
            l.counts,
            l.sessions.len(),
            test_started.elapsed()
        );
    }
    let slowest = starts.iter().max().copied().unwrap_or_default();
    eprintln!(
        "crash test passed: seed {seed}, {iterations} kills under load (aimed: {kills:?}) and \
         {recovery_kills} during recovery, {} starts ({copies} without dedupe, slowest {slowest:?}), \
         {:.1?}",
        starts.len(),
        test_started.elapsed()
    );
    if upload_scratch > 0 {
        eprintln!(
            "note: up to {upload_scratch} copy/dedupe scratch directories were left in _uploads/ \
             after a start-up (removed only by upload expiry)"
        );
    }
    drop(dir);
}
