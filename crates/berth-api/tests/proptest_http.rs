//! Property-based fuzzing of the HTTP-facing parsers of berth-api: the `Range` header of blob
//! pulls (`berth_api::parse::range`), the `Content-Range` header of chunked uploads
//! (`berth_api::parse::content_range`) and the request router (`Endpoint::parse`). None may
//! panic on any input; accepted ranges lie inside the blob; no hostile path may become a
//! repository name that escapes the storage root.
//!
//! Each property runs a short bounded campaign so CI fuzzes on every run; a failure prints the
//! minimal failing input. For a long campaign set `PROPTEST_CASES`, which overrides every
//! property's case count:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p berth-api --test proptest_http
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use berth_api::{parse, ApiError, Endpoint};
use berth_oci::{Digest, RepoName};
use http::Method;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;

/// A bounded campaign of `default` cases, unless `PROPTEST_CASES` asks for another number.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.

fn pick(choices: &[&'static str]) -> impl Strategy<Value = String> {
    select(choices.to_vec()).prop_map(str::to_owned)
}

/// Any string: arbitrary Unicode with control characters, byte-ish, printable ASCII.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<char>(), 0..60).prop_map(|c| c.into_iter().collect()),
        vec(any::<u8>(), 0..60).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[ -~]{0,60}",
    ]
}

/// Sizes with the edges: empty, one byte, near `u64::MAX`.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        select(vec![
            0,
            1,
            2,
            u64::MAX,
            u64::MAX - 1,
            i64::MAX as u64,
            1 << 20
        ]),
        0u64..1000,
        any::<u64>(),
    ]
}

/// Numbers as a header holds them, with overflow, signs, spaces and garbage.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..1000).prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        2 => pick(&[
            "", "0", "-0", "+0", "+5", "-1", " 7 ", "00", "007", "1e3", "0x10", "１",
            "18446744073709551615", "18446744073709551614", "18446744073709551616",
            "99999999999999999999999", "9223372036854775807", "*", " ", "\t3",
        ]),
        1 => "[0-9 +*-]{0,25}",
    ]
}

/// `Range` header near-misses.
fn range_header() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        6 => Just("bytes=".to_owned()),
        1 => pick(&["", "bytes", "bytes =", "bytes= ", " bytes=", "Bytes=", "items=", "bytes=bytes="]),
    ];
    let tail = prop_oneof![
        6 => Just(String::new()),
        1 => pick(&[",", ", 5-6", ",-1", " ", "-", "/10", "\0"]),
    ];
    let structured = (
        unit,
        number(),
        pick(&["-", "--", " - ", "", "=", "‐"]),
        number(),
        tail,
    )
        .prop_map(|(u, a, s, b, t)| format!("{u}{a}{s}{b}{t}"));
    prop_oneof![4 => structured, 1 => any_string()]
}

/// `Content-Range` header near-misses.
fn content_range_header() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        4 => Just(String::new()),
        2 => pick(&["bytes ", "bytes=", "bytes", " bytes  ", "bytes==", "bytesbytes ", "items "]),
    ];
    let total = prop_oneof![
        4 => Just(String::new()),
        1 => number().prop_map(|n| format!("/{n}")),
        1 => pick(&["/*", "/", "//", "/-1"]),
    ];
    let structured = (
        unit,
        number(),
        pick(&["-", "--", " - ", "", "/"]),
        number(),
        total,
    )
        .prop_map(|(u, a, s, b, t)| format!("{u}{a}{s}{b}{t}"));
    prop_oneof![4 => structured, 1 => any_string()]
}

