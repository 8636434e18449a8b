//! The berth configuration file: one TOML document, one struct per table, each with its defaults
//! beside it. Owns parsing, defaults, validation and the shipped template; it must not open the
//! store, bind sockets or read the environment.
//!
//! Every table rejects unknown keys (`deny_unknown_fields`), so a typo is an error rather than a
//! silently ignored setting. Durations are human strings ("24h", "90s"); byte sizes are human
//! strings ("4MiB", "1GB") or plain integers of bytes.
//!
//! Adding a table: write its struct (with `impl Default`, `#[serde(default, deny_unknown_fields)]`,
//! a doc comment per field and a `validate` method if it has limits), add one field to [`Config`]
//! (and one line to [`Config::validate`]), and document it in [`DEFAULT_TEMPLATE`] (a test fails
//! until every key is there).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_oci::RepoName;
use berth_store::gc::GcOptions;
use berth_store::retention::{self, KeepRule, Policy, Retention};
use serde::{Deserialize, Serialize};

/// The shipped configuration template: every key at its default, each explained. Printed by
/// `berth config default`; parses to exactly [`Config::default()`].
pub const DEFAULT_TEMPLATE: &str = r#"# berth configuration file.
#
# Every key is optional: a missing key takes the default shown here, and unknown keys are
# rejected. Check a file with `berth config check --config FILE`.
#
# Durations are written like "90s", "15m", "24h" or "7days".
# Byte sizes are written like "512KiB", "4MiB", "1GB" (KiB/MiB/GiB are powers of 1024,
# KB/MB/GB powers of 1000), or as a plain integer number of bytes.

# Address and port the HTTP API listens on. Use "0.0.0.0:5000" or "[::]:5000" to accept
# connections from other hosts.
listen = "127.0.0.1:5000"

# Data directory holding blobs, manifests, uploads and metadata. A relative path is relative
# to the working directory berth is started from. Overridden by `--root`.
root = "berth-data"

[storage]
# Fsync files and their directories before a write is acknowledged to the client. Turning
# this off is faster but a crash or power loss can lose or corrupt acknowledged pushes.
commit = true

# Upload sessions that see no activity for this long are abandoned and their partial data
# is removed. Between 1s and 30days.
upload_timeout = "24h"

# Store each blob once, in <root>/_cas, and hard-link it into every repository that holds it,
# so each repository directory stays a complete OCI image layout while the bytes exist once.
# false keeps an independent copy per repository (for filesystems without hard links, which
# berth also detects by itself). Switching is safe in both directions.
dedupe = true

# Below this much free space on the storage, new uploads and manifests are refused (507, with a
# message saying why) while pulls, deletes and garbage collection go on, so the disk never
# fills to the point where cleanup cannot commit. "0" disables the check.
min_free_space = "256MiB"

# A repository whose index.json lists at least this many entries (tags and untagged manifests)
# records each new tag in a small journal beside it (<repo>/_index.journal, one fsynced line)
# instead of rewriting the whole index.json per push; the journal is folded into index.json
# about once a second, on deletes and at shutdown, and replayed after a crash. Other tools
# reading the layout directly may therefore miss the newest tags for about a second. "0"
# always rewrites index.json.
index_journal_from = 1000

# Maintenance switch: pulls keep working, every write (push, delete) is refused with 405
# UNSUPPORTED and a message saying the registry is read-only.
read_only = false

[api]
# Manifests larger than this are refused with 413 Payload Too Large. Manifests are held in
# memory while they are checked, so this bounds memory per request. Between 1KiB and 64MiB.
max_manifest_size = "4MiB"

# Allow DELETE of manifests, tags and blobs. When false, every DELETE is refused with
# 405 Method Not Allowed (error code UNSUPPORTED).
delete_enabled = true

# Refuse to delete a manifest by digest while more than one tag points at it, so deleting
# one tag's image cannot silently remove other tags.
detect_manifest_collision = false

# A request body (a blob upload or a manifest) that sends nothing for this long fails. This is
# an idle timeout, not a deadline: a slow but steady push of any size keeps working.
body_idle_timeout = "60s"

# A connection that has not sent a complete request head (request line and headers) this long
# after it opened, or after its previous response, is closed. Guards against clients that hold
# connections open by sending headers slowly.
header_read_timeout = "30s"

# On SIGTERM or SIGINT berth stops accepting connections and lets requests in flight finish for
# up to this long, then exits. An upload cut off here stays resumable after a restart.
shutdown_timeout = "30s"

[gc]
# Garbage collection removes blobs no manifest of their repository references, and blobs of
# the shared store no repository links. A blob unreferenced (or unlinked) for less than this
# is kept, so a push that uploads blobs before its manifest is never raced. "0s" collects
# at once.
delay = "1h"

# How often the server runs a garbage collection and retention pass; the first one runs one
# interval after start-up. "0s" disables the scheduler (run `berth gc` yourself).
interval = "1h"

