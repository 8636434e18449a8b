//! Retention policies: which tags to keep, and whether untagged manifests and orphaned
//! referrers go, per repository glob (first match wins). Compiled once from the configuration.

use std::time::Duration;

use globset::{Glob, GlobMatcher};
use regex::Regex;

/// A rule that keeps tags: a tag matching one of `patterns` is kept when any criterion holds
/// (with no criterion, every matching tag is kept).
#[derive(Debug, Clone)]
pub struct KeepRule {
    pub patterns: Vec<Regex>,
    pub most_recently_pushed_count: Option<usize>,
    pub most_recently_pulled_count: Option<usize>,
    pub pushed_within: Option<Duration>,
    pub pulled_within: Option<Duration>,
}

/// The policy of the repositories matching `repositories`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub repositories: Vec<GlobMatcher>,
    /// Remove untagged manifests older than the retention delay.
    pub delete_untagged: bool,
    /// Remove referrers whose subject is gone, older than the retention delay.
    pub delete_referrers: bool,
    /// Tag rules; none means every tag is kept.
    pub keep_tags: Vec<KeepRule>,
}

/// Retention settings (`[retention]`).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Untagged manifests and orphaned referrers younger than this are kept.
    pub delay: Duration,
    pub policies: Vec<Policy>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            delay: Duration::from_secs(24 * 3600),
            policies: Vec::new(),
        }
    }
}

/// The policy for repositories that no configured policy names.
pub const DEFAULT_POLICY: PolicyView = PolicyView {
    delete_untagged: true,
    delete_referrers: true,
    keep_tags: &[],
};

/// The parts of a policy a GC pass reads.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    pub delete_untagged: bool,
    pub delete_referrers: bool,
    pub keep_tags: &'a [KeepRule],
}

impl Retention {
    /// The policy of `repo`: the first whose globs match, else [`DEFAULT_POLICY`].
    pub fn policy_for(&self, repo: &str) -> PolicyView<'_> {
        self.policies
            .iter()
            .find(|p| p.repositories.iter().any(|g| g.is_match(repo)))
            .map(|p| PolicyView {
                delete_untagged: p.delete_untagged,
                delete_referrers: p.delete_referrers,
                keep_tags: &p.keep_tags,
            })
            .unwrap_or(DEFAULT_POLICY)
    }
}

/// Compiles a repository glob (`*` stays within a path component, `**` crosses them).
pub fn glob(pattern: &str) -> Result<GlobMatcher, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
        .map_err(|e| e.to_string())
}

/// Compiles a tag pattern; it must match the whole tag.
pub fn tag_pattern(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())
}

/// One tag as rules see it.
#[derive(Debug, Clone)]
pub(crate) struct TagFacts {
    pub name: String,
    pub pushed: u64,
    pub last_pulled: Option<u64>,
}

/// The tags `rules` keep among `tags` (all of them when there is no rule).
pub(crate) fn kept_tags(
    rules: &[KeepRule],
    tags: &[TagFacts],
    now: u64,
) -> std::collections::HashSet<String> {
    if rules.is_empty() {
        return tags.iter().map(|t| t.name.clone()).collect();
    }
    let mut kept = std::collections::HashSet::new();
    for rule in rules {
        let mut matching: Vec<&TagFacts> = tags
            .iter()
            .filter(|t| rule.patterns.iter().any(|p| p.is_match(&t.name)))
            .collect();
        let no_criterion = rule.most_recently_pushed_count.is_none()
            && rule.most_recently_pulled_count.is_none()
            && rule.pushed_within.is_none()
            && rule.pulled_within.is_none();
        if no_criterion {
            kept.extend(matching.iter().map(|t| t.name.clone()));
            continue;
        }
        let within = |t: Option<u64>, d: Option<Duration>| match (t, d) {
            (Some(t), Some(d)) => now.saturating_sub(t) <= d.as_secs(),
            _ => false,
        };
        for t in &matching {
            if within(Some(t.pushed), rule.pushed_within)
                || within(t.last_pulled, rule.pulled_within)
            {
                kept.insert(t.name.clone());
            }
        }
        if let Some(n) = rule.most_recently_pushed_count {
            matching.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| a.name.cmp(&b.name)));
            kept.extend(matching.iter().take(n).map(|t| t.name.clone()));
        }
        if let Some(n) = rule.most_recently_pulled_count {
            matching.sort_by(|a, b| {
                b.last_pulled
                    .cmp(&a.last_pulled)
                    .then_with(|| a.name.cmp(&b.name))
            });
            kept.extend(
                matching
                    .iter()
                    .filter(|t| t.last_pulled.is_some())
                    .take(n)
                    .map(|t| t.name.clone()),
            );
        }
    }
    kept
}

/// The subject digest a referrers tag names: `sha256-<hex>` (the referrers tag schema) or
/// cosign's `sha256-<hex>.sig`, `.att`, `.sbom`.
pub(crate) fn tag_schema_subject(tag: &str) -> Option<berth_oci::Digest> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = rest
        .strip_suffix(".sig")
        .or_else(|| rest.strip_suffix(".att"))
        .or_else(|| rest.strip_suffix(".sbom"))
        .unwrap_or(rest);
    berth_oci::Digest::parse(&format!("sha256:{hex}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, pushed: u64, pulled: Option<u64>) -> TagFacts {
        TagFacts {
            name: name.into(),
            pushed,
            last_pulled: pulled,
        }
    }

    #[test]
    fn counts_and_windows_keep_tags() {
        let tags = [
            t("v1", 10, None),
            t("v2", 20, Some(95)),
            t("v3", 30, None),
            t("dev", 99, None),
        ];
        let rule = KeepRule {
            patterns: vec![tag_pattern("v.*").unwrap()],
            most_recently_pushed_count: Some(1),
            most_recently_pulled_count: None,
            pushed_within: None,
            pulled_within: Some(Duration::from_secs(10)),
        };
        let kept = kept_tags(&[rule], &tags, 100);
        assert!(kept.contains("v3") && kept.contains("v2"));
        assert!(!kept.contains("v1") && !kept.contains("dev"));
    }

    #[test]
    fn globs_stay_within_components_and_first_policy_wins() {
        let p = |g: &str, untagged| Policy {
            repositories: vec![glob(g).unwrap()],
            delete_untagged: untagged,
            delete_referrers: true,
            keep_tags: vec![],
        };
        let r = Retention {
            delay: Duration::ZERO,
            policies: vec![p("team/*", false), p("**", true)],
        };
        assert!(!r.policy_for("team/app").delete_untagged);
        assert!(r.policy_for("team/app/sub").delete_untagged);
    }

    #[test]
    fn tag_schema_names_a_subject() {
        let hex = "a".repeat(64);
        assert!(tag_schema_subject(&format!("sha256-{hex}.sig")).is_some());
        assert!(tag_schema_subject(&format!("sha256-{hex}")).is_some());
        assert!(tag_schema_subject("latest").is_none());
    }
}
