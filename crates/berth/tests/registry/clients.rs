//! End to end with real clients: skopeo, docker, podman, buildah, containerd (`ctr`) and oras-py
//! run as subprocesses against a berth
//! server on 127.0.0.1 (plain HTTP); skopeo and umoci read a repository's stored OCI Image
//! Layout directly.
//!
//! Test images are built here, without any network: a hand-written ustar layer, a config whose
//! `rootfs.diff_ids` names it, a manifest (and for multi-arch an index), all written as an OCI
//! Image Layout in a temporary directory.
//!
//! A missing client (or an unreachable docker daemon) makes its test print a loud
//! `SKIPPED:` line to stderr and return; `.ci/run` installs the clients so CI runs them all.
//! Every subprocess runs under `timeout`, so no test waits unbounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{unique_repo, TestRegistry};
use serde_json::{json, Value};

/// Seconds any one client command may take.
const TIMEOUT_SECS: &str = "120";

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

// ---------------------------------------------------------------------------------------------
// Subprocesses

/// Whether `bin` is an executable on `PATH`.
fn installed(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(bin);
            p.is_file()
                && std::fs::metadata(&p).is_ok_and(|m| {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o111 != 0
                })
        })
    })
}

/// Prints a loud skip line and returns true when any of `bins` is missing.
fn skip_without(test: &str, bins: &[&str]) -> bool {
    for bin in bins {
        if !installed(bin) {
            eprintln!("\n*** SKIPPED: {bin} not installed ({test}) ***\n");
            return true;
        }
    }
    false
}

/// Runs `args` under `timeout` and returns its output, whatever its exit status.
fn run_raw(args: &[&str]) -> Output {
    let shown: Vec<&str> = args
        .iter()
        .map(|a| if a.contains('\n') { "<script>" } else { a })
        .collect();
    eprintln!("+ {}", shown.join(" "));
    Command::new("timeout")
        .args(["--kill-after=10", TIMEOUT_SECS])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs `args` under `timeout`, panics with its output unless it succeeds, returns its stdout.
fn run(args: &[&str]) -> Vec<u8> {
    succeeded(run_raw(args), &format!("{args:?}"))
}

/// `out`'s stdout; panics with its output unless the command (`what`) succeeded.
fn succeeded(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `skopeo` with the flags every call here needs: no signature policy file is assumed.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let mut all = vec!["skopeo", "--insecure-policy"];
    all.extend_from_slice(args);
    run(&all)
}

// ---------------------------------------------------------------------------------------------
// Building images without a network

/// A ustar archive of regular files (and the directories their paths need), written by hand:
/// a 512-byte header per entry, the data padded to 512 bytes, then two zero blocks.
fn ustar(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn header(name: &str, size: usize, typeflag: u8, mode: u32) -> [u8; 512] {
        let mut h = [0u8; 512];
        assert!(name.len() < 100, "ustar names here are short");
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mut field = |at: usize, width: usize, value: u64| {
            let s = format!("{value:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        field(100, 8, u64::from(mode)); // mode
        field(108, 8, 0); // uid
        field(116, 8, 0); // gid
        field(124, 12, size as u64); // size
        field(136, 12, 1_700_000_000); // mtime
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        // The checksum is computed with its own field as eight spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for (name, data) in files {
        let parts: Vec<&str> = name.split('/').collect();
        for i in 1..parts.len() {
            let dir = format!("{}/", parts[..i].join("/"));
            if !dirs.contains(&dir) {
                out.extend_from_slice(&header(&dir, 0, b'5', 0o755));
                dirs.push(dir);
            }
        }
        out.extend_from_slice(&header(name, data.len(), b'0', 0o644));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// CRC-32 (IEEE), bit by bit: the gzip trailer's checksum.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A real gzip member holding `data` in stored (uncompressed) deflate blocks (RFC 1951 3.2.4,
/// RFC 1952): any gunzip reads it, and no compression library is needed.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none())); // BFINAL, BTYPE=00, then byte-aligned
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": Digest::sha256(data).to_string(), "size": data.len() })
}

/// An OCI Image Layout being written in a directory.
struct Layout {
    dir: PathBuf,
}

/// An image written into a [`Layout`].
struct BuiltImage {
    manifest: Vec<u8>,
    digest: Digest,
    /// The layer blob as stored (a tar, or a gzip of it).
    layer: Vec<u8>,
}

/// How a layer is stored.
#[derive(Clone, Copy)]
enum Layer {
    Tar,
    Gzip,
}

impl Layout {
    fn create(dir: PathBuf) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir }
    }

    /// Writes a blob and returns its descriptor.
    fn blob(&self, media_type: &str, data: &[u8]) -> Value {
        let digest = Digest::sha256(data);
        std::fs::write(self.dir.join("blobs/sha256").join(digest.hex()), data).unwrap();
        descriptor(media_type, data)
    }

    /// Writes an image whose one layer holds `files`.
    fn image(&self, arch: &str, kind: Layer, files: &[(&str, &[u8])]) -> BuiltImage {
        let tar = ustar(files);
        let (layer, layer_desc) = match kind {
            Layer::Tar => (tar.clone(), self.blob(LAYER_TAR, &tar)),
            Layer::Gzip => {
                let gz = gzip_stored(&tar);
                let d = self.blob(LAYER_TAR_GZIP, &gz);
                (gz, d)
            }
        };
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": [Digest::sha256(&tar).to_string()] },
            "history": [{ "created_by": "berth client tests" }],
        }))
        .unwrap();
        let config_desc = self.blob(CONFIG, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
        }))
        .unwrap();
        self.blob(media::OCI_MANIFEST, &manifest);
        let digest = Digest::sha256(&manifest);
        BuiltImage {
            manifest,
            digest,
            layer,
        }
    }

    /// Writes an image index over `(image, arch)` and returns its bytes.
    fn index(&self, images: &[(&BuiltImage, &str)]) -> Vec<u8> {
        let manifests: Vec<Value> = images
            .iter()
            .map(|(img, arch)| {
                let mut d = descriptor(media::OCI_MANIFEST, &img.manifest);
                d["platform"] = json!({ "architecture": arch, "os": "linux" });
                d
            })
            .collect();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        }))
        .unwrap();
        self.blob(media::OCI_INDEX, &index);
        index
    }

    /// Writes `index.json` tagging `(media type, bytes)` as `tag`.
    fn tag(&self, tag: &str, media_type: &str, manifest: &[u8]) {
        let mut d = descriptor(media_type, manifest);
        d["annotations"] = json!({ REF_NAME: tag });
        let index = json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [d] });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// The descriptor `tag` names in the layout at `dir`'s `index.json`.
