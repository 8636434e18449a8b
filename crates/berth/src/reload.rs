//! Configuration reload: on SIGHUP a server re-reads its configuration file, applies what can
//! change while it serves ([`crate::config::RELOADABLE_KEYS`]: retention, the garbage collection
//! delay and interval, the scrub schedule, the log level), and names the changed keys that need a
//! restart. An invalid file is refused and the running configuration stays. Owns the live
//! settings and their reload; it must not touch listeners or connections (none are dropped).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use berth_store::gc::GcOptions;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::logging::Logging;

/// Keys a running server applies when its configuration is reloaded, as dotted keys or
/// `table.` prefixes; every other key takes effect at the next start. [`with_reloadable`]
/// copies exactly these.
pub const RELOADABLE_KEYS: &[&str] = &[
    "gc.delay",
    "gc.interval",
    "scrub.",
    "retention.",
    "log.level",
];

/// Whether a running server applies a change of `key` (from [`changed_keys`]) on reload.
pub fn is_reloadable(key: &str) -> bool {
    RELOADABLE_KEYS
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
}

/// `current` with the values of `new` for every key in [`RELOADABLE_KEYS`]: the configuration
/// in effect after a running server reloads `new`.
pub fn with_reloadable(current: &Config, new: &Config) -> Config {
    let mut next = current.clone();
    next.gc.delay = new.gc.delay;
    next.gc.interval = new.gc.interval;
    next.scrub = new.scrub.clone();
    next.retention = new.retention.clone();
    next.log.level.clone_from(&new.log.level);
    next
}

/// The dotted keys whose values differ between `old` and `new`, sorted (an array, such as
/// `retention.policies`, counts as one key).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (leaves(old), leaves(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Every value of `config` by dotted key; arrays are single values.
fn leaves(config: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut BTreeMap<String, toml::Value>) {
        for (key, value) in table {
            let dotted = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => walk(inner, &format!("{dotted}."), out),
                other => {
                    out.insert(dotted, other.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::Table::try_from(config) {
        walk(&table, "", &mut out);
    }
    out
}

/// Reads the configuration again, as at start-up (the file, then the command line's overrides).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The settings a running server reads each time it uses them, so a reload reaches them.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// Garbage collection passes: `[gc] delay` and the compiled `[retention]`.
    pub gc: GcOptions,
    /// `[gc] interval`; zero: no scheduled passes.
    pub gc_interval: Duration,
    /// `[scrub] interval`; zero: no scheduled scrubs.
    pub scrub_interval: Duration,
    /// `[scrub] repair`.
    pub scrub_repair: bool,
}

impl Live {
    pub(crate) fn of(config: &Config) -> Result<Live, ConfigError> {
        Ok(Live {
            gc: config.gc_options(false, None)?,
            gc_interval: config.gc.interval,
            scrub_interval: config.scrub.interval,
            scrub_repair: config.scrub.repair,
        })
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Changed keys now in effect.
    pub applied: Vec<String>,
    /// Changed keys that take effect only after a restart.
    pub need_restart: Vec<String>,
}

/// Applies new configurations to a running server.
#[derive(Clone)]
pub struct Reloader {
    /// The configuration in effect: the start-up one with every reload's reloadable keys.
    current: Arc<Mutex<Config>>,
    live: Arc<watch::Sender<Live>>,
    logging: Logging,
}

impl Reloader {
    pub(crate) fn new(current: Config, live: Arc<watch::Sender<Live>>, logging: Logging) -> Self {
        Reloader {
            current: Arc::new(Mutex::new(current)),
            live,
            logging,
        }
    }

    /// Applies the reloadable keys of `new` (already validated) and logs one line naming what
    /// changed and one naming changed keys that need a restart. Nothing is applied when a
    /// reloadable value is refused (the log level).
    pub fn apply(&self, new: &Config) -> Result<ReloadOutcome, ConfigError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (applied, need_restart): (Vec<String>, Vec<String>) = changed_keys(&current, new)
            .into_iter()
            .partition(|k| is_reloadable(k));
        let next = with_reloadable(&current, new);
        let live = Live::of(&next)?;
        if next.log.level != current.log.level {
            match self.logging.set_level(&next.log.level) {
                Ok(true) => {}
                Ok(false) => tracing::info!(
                    level = %next.log.level,
                    "log.level changed but RUST_LOG (or the embedding process) decides the filter"
                ),
                Err(reason) => {
                    return Err(ConfigError::Invalid {
                        key: "log.level".into(),
                        reason,
                    })
                }
            }
        }
        self.live.send_replace(live);
        *current = next;
        if applied.is_empty() && need_restart.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        }
        if !applied.is_empty() {
            tracing::info!(changed = %applied.join(", "), "configuration reloaded and applied");
        }
        if !need_restart.is_empty() {
            tracing::warn!(keys = %need_restart.join(", "),
                "configuration keys changed that take effect only after a restart");
        }
        Ok(ReloadOutcome {
            applied,
            need_restart,
        })
    }

    /// Re-reads the configuration through `source` and applies it; a failure is logged and the
    /// running configuration stays.
    pub fn reload_from(&self, source: &ConfigSource) {
        match source().and_then(|new| self.apply(&new)) {
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e,
                "configuration reload refused; the running configuration stays"),
        }
    }
}

