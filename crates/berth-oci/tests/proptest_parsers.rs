//! Property-based fuzzing of the parsers of berth-oci: digests, repository names, tags,
//! references and manifests. Every parser must never panic on any input, accept only what its
//! grammar allows (checked against regular-expression oracles), and accept everything its
//! grammar generates.
//!
//! Each property runs a short bounded campaign (a few hundred cases, well under 5 s in a debug
//! build) so CI fuzzes on every run; a failure prints the minimal failing input. For a long
//! campaign set `PROPTEST_CASES`, which overrides every property's case count:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p berth-oci --test proptest_parsers
//! ```
//!
//! `PROPTEST_RNG_SEED=<u64>` replays a campaign.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use berth_oci::manifest::{Descriptor, Kind, Manifest, ManifestError};
use berth_oci::{media, Algorithm, Digest, DigestError, NameError, Reference, RepoName, Tag};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

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
// Oracles: the grammars of the distribution spec as regular expressions.

/// The repository-name grammar of the distribution spec ("Pulling manifests").
static NAME_RE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"\A[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*\z")
        .unwrap()
});

/// The tag grammar of the distribution spec.
static TAG_RE: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\z").unwrap());

const RESERVED: [&str; 3] = ["blobs", "index.json", "oci-layout"];

/// What `RepoName::parse` must accept, computed independently of it.
fn name_oracle(s: &str) -> bool {
    NAME_RE.is_match(s) && s.len() <= 255 && !s.split('/').skip(1).any(|c| RESERVED.contains(&c))
}

// ---------------------------------------------------------------------------------------------
// Generators.

/// Any string, control characters and every plane of Unicode included.
fn any_chars(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Arbitrary bytes made into a string (invalid UTF-8 becomes U+FFFD).
fn byteish(max: usize) -> impl Strategy<Value = String> {
    vec(any::<u8>(), 0..max).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Strings of any kind: arbitrary Unicode, byte-ish, printable ASCII, proptest's default.
fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![any_chars(80), byteish(80), "[ -~]{0,80}", any::<String>(),]
}

/// One of a few fixed strings.
fn pick(choices: &[&'static str]) -> impl Strategy<Value = String> {
    select(choices.to_vec()).prop_map(str::to_owned)
}

fn hex_of_len(len: usize) -> impl Strategy<Value = String> {
    vec(select(b"0123456789abcdef".to_vec()), len..=len).prop_map(|b| String::from_utf8(b).unwrap())
}

/// Digest near-misses: real and unknown algorithms, odd separators, hex of wrong length or
/// case, and characters of the `encoded` grammar that are not hex.
fn digestish() -> impl Strategy<Value = String> {
    let alg = prop_oneof![
        4 => pick(&["sha256", "sha512"]),
        1 => pick(&[
            "", "SHA256", "Sha256", "sha384", "md5", "sha256+b64u", "multihash+base58",
            "sha-256", "sha_256", "sha.256", "sha256 ", " sha256", "sha256-", "+sha256",
            "sha256..x", "blake3", "sha512/256", "sha256\0", "ѕha256",
        ]),
        1 => "[a-z0-9+._-]{0,12}",
    ];
    let sep = prop_oneof![
        8 => Just(":"),
        1 => select(vec!["", "::", " :", ": ", "%3A", "%3a", "/", "=", "\u{ff1a}"]),
    ];
    let lengths = prop_oneof![
        Just(0usize),
        Just(1),
        Just(63),
        Just(64),
        Just(65),
        Just(127),
        Just(128),
        Just(129),
        0usize..200,
    ];
    let encoded = prop_oneof![
        4 => lengths.clone().prop_flat_map(hex_of_len),
        1 => lengths.clone().prop_flat_map(|n| {
            proptest::string::string_regex(&format!("[0-9a-fA-F]{{{n}}}")).unwrap()
        }),
        1 => (lengths, any::<char>(), any::<prop::sample::Index>()).prop_flat_map(
            |(n, c, at)| {
                hex_of_len(n).prop_map(move |mut h| {
                    // One foreign character somewhere in otherwise valid hex.
                    let at = if h.is_empty() { 0 } else { at.index(h.len()) };
                    h.insert(at, c);
                    h
                })
            }
        ),
        1 => "[a-zA-Z0-9=_-]{0,140}",
    ];
    let suffix = prop_oneof![
        8 => Just(""),
        1 => select(vec!["\n", " ", "\0", ":", "/", "@", "%"]),
    ];
    (alg, sep, encoded, suffix).prop_map(|(a, s, e, x)| format!("{a}{s}{e}{x}"))
}

/// Name near-misses: name characters, separators, capitals, escapes and traversal parts.
fn nameish() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        6 => "[a-z0-9]{1,6}",
        2 => pick(&[".", "_", "__", "___", "-", "--", "/", "//", ".-", "-."]),
        1 => pick(&[
            "..", "/../", "./", "%2F", "%2e%2e", "A", "\\", " ", "\0", "é", ":", "@",
            "blobs", "index.json", "oci-layout", "_uploads", "manifests",
        ]),
    ];
    prop_oneof![
        6 => vec(part, 0..12).prop_map(|p| p.concat()),
        1 => "[a-z0-9._/-]{0,300}",
        1 => any_string(),
    ]
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, generated from the grammar.
fn valid_component() -> impl Strategy<Value = String> {
    let sep = prop_oneof![
        Just(".".to_owned()),
        Just("_".to_owned()),
        Just("__".to_owned()),
        (1usize..4).prop_map(|n| "-".repeat(n)),
    ];
    (
        "[a-z0-9]{1,8}",
        vec((sep, "[a-z0-9]{1,8}").prop_map(|(s, a)| s + &a), 0..4),
    )
        .prop_map(|(head, rest)| head + &rest.concat())
}

/// Names of the spec grammar, sometimes with a reserved component, sometimes too long.
fn grammar_name() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        8 => valid_component(),
        1 => select(RESERVED.to_vec()).prop_map(str::to_owned),
    ];
    prop_oneof![
        4 => vec(component.clone(), 1..6),
        1 => vec(component, 1..40), // often longer than 255
    ]
    .prop_map(|c| c.join("/"))
}

