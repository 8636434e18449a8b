//! Logging: the one tracing subscriber of the process, writing to stderr as human-readable text
//! or one JSON object per line (`[log] format`), behind a filter (`[log] level`, overridden by
//! `RUST_LOG`) that a configuration reload can change. Owns the subscriber's set-up only; it
//! must not read configuration files (the command line does) nor decide what is logged.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// The installed subscriber's filter, changeable while the process runs.
#[derive(Clone)]
pub struct Logging {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// `RUST_LOG` was set: it wins over `[log] level`, now and on reload.
    from_env: bool,
}

impl Logging {
    /// Installs the process's subscriber. `RUST_LOG`, when set and valid, replaces `level`.
    /// With [`LogFormat::Auto`], text goes to a terminal and JSON anywhere else.
    pub fn init(level: &str, format: LogFormat) -> Logging {
        let (filter, from_env) = match EnvFilter::try_from_default_env() {
            Ok(f) => (f, true),
            Err(_) => (
                EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
                false,
            ),
        };
        let (filter, handle) = reload::Layer::new(filter);
        let json = match format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        };
        let output = if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .boxed()
        };
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(output)
            .try_init()
            .is_ok();
        Logging {
            handle: installed.then_some(handle),
            from_env,
        }
    }

    /// A handle that changes nothing: for a server embedded in a process that logs its own way
    /// (tests).
    pub fn none() -> Logging {
        Logging {
            handle: None,
            from_env: false,
        }
    }

    /// Applies a new `[log] level`. Returns `Ok(false)` when it does not apply (`RUST_LOG` rules,
    /// or this process's subscriber is not ours), an error when the directive is invalid.
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        match &self.handle {
            Some(handle) if !self.from_env => {
                handle.reload(filter).map_err(|e| e.to_string())?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