fn tagged(dir: &Path, tag: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {}: {index}", dir.display()))
        .clone()
}

/// A blob's bytes from the layout at `dir`.
fn read_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
}

fn single_image(dir: PathBuf, tag: &str) -> (Layout, BuiltImage) {
    let layout = Layout::create(dir);
    let img = layout.image(
        "amd64",
        Layer::Tar,
        &[
            ("etc/berth-release", b"berth client test\n"),
            ("hello.txt", b"hello from berth\n"),
        ],
    );
    layout.tag(tag, media::OCI_MANIFEST, &img.manifest);
    (layout, img)
}

// ---------------------------------------------------------------------------------------------
// Self-checks of the builders

#[test]
fn ustar_is_block_aligned_and_checksummed() {
    let tar = ustar(&[("a/b.txt", b"xyz")]);
    // dir header, file header, one data block, two zero blocks
    assert_eq!(tar.len(), 5 * 512);
    assert_eq!(&tar[..2], b"a/");
    assert_eq!(&tar[512..519], b"a/b.txt");
    assert_eq!(&tar[1024..1027], b"xyz");
    let h = &tar[512..1024];
    let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    assert_eq!(stored, sum);
}

#[test]
fn gzip_stored_is_read_by_gzip() {
    if skip_without("gzip_stored_is_read_by_gzip", &["gzip"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for data in [
        Vec::new(),
        b"hello".to_vec(),
        berth_testkit::random_bytes(200_000),
    ] {
        let gz = tmp.path().join("x.gz");
        std::fs::write(&gz, gzip_stored(&data)).unwrap();
        assert_eq!(run(&["gzip", "-dc", path_str(&gz)]), data);
    }
}

// ---------------------------------------------------------------------------------------------
// skopeo
//
// An uncompressed layer is copied with `--preserve-digests`: by default skopeo gzips
// uncompressed layers on the way to a registry or an oci: directory, which changes digests.

#[test]
fn skopeo_copies_a_single_arch_image_in_and_out() {
    if skip_without("skopeo_copies_a_single_arch_image_in_and_out", &["skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (src, img) = single_image(tmp.path().join("src"), "v1");
    let repo = unique_repo("skopeo-single");
    let remote = format!("docker://{}/{repo}:v1", reg.host);

    let src_ref = format!("oci:{}:v1", path_str(&src.dir));
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src_ref,
        &remote,
    ]);

    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]);
    assert_eq!(
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&img.manifest),
        "the registry serves the manifest bytes as pushed"
    );
    let info: Value =
        serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &remote])).unwrap();
    assert_eq!(info["Digest"], img.digest.to_string());
    assert_eq!(info["Architecture"], "amd64");

    let out = tmp.path().join("out");
    let out_ref = format!("oci:{}:v1", path_str(&out));
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote,
        &out_ref,
    ]);
    let d = tagged(&out, "v1");
    assert_eq!(d["digest"], img.digest.to_string());
    assert_eq!(read_blob(&out, &img.digest.to_string()), img.manifest);
    let layer = Digest::sha256(&img.layer).to_string();
    assert_eq!(read_blob(&out, &layer), img.layer);

    // The same image again by digest.
    let by_digest = format!("docker://{}/{repo}@{}", reg.host, img.digest);
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &by_digest]);
    assert_eq!(raw, img.manifest);
    let tags: Value = serde_json::from_slice(&skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/{repo}", reg.host),
    ]))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v1"]));
}