fn valid_tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn tagish() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._:/@ -]{0,140}",
        1 => valid_tag().prop_map(|t| t + "x"), // 129 characters sometimes
        1 => any_string(),
    ]
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    select(vec![Algorithm::Sha256, Algorithm::Sha512])
}

fn valid_digest() -> impl Strategy<Value = Digest> {
    (algorithm(), vec(any::<u8>(), 0..64)).prop_map(|(a, d)| Digest::of(a, &d))
}

// ---------------------------------------------------------------------------------------------
// Digests.

/// The invariants of an accepted digest.
fn check_accepted_digest(s: &str, d: &Digest) -> Result<(), TestCaseError> {
    prop_assert_eq!(d.to_string(), s, "Display does not round-trip");
    prop_assert_eq!(d.hex().len(), d.algorithm().hex_len());
    prop_assert!(d
        .hex()
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    prop_assert_eq!(s, format!("{}:{}", d.algorithm().as_str(), d.hex()));
    prop_assert_eq!(&Digest::parse(&d.to_string()).unwrap(), d);
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn digest_parse_never_panics_and_round_trips(s in prop_oneof![any_string(), digestish()]) {
        if let Ok(d) = Digest::parse(&s) {
            check_accepted_digest(&s, &d)?;
        }
        // FromStr and serde agree with parse.
        prop_assert_eq!(s.parse::<Digest>().ok(), Digest::parse(&s).ok());
        let via_serde: Option<Digest> = serde_json::from_value(Value::String(s.clone())).ok();
        prop_assert_eq!(via_serde, Digest::parse(&s).ok());
    }

    #[test]
    fn digest_accepts_exactly_lowercase_hex_of_the_algorithm_length(
        alg in algorithm(),
        hex in prop_oneof![
            (0usize..140).prop_flat_map(hex_of_len),
            "[0-9a-fA-F]{60,130}",
            Just("0".repeat(64)),
            Just("f".repeat(128)),
        ],
    ) {
        let s = format!("{}:{hex}", alg.as_str());
        let valid = hex.len() == alg.hex_len() && !hex.bytes().any(|b| b.is_ascii_uppercase());
        match Digest::parse(&s) {
            Ok(d) => {
                prop_assert!(valid, "accepted {s:?}");
                check_accepted_digest(&s, &d)?;
                prop_assert_eq!(d.algorithm(), alg);
            }
            Err(e) => {
                prop_assert!(!valid, "refused {s:?}: {e}");
                let is_encoding_error = matches!(e, DigestError::InvalidEncoding { .. });
                prop_assert!(hex.is_empty() || is_encoding_error, "{e:?}");
            }
        }
    }

    #[test]
    fn digest_of_always_parses_back(alg in algorithm(), data in vec(any::<u8>(), 0..256)) {
        let d = Digest::of(alg, &data);
        prop_assert_eq!(d.algorithm(), alg);
        prop_assert_eq!(d.hex().len(), alg.hex_len());
        check_accepted_digest(&d.to_string(), &d)?;
        // The streaming hasher agrees, however the data is split.
        let mut h = alg.hasher();
        let (a, b) = data.split_at(data.len() / 3);
        h.update(a);
        h.update(b);
        prop_assert_eq!(h.finish(), d);
    }
}

// ---------------------------------------------------------------------------------------------
// Repository names.

/// The invariants of an accepted repository name.
fn check_accepted_name(s: &str, n: &RepoName) -> Result<(), TestCaseError> {
    prop_assert_eq!(n.as_str(), s);
    prop_assert!(NAME_RE.is_match(s), "{s:?} does not match the spec grammar");
    prop_assert!(s.len() <= 255, "{s:?} is longer than 255 bytes");
    for c in s.split('/') {
        prop_assert!(
            c != ".." && c != "." && !c.is_empty(),
            "{s:?} has component {c:?}"
        );
    }
    for c in s.split('/').skip(1) {
        prop_assert!(!RESERVED.contains(&c), "{s:?} has reserved component {c:?}");
    }
    prop_assert!(n.components().eq(s.split('/')));
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn repo_name_accepts_exactly_the_spec_grammar(s in prop_oneof![nameish(), grammar_name()]) {
        let parsed = RepoName::parse(&s);
        if let Ok(n) = &parsed {
            check_accepted_name(&s, n)?;
        }
        prop_assert_eq!(parsed.is_ok(), name_oracle(&s), "{:?}: {:?}", s, parsed);
    }

    #[test]
    fn repo_name_accepts_what_the_grammar_generates(s in grammar_name()) {
        prop_assert!(NAME_RE.is_match(&s), "generator produced {s:?}");
        let reserved = s.split('/').skip(1).any(|c| RESERVED.contains(&c));
        match RepoName::parse(&s) {
            Ok(n) => {
                prop_assert!(!reserved && s.len() <= 255, "accepted {s:?}");
                check_accepted_name(&s, &n)?;
            }
            Err(NameError::NameTooLong) => prop_assert!(s.len() > 255),
            Err(NameError::ReservedComponent { component, .. }) => {
                prop_assert!(s.len() <= 255 && reserved);
                prop_assert!(RESERVED.contains(&component.as_str()));
            }
            Err(e) => prop_assert!(false, "{s:?} refused: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tags and references.

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn tag_accepts_exactly_the_spec_grammar(s in tagish()) {
        let parsed = Tag::parse(&s);
        if let Ok(t) = &parsed {
            prop_assert_eq!(t.as_str(), &s);
            prop_assert_eq!(t.to_string(), s.clone());
        }
        prop_assert_eq!(parsed.is_ok(), TAG_RE.is_match(&s), "{:?}: {:?}", s, parsed);
    }

    #[test]
    fn tag_accepts_generated_valid_tags(s in valid_tag()) {
        prop_assert_eq!(Tag::parse(&s).map(|t| t.to_string()), Ok(s));
    }

    #[test]
    fn reference_is_a_tag_or_a_digest(
        s in prop_oneof![tagish(), digestish(), valid_tag(), any_string()],
    ) {
        match Reference::parse(&s) {
            Ok(Reference::Tag(t)) => {
                prop_assert!(!s.contains(':'));
                prop_assert!(TAG_RE.is_match(&s), "accepted tag {s:?}");
                prop_assert_eq!(t.as_str(), &s);
            }
            Ok(Reference::Digest(d)) => {
                prop_assert!(s.contains(':'));
                check_accepted_digest(&s, &d)?;
            }
            Err(e) => {
                if s.contains(':') {
                    prop_assert!(Digest::parse(&s).is_err());
                    prop_assert!(matches!(e, NameError::Digest(_)), "{e:?}");
                } else {
                    prop_assert!(!TAG_RE.is_match(&s), "refused tag {s:?}: {e}");
                }
            }
        }
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(r.to_string(), s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests.

const FIELDS: [&str; 16] = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "fsLayers",
    "digest",
    "size",
    "urls",
    "platform",
    "data",
    "signatures",
    "name",
];

const MEDIA_TYPES: [&str; 10] = [
    media::OCI_MANIFEST,
    media::OCI_INDEX,
    media::DOCKER_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_SCHEMA1,
    media::DOCKER_SCHEMA1_SIGNED,
    media::OCI_EMPTY,
    media::OCI_LAYOUT_HEADER,
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.image.layer.v1.tar+gzip",
];

fn media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(MEDIA_TYPES.to_vec()).prop_map(str::to_owned),
        1 => "[a-z]{1,12}/[a-z0-9.+-]{1,30}",
    ]
}

/// A Content-Type header: none, a media type with or without parameters and spaces, garbage.
fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        4 => (media_type(), select(vec!["", "; charset=utf-8", " ;x=y", ";"]), any::<bool>())
            .prop_map(|(m, p, pad)| Some(if pad { format!("  {m}{p} ") } else { format!("{m}{p}") })),
        1 => select(vec!["", ";", " ", "application/json"]).prop_map(|s| Some(s.to_owned())),
        1 => any_string().prop_map(Some),
    ]
}

/// JSON leaves biased towards what a manifest holds.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        select(vec![2i64, 1, 0, -1, 3, i64::MIN, i64::MAX]).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        Just(json!(2.0)),
        media_type().prop_map(Value::String),
        valid_digest().prop_map(|d| Value::String(d.to_string())),
        digestish().prop_map(Value::String),
        any_string().prop_map(Value::String),
    ]
}