/// Starts listening for SIGHUP (which would otherwise end the process); `None` if the signal
/// cannot be caught, which is logged.
pub(crate) fn listen_for_sighup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off");
            None
        }
    }
}

/// Reloads through `source` on each SIGHUP received by `hangups` until `stop` turns true.
/// Without a source (no configuration file was given) a SIGHUP is only logged.
pub(crate) async fn on_sighup(
    reloader: Reloader,
    source: Option<ConfigSource>,
    hangups: Option<Signal>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(mut hangups) = hangups else { return };
    loop {
        tokio::select! {
            got = hangups.recv() => if got.is_none() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        match &source {
            Some(source) => {
                tracing::info!("SIGHUP: reloading the configuration");
                reloader.reload_from(source);
            }
            None => tracing::info!(
                "SIGHUP: no configuration file was given (--config), nothing to reload"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_each_difference_and_what_reloads() {
        let old = Config::default();
        let new = Config::from_toml_str(
            "listen = \"0.0.0.0:5000\"\n[gc]\ninterval = \"1m\"\n[log]\nlevel = \"debug\"\n\
             [[retention.policies]]\nrepositories = [\"**\"]\n",
        )
        .unwrap();
        let keys = changed_keys(&old, &new);
        assert_eq!(
            keys,
            ["gc.interval", "listen", "log.level", "retention.policies"]
        );
        let reloadable: Vec<_> = keys.iter().filter(|k| is_reloadable(k)).collect();
        assert_eq!(
            reloadable,
            ["gc.interval", "log.level", "retention.policies"]
        );
        assert!(!is_reloadable("storage.commit"));
        assert!(!is_reloadable("metrics.listen"));
        assert!(!is_reloadable("log.format"));
        assert!(is_reloadable("scrub.interval"));
        assert!(changed_keys(&old, &old.clone()).is_empty());
    }

    #[test]
    fn a_reload_takes_exactly_the_reloadable_keys() {
        let old = Config::default();
        let new = Config::from_toml_str(
            "listen = \"0.0.0.0:1\"\nroot = \"r\"\n\
             [storage]\ncommit = false\nupload_timeout = \"1h\"\ndedupe = false\n\
             min_free_space = 0\nread_only = true\nindex_journal_from = 5\n\
             [api]\nmax_manifest_size = \"1MiB\"\ndelete_enabled = false\n\
             detect_manifest_collision = true\nbody_idle_timeout = \"5s\"\n\
             header_read_timeout = \"7s\"\n\
             shutdown_timeout = \"1s\"\n\
             [gc]\ndelay = \"1s\"\ninterval = \"2s\"\n\
             [scrub]\ninterval = \"3s\"\nrepair = true\n\
             [metrics]\nenabled = false\nlisten = \"127.0.0.1:1\"\n\
             [log]\nlevel = \"debug\"\nformat = \"json\"\n\
             [retention]\ndelay = \"4s\"\ndry_run = true\n\
             [[retention.policies]]\nrepositories = [\"**\"]\n",
        )
        .unwrap();
        let changed = changed_keys(&old, &new);
        let every_key: Vec<String> = leaves(&new).into_keys().collect();
        assert_eq!(
            changed, every_key,
            "this test must change every key, so each new key decides whether it reloads"
        );
        let after = with_reloadable(&old, &new);
        let want: Vec<String> = changed.into_iter().filter(|k| !is_reloadable(k)).collect();
        assert_eq!(changed_keys(&after, &new), want);
    }
}