#[test]
fn skopeo_copies_a_multi_arch_index_in_and_out() {
    if skip_without("skopeo_copies_a_multi_arch_index_in_and_out", &["skopeo"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = Layout::create(tmp.path().join("src"));
    let amd = src.image("amd64", Layer::Gzip, &[("arch.txt", b"amd64\n")]);
    let arm = src.image(
        "arm64",
        Layer::Gzip,
        &[("arch.txt", b"arm64\n"), ("only-arm.txt", b"!\n")],
    );
    let index = src.index(&[(&amd, "amd64"), (&arm, "arm64")]);
    let index_digest = Digest::sha256(&index).to_string();
    src.tag("v1", media::OCI_INDEX, &index);

    let repo = unique_repo("skopeo-multi");
    let remote = format!("docker://{}/{repo}:v1", reg.host);
    let src_ref = format!("oci:{}:v1", path_str(&src.dir));
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &src_ref,
        &remote,
    ]);

    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]);
    assert_eq!(
        String::from_utf8_lossy(&raw),
        String::from_utf8_lossy(&index)
    );
    for img in [&amd, &arm] {
        let by_digest = format!("docker://{}/{repo}@{}", reg.host, img.digest);
        let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &by_digest]);
        assert_eq!(raw, img.manifest);
    }

    let out = tmp.path().join("out");
    let out_ref = format!("oci:{}:v1", path_str(&out));
    skopeo(&["copy", "--all", "--src-tls-verify=false", &remote, &out_ref]);
    let d = tagged(&out, "v1");
    assert_eq!(d["digest"], index_digest);
    assert_eq!(d["mediaType"], media::OCI_INDEX);
    let copied: Value = serde_json::from_slice(&read_blob(&out, &index_digest)).unwrap();
    let digests: Vec<&str> = copied["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        digests,
        [amd.digest.to_string(), arm.digest.to_string()],
        "both platform manifests keep their digests"
    );
    for img in [&amd, &arm] {
        assert_eq!(read_blob(&out, &img.digest.to_string()), img.manifest);
        assert_eq!(
            read_blob(&out, &Digest::sha256(&img.layer).to_string()),
            img.layer
        );
    }
}