[scrub]
# How often the server scrubs: re-hashes every blob and manifest, checks that every manifest's
# references exist and that the repository layouts, the shared store and the metadata store
# agree, and logs each problem with its repository, tags and digest. The first scrub runs one
# interval after start-up. "0s" disables the scheduler (run `berth scrub` yourself); otherwise
# at least "1s". A scrub reads every byte stored, so a long interval (e.g. "7days") is usual.
interval = "0s"

# Scheduled scrubs also repair what can be repaired without guessing (relink a damaged copy from
# a verified one, quarantine bytes that match no digest, drop index entries whose manifest is
# gone everywhere, reconcile the metadata store); they never delete the only copy of anything.
# While [storage] read_only is on, scheduled scrubs that would repair are skipped.
repair = false

[metrics]
# Serve Prometheus metrics (OpenMetrics text) at /metrics.
enabled = true

# "" serves /metrics on the main listener (`listen`); an address such as "127.0.0.1:9090"
# serves it (with /livez and /readyz) on a separate listener instead, which is easier to keep
# away from registry clients.
listen = ""

[log]
# Which log lines to write: a tracing filter directive such as "info", "warn" or
# "info,berth::access=warn" (the access log, one line per request, is target berth::access at
# info). RUST_LOG, when set, replaces this. Reloaded on SIGHUP.
level = "info"

# "auto": human-readable text on a terminal, JSON lines otherwise; "text"; or "json".
format = "auto"

[retention]
# Untagged manifests and referrers whose subject is gone are kept until they are this old
# (since they were pushed). "0s" allows removing them at once.
delay = "24h"

# Scheduled passes only report (in the log) what they would remove, and remove nothing.
dry_run = false

# Retention policies, tried in order: the first whose `repositories` globs match a
# repository's name applies to it. A repository no policy matches keeps every tag and loses
# untagged manifests and orphaned referrers older than `delay`. Keys of a policy:
#   repositories       globs of repository names ("*" stays within one path component,
#                      "**" crosses them); at least one
#   delete_untagged    remove manifests that are untagged, older than `delay` and listed by
#                      no surviving index (default true)
#   delete_referrers   remove referrers whose subject is gone, older than `delay` (default true)
#   keep_tags          rules that keep tags; a tag survives if any rule keeps it. A policy
#                      without rules keeps every tag; with rules, tags no rule keeps are
#                      removed (their manifests then follow the untagged rule).
# Keys of a keep_tags rule; it keeps tags matching one of its `patterns` for which any of
# its optional criteria holds, or every matching tag if it has no criterion:
#   patterns                     regexes matched against the whole tag; at least one
#   most_recently_pushed_count   keep the N most recently pushed matching tags
#   most_recently_pulled_count   keep the N most recently pulled matching tags
#   pushed_within                keep matching tags pushed within this duration
#   pulled_within                keep matching tags pulled within this duration
# For example (uncomment to use it):
#
# [[retention.policies]]
# repositories = ["team/**"]
# delete_untagged = true
# delete_referrers = true
# [[retention.policies.keep_tags]]
# patterns = ["v.*"]
# most_recently_pushed_count = 10
# most_recently_pulled_count = 5
# pushed_within = "30days"
# pulled_within = "7days"
"#;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port the HTTP API listens on.
    pub listen: SocketAddr,
    /// Data directory; a relative path is relative to the working directory.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub root: PathBuf,
    /// `[storage]`: durability and upload sessions.
    pub storage: StorageConfig,
    /// `[api]`: behaviour of the HTTP API.
    pub api: ApiConfig,
    /// `[gc]`: garbage collection delay and schedule.
    pub gc: GcConfig,
    /// `[scrub]`: the periodic integrity check.
    pub scrub: ScrubConfig,
    /// `[retention]`: which tags and manifests garbage collection removes.
    pub retention: RetentionConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[log]`: what is logged, and how.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)),
            root: PathBuf::from("berth-data"),
            storage: StorageConfig::default(),
            api: ApiConfig::default(),
            gc: GcConfig::default(),
            scrub: ScrubConfig::default(),
            retention: RetentionConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[storage]`: how data reaches the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Fsync files and directories before acknowledging a write.
    pub commit: bool,
    /// Abandoned upload sessions expire after this long without activity.
    #[serde(with = "humantime_serde")]
    pub upload_timeout: Duration,
    /// Store each blob once and hard-link it into repositories.
    pub dedupe: bool,
    /// Below this many free bytes, new uploads and manifests are refused (0 disables).
    #[serde(with = "byte_size")]
    pub min_free_space: u64,
    /// Repositories with at least this many index entries journal new tags (0: never).
    pub index_journal_from: usize,
    /// Pulls work, every write is refused.
    pub read_only: bool,
}

