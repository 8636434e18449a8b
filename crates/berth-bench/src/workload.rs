//! The workload vocabulary: names, parsing (`--workload a,b --workload all`), default op counts.

use std::fmt;
use std::str::FromStr;

/// The image sizes of the transfer workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 MiB.
    Mib1,
    /// 10 MiB.
    Mib10,
    /// 100 MiB.
    Mib100,
}

impl Size {
    /// Every size, smallest first.
    pub const ALL: [Size; 3] = [Size::Mib1, Size::Mib10, Size::Mib100];

    /// The image's total layer bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Size::Mib1 => 1 << 20,
            Size::Mib10 => 10 << 20,
            Size::Mib100 => 100 << 20,
        }
    }

    /// The suffix used in workload names.
    pub fn name(self) -> &'static str {
        match self {
            Size::Mib1 => "1mib",
            Size::Mib10 => "10mib",
            Size::Mib100 => "100mib",
        }
    }

    fn parse(s: &str) -> Option<Size> {
        Size::ALL.into_iter().find(|size| size.name() == s)
    }
}

/// How a push sends each layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushMode {
    /// `POST` then one `PUT ?digest=` carrying the whole blob (with `Content-Length`).
    Mono,
    /// `POST`, one `PATCH` per `--chunk-size` chunk with `Content-Range`, then `PUT ?digest=`.
    Chunked,
    /// `POST`, one streamed `PATCH` without `Content-Range` (chunked transfer encoding), then
    /// `PUT ?digest=`.
    Stream,
}

impl PushMode {
    /// Every mode.
    pub const ALL: [PushMode; 3] = [PushMode::Mono, PushMode::Chunked, PushMode::Stream];

    /// The word used in workload names.
    pub fn name(self) -> &'static str {
        match self {
            PushMode::Mono => "mono",
            PushMode::Chunked => "chunked",
            PushMode::Stream => "stream",
        }
    }
}

/// One benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// List the whole catalog (`/v2/_catalog?n=PAGE`, following `Link`).
    Catalog,
    /// `HEAD` a manifest by tag.
    ManifestHead,
    /// `GET` a manifest by tag, verifying its digest.
    ManifestGet,
    /// `GET /v2/<name>/tags/list` of a repository with 100 tags.
    TagList,
    /// Push a unique image of the given size.
    Push(PushMode, Size),
    /// Pull an image of the given size: manifest HEAD and GET, config and layers, all verified.
    Pull(Size),
    /// Monolithic pushes of 1 MiB (20%), 10 MiB (70%) and 100 MiB (10%) images.
    MixedSizes,
    /// 75% pulls and 25% pushes of 10 MiB images.
    MixedPullPush,
    /// Push new tags (tiny manifests) into a repository that starts empty.
    PushTagEmptyRepo,
    /// Push new tags (tiny manifests) into a repository that already holds many tags.
    PushTagLargeRepo,
    /// The client's own ceiling: `GET` a blob of the given size from a trivial in-process server
    /// (bytes from memory) and verify it, exactly as a pull verifies a layer. Ignores `--url`.
    Ceiling(Size),
}

impl Workload {
    /// Every workload, in the order `all` runs them.
    pub fn all() -> Vec<Workload> {
        let mut all = vec![
            Workload::ManifestHead,
            Workload::ManifestGet,
            Workload::TagList,
            Workload::Catalog,
        ];
        for mode in PushMode::ALL {
            for size in Size::ALL {
                all.push(Workload::Push(mode, size));
            }
        }
        for size in Size::ALL {
            all.push(Workload::Pull(size));
        }
        all.extend([
            Workload::MixedSizes,
            Workload::MixedPullPush,
            Workload::PushTagEmptyRepo,
            Workload::PushTagLargeRepo,
        ]);
        for size in Size::ALL {
            all.push(Workload::Ceiling(size));
        }
        all
    }

    /// What runs without `--workload`: the quick ones.
    pub fn defaults() -> Vec<Workload> {
        vec![
            Workload::ManifestHead,
            Workload::ManifestGet,
            Workload::TagList,
            Workload::Catalog,
            Workload::Push(PushMode::Mono, Size::Mib1),
            Workload::Pull(Size::Mib1),
        ]
    }

    /// Ops per workload without `-n`: enough for stable percentiles, few enough for big bodies.
    pub fn default_ops(self) -> u64 {
        match self {
            Workload::ManifestHead | Workload::ManifestGet | Workload::TagList => 1000,
            Workload::Catalog => 200,
            Workload::Push(_, Size::Mib1) => 100,
            Workload::Push(_, Size::Mib10) => 50,
            Workload::Push(_, Size::Mib100) => 20,
            Workload::Pull(Size::Mib1) => 200,
            Workload::Pull(Size::Mib10) => 100,
            Workload::Pull(Size::Mib100) => 20,
            Workload::MixedSizes => 40,
            Workload::MixedPullPush => 100,
            Workload::PushTagEmptyRepo | Workload::PushTagLargeRepo => 200,
            Workload::Ceiling(Size::Mib1) => 200,
            Workload::Ceiling(Size::Mib10) => 100,
            Workload::Ceiling(Size::Mib100) => 20,
        }
    }