/// The repository directory berth stores is an OCI Image Layout other tools read directly.
#[test]
fn stored_repository_is_an_oci_layout_for_skopeo_and_umoci() {
    let test = "stored_repository_is_an_oci_layout_for_skopeo_and_umoci";
    if skip_without(test, &["skopeo", "umoci"]) {
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (src, img) = single_image(tmp.path().join("src"), "v1");
    let repo = unique_repo("stored");
    let remote = format!("docker://{}/{repo}:v1", reg.host);
    let src_ref = format!("oci:{}:v1", path_str(&src.dir));
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &src_ref,
        &remote,
    ]);

    let stored = reg.root().join(&repo);
    assert_eq!(tagged(&stored, "v1")["digest"], img.digest.to_string());

    // skopeo reads the stored layout as an oci: source.
    let out = tmp.path().join("out2");
    skopeo(&[
        "copy",
        "--preserve-digests",
        &format!("oci:{}:v1", path_str(&stored)),
        &format!("oci:{}:v1", path_str(&out)),
    ]);
    assert_eq!(tagged(&out, "v1")["digest"], img.digest.to_string());
    assert_eq!(read_blob(&out, &img.digest.to_string()), img.manifest);

    // umoci unpacks it into a runtime bundle.
    let bundle = tmp.path().join("bundle");
    let image = format!("{}:v1", path_str(&stored));
    let mut args = vec!["umoci", "unpack"];
    if !is_root() {
        args.push("--rootless");
    }
    args.extend(["--image", &image, path_str(&bundle)]);
    run(&args);
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        std::fs::read(rootfs.join("hello.txt")).unwrap(),
        b"hello from berth\n"
    );
    assert_eq!(
        std::fs::read(rootfs.join("etc/berth-release")).unwrap(),
        b"berth client test\n"
    );
    assert!(bundle.join("config.json").is_file());

    // Reading it directly left the repository serving as before.
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &remote]);
    assert_eq!(raw, img.manifest);
}

// ---------------------------------------------------------------------------------------------
// docker

/// Removes a docker image reference when dropped, pass or fail.
struct DockerImage(String);

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = Command::new("timeout")
            .args(["60", "docker", "rmi", "--force", &self.0])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

fn docker_inspect_id(reference: &str) -> String {
    let out = run(&[
        "docker", "image", "inspect", "--format", "{{.Id}}", reference,
    ]);
    String::from_utf8(out).unwrap().trim().to_owned()
}

#[test]
fn docker_pushes_and_pulls_an_imported_image() {
    let test = "docker_pushes_and_pulls_an_imported_image";
    if skip_without(test, &["docker"]) {
        return;
    }
    let info = run_raw(&["docker", "info", "--format", "{{.ServerVersion}}"]);
    if !info.status.success() {
        eprintln!(
            "\n*** SKIPPED: docker daemon unreachable ({test}): {} ***\n",
            String::from_utf8_lossy(&info.stderr).trim()
        );
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("rootfs.tar");
    std::fs::write(
        &tar,
        ustar(&[("hello.txt", b"hello from docker via berth\n")]),
    )
    .unwrap();
    let repo = unique_repo("docker");
    let tag = format!("t{:08x}", rand_u32());
    let reference = format!("{}/{repo}:{tag}", reg.host);
    let _cleanup = DockerImage(reference.clone());

    run(&["docker", "import", path_str(&tar), &reference]);
    let id = docker_inspect_id(&reference);
    assert!(id.starts_with("sha256:"), "image id {id}");

    let push = run_raw(&["docker", "push", &reference]);
    if !push.status.success() {
        let stderr = String::from_utf8_lossy(&push.stderr);
        if stderr.contains("connection refused") || stderr.contains("no route to host") {
            eprintln!(
                "\n*** SKIPPED: docker daemon cannot reach {} ({test}): {} ***\n",
                reg.host,
                stderr.trim()
            );
            return;
        }
        panic!(
            "docker push failed ({}):\nstdout: {}\nstderr: {stderr}",
            push.status,
            String::from_utf8_lossy(&push.stdout)
        );
    }
    let pushed = String::from_utf8_lossy(&push.stdout).into_owned();
    eprintln!("{pushed}");

    // The registry holds the tag, as docker's manifest, under the digest docker reported.
    let stored = tagged(&reg.root().join(&repo), &tag);
    let digest = stored["digest"].as_str().unwrap().to_owned();
    assert!(
        pushed.contains(&format!("digest: {digest}")),
        "docker push reported {pushed:?}, the registry stored {digest}"
    );
    assert_eq!(stored["mediaType"], media::DOCKER_MANIFEST);

    run(&["docker", "rmi", &reference]);
    let gone = run_raw(&["docker", "image", "inspect", &reference]);
    assert!(
        !gone.status.success(),
        "{reference} still present after rmi"
    );

    run(&["docker", "pull", &reference]);
    assert_eq!(
        docker_inspect_id(&reference),
        id,
        "the pulled image is the pushed one"
    );
    let repo_digests = run(&[
        "docker",
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &reference,
    ]);
    let repo_digests: Vec<String> = serde_json::from_slice(&repo_digests).unwrap();
    assert!(
        repo_digests.contains(&format!("{}/{repo}@{digest}", reg.host)),
        "{repo_digests:?} lacks {digest}"
    );
}

// ---------------------------------------------------------------------------------------------
// podman and buildah

/// `tool` (podman or buildah) on a private storage root under `dir` (vfs: no mounts), so a test
/// neither sees nor leaves anything in the machine's own image store.
fn libpod(tool: &'static str, dir: &Path) -> impl Fn(&[&str]) -> Output {
    let storage = dir.join("storage").to_str().unwrap().to_owned();
    let runroot = dir.join("run").to_str().unwrap().to_owned();
    move |args: &[&str]| {
        let mut all = vec![tool, "--root", &storage, "--runroot", &runroot];
        all.extend(["--storage-driver", "vfs"]);
        all.extend_from_slice(args);
        run_raw(&all)
    }
}

/// [`succeeded`], as trimmed text.
fn ok(out: Output, what: &str) -> String {
    String::from_utf8(succeeded(out, what))
        .unwrap()
        .trim()
        .to_owned()
}

/// Pushes `reference` with `tool`, checks that berth stores the digest the client reported, then
/// removes the local image, pulls it back and checks it is the same image.
async fn push_rmi_pull(
    tool: &str,
    cmd: &dyn Fn(&[&str]) -> Output,
    reg: &TestRegistry,
    reference: &str,
    repo: &str,
    tag: &str,
    dir: &Path,
) {
    let image_id = || ok(cmd(&["images", "-q", "--no-trunc", reference]), "images");
    let id = image_id();
    assert!(id.starts_with("sha256:"), "{tool} image id {id:?}");
    let digest_file = dir.join("digest");
    let digest_file = path_str(&digest_file);
    ok(
        cmd(&[
            "push",
            "--tls-verify=false",
            "--digestfile",
            digest_file,
            reference,
        ]),
        &format!("{tool} push"),
    );
    let digest = std::fs::read_to_string(digest_file).unwrap();
    let r = reg.get(&format!("/v2/{repo}/manifests/{tag}")).await;
    assert_eq!(r.status(), 200, "{tool} pushed {reference}");
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        digest.trim(),
        "berth stores the manifest {tool} reported"
    );
    ok(cmd(&["rmi", reference]), &format!("{tool} rmi"));
    // Gone: podman lists nothing, buildah says "image not known".
    let after = cmd(&["images", "-q", "--no-trunc", reference]);
    assert!(
        !after.status.success() || after.stdout.trim_ascii().is_empty(),
        "{reference} still present after rmi"
    );
    ok(
        cmd(&["pull", "--tls-verify=false", reference]),
        &format!("{tool} pull"),
    );
    assert_eq!(image_id(), id, "{tool} pulled back the image it pushed");
}