impl StorageConfig {
    /// Shortest accepted `upload_timeout`.
    pub const MIN_UPLOAD_TIMEOUT: Duration = Duration::from_secs(1);
    /// Longest accepted `upload_timeout` (30 days).
    pub const MAX_UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 60 * 60);

    /// Checks the `[storage]` values against their accepted ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timeout = self.upload_timeout;
        if !(Self::MIN_UPLOAD_TIMEOUT..=Self::MAX_UPLOAD_TIMEOUT).contains(&timeout) {
            return Err(ConfigError::Invalid {
                key: "storage.upload_timeout".into(),
                reason: format!(
                    "must be between {} and {}, got {}",
                    humantime::format_duration(Self::MIN_UPLOAD_TIMEOUT),
                    humantime::format_duration(Self::MAX_UPLOAD_TIMEOUT),
                    humantime::format_duration(timeout),
                ),
            });
        }
        Ok(())
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            commit: true,
            upload_timeout: Duration::from_secs(24 * 60 * 60),
            dedupe: true,
            min_free_space: 256 * 1024 * 1024,
            index_journal_from: berth_store::DEFAULT_INDEX_JOURNAL_FROM,
            read_only: false,
        }
    }
}

/// `[api]`: limits and switches of the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Manifests larger than this many bytes are refused with 413.
    #[serde(with = "byte_size")]
    pub max_manifest_size: u64,
    /// DELETE of manifests, tags and blobs is allowed.
    pub delete_enabled: bool,
    /// Refuse to delete a manifest by digest while several tags point at it.
    pub detect_manifest_collision: bool,
    /// A request body idle for this long fails.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// A connection that has not sent a complete request head for this long is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// At shutdown, requests in flight get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl ApiConfig {
    /// Smallest accepted `max_manifest_size` (1 KiB).
    pub const MIN_MAX_MANIFEST_SIZE: u64 = 1024;
    /// Largest accepted `max_manifest_size` (64 MiB).
    pub const MAX_MAX_MANIFEST_SIZE: u64 = 64 * 1024 * 1024;

    /// Checks the `[api]` values against their accepted ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let size = self.max_manifest_size;
        if !(Self::MIN_MAX_MANIFEST_SIZE..=Self::MAX_MAX_MANIFEST_SIZE).contains(&size) {
            return Err(ConfigError::Invalid {
                key: "api.max_manifest_size".into(),
                reason: format!(
                    "must be between {} and {}, got {}",
                    byte_size::format(Self::MIN_MAX_MANIFEST_SIZE),
                    byte_size::format(Self::MAX_MAX_MANIFEST_SIZE),
                    byte_size::format(size),
                ),
            });
        }
        if self.shutdown_timeout > Duration::from_secs(3600) {
            return Err(ConfigError::Invalid {
                key: "api.shutdown_timeout".into(),
                reason: format!(
                    "must be at most 1h, got {}",
                    humantime::format_duration(self.shutdown_timeout)
                ),
            });
        }
        at_least_a_second("api.header_read_timeout", self.header_read_timeout)?;
        at_least_a_second("api.body_idle_timeout", self.body_idle_timeout)
    }
}

/// A timeout shorter than a second is refused: it would cut off ordinary clients.
fn at_least_a_second(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value < Duration::from_secs(1) {
        return Err(ConfigError::Invalid {
            key: key.into(),
            reason: format!(
                "must be at least 1s, got {}",
                humantime::format_duration(value)
            ),
        });
    }
    Ok(())
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_manifest_size: 4 * 1024 * 1024,
            delete_enabled: true,
            detect_manifest_collision: false,
            body_idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// `[metrics]`: whether and where Prometheus metrics are served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Empty: on the main listener; otherwise the address of a separate listener.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: String::new(),
        }
    }
}

impl MetricsConfig {
    /// The separate listener's address, `None` for the main listener. Call after
    /// [`MetricsConfig::validate`].
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.trim().parse().ok()
    }

    /// Checks that `listen` is empty or an address and port.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen.trim();
        if !listen.is_empty() && listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "metrics.listen".into(),
                format!(
                    "must be empty (the main listener) or an address and port such as \
                     \"127.0.0.1:9090\", got {listen:?}"
                ),
            ));
        }
        Ok(())
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: the log filter and format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter directive ("info", "warn,berth=debug"); `RUST_LOG` overrides it.
    pub level: String,
    /// Text, JSON, or text on a terminal and JSON otherwise.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

impl LogConfig {
    /// Checks that `level` is a valid filter directive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|e| {
                ConfigError::invalid(
                    "log.level".into(),
                    format!(
                        "{e} in {:?}; expected a filter such as \"info\" or \"warn,berth=debug\"",
                        self.level
                    ),
                )
            })
    }
}

/// `[gc]`: when garbage collection may remove unreferenced blobs, and how often it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Blobs unreferenced (and shared blobs unlinked) for less than this are kept.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// The server runs a pass this often; zero disables the scheduler.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(60 * 60),
            interval: Duration::from_secs(60 * 60),
        }
    }
}

