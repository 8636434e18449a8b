//! Error responses over HTTP (distribution spec "Error Codes", "Endpoints"): unknown routes,
//! wrong methods, invalid names and digests, bodiless HEAD answers, the API version header, and
//! that hostile request targets never reach the filesystem.
//!
//! Request targets such as `/v2/../tags/list` are sent over a raw socket: an HTTP client would
//! normalise the dot segments away before the server ever saw them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use berth_testkit::berth_oci::{media, Digest};
use berth_testkit::{random_bytes, unique_repo, TestRegistry};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The codes of the spec's table ("Error Codes").
const SPEC_CODES: [&str; 14] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A response read off the wire, exactly as the server sent it.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `errors[0].code` of the body, after checking the body's shape.
    fn code(&self) -> String {
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "error body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        assert!(body["errors"][0]["message"].is_string(), "{body}");
        let code = body["errors"][0]["code"].as_str().unwrap().to_owned();
        assert!(
            SPEC_CODES.contains(&code.as_str()),
            "{code} is not a spec code"
        );
        code
    }

    fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            self.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.code(), code, "{what}");
    }
}

/// Sends `method target` verbatim over HTTP/1.1 and reads the whole response.
async fn raw(reg: &TestRegistry, method: &str, target: &str, body: &[u8]) -> Raw {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&reg.host).await.unwrap();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            reg.host,
            media::OCI_MANIFEST,
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server answers within 10s");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8(buf[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut r = Raw {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        r.body = dechunk(&r.body);
    }
    r
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..data.len() + 1 {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// Names the spec's grammar (or berth's limits) refuse, with why.
fn invalid_names() -> Vec<(String, &'static str)> {
    vec![
        ("Upper".into(), "upper case"),
        ("a/B".into(), "upper case in a nested component"),
        ("..".into(), "a dot-dot component"),
        ("a/../b".into(), "a dot-dot component inside"),
        ("a//b".into(), "an empty component"),
        ("a%2Fb".into(), "an encoded slash"),
        ("%2E%2E".into(), "an encoded dot-dot"),
        ("a/.hidden".into(), "a component starting with a dot"),
        ("a".repeat(256), "a component of 256 characters"),
        (format!("{}ab", "ab/".repeat(85)), "257 characters in total"),
        ("a/blobs".into(), "the reserved component blobs"),
        ("a/index.json".into(), "the reserved component index.json"),
        ("a/oci-layout".into(), "the reserved component oci-layout"),
    ]
}

#[tokio::test]
async fn unknown_routes_are_404_with_an_error_body() {
    let reg = TestRegistry::shared();
    for (method, target) in [
        ("GET", "/v2/x/nothing/y"),
        ("GET", "/v1/"),
        ("GET", "/"),
        ("GET", "/v2/x/manifests"),
        ("PUT", "/v2/x/nothing/y"),
        ("GET", "/v2/x/blobs/uploads/a/b"),
    ] {
        let r = raw(reg, method, target, b"").await;
        assert_eq!(r.status, 404, "{method} {target}");
        r.code();
    }
}

#[tokio::test]
async fn a_wrong_method_on_a_known_route_is_405_unsupported_with_allow() {
    let reg = TestRegistry::shared();
    let digest = Digest::sha256(b"x");
    for (method, target, allowed) in [
        ("POST", "/v2/x/tags/list".to_owned(), "GET"),
        ("PATCH", "/v2/x/manifests/latest".to_owned(), "PUT"),
        ("POST", format!("/v2/x/blobs/{digest}"), "GET"),
        ("DELETE", "/v2/_catalog".to_owned(), "GET"),
        ("PUT", "/v2/".to_owned(), "GET"),
        ("GET", "/v2/x/blobs/uploads/".to_owned(), "POST"),
        ("DELETE", format!("/v2/x/referrers/{digest}"), "GET"),
    ] {
        let r = raw(reg, method, &target, b"").await;
        r.assert_error(405, "UNSUPPORTED", &format!("{method} {target}"));
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {target}: no Allow"));
        let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert!(
            methods.contains(&allowed),
            "{method} {target}: Allow {allow}"
        );
        assert!(
            !methods.contains(&method),
            "{method} {target}: Allow {allow}"
        );
    }
}

#[tokio::test]
async fn invalid_names_are_name_invalid_on_tags_manifests_and_uploads() {
    let reg = TestRegistry::shared();
    for (name, why) in invalid_names() {
        for (method, target) in [
            ("GET", format!("/v2/{name}/tags/list")),
            ("GET", format!("/v2/{name}/manifests/latest")),
            ("PUT", format!("/v2/{name}/manifests/latest")),
            ("POST", format!("/v2/{name}/blobs/uploads/")),
        ] {
            let r = raw(reg, method, &target, b"").await;
            r.assert_error(400, "NAME_INVALID", &format!("{why}: {method} {target}"));
        }
    }
}

#[tokio::test]
async fn a_name_of_255_characters_is_valid() {
    let reg = TestRegistry::shared();
    let name = format!("{}abc", "ab/".repeat(84));
    assert_eq!(name.len(), 255);
    let r = raw(reg, "GET", &format!("/v2/{name}/tags/list"), b"").await;
    r.assert_error(404, "NAME_UNKNOWN", "a 255-character name");
}

#[tokio::test]
async fn malformed_digests_are_digest_invalid() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("err/digest");
    reg.push_image(&repo, "v1", 1).await;
    for digest in [
        "sha256:xyz".to_owned(),
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_owned(),
        "sha256:abc".to_owned(),
        format!("sha256:{}", "A".repeat(64)),
        "sha256".to_owned(),
        format!("SHA256:{}", "a".repeat(64)),
    ] {
        for (method, target) in [
            ("GET", format!("/v2/{repo}/blobs/{digest}")),
            ("DELETE", format!("/v2/{repo}/blobs/{digest}")),
            ("GET", format!("/v2/{repo}/referrers/{digest}")),
        ] {
            let r = raw(reg, method, &target, b"").await;
            r.assert_error(400, "DIGEST_INVALID", &format!("{method} {target}"));
        }
        let r = raw(reg, "HEAD", &format!("/v2/{repo}/blobs/{digest}"), b"").await;
        assert_eq!(r.status, 400, "HEAD {digest}");
    }
}