/// JSON trees of bounded depth whose object keys are mostly manifest field names.
fn json_tree() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => select(FIELDS.to_vec()).prop_map(str::to_owned),
        1 => any_string(),
    ];
    json_leaf().prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A top-level object with each manifest field present or not, mostly with a plausible value
/// of its own type, sometimes with any JSON value, plus stray fields.
fn manifestish_object() -> impl Strategy<Value = Value> {
    fn field<S: Strategy<Value = Value> + 'static>(plausible: S) -> BoxedStrategy<Option<Value>> {
        option::weighted(0.7, prop_oneof![6 => plausible, 1 => json_tree()]).boxed()
    }
    let descriptor_value = || {
        prop_oneof![
            6 => descriptor().prop_map(|d| serde_json::to_value(d).unwrap()),
            1 => descriptor().prop_map(|d| positional(&serde_json::to_value(d).unwrap(), &DESCRIPTOR_FIELDS)),
            1 => btree_map(select(DESCRIPTOR_FIELDS.to_vec()).prop_map(str::to_owned), json_leaf(), 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    };
    let descriptor_list = vec(descriptor_value(), 0..4).prop_map(Value::Array);
    let string_map = btree_map("[a-z.]{1,10}", "[ -~]{0,10}", 0..4)
        .prop_map(|m| serde_json::to_value(m).unwrap());
    let fields = (
        field(prop_oneof![4 => Just(json!(2)), 1 => json_leaf()]),
        field(media_type().prop_map(Value::String)),
        field(media_type().prop_map(Value::String)),
        field(descriptor_value()),
        field(descriptor_list.clone()),
        field(descriptor_list),
        field(descriptor_value()),
        field(string_map),
        option::weighted(0.05, json_tree()),
        btree_map(any_string(), json_leaf(), 0..2),
    );
    fields.prop_map(
        |(sv, mt, at, config, layers, manifests, subject, ann, fs, stray)| {
            let mut m: Map<String, Value> = stray.into_iter().collect();
            let known = [sv, mt, at, config, layers, manifests, subject, ann, fs];
            for (k, v) in MANIFEST_FIELDS.iter().zip(known) {
                if let Some(v) = v {
                    m.insert((*k).to_owned(), v);
                }
            }
            Value::Object(m)
        },
    )
}

fn annotations() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    option::of(btree_map(
        "[a-z][a-z0-9.]{0,20}",
        prop_oneof!["[ -~]{0,20}", any_string()],
        0..4,
    ))
}