/// `[scrub]`: how often the server checks the integrity of the root, and whether those scheduled
/// scrubs repair what they find.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrubConfig {
    /// The server scrubs this often; zero (the default) disables the scheduler.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Scheduled scrubs repair what can be repaired without guessing (skipped while
    /// `[storage] read_only` is on).
    pub repair: bool,
}

impl ScrubConfig {
    /// Shortest accepted non-zero `interval`.
    pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// Checks the `[scrub]` values against their accepted ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.interval.is_zero() && self.interval < Self::MIN_INTERVAL {
            return Err(ConfigError::invalid(
                "scrub.interval".into(),
                format!(
                    "must be \"0s\" (no scheduled scrubs) or at least {}, got {}",
                    humantime::format_duration(Self::MIN_INTERVAL),
                    humantime::format_duration(self.interval),
                ),
            ));
        }
        Ok(())
    }
}

/// `[retention]`: how long untagged manifests and orphaned referrers live, and the per-repository
/// policies that decide which tags survive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Untagged manifests and orphaned referrers younger than this are kept.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Scheduled passes only report what they would remove.
    pub dry_run: bool,
    /// `[[retention.policies]]`, tried in order; the first whose globs match applies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(24 * 60 * 60),
            dry_run: false,
            policies: Vec::new(),
        }
    }
}

impl RetentionConfig {
    /// Compiles the policies into the engine's form; an error names the offending key, e.g.
    /// `retention.policies[0].keep_tags[1].patterns[0]`.
    pub fn compile(&self) -> Result<Retention, ConfigError> {
        let policies = self
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| p.compile(&format!("retention.policies[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Retention {
            delay: self.delay,
            policies,
        })
    }
}

/// One `[[retention.policies]]` entry: the repositories it applies to and what it removes there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Globs of repository names (`*` within a path component, `**` across them).
    pub repositories: Vec<String>,
    /// Remove untagged manifests older than the retention delay that no surviving index lists.
    pub delete_untagged: bool,
    /// Remove referrers whose subject is gone, older than the retention delay.
    pub delete_referrers: bool,
    /// `[[retention.policies.keep_tags]]`: a tag survives if any rule keeps it; none keeps all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<KeepRuleConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            repositories: Vec::new(),
            delete_untagged: true,
            delete_referrers: true,
            keep_tags: Vec::new(),
        }
    }
}

impl PolicyConfig {
    fn compile(&self, key: &str) -> Result<Policy, ConfigError> {
        if self.repositories.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.repositories"),
                "must list at least one glob (\"**\" matches every repository)",
            ));
        }
        let repositories = self
            .repositories
            .iter()
            .enumerate()
            .map(|(i, g)| {
                retention::glob(g)
                    .map_err(|e| ConfigError::invalid(format!("{key}.repositories[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        let keep_tags = self
            .keep_tags
            .iter()
            .enumerate()
            .map(|(i, r)| r.compile(&format!("{key}.keep_tags[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            repositories,
            delete_untagged: self.delete_untagged,
            delete_referrers: self.delete_referrers,
            keep_tags,
        })
    }
}

/// One `[[retention.policies.keep_tags]]` rule: it keeps the tags matching one of its patterns
/// for which any of its criteria holds (every matching tag when it has no criterion).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepRuleConfig {
    /// Regexes matched against the whole tag.
    pub patterns: Vec<String>,
    /// Keep the N most recently pushed matching tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_recently_pushed_count: Option<usize>,
    /// Keep the N most recently pulled matching tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_recently_pulled_count: Option<usize>,
    /// Keep matching tags pushed within this duration.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub pushed_within: Option<Duration>,
    /// Keep matching tags pulled within this duration.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub pulled_within: Option<Duration>,
}

impl KeepRuleConfig {
    fn compile(&self, key: &str) -> Result<KeepRule, ConfigError> {
        if self.patterns.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.patterns"),
                "must list at least one regex (\".*\" matches every tag)",
            ));
        }
        let patterns = self
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                retention::tag_pattern(p)
                    .map_err(|e| ConfigError::invalid(format!("{key}.patterns[{i}]"), e))
            })
            .collect::<Result<_, _>>()?;
        Ok(KeepRule {
            patterns,
            most_recently_pushed_count: self.most_recently_pushed_count,
            most_recently_pulled_count: self.most_recently_pulled_count,
            pushed_within: self.pushed_within,
            pulled_within: self.pulled_within,
        })
    }
}