/// `(a, b, size)` with `a <= b < size`, often near the edges.
fn range_in_size() -> impl Strategy<Value = (u64, u64, u64)> {
    prop_oneof![
        (1u64..20, any::<u64>(), any::<u64>()),
        (1u64..=u64::MAX, any::<u64>(), any::<u64>()),
        (Just(u64::MAX), any::<u64>(), any::<u64>()),
        (Just(u64::MAX), Just(u64::MAX - 1), Just(u64::MAX - 1)),
    ]
    .prop_map(|(size, x, y)| {
        let (x, y) = (x % size, y % size);
        (x.min(y), x.max(y), size)
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        6 => select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::TRACE,
            Method::CONNECT,
        ]),
        1 => "[A-Za-z!#$%&'*+.^_`|~0-9-]{1,12}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component() -> impl Strategy<Value = String> {
    let sep = pick(&[".", "_", "__", "-", "--"]);
    (
        "[a-z0-9]{1,6}",
        vec((sep, "[a-z0-9]{1,6}").prop_map(|(s, a)| s + &a), 0..3),
    )
        .prop_map(|(head, rest)| head + &rest.concat())
}

fn valid_name() -> impl Strategy<Value = String> {
    vec(valid_component(), 1..5).prop_map(|c| c.join("/"))
}

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const UUID: &str = "0b7b6a9e-0c1f-4c83-9a6c-1c0b8a1e2f3d";

/// Path segments an attacker would try: traversal in every spelling, route keywords, escapes.
fn hostile_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => valid_component(),
        4 => pick(&[
            "", ".", "..", "...", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2F", "%2f", "..%2F..",
            "%5C", "..\\..", "%00", "%25", "%", "%3A", "%3a", "a%2Fb", "%252e%252e", "~",
            "v2", "_catalog", "blobs", "uploads", "manifests", "referrers", "tags", "list",
            "_uploads", "index.json", "oci-layout", "A", "a b", "\u{0}", "é", "\u{2024}\u{2024}",
            DIGEST, UUID, "sha256%3Ae3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "latest",
        ]),
        1 => any_string(),
    ]
}

/// Request paths: hostile segments joined by `/`, mostly under `/v2/`, often ending in a
/// route suffix so the name parser is reached.
fn hostile_path() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        8 => Just("/v2/".to_owned()),
        1 => pick(&["", "/", "/v2", "//v2/", "/v2//", "/V2/", "/v1/", "v2/", "/v2/./", "/v2/../"]),
    ];
    let suffix = prop_oneof![
        2 => Just(String::new()),
        1 => Just("/tags/list".to_owned()),
        1 => Just(format!("/manifests/{DIGEST}")),
        1 => Just("/manifests/latest".to_owned()),
        1 => Just(format!("/blobs/{DIGEST}")),
        1 => Just(format!("/referrers/{DIGEST}")),
        1 => Just("/blobs/uploads/".to_owned()),
        1 => Just("/blobs/uploads".to_owned()),
        1 => Just(format!("/blobs/uploads/{UUID}")),
    ];
    let join = pick(&["/", "/", "/", "/", "//", "\\", "%2F"]);
    (prefix, vec((hostile_segment(), join), 0..6), suffix).prop_map(|(p, segs, s)| {
        let mut path = p;
        for (i, (seg, j)) in segs.iter().enumerate() {
            if i > 0 {
                path.push_str(j);
            }
            path.push_str(seg);
        }
        path + &s
    })
}