#[tokio::test]
async fn head_responses_carry_no_body_even_on_errors() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("err/head");
    let image = reg.push_image(&repo, "v1", 1).await;
    let absent = Digest::sha256(&random_bytes(16));
    let (config, _) = image.blobs()[0].clone();
    for (target, status) in [
        (format!("/v2/{repo}/manifests/v1"), 200),
        (format!("/v2/{repo}/blobs/{config}"), 200),
        ("/v2/".to_owned(), 200),
        (format!("/v2/{repo}/manifests/nope"), 404),
        (format!("/v2/{repo}/manifests/{absent}"), 404),
        (format!("/v2/{repo}/blobs/{absent}"), 404),
        (format!("/v2/{}/manifests/v1", unique_repo("err/none")), 404),
        ("/v2/Upper/manifests/v1".to_owned(), 400),
        (format!("/v2/{repo}/blobs/sha256:xyz"), 400),
        ("/v2/x/nothing/y".to_owned(), 404),
        (format!("/v2/{repo}/tags/list"), 405),
    ] {
        let r = raw(reg, "HEAD", &target, b"").await;
        assert_eq!(r.status, status, "HEAD {target}");
        assert!(
            r.body.is_empty(),
            "HEAD {target} sent {} body bytes",
            r.body.len()
        );
    }
    let r = raw(reg, "HEAD", &format!("/v2/{repo}/manifests/v1"), b"").await;
    assert_eq!(
        r.header("content-length"),
        Some(image.manifest.len().to_string().as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.digest.to_string().as_str())
    );
}