fn descriptor() -> impl Strategy<Value = Descriptor> {
    (
        media_type(),
        valid_digest(),
        prop_oneof![0u64..1 << 20, any::<u64>()],
        option::of(media_type()),
        annotations(),
        option::of(Just(json!({"os": "linux", "architecture": "amd64"}))),
        option::of(vec("https://[a-z]{1,8}\\.example/[a-z]{0,8}", 0..3)),
    )
        .prop_map(
            |(media_type, digest, size, artifact_type, annotations, platform, urls)| Descriptor {
                media_type,
                digest,
                size,
                artifact_type,
                annotations: annotations.map(Into::into),
                platform,
                urls,
            },
        )
}

/// A valid image manifest or index, its body media type (if the body names one), the media
/// type it must be served with, and the descriptors `references()` must yield.
#[derive(Debug, Clone)]
struct ValidManifest {
    body: Value,
    kind: Kind,
    media_type: String,
    body_names_type: bool,
    references: Vec<Descriptor>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

fn valid_manifest() -> impl Strategy<Value = ValidManifest> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        descriptor(),
        vec(descriptor(), 0..8),
        option::of(descriptor()),
        option::of(media_type()),
        annotations(),
    )
        .prop_map(
            |(
                index,
                docker,
                body_names_type,
                config,
                entries,
                subject,
                artifact_type,
                annotations,
            )| {
                let (kind, media_type) = match (index, docker) {
                    (false, false) => (Kind::Image, media::OCI_MANIFEST),
                    (false, true) => (Kind::Image, media::DOCKER_MANIFEST),
                    (true, false) => (Kind::Index, media::OCI_INDEX),
                    (true, true) => (Kind::Index, media::DOCKER_MANIFEST_LIST),
                };
                let mut body = Map::new();
                body.insert("schemaVersion".into(), json!(2));
                if body_names_type {
                    body.insert("mediaType".into(), json!(media_type));
                }
                let list = serde_json::to_value(&entries).unwrap();
                let mut references = Vec::new();
                if kind == Kind::Image {
                    body.insert("config".into(), serde_json::to_value(&config).unwrap());
                    body.insert("layers".into(), list);
                    references.push(config);
                } else {
                    body.insert("manifests".into(), list);
                }
                references.extend(entries);
                if let Some(s) = &subject {
                    body.insert("subject".into(), serde_json::to_value(s).unwrap());
                }
                if let Some(a) = &artifact_type {
                    body.insert("artifactType".into(), json!(a));
                }
                if let Some(a) = &annotations {
                    body.insert("annotations".into(), json!(a));
                }
                ValidManifest {
                    body: Value::Object(body),
                    kind,
                    media_type: media_type.to_owned(),
                    body_names_type,
                    references,
                    subject,
                    artifact_type,
                    annotations,
                }
            },
        )
}