/// Why a configuration could not be read, parsed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML for [`Config`]: bad syntax, an unknown key or a value of the
    /// wrong type. toml's message names the key and shows the line.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value parsed but is outside its accepted range (or, for a glob or regex, does not
    /// compile).
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key, e.g. `api.max_manifest_size` or `retention.policies[0].repositories[1]`.
        key: String,
        /// What is accepted and what was given.
        reason: String,
    },
    /// An error found in a specific file.
    #[error("config file {}: {source}", path.display())]
    InFile {
        /// The file the error was found in.
        path: PathBuf,
        /// The parse or validation error.
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    fn invalid(key: String, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            reason: reason.into(),
        }
    }

    fn in_file(self, path: &Path) -> Self {
        Self::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(s)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates the configuration file at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, |_| {})
    }

    /// Like [`Config::load`], but applies `overrides` (e.g. command-line flags) after parsing and
    /// before validating, so an override can replace a value the file gets wrong.
    pub fn load_with(
        path: &Path,
        overrides: impl FnOnce(&mut Config),
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Toml(e).in_file(path))?;
        overrides(&mut config);
        config.validate().map_err(|e| e.in_file(path))?;
        Ok(config)
    }

    /// Checks every value against its accepted range; the error names the dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.root.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "root".into(),
                reason: "must not be empty".into(),
            });
        }
        self.storage.validate()?;
        self.api.validate()?;
        self.scrub.validate()?;
        self.retention.compile()?;
        self.metrics.validate()?;
        self.log.validate()?;
        Ok(())
    }

    /// The settings of one garbage collection pass: `[gc] delay`, the compiled `[retention]`
    /// policies, dry run when `[retention] dry_run` or `dry_run_override` says so, and `repo` to
    /// limit the pass to one repository.
    pub fn gc_options(
        &self,
        dry_run_override: bool,
        repo: Option<RepoName>,
    ) -> Result<GcOptions, ConfigError> {
        Ok(GcOptions {
            delay: self.gc.delay,
            retention: self.retention.compile()?,
            dry_run: self.retention.dry_run || dry_run_override,
            repo,
        })
    }

    /// The effective configuration as TOML, every key present; parses back to `self`.
    pub fn to_toml(&self) -> String {
        // Every field serializes to a TOML string, integer or boolean (a non-UTF-8 `root` is
        // written lossily), so this cannot fail in practice; say so rather than panic if it does.
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }

    /// [`Config::to_toml`] with the value of every key in [`SECRET_KEYS`] replaced by
    /// [`REDACTED`]: what `berth config check` prints.
    pub fn to_toml_redacted(&self) -> String {
        match toml::Table::try_from(self) {
            Ok(mut table) => {
                redact(&mut table, SECRET_KEYS);
                toml::to_string(&table)
                    .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
            }
            Err(e) => format!("# cannot render the configuration as TOML: {e}\n"),
        }
    }
}

/// Dotted keys whose values are secrets: `berth config check` prints them as [`REDACTED`].
/// There are none yet; a key holding a password or token (e.g. a future S3 secret key) is listed
/// here when it is added.
pub const SECRET_KEYS: &[&str] = &[];

/// What a secret's value is printed as.
pub const REDACTED: &str = "<redacted>";