    /// Whether MiB/s is a meaningful figure for this workload.
    pub fn is_transfer(self) -> bool {
        matches!(
            self,
            Workload::Push(..)
                | Workload::Pull(_)
                | Workload::MixedSizes
                | Workload::MixedPullPush
                | Workload::Ceiling(_)
        )
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Catalog => f.write_str("catalog"),
            Workload::ManifestHead => f.write_str("manifest-head"),
            Workload::ManifestGet => f.write_str("manifest-get"),
            Workload::TagList => f.write_str("tag-list"),
            Workload::Push(mode, size) => write!(f, "push-{}-{}", mode.name(), size.name()),
            Workload::Pull(size) => write!(f, "pull-{}", size.name()),
            Workload::MixedSizes => f.write_str("mixed-sizes"),
            Workload::MixedPullPush => f.write_str("mixed-pull-push"),
            Workload::PushTagEmptyRepo => f.write_str("push-tag-empty-repo"),
            Workload::PushTagLargeRepo => f.write_str("push-tag-large-repo"),
            Workload::Ceiling(size) => write!(f, "ceiling-pull-{}", size.name()),
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Workload, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(w) = Workload::all().into_iter().find(|w| w.to_string() == s) {
            return Ok(w);
        }
        // Tolerate a missing `mib` (`pull-10`) and `push-<size>` for the monolithic push.
        let with_unit = format!("{s}mib");
        if let Some(w) = Workload::all()
            .into_iter()
            .find(|w| w.to_string() == with_unit)
        {
            return Ok(w);
        }
        if let Some(rest) = s.strip_prefix("push-") {
            if let Some(size) = Size::parse(rest).or_else(|| Size::parse(&format!("{rest}mib"))) {
                return Ok(Workload::Push(PushMode::Mono, size));
            }
        }
        Err(format!(
            "unknown workload '{s}' (known: all, {})",
            Workload::all()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// One `--workload` value: a workload name, or `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(pub Vec<Workload>);

/// clap value parser for `--workload`.
pub fn parse_selection(s: &str) -> Result<Selection, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(Selection(Workload::all()));
    }
    Ok(Selection(vec![s.parse()?]))
}

/// Flattens `--workload` values in order, dropping repeats; empty means [`Workload::defaults`].
pub fn flatten(selections: &[Selection]) -> Vec<Workload> {
    let mut out: Vec<Workload> = Vec::new();
    for w in selections.iter().flat_map(|s| s.0.iter().copied()) {
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.is_empty() {
        Workload::defaults()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for w in Workload::all() {
            assert_eq!(w.to_string().parse::<Workload>(), Ok(w), "{w}");
        }
        assert_eq!(Workload::all().len(), 23);
    }

    #[test]
    fn parses_names_and_aliases() {
        assert_eq!(
            "push-chunked-10mib".parse(),
            Ok(Workload::Push(PushMode::Chunked, Size::Mib10))
        );
        assert_eq!(
            "PUSH-STREAM-100MiB".parse(),
            Ok(Workload::Push(PushMode::Stream, Size::Mib100))
        );
        assert_eq!(
            "push-1mib".parse(),
            Ok(Workload::Push(PushMode::Mono, Size::Mib1))
        );
        assert_eq!("pull-100".parse(), Ok(Workload::Pull(Size::Mib100)));
        assert_eq!("catalog".parse(), Ok(Workload::Catalog));
        assert!("pull-2mib".parse::<Workload>().is_err());
        assert!("push-tiny".parse::<Workload>().is_err());
        let err = "nope".parse::<Workload>().unwrap_err();
        assert!(err.contains("manifest-head"), "{err}");
    }

    #[test]
    fn selections_flatten_in_order_without_repeats() {
        let sel = ["tag-list", "catalog", "tag-list"]
            .map(|s| parse_selection(s).unwrap())
            .to_vec();
        assert_eq!(flatten(&sel), vec![Workload::TagList, Workload::Catalog]);
        assert_eq!(flatten(&[]), Workload::defaults());
        let all = parse_selection("ALL").unwrap();
        assert_eq!(flatten(&[all]), Workload::all());
    }

    #[test]
    fn clap_accepts_lists_and_repeats() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[arg(short = 'w', long = "workload", value_delimiter = ',', num_args = 1.., value_parser = parse_selection)]
            w: Vec<Selection>,
        }
        let t = T::try_parse_from([
            "t",
            "--workload",
            "manifest-get,tag-list",
            "pull-1mib",
            "-w",
            "catalog",
        ])
        .unwrap();
        assert_eq!(
            flatten(&t.w),
            vec![
                Workload::ManifestGet,
                Workload::TagList,
                Workload::Pull(Size::Mib1),
                Workload::Catalog
            ]
        );
        assert!(T::try_parse_from(["t", "--workload", "bogus"]).is_err());
    }
}