fn to_bytes(v: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(v).unwrap()
    } else {
        serde_json::to_vec(v).unwrap()
    }
}

/// Invariants of any accepted manifest, whatever the input.
fn check_accepted_manifest(
    m: &Manifest,
    body: &[u8],
    content_type: Option<&str>,
) -> Result<(), TestCaseError> {
    let text = std::str::from_utf8(body);
    prop_assert!(
        text.is_ok(),
        "accepted a manifest that is not UTF-8: {:?}",
        text
    );
    let body: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // A lone surrogate escape (`"\ud800"`) is valid JSON grammar, yet no Rust string: it
        // is accepted in fields berth skips, and `Value` cannot hold it.
        Err(e) if e.to_string().contains("surrogate") => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("accepted invalid JSON: {e}"))),
    };
    prop_assert!(
        body.is_object(),
        "accepted a manifest that is not an object: {body}"
    );
    for d in ["config", "subject"] {
        if let Some(v) = body.get(d) {
            prop_assert!(v.is_object(), "accepted a {d} that is not an object: {v}");
        }
    }
    for list in ["layers", "manifests"] {
        if let Some(Value::Array(items)) = body.get(list) {
            prop_assert!(
                items.iter().all(Value::is_object),
                "accepted non-object {list}"
            );
        }
    }
    let header = content_type.map(media::essence).filter(|h| !h.is_empty());
    prop_assert!(!header.is_some_and(media::is_schema1));
    prop_assert!(!media::is_schema1(&m.media_type));
    match m.kind {
        Kind::Image => prop_assert!(m.config.is_some()),
        Kind::Index => prop_assert!(m.config.is_none()),
    }
    prop_assert_eq!(
        m.references().count(),
        m.entries.len() + m.config.iter().count()
    );
    if let Some(Value::String(b)) = body.get("mediaType") {
        prop_assert_eq!(&m.media_type, b);
        if let Some(h) = header {
            prop_assert_eq!(b.as_str(), h, "mediaType and Content-Type disagree");
        }
    } else {
        prop_assert_eq!(Some(m.media_type.as_str()), header);
    }
    Ok(())
}