/// Replaces the value of each dotted key of `secrets` present in `table` by [`REDACTED`]; a key
/// under an array of tables is written `array[].key` and redacted in every element.
pub fn redact(table: &mut toml::Table, secrets: &[&str]) {
    fn walk(table: &mut toml::Table, prefix: &str, secrets: &[&str]) {
        for (key, value) in table.iter_mut() {
            let dotted = format!("{prefix}{key}");
            if secrets.contains(&dotted.as_str()) {
                *value = toml::Value::String(REDACTED.into());
                continue;
            }
            match value {
                toml::Value::Table(inner) => walk(inner, &format!("{dotted}."), secrets),
                toml::Value::Array(items) => {
                    for item in items.iter_mut() {
                        if let toml::Value::Table(inner) = item {
                            walk(inner, &format!("{dotted}[]."), secrets);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    walk(table, "", secrets);
}

fn serialize_path_lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Serde `with` module for a byte count written as a human size ("4MiB", "1GB", "512KiB") or a
/// plain integer of bytes. Serializes to the exact size in the largest binary unit that divides
/// it ("4MiB", "1536KiB", "1000B"), so values round-trip without loss.
pub mod byte_size {
    use std::fmt;

    use serde::{de, Deserializer, Serializer};

    /// Parses a human size such as "4MiB", "1 GB" or "100" into bytes.
    pub fn parse(s: &str) -> Result<u64, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty byte size".into());
        }
        s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
    }

    /// Formats bytes exactly in the largest binary unit that divides them.
    pub fn format(bytes: u64) -> String {
        // (log2 of the unit, unit), largest first; a unit divides `bytes` when `bytes` has at
        // least that many trailing zero bits.
        const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
        if bytes != 0 {
            for (shift, unit) in UNITS {
                if bytes.trailing_zeros() >= shift {
                    return format!("{}{unit}", bytes >> shift);
                }
            }
        }
        format!("{bytes}B")
    }

    /// Serializes bytes as a human size string.
    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*bytes))
    }

    /// Deserializes a human size string or a non-negative integer of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte size such as \"4MiB\", \"512KiB\", \"1GB\" or an integer of bytes")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).map_err(|reason| {
                E::custom(format!(
                    "invalid byte size {v:?} ({reason}); expected e.g. \"4MiB\", \"512KiB\", \"1GB\" or an integer of bytes"
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("[api]\n{toml}\n"))
    }

    fn storage(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(&format!("[storage]\n{toml}\n"))
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn template_parses_to_the_default() {
        assert_eq!(
            Config::from_toml_str(DEFAULT_TEMPLATE).unwrap(),
            Config::default()
        );
    }

    /// Collects the dotted keys of every leaf value in a TOML table; the keys of an array of
    /// tables are collected once each, as `array[].key`.
    fn dotted_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let dotted = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => dotted_keys(inner, &format!("{dotted}."), out),
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
                {
                    for item in items.iter().filter_map(toml::Value::as_table) {
                        dotted_keys(item, &format!("{dotted}[]."), out);
                    }
                }
                _ => out.push(dotted),
            }
        }
        out.sort();
        out.dedup();
    }

    /// The template with its commented-out policy example switched on.
    fn template_with_example() -> String {
        let mut in_example = false;
        DEFAULT_TEMPLATE
            .lines()
            .map(|line| {
                in_example |= line == "# [[retention.policies]]";
                match line.strip_prefix("# ") {
                    Some(code) if in_example => code,
                    _ => line,
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A policy that sets every key.
    fn full_policy() -> PolicyConfig {
        PolicyConfig {
            repositories: vec!["team/**".into()],
            delete_untagged: true,
            delete_referrers: true,
            keep_tags: vec![KeepRuleConfig {
                patterns: vec!["v.*".into()],
                most_recently_pushed_count: Some(10),
                most_recently_pulled_count: Some(5),
                pushed_within: Some(Duration::from_secs(30 * 86_400)),
                pulled_within: Some(Duration::from_secs(7 * 86_400)),
            }],
        }
    }

    #[test]
    fn template_documents_every_key() {
        let default = toml::Table::try_from(Config::default()).unwrap();
        let template: toml::Table = toml::from_str(DEFAULT_TEMPLATE).unwrap();
        let (mut want, mut have) = (Vec::new(), Vec::new());
        dotted_keys(&default, "", &mut want);
        dotted_keys(&template, "", &mut have);
        want.sort();
        have.sort();
        assert_eq!(want, have, "DEFAULT_TEMPLATE must set every key of Config");
    }

    #[test]
    fn template_example_policy_documents_every_policy_key() {
        let mut full = Config::default();
        full.retention.policies = vec![full_policy()];
        let example = Config::from_toml_str(&template_with_example()).unwrap();
        assert_eq!(example, full);
        let (mut want, mut have) = (Vec::new(), Vec::new());
        dotted_keys(&toml::Table::try_from(full).unwrap(), "", &mut want);
        dotted_keys(
            &toml::from_str(&template_with_example()).unwrap(),
            "",
            &mut have,
        );
        assert_eq!(want, have);
        let policy_keys = want
            .iter()
            .filter(|k| k.starts_with("retention.policies[]."));
        for key in policy_keys.filter_map(|k| k.rsplit('.').next()) {
            assert!(
                DEFAULT_TEMPLATE.contains(&format!("#   {key} ")),
                "the template must explain {key}"
            );
        }
    }

    #[test]
    fn gc_and_retention_take_zero_delays() {
        let c = Config::from_toml_str(
            "[gc]\ndelay = \"0s\"\ninterval = \"0s\"\n[retention]\ndelay = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(c.gc.delay, Duration::ZERO);
        assert_eq!(c.gc.interval, Duration::ZERO);
        assert_eq!(c.retention.delay, Duration::ZERO);
    }

    #[test]
    fn scrub_is_off_by_default_and_takes_human_intervals() {
        assert_eq!(Config::default().scrub.interval, Duration::ZERO);
        assert!(!Config::default().scrub.repair);
        let c = Config::from_toml_str("[scrub]\ninterval = \"7days\"\nrepair = true\n").unwrap();
        assert_eq!(c.scrub.interval, Duration::from_secs(7 * 86_400));
        assert!(c.scrub.repair);
        let err = Config::from_toml_str("[scrub]\ninterval = \"500ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("scrub.interval: must be \"0s\""), "{err}");
        let err = Config::from_toml_str("[scrub]\ninterval = \"weekly\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("interval"), "{err}");
    }

    #[test]
    fn gc_options_compile_policies_and_or_the_dry_run() {
        let mut config = Config::default();
        config.gc.delay = Duration::from_secs(5);
        config.retention.policies = vec![full_policy()];
        let repo = RepoName::parse("team/app").unwrap();
        let opts = config.gc_options(false, Some(repo.clone())).unwrap();
        assert_eq!(opts.delay, Duration::from_secs(5));
        assert!(!opts.dry_run);
        assert_eq!(opts.repo, Some(repo));
        assert_eq!(opts.retention.delay, config.retention.delay);
        let policy = opts.retention.policy_for("team/app/web");
        assert_eq!(policy.keep_tags.len(), 1);
        assert!(policy.keep_tags[0].patterns[0].is_match("v1.2"));
        assert!(!policy.keep_tags[0].patterns[0].is_match("xv1"));
        assert!(config.gc_options(true, None).unwrap().dry_run);
        config.retention.dry_run = true;
        assert!(config.gc_options(false, None).unwrap().dry_run);
    }

    #[test]
    fn bad_regex_is_rejected_naming_the_key() {
        let err = Config::from_toml_str(
            "[[retention.policies]]\nrepositories = [\"**\"]\n\
             [[retention.policies.keep_tags]]\npatterns = [\"v.*\"]\n\
             [[retention.policies.keep_tags]]\npatterns = [\"(\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("retention.policies[0].keep_tags[1].patterns[0]: regex parse error"),
            "{err}"
        );
    }

    #[test]
    fn bad_glob_is_rejected_naming_the_key() {
        let err = Config::from_toml_str(
            "[[retention.policies]]\nrepositories = [\"**\"]\n\
             [[retention.policies]]\nrepositories = [\"a/**\", \"[b\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("retention.policies[1].repositories[1]: "),
            "{err}"
        );
    }

    #[test]
    fn empty_policy_lists_are_rejected_naming_the_key() {
        let err = Config::from_toml_str("[[retention.policies]]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("retention.policies[0].repositories: must list"),
            "{err}"
        );
        let err = Config::from_toml_str(
            "[[retention.policies]]\nrepositories = [\"**\"]\n\
             [[retention.policies.keep_tags]]\nmost_recently_pushed_count = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("retention.policies[0].keep_tags[0].patterns: must list"),
            "{err}"
        );
    }

    #[test]
    fn unknown_policy_key_is_rejected_naming_it() {
        let err = Config::from_toml_str(
            "[[retention.policies]]\nrepositories = [\"**\"]\nkeep_tag = []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("keep_tag"), "{err}");
    }

    #[test]
    fn effective_config_round_trips() {
        let mut config = Config::default();
        config.api.max_manifest_size = 1_000_000;
        config.storage.upload_timeout = Duration::from_secs(90);
        config.storage.commit = false;
        config.root = PathBuf::from("/var/lib/berth");
        config.gc.interval = Duration::ZERO;
        config.retention.policies = vec![full_policy(), PolicyConfig::default()];
        config.retention.policies[1].repositories = vec!["**".into()];
        let text = config.to_toml();
        assert_eq!(Config::from_toml_str(&text).unwrap(), config, "{text}");
        assert_eq!(
            Config::from_toml_str(&Config::default().to_toml()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn size_in_mebibytes() {
        let c = api(r#"max_manifest_size = "4MiB""#).unwrap();
        assert_eq!(c.api.max_manifest_size, 4 * 1024 * 1024);
    }

    #[test]
    fn size_in_kibibytes() {
        let c = api(r#"max_manifest_size = "512KiB""#).unwrap();
        assert_eq!(c.api.max_manifest_size, 512 * 1024);
    }

    #[test]
    fn size_in_decimal_units() {
        assert_eq!(byte_size::parse("1GB"), Ok(1_000_000_000));
        let c = api(r#"max_manifest_size = "10MB""#).unwrap();
        assert_eq!(c.api.max_manifest_size, 10_000_000);
    }

    #[test]
    fn size_as_string_of_bytes() {
        assert_eq!(byte_size::parse("100"), Ok(100));
        let c = api(r#"max_manifest_size = "2048""#).unwrap();
        assert_eq!(c.api.max_manifest_size, 2048);
    }

    #[test]
    fn size_as_integer_of_bytes() {
        let c = api("max_manifest_size = 4096").unwrap();
        assert_eq!(c.api.max_manifest_size, 4096);
    }

    #[test]
    fn size_garbage_is_rejected_naming_the_key() {
        let err = api(r#"max_manifest_size = "big""#).unwrap_err().to_string();
        assert!(err.contains("max_manifest_size"), "{err}");
        let err = api("max_manifest_size = -1").unwrap_err().to_string();
        assert!(err.contains("max_manifest_size"), "{err}");
    }

    #[test]
    fn sub_second_timeouts_are_rejected_naming_the_key() {
        for key in ["header_read_timeout", "body_idle_timeout"] {
            let err = api(&format!(r#"{key} = "500ms""#)).unwrap_err().to_string();
            assert_eq!(err, format!("api.{key}: must be at least 1s, got 500ms"));
            assert!(api(&format!(r#"{key} = "1s""#)).is_ok());
        }
    }

    #[test]
    fn size_out_of_range_is_rejected_naming_the_key() {
        for size in [r#""1B""#, r#""65MiB""#, "0"] {
            let err = api(&format!("max_manifest_size = {size}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("api.max_manifest_size: must be between 1KiB and 64MiB"),
                "{err}"
            );
        }
    }

    #[test]
    fn size_formats_exactly() {
        assert_eq!(byte_size::format(4 * 1024 * 1024), "4MiB");
        assert_eq!(byte_size::format(1536 * 1024), "1536KiB");
        assert_eq!(byte_size::format(1000), "1000B");
        assert_eq!(byte_size::format(0), "0B");
        for bytes in [0, 1, 1000, 1024, 1_000_000, 4 << 20, 3 << 30, u64::MAX] {
            assert_eq!(byte_size::parse(&byte_size::format(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn duration_in_hours() {
        let c = storage(r#"upload_timeout = "24h""#).unwrap();
        assert_eq!(c.storage.upload_timeout, Duration::from_secs(86_400));
    }

    #[test]
    fn duration_compound() {
        let c = storage(r#"upload_timeout = "1h 30m""#).unwrap();
        assert_eq!(c.storage.upload_timeout, Duration::from_secs(5_400));
    }

    #[test]
    fn zero_upload_timeout_is_rejected() {
        let err = storage(r#"upload_timeout = "0s""#).unwrap_err().to_string();
        assert!(
            err.starts_with("storage.upload_timeout: must be between 1s and 30days"),
            "{err}"
        );
    }

    #[test]
    fn excessive_upload_timeout_is_rejected() {
        let err = storage(r#"upload_timeout = "31days""#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("storage.upload_timeout:"), "{err}");
    }

    #[test]
    fn unparsable_duration_is_rejected_naming_the_key() {
        let err = storage(r#"upload_timeout = "soon""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("upload_timeout"), "{err}");
    }

    #[test]
    fn log_level_must_be_a_filter_directive() {
        let c = Config::from_toml_str("[log]\nlevel = \"warn,berth::access=info\"\n").unwrap();
        assert_eq!(c.log.level, "warn,berth::access=info");
        let err = Config::from_toml_str("[log]\nlevel = \"berth=loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("log.level: "), "{err}");
        let err = Config::from_toml_str("[log]\nformat = \"xml\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format"), "{err}");
    }

    #[test]
    fn metrics_listen_is_empty_or_an_address() {
        let c = Config::from_toml_str("[metrics]\nlisten = \"127.0.0.1:9090\"\n").unwrap();
        assert_eq!(
            c.metrics.listen_addr(),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(Config::default().metrics.listen_addr(), None);
        let err = Config::from_toml_str("[metrics]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("metrics.listen: "), "{err}");
    }

    #[test]
    fn shutdown_timeout_is_a_duration_of_at_most_an_hour() {
        let c = api(r#"shutdown_timeout = "5s""#).unwrap();
        assert_eq!(c.api.shutdown_timeout, Duration::from_secs(5));
        let err = api(r#"shutdown_timeout = "2h""#).unwrap_err().to_string();
        assert!(err.starts_with("api.shutdown_timeout: "), "{err}");
    }

    #[test]
    fn redaction_replaces_secret_values_wherever_they_are() {
        let mut table: toml::Table = toml::from_str(
            "listen = \"x\"\n[s3]\nsecret_key = \"hunter2\"\nbucket = \"b\"\n\
             [[hooks]]\ntoken = \"t1\"\n[[hooks]]\ntoken = \"t2\"\nname = \"n\"\n",
        )
        .unwrap();
        redact(&mut table, &["s3.secret_key", "hooks[].token"]);
        let text = toml::to_string(&table).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("t1") && !text.contains("t2"));
        assert_eq!(table["s3"]["secret_key"].as_str(), Some(REDACTED));
        assert_eq!(table["s3"]["bucket"].as_str(), Some("b"));
        assert_eq!(table["hooks"][1]["token"].as_str(), Some(REDACTED));
        assert_eq!(table["hooks"][1]["name"].as_str(), Some("n"));
        // With no secret keys yet, the redacted rendering is the plain one.
        assert_eq!(
            Config::from_toml_str(&Config::default().to_toml_redacted()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_rejected_naming_it() {
        let err = storage("comit = false").unwrap_err().to_string();
        assert!(err.contains("comit"), "{err}");
        let err = Config::from_toml_str("[gcc]\n").unwrap_err().to_string();
        assert!(err.contains("gcc"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected_naming_the_key() {
        let err = storage(r#"commit = "yes""#).unwrap_err().to_string();
        assert!(err.contains("commit"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_rejected() {
        let err = Config::from_toml_str(r#"listen = "localhost""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn empty_root_is_rejected() {
        let err = Config::from_toml_str(r#"root = """#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("root: must not be empty"), "{err}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, "[api]\nmax_manifest_size = \"1GiB\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("api.max_manifest_size"), "{err}");

        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn overrides_apply_before_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, "root = \"\"\n").unwrap();
        let config = Config::load_with(&path, |c| c.root = PathBuf::from("elsewhere")).unwrap();
        assert_eq!(config.root, PathBuf::from("elsewhere"));
    }
}