fn endpoint_name(e: &Endpoint) -> Option<&RepoName> {
    match e {
        Endpoint::Base | Endpoint::Catalog => None,
        Endpoint::Tags { name }
        | Endpoint::Manifest { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::UploadStart { name }
        | Endpoint::Upload { name, .. }
        | Endpoint::Referrers { name, .. } => Some(name),
    }
}

/// What must hold of every endpoint the router hands to the engine.
fn check_endpoint(path: &str, e: &Endpoint) -> Result<(), TestCaseError> {
    if let Some(name) = endpoint_name(e) {
        let n = name.as_str();
        prop_assert!(!n.contains('%'), "{path:?} gave name {n:?}");
        prop_assert!(!n.contains('\\') && !n.starts_with('/') && !n.ends_with('/'));
        for c in n.split('/') {
            prop_assert!(
                !c.is_empty() && c != "." && c != "..",
                "{path:?} gave name {n:?}"
            );
        }
        // The name is taken from the path as it is, never decoded or rebuilt.
        prop_assert!(
            path.starts_with(&format!("/v2/{n}/")),
            "{path:?} gave name {n:?}"
        );
        prop_assert_eq!(&RepoName::parse(n), &Ok(name.clone()));
    }
    match e {
        Endpoint::Upload { id, .. } => {
            let id = id.as_str();
            prop_assert!(id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        }
        Endpoint::Blob { digest, .. } | Endpoint::Referrers { digest, .. } => {
            prop_assert_eq!(&Digest::parse(&digest.to_string()), &Ok(digest.clone()));
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Range.

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn range_never_panics_and_stays_inside_the_blob(
        value in prop_oneof![range_header(), any_string()],
        size in size(),
    ) {
        if let Ok(Some((first, last))) = parse::range(&value, size) {
            prop_assert!(first <= last, "{value:?} / {size}: ({first}, {last})");
            prop_assert!(last < size, "{value:?} / {size}: ({first}, {last})");
        }
    }

    #[test]
    fn range_within_the_blob_is_exact((a, b, size) in range_in_size()) {
        prop_assert_eq!(parse::range(&format!("bytes={a}-{b}"), size).unwrap(), Some((a, b)));
        // Open-ended and suffix forms.
        prop_assert_eq!(parse::range(&format!("bytes={a}-"), size).unwrap(), Some((a, size - 1)));
        let n = b - a + 1;
        prop_assert_eq!(
            parse::range(&format!("bytes=-{n}"), size).unwrap(),
            Some((size - n, size - 1))
        );
    }

    #[test]
    fn range_past_the_end_is_clamped_or_refused(
        (a, _, size) in range_in_size(),
        over in any::<u64>(),
    ) {
        // A last byte past the end is clamped to the end.
        let b = size.saturating_add(over % 1000);
        prop_assert_eq!(parse::range(&format!("bytes={a}-{b}"), size).unwrap(), Some((a, size - 1)));
        // A first byte at or past the end is unsatisfiable.
        let first = size.saturating_add(over % 1000);
        let open = parse::range(&format!("bytes={first}-"), size);
        prop_assert!(open.is_err(), "{:?}", open);
        let closed = parse::range(&format!("bytes={first}-{}", first.saturating_add(1)), size);
        prop_assert!(closed.is_err(), "{:?}", closed);
        let empty = parse::range(&format!("bytes=0-{a}"), 0);
        prop_assert!(empty.is_err(), "{:?}", empty);
    }
}

// ---------------------------------------------------------------------------------------------
// Content-Range.

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn content_range_never_panics_and_agrees_with_content_length(
        value in prop_oneof![content_range_header(), any_string()],
        len in option::of(prop_oneof![number(), any_string()]),
    ) {
        if let Ok((start, end)) = parse::content_range(&value, len.as_deref()) {
            prop_assert!(start <= end, "{value:?}: ({start}, {end})");
            if let Some(len) = &len {
                let len: u64 = len.trim().parse().unwrap();
                prop_assert_eq!(
                    u128::from(len),
                    u128::from(end) - u128::from(start) + 1,
                    "{:?} with Content-Length {}", value, len
                );
            }
        }
    }

    #[test]
    fn content_range_agrees_with_a_nearby_content_length(
        value in content_range_header(),
        delta in prop_oneof![3 => Just(0i128), 1 => -2i128..=2],
        pad in pick(&["", " ", "+", "0"]),
    ) {
        // The Content-Length the range implies, or one close to it.
        if let Ok((start, end)) = parse::content_range(&value, None) {
            let implied = i128::from(end) - i128::from(start) + 1 + delta;
            let len = format!("{pad}{implied}");
            if let Ok((s, e)) = parse::content_range(&value, Some(&len)) {
                prop_assert_eq!((s, e), (start, end));
                prop_assert_eq!(i128::from(e) - i128::from(s) + 1, implied, "{:?} with {:?}", value, len);
            } else {
                let representable = u64::try_from(implied).is_ok() && pad != "+";
                prop_assert!(delta != 0 || !representable, "{:?} refused with {:?}", value, len);
            }
        }
    }

    #[test]
    fn content_range_is_exact(
        a in prop_oneof![0u64..1000, any::<u64>(), Just(0), Just(u64::MAX)],
        b in prop_oneof![0u64..1000, any::<u64>(), Just(u64::MAX)],
        form in 0usize..4,
        wrong in 1u64..1000,
    ) {
        let (a, b) = (a.min(b), a.max(b));
        let value = match form {
            0 => format!("{a}-{b}"),
            1 => format!("bytes {a}-{b}/*"),
            2 => format!("bytes={a}-{b}"),
            _ => format!("bytes {a}-{b}/{}", b.saturating_add(1)),
        };
        prop_assert_eq!(parse::content_range(&value, None).unwrap(), (a, b));
        match (b - a).checked_add(1) {
            Some(len) => {
                prop_assert_eq!(parse::content_range(&value, Some(&len.to_string())).unwrap(), (a, b));
                let other = len.wrapping_add(wrong);
                prop_assert!(parse::content_range(&value, Some(&other.to_string())).is_err());
            }
            // 0-18446744073709551615 is 2^64 bytes: no Content-Length can match it.
            None => {
                for len in ["0", "1", "18446744073709551615"] {
                    prop_assert!(parse::content_range(&value, Some(len)).is_err());
                }
            }
        }
        if a < b {
            let reversed = parse::content_range(&format!("{b}-{a}"), None);
            prop_assert!(reversed.is_err(), "{:?}", reversed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints.

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn endpoint_never_panics_and_names_never_escape(
        m in method(),
        path in prop_oneof![4 => hostile_path(), 1 => any_string(), 1 => any_string().prop_map(|s| format!("/v2/{s}"))],
    ) {
        // Every method of the spec, so that the name parser is reached whatever the route.
        let methods = [Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::PATCH, Method::DELETE];
        for m in methods.iter().chain([&m]) {
            if let Ok(e) = Endpoint::parse(m, &path) {
                check_endpoint(&path, &e)?;
            }
        }
    }

    #[test]
    fn endpoint_parses_valid_routes(name in valid_name(), route in 0usize..6) {
        let (m, path) = match route {
            0 => (Method::GET, format!("/v2/{name}/tags/list")),
            1 => (Method::PUT, format!("/v2/{name}/manifests/latest")),
            2 => (Method::HEAD, format!("/v2/{name}/blobs/{DIGEST}")),
            3 => (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            4 => (Method::PATCH, format!("/v2/{name}/blobs/uploads/{UUID}")),
            _ => (Method::GET, format!("/v2/{name}/referrers/{}", DIGEST.replace(':', "%3A"))),
        };
        let reserved = name.split('/').skip(1).any(|c| ["blobs", "index.json", "oci-layout"].contains(&c));
        match Endpoint::parse(&m, &path) {
            Ok(e) => {
                prop_assert!(!reserved);
                check_endpoint(&path, &e)?;
                prop_assert_eq!(endpoint_name(&e).map(RepoName::as_str), Some(name.as_str()));
            }
            Err(ApiError::NameInvalid(_)) => prop_assert!(reserved, "{path:?} refused"),
            Err(e) => prop_assert!(false, "{path:?} refused: {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the properties above.

/// `Content-Range: 0-18446744073709551615` overflowed `end - start + 1` against any
/// `Content-Length`: a panic in debug builds, and a range "matching" `Content-Length: 0` in
/// release builds.
#[test]
fn regression_content_range_of_2_pow_64_bytes() {
    for len in ["0", "1", "18446744073709551615"] {
        assert!(parse::content_range("0-18446744073709551615", Some(len)).is_err());
        assert!(parse::content_range("bytes 0-18446744073709551615/*", Some(len)).is_err());
    }
    assert_eq!(
        parse::content_range("1-18446744073709551615", Some("18446744073709551615")).unwrap(),
        (1, u64::MAX)
    );
}