/// The fields of a manifest and of a descriptor in the order of their Rust structs.
const MANIFEST_FIELDS: [&str; 9] = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "fsLayers",
];
const DESCRIPTOR_FIELDS: [&str; 7] = [
    "mediaType",
    "digest",
    "size",
    "artifactType",
    "annotations",
    "platform",
    "urls",
];

/// An object as an array of the values of `fields`, in order: serde's derived `Deserialize`
/// also reads a struct from such a sequence, which JSON documents must not be.
fn positional(v: &Value, fields: &[&str]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| v.get(*f).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}

/// Valid manifests of which the whole or some descriptors are written as arrays.
fn positional_manifest() -> impl Strategy<Value = Value> {
    (
        valid_manifest(),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(vm, whole, at)| {
            let mut body = vm.body;
            let list = if body.get("layers").is_some() {
                "layers"
            } else {
                "manifests"
            };
            let targets: Vec<String> = ["config", "subject"]
                .into_iter()
                .filter(|f| body.get(*f).is_some())
                .map(|f| format!("/{f}"))
                .chain(
                    (0..body[list].as_array().map_or(0, Vec::len)).map(|i| format!("/{list}/{i}")),
                )
                .collect();
            if !targets.is_empty() {
                let ptr = &targets[at.index(targets.len())];
                let d = body.pointer_mut(ptr).unwrap();
                *d = positional(d, &DESCRIPTOR_FIELDS);
            }
            if whole {
                body = positional(&body, &MANIFEST_FIELDS);
            }
            body
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn manifest_parse_never_panics_on_bytes(
        body in prop_oneof![vec(any::<u8>(), 0..512), any_string().prop_map(String::into_bytes)],
        ct in content_type(),
    ) {
        if let Ok(m) = Manifest::parse(&body, ct.as_deref()) {
            check_accepted_manifest(&m, &body, ct.as_deref())?;
        }
    }

    #[test]
    fn manifest_parse_never_panics_on_json(
        v in prop_oneof![json_tree(), manifestish_object(), positional_manifest()],
        ct in content_type(),
        pretty in any::<bool>(),
    ) {
        let body = to_bytes(&v, pretty);
        if let Ok(m) = Manifest::parse(&body, ct.as_deref()) {
            check_accepted_manifest(&m, &body, ct.as_deref())?;
        }
    }

    #[test]
    fn manifest_parse_never_panics_on_mutated_manifests(
        vm in valid_manifest(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ct in content_type(),
    ) {
        let mut body = to_bytes(&vm.body, false);
        for (at, b) in edits {
            let i = at.index(body.len());
            body[i] = b;
        }
        if let Ok(m) = Manifest::parse(&body, ct.as_deref()) {
            check_accepted_manifest(&m, &body, ct.as_deref())?;
        }
    }

    #[test]
    fn valid_manifests_parse_and_reference_config_then_layers(
        vm in valid_manifest(),
        params in select(vec!["", "; charset=utf-8", " ; a=b", ";"]),
        send_header in any::<bool>(),
        pretty in any::<bool>(),
    ) {
        // A body without mediaType needs the Content-Type.
        let ct = (send_header || !vm.body_names_type).then(|| format!("{}{params}", vm.media_type));
        let m = Manifest::parse(&to_bytes(&vm.body, pretty), ct.as_deref());
        let m = match m {
            Ok(m) => m,
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e}"))),
        };
        prop_assert_eq!(m.kind, vm.kind);
        prop_assert_eq!(&m.media_type, &vm.media_type);
        let refs: Vec<Descriptor> = m.references().cloned().collect();
        prop_assert_eq!(&refs, &vm.references);
        match vm.kind {
            Kind::Image => prop_assert_eq!(m.config.as_ref(), vm.references.first()),
            Kind::Index => prop_assert!(m.config.is_none()),
        }
        prop_assert_eq!(&m.subject, &vm.subject);
        prop_assert_eq!(&m.artifact_type, &vm.artifact_type);
        prop_assert_eq!(&m.annotations, &vm.annotations);
        let expected_artifact_type = vm
            .artifact_type
            .as_deref()
            .or(m.config.as_ref().map(|c| c.media_type.as_str()));
        prop_assert_eq!(m.effective_artifact_type(), expected_artifact_type);
        check_accepted_manifest(&m, &to_bytes(&vm.body, pretty), ct.as_deref())?;
    }

    #[test]
    fn media_type_mismatch_is_always_refused(
        vm in valid_manifest(),
        other in prop_oneof![media_type(), "[ -~]{1,40}", any_string()],
        params in select(vec!["", "; charset=utf-8", " ;x"]),
        near_miss in 0usize..5,
    ) {
        let mut body = vm.body.clone();
        body["mediaType"] = json!(vm.media_type);
        let m = vm.media_type.as_str();
        let other = match near_miss {
            0 => m.to_uppercase(),
            1 => format!("{m}x"),
            2 => m.replace("+json", ""),
            _ => other,
        };
        let mut ct = format!("{other}{params}");
        if media::essence(&ct).is_empty() || media::essence(&ct) == m {
            ct = format!("{m}.x{params}");
        }
        let header = media::essence(&ct);
        let refused = Manifest::parse(&to_bytes(&body, false), Some(&ct));
        if media::is_schema1(header) {
            prop_assert_eq!(refused, Err(ManifestError::Schema1));
        } else {
            let is_mismatch = matches!(refused, Err(ManifestError::MediaTypeMismatch { .. }));
            prop_assert!(is_mismatch, "{:?} with Content-Type {:?}: {:?}", vm.media_type, ct, refused);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the properties above.

/// `Manifest::parse` accepted a manifest, and descriptors, written as JSON arrays of their
/// fields in order (serde's derived `Deserialize` reads structs from sequences too).
#[test]
fn regression_manifests_and_descriptors_must_be_objects() {
    let d = format!("sha256:{}", "a".repeat(64));
    let config =
        format!(r#"["application/vnd.oci.image.config.v1+json","{d}",2,null,null,null,null]"#);
    let as_array = format!(
        r#"[2,"{}",null,{{"mediaType":"a/b","digest":"{d}","size":2}},[],null,null,null,null]"#,
        media::OCI_MANIFEST
    );
    let config_as_array = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{config},"layers":[]}}"#,
        media::OCI_MANIFEST
    );
    let layer_as_array = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"a/b","digest":"{d}","size":2}},"layers":[{config}]}}"#
    );
    for body in [as_array, config_as_array, layer_as_array] {
        let refused = Manifest::parse(body.as_bytes(), Some(media::OCI_MANIFEST));
        assert!(
            matches!(refused, Err(ManifestError::Invalid(_))),
            "{body}: {refused:?}"
        );
    }
}

/// `Manifest::parse` accepted invalid UTF-8 inside members it skips (serde_json checks only
/// the strings it reads), found as `{…,"#ubject":{"\x80rtifactType":…}}`.
#[test]
fn regression_manifests_must_be_utf8() {
    let head = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[],"#,
        media::OCI_INDEX
    );
    let body = [head.as_bytes(), b"\"x\":{\"\x80\":\"\xff\"}}"].concat();
    let refused = Manifest::parse(&body, None);
    assert!(
        matches!(refused, Err(ManifestError::NotJson(_))),
        "{refused:?}"
    );
    // A lone surrogate escape is valid JSON grammar: a skipped member may hold one.
    let body = format!(r#"{head}"x":"\ud800"}}"#);
    assert!(Manifest::parse(body.as_bytes(), None).is_ok(), "{body}");
}