#[tokio::test]
async fn every_response_carries_the_api_version_header() {
    let reg = TestRegistry::shared();
    let repo = unique_repo("err/version");
    reg.push_image(&repo, "v1", 1).await;
    for (method, target) in [
        ("GET", "/v2/".to_owned()),
        ("HEAD", "/v2/".to_owned()),
        ("GET", format!("/v2/{repo}/tags/list")),
        ("GET", format!("/v2/{repo}/manifests/v1")),
        ("GET", format!("/v2/{repo}/manifests/nope")),
        ("POST", format!("/v2/{repo}/blobs/uploads/")),
        ("GET", "/v2/_catalog".to_owned()),
        ("GET", "/v1/".to_owned()),
        ("POST", format!("/v2/{repo}/tags/list")),
        ("GET", "/v2/Upper/tags/list".to_owned()),
        ("GET", format!("/v2/{repo}/blobs/sha256:xyz")),
    ] {
        let r = raw(reg, method, &target, b"").await;
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0"),
            "{method} {target} ({})",
            r.status
        );
    }
}

#[tokio::test]
async fn the_base_endpoint_answers_200() {
    let reg = TestRegistry::shared();
    let r = reg.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn hostile_requests_create_nothing_on_disk() {
    let reg = TestRegistry::start();
    reg.push_image("present", "v1", 1).await;
    let marker = format!(
        "escape{:08x}",
        u32::from_le_bytes(random_bytes(4).try_into().unwrap())
    );
    let mut before = tree(reg.root());
    let absent = Digest::sha256(b"absent");
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let mut requests: Vec<(&str, String, &[u8])> = Vec::new();
    let traversals = [
        format!("../{marker}"),
        format!("../../{marker}"),
        format!("..%2F{marker}"),
        format!("%2E%2E/{marker}"),
        format!("a/../../{marker}"),
        format!("/{marker}"),
        format!("_uploads/{marker}"),
        format!(".tmp/{marker}"),
    ];
    let valid = [
        "present".to_owned(),
        "nothere".to_owned(),
        "no/where/at/all".to_owned(),
    ];
    let invalid = invalid_names()
        .into_iter()
        .map(|(n, _)| n)
        .chain(traversals);
    for name in invalid.clone() {
        requests.push(("POST", format!("/v2/{name}/blobs/uploads/"), b""));
    }
    // Also valid names, of a repository and of ones that do not exist: every request fails
    // (or only reads), and none may create a repository, a blob or an upload session.
    for name in invalid.chain(valid) {
        requests.extend([
            ("GET", format!("/v2/{name}/tags/list"), &b""[..]),
            ("GET", format!("/v2/{name}/manifests/latest"), b""),
            ("PUT", format!("/v2/{name}/manifests/latest"), manifest),
            ("PUT", format!("/v2/{name}/manifests/latest"), b"not json"),
            ("DELETE", format!("/v2/{name}/manifests/latest"), b""),
            ("DELETE", format!("/v2/{name}/manifests/{absent}"), b""),
            ("HEAD", format!("/v2/{name}/blobs/{absent}"), b""),
            ("DELETE", format!("/v2/{name}/blobs/{absent}"), b""),
            ("GET", format!("/v2/{name}/referrers/{absent}"), b""),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={absent}"),
                b"data",
            ),
            (
                "PATCH",
                format!("/v2/{name}/blobs/uploads/..%2F..%2F{marker}"),
                b"data",
            ),
            (
                "PUT",
                format!("/v2/{name}/blobs/uploads/../../{marker}?digest={absent}"),
                b"data",
            ),
            (
                "GET",
                format!("/v2/{name}/blobs/uploads/0b7b6a9e-0c1f-4c83-9a6c-1c0b8a1e2f3d"),
                b"",
            ),
        ]);
    }
    for (method, target, body) in &requests {
        let r = raw(&reg, method, target, body).await;
        // Refused, or a read (tags, referrers) answered 200; never a write accepted.
        let refused = (400..500).contains(&r.status);
        assert!(
            refused || r.status == 200,
            "{method} {target} answered {}",
            r.status
        );
        assert!(
            refused || *method == "GET",
            "{method} {target} answered {}",
            r.status
        );
    }
    // A refused monolithic upload may leave the (empty) uploads directory itself behind.
    let mut after = tree(reg.root());
    after.remove("_uploads");
    before.remove("_uploads");
    assert_eq!(after, before, "the hostile requests changed the root");
    let mut dir = reg.root().to_owned();
    for _ in 0..3 {
        let Some(parent) = dir.parent() else { break };
        dir = parent.to_owned();
        assert!(
            !dir.join(&marker).exists(),
            "{} was created",
            dir.join(&marker).display()
        );
    }
}