/// Skips loudly when `tool` cannot set up its private store here.
fn libpod_unusable(test: &str, tool: &str, cmd: &dyn Fn(&[&str]) -> Output) -> bool {
    let info = cmd(&["info"]);
    if info.status.success() {
        return false;
    }
    eprintln!(
        "\n*** SKIPPED: {tool} cannot run here ({test}): {} ***\n",
        String::from_utf8_lossy(&info.stderr).trim()
    );
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_pushes_and_pulls_an_imported_image() {
    let test = "podman_pushes_and_pulls_an_imported_image";
    if skip_without(test, &["podman"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let podman = libpod("podman", tmp.path());
    if libpod_unusable(test, "podman", &podman) {
        return;
    }
    let reg = TestRegistry::start();
    let tar = tmp.path().join("rootfs.tar");
    std::fs::write(
        &tar,
        ustar(&[("hello.txt", b"hello from podman via berth\n")]),
    )
    .unwrap();
    let repo = unique_repo("podman");
    let reference = format!("{}/{repo}:v1", reg.host);
    ok(
        podman(&["import", path_str(&tar), &reference]),
        "podman import",
    );
    push_rmi_pull("podman", &podman, &reg, &reference, &repo, "v1", tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn buildah_builds_pushes_and_pulls_an_image() {
    let test = "buildah_builds_pushes_and_pulls_an_image";
    if skip_without(test, &["buildah"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let buildah = libpod("buildah", tmp.path());
    if libpod_unusable(test, "buildah", &buildah) {
        return;
    }
    let reg = TestRegistry::start();
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, "hello from buildah via berth\n").unwrap();
    let container = ok(buildah(&["from", "scratch"]), "buildah from scratch");
    ok(
        buildah(&["copy", &container, path_str(&file), "/hello.txt"]),
        "buildah copy",
    );
    let repo = unique_repo("buildah");
    let reference = format!("{}/{repo}:v1", reg.host);
    ok(
        buildah(&["commit", &container, &reference]),
        "buildah commit",
    );
    ok(buildah(&["rm", &container]), "buildah rm");
    push_rmi_pull(
        "buildah",
        &buildah,
        &reg,
        &reference,
        &repo,
        "v1",
        tmp.path(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// containerd

/// The containerd socket to use: `$CONTAINERD_ADDRESS`, containerd's own, or the one the docker
/// engine runs.
fn containerd_socket() -> Option<String> {
    let candidates = [
        std::env::var("CONTAINERD_ADDRESS").unwrap_or_default(),
        "/run/containerd/containerd.sock".to_owned(),
        "/var/run/docker/containerd/containerd.sock".to_owned(),
    ];
    candidates
        .into_iter()
        .find(|c| !c.is_empty() && Path::new(c).exists())
}

/// Removes image references from a containerd namespace when dropped, pass or fail.
struct CtrImages {
    socket: String,
    namespace: String,
    refs: Vec<String>,
}

impl Drop for CtrImages {
    fn drop(&mut self) {
        let mut args = vec![
            "60",
            "ctr",
            "--address",
            &self.socket,
            "-n",
            &self.namespace,
        ];
        args.extend(["images", "rm", "--sync"]);
        args.extend(self.refs.iter().map(String::as_str));
        let _ = Command::new("timeout")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output();
        // Then the namespace (`--sync` waited for containerd to collect its content).
        let _ = Command::new("timeout")
            .args(["60", "ctr", "--address", &self.socket])
            .args(["namespaces", "rm", &self.namespace])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// containerd's own resolver and fetcher (`ctr`, through the daemon's content store) pull an
/// image from berth and push it back under a new name.
#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_and_pushes_an_image() {
    let test = "containerd_pulls_and_pushes_an_image";
    if skip_without(test, &["ctr"]) {
        return;
    }
    let Some(socket) = containerd_socket() else {
        eprintln!("\n*** SKIPPED: no containerd socket found ({test}) ***\n");
        return;
    };
    let namespace = format!("berth-test-{:08x}", rand_u32());
    let version = run_raw(&["ctr", "--address", &socket, "-n", &namespace, "version"]);
    if !version.status.success() {
        eprintln!(
            "\n*** SKIPPED: containerd at {socket} unreachable ({test}): {} ***\n",
            String::from_utf8_lossy(&version.stderr).trim()
        );
        return;
    }
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let (layout, img) = single_image(tmp.path().join("layout"), "v1");
    let manifest: Value = serde_json::from_slice(&img.manifest).unwrap();
    let repo = unique_repo("containerd");
    for d in [&manifest["config"], &manifest["layers"][0]] {
        let blob = read_blob(&layout.dir, d["digest"].as_str().unwrap());
        reg.push_blob(&repo, &blob).await;
    }
    let r = reg
        .put_manifest(&repo, "v1", media::OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status(), 201);

    let source = format!("{}/{repo}:v1", reg.host);
    let copy_repo = unique_repo("containerd-copy");
    let copy = format!("{}/{copy_repo}:v2", reg.host);
    let _cleanup = CtrImages {
        socket: socket.clone(),
        namespace: namespace.clone(),
        refs: vec![source.clone(), copy.clone()],
    };
    let ctr = |args: &[&str]| {
        let mut all = vec![
            "ctr",
            "--address",
            socket.as_str(),
            "-n",
            namespace.as_str(),
        ];
        all.extend_from_slice(args);
        run(&all)
    };

    ctr(&["images", "pull", "--plain-http", &source]);
    let listed = String::from_utf8(ctr(&["images", "ls"])).unwrap();
    eprintln!("{listed}");
    let line = listed
        .lines()
        .find(|l| l.starts_with(&source))
        .unwrap_or_else(|| panic!("{source} not listed after the pull:\n{listed}"));
    assert!(
        line.contains(&img.digest.to_string()),
        "containerd holds another digest than the pushed manifest's {}: {line}",
        img.digest
    );

    ctr(&["images", "tag", &source, &copy]);
    ctr(&["images", "push", "--plain-http", &copy]);
    let r = reg
        .client
        .get(reg.url(&format!("/v2/{copy_repo}/manifests/v2")))
        .header("accept", media::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the image containerd pushed is served");
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        img.digest.to_string()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), img.manifest.as_slice());
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let r = reg.get(&format!("/v2/{copy_repo}/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), img.layer.as_slice());
}

fn rand_u32() -> u32 {
    let b = berth_testkit::random_bytes(4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

// ---------------------------------------------------------------------------------------------
// oras (oras-py, the PyPI package `oras`)

/// Pushes an artifact whose manifest has a `subject`, with oras-py's chunked uploads, lists the
/// subject's referrers through oras-py's request machinery, and pulls the artifact back.
const ORAS_SCRIPT: &str = r#"
import json, os, sys
import oras.client, oras.oci
host, repo, subject_digest, subject_size, workdir = sys.argv[1:]
os.chdir(workdir)
client = oras.client.OrasClient(hostname=host, insecure=True)
subject = oras.oci.Subject(
    mediaType="application/vnd.oci.image.manifest.v1+json",
    digest=subject_digest, size=int(subject_size))
pushed = client.push(
    target=f"{host}/{repo}:sbom",
    files=["sbom.json:application/vnd.example.sbom+json"],
    manifest_annotations={"org.example.kind": "sbom"},
    subject=subject, do_chunked=True, chunk_size=64, quiet=True)
referrers = client.do_request(
    f"http://{host}/v2/{repo}/referrers/{subject_digest}", "GET",
    headers={"Accept": "application/vnd.oci.image.index.v1+json"})
os.mkdir("pulled")
files = client.pull(target=f"{host}/{repo}:sbom", outdir="pulled")
print(json.dumps({
    "push_status": pushed.status_code,
    "push_digest": pushed.headers.get("Docker-Content-Digest"),
    "push_subject": pushed.headers.get("OCI-Subject"),
    "referrers_status": referrers.status_code,
    "referrers_type": referrers.headers.get("Content-Type"),
    "referrers": referrers.json(),
    "pulled": [open(f, "rb").read().decode() for f in files],
    "tags": client.get_tags(f"{host}/{repo}"),
}))
"#;

#[test]
fn oras_py_pushes_a_referrer_and_lists_it() {
    let test = "oras_py_pushes_a_referrer_and_lists_it";
    if skip_without(test, &["python3"]) {
        return;
    }
    if !run_raw(&["python3", "-c", "import oras.client"])
        .status
        .success()
    {
        eprintln!("\n*** SKIPPED: oras-py not installed (pip install oras) ({test}) ***\n");
        return;
    }
    let reg = TestRegistry::start();
    let repo = unique_repo("oras");
    let image = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(reg.push_image(&repo, "v1", 1));
    let tmp = tempfile::tempdir().unwrap();
    // Larger than the 64-byte chunks the script asks for, so the upload takes several PATCHes.
    let sbom = format!(
        r#"{{"sbom":"berth client test","pad":"{}"}}"#,
        "x".repeat(300)
    );
    std::fs::write(tmp.path().join("sbom.json"), &sbom).unwrap();

    let out = run(&[
        "python3",
        "-c",
        ORAS_SCRIPT,
        &reg.host,
        &repo,
        &image.digest.to_string(),
        &image.manifest.len().to_string(),
        path_str(tmp.path()),
    ]);
    let out: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("oras script printed {}: {e}", String::from_utf8_lossy(&out)));
    eprintln!("{out:#}");
    assert_eq!(out["push_status"], 201);
    assert_eq!(out["push_subject"], image.digest.to_string());
    let artifact = out["push_digest"].as_str().unwrap();

    assert_eq!(out["referrers_status"], 200);
    assert_eq!(out["referrers_type"], media::OCI_INDEX);
    let referrers = out["referrers"]["manifests"].as_array().unwrap();
    assert_eq!(referrers.len(), 1, "{referrers:?}");
    assert_eq!(referrers[0]["digest"], artifact);
    assert_eq!(referrers[0]["mediaType"], media::OCI_MANIFEST);
    assert_eq!(
        referrers[0]["artifactType"],
        "application/vnd.unknown.config.v1+json"
    );
    assert_eq!(referrers[0]["annotations"]["org.example.kind"], "sbom");

    assert_eq!(out["pulled"], json!([sbom]));
    let mut tags: Vec<String> = serde_json::from_value(out["tags"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, ["sbom", "v1"]);
}
