//! The command line: clap types for every subcommand and their dispatch. Owns argument parsing,
//! config loading with command-line overrides, and what each command prints; it must not contain
//! registry logic (that lives in `serve` and the library crates) or initialise logging (`main`).

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_oci::RepoName;
use berth_store::scrub::ScrubOptions;
use berth_store::{ReconcileEvent, ReconcilePhase, Registry};
use clap::{Args, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::UnixStream;

use crate::admin::{self, AdminError, PassLine};
use crate::config::{Config, ConfigError, LogConfig, DEFAULT_TEMPLATE};
use crate::logging::Logging;
use crate::reload::ConfigSource;
use crate::serve::ServeError;

/// berth: an OCI-native container image registry.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "berth: an OCI-native container image registry",
    long_about = "berth: an OCI-native container image registry.\n\n\
        berth stores container images and other OCI artifacts on the local filesystem and serves \
        them over the OCI Distribution API, so `docker`, `podman`, `oras` and friends can push \
        to and pull from it.\n\n\
        Start a registry with `berth serve [--config FILE] [--listen ADDR:PORT] [--root DIR]`. \
        Settings come from a TOML file given with `--config` (every setting has a default, so \
        the file is optional); `--listen` and `--root` override the file's `listen` and `root`. \
        `berth config default` prints a commented template with every setting at its default, \
        and `berth config check --config FILE` validates a file before you use it. \
        `berth gc` collects garbage and applies retention policies now; `berth scrub` checks the \
        integrity of the stored data (and with --repair mends it).\n\n\
        Logging goes to stderr, as text on a terminal and JSON lines otherwise ([log] format); \
        [log] level (default: info) or RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=berth=trace), \
        which wins, sets its verbosity. A server reloads its configuration file on SIGHUP."
)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry HTTP server.
    #[command(long_about = "Run the registry HTTP server.\n\n\
        Loads the configuration from --config (or uses the defaults when no file is given), \
        applies --listen and --root on top of it, validates the result, opens the data directory \
        and serves the OCI Distribution API until interrupted (SIGINT/SIGTERM).\n\n\
        Exits with status 1 and an error on stderr if the configuration is invalid or the server \
        cannot start or fails.")]
    Serve(ServeArgs),
    /// Print or check configuration files.
    #[command(
        subcommand,
        long_about = "Print or check configuration files.\n\n\
            `berth config default` prints a commented template of every setting at its default; \
            `berth config check --config FILE` validates a file and prints the effective \
            configuration."
    )]
    Config(ConfigCommand),
    /// Maintain the metadata store.
    #[command(
        subcommand,
        long_about = "Maintain the metadata store (`<root>/_berth/meta.redb`).\n\n\
            The metadata store holds berth's bookkeeping (which repositories link which blobs, \
            tags, push and pull times, referrers, signatures); the repository layouts on disk are \
            the truth, so the store can always be rebuilt from them."
    )]
    Meta(MetaCommand),
    /// Benchmark any OCI registry over HTTP (berth, distribution, ...); see `bench/compare.sh`.
    Bench(berth_bench::BenchArgs),
    /// Collect garbage and apply retention policies now.
    #[command(
        long_about = "Collect garbage and apply the retention policies now.\n\n\
        One pass applies each repository's [retention] policy (tags no keep_tags rule keeps, \
        untagged manifests and orphaned referrers older than [retention] delay), removes blobs \
        no manifest of their repository has referenced for [gc] delay, then sweeps the shared \
        blob store and abandoned uploads.\n\n\
        If a server owns the root, the pass runs inside it (over <root>/_berth/admin.sock) with \
        the server's configuration, while it keeps serving; otherwise berth takes the root and \
        runs the pass itself with this command's configuration.\n\n\
        Shows progress on stderr, then prints a summary and every removal with its reason to \
        stdout (or the report as JSON with --json). Exits 1 if the pass fails."
    )]
    Gc(GcArgs),
    /// Check the integrity of the stored data now (and with --repair mend it).
    #[command(
        long_about = "Check the integrity of the stored data now, and with --repair mend it.\n\n\
        Re-hashes every blob and manifest of every repository (or only --repo's), checks that \
        every manifest's references exist in its repository and that the repository layouts, \
        the shared blob store and the metadata store agree, and reports each problem with its \
        repository, tags and digest. Without --repair nothing is changed.\n\n\
        --repair mends what can be mended without guessing, and never deletes the only copy of \
        anything: a missing or corrupt blob or manifest is relinked from a verified copy (the \
        shared store or another repository); a corrupt blob with no good copy anywhere is moved \
        to <root>/_berth/quarantine/ and unlinked, so it is never served as valid; an index.json \
        entry whose manifest bytes are gone everywhere is dropped; the metadata store is \
        reconciled with the layouts.\n\n\
        If a server owns the root, the scrub runs inside it (over <root>/_berth/admin.sock) \
        while it keeps serving; otherwise berth takes the root and scrubs it itself with this \
        command's configuration. A server also scrubs on a schedule with [scrub] interval \
        (repairing with [scrub] repair).\n\n\
        Shows progress on stderr, then prints a summary (repositories, manifests, blobs, bytes \
        hashed, problems, repaired) and one line per problem to stdout, \
        `<kind> <repository> [tags] <digest>: <detail>`, followed by ` -> repaired: ...` when \
        repair mended it (or the report as JSON with --json).\n\n\
        Exit status: 0 when no problem remains unrepaired; 2 when problems were found that \
        remain unrepaired; 1 when the scrub could not run. (A malformed command line also exits \
        2, before anything is checked.)"
    )]
    Scrub(ScrubArgs),
}

/// Arguments of `berth gc`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Configuration file and data directory.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only report what would be removed and why; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this repository (e.g. team/app); the shared blob store and uploads are then left
    /// alone.
    #[arg(long, value_name = "NAME", value_parser = parse_repo)]
    pub repo: Option<RepoName>,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `berth scrub`.
#[derive(Debug, Clone, Args)]
pub struct ScrubArgs {
    /// Configuration file and data directory.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only this repository (e.g. team/app); the shared blob store is then not checked on its
    /// own.
    #[arg(long, value_name = "NAME", value_parser = parse_repo)]
    pub repo: Option<RepoName>,
    /// Mend what can be mended without guessing (never deleting the only copy of anything).
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

fn parse_repo(s: &str) -> Result<RepoName, String> {
    RepoName::parse(s).map_err(|e| e.to_string())
}

/// `berth meta ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum MetaCommand {
    /// Rebuild the metadata store from the repository layouts (offline).
    #[command(
        long_about = "Rebuild the metadata store from the repository layouts.\n\n\
        Moves the current store aside (`meta.redb.<pid>.old`), creates a new one and \
        reconciles it with every repository's index.json and blobs, then (with dedupe) replaces \
        per-repository copies of blobs by hard links to the shared store. Runs offline: it \
        refuses while a server owns the root. Prints a summary when done."
    )]
    Rebuild(ConfigArgs),
}

/// The arguments every command that works on a registry shares: where its configuration is and
/// which data directory to use. Flatten it into a command's arguments with `#[command(flatten)]`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Without it, every setting takes its default (see `berth config
    /// default`).
    #[arg(long, short = 'c', value_name = "FILE", env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory, overriding `root` from the configuration file. A relative path is relative
    /// to the working directory.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads the configuration file (or the defaults without `--config`), applies `--root`, then
    /// validates.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.load_with(|_| {})
    }

    /// Like [`ConfigArgs::load`], but also applies a command's own overrides (after `--root`,
    /// before validation).
    pub fn load_with(&self, extra: impl FnOnce(&mut Config)) -> Result<Config, ConfigError> {
        let overrides = |config: &mut Config| {
            self.overrides(config);
            extra(config);
        };
        match &self.config {
            Some(path) => Config::load_with(path, overrides),
            None => {
                let mut config = Config::default();
                overrides(&mut config);
                config.validate()?;
                Ok(config)
            }
        }
    }

    /// Applies the shared overrides (`--root`) to `config`.
    pub fn overrides(&self, config: &mut Config) {
        if let Some(root) = &self.root {
            config.root.clone_from(root);
        }
    }
}

/// Arguments of `berth serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Configuration file and data directory.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address and port to listen on, overriding `listen` from the configuration file (e.g.
    /// 0.0.0.0:5000 or [::1]:5000).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
}

impl ServeArgs {
    /// The effective configuration: file or defaults, then `--root` and `--listen`, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.config.load_with(|config| {
            if let Some(listen) = self.listen {
                config.listen = listen;
            }
        })
    }
}

/// `berth config ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented configuration file with every setting at its default.
    #[command(
        long_about = "Print a commented configuration file with every setting at its \
        default.\n\n\
        Every setting is explained in a comment. Save it as a starting point, e.g. \
        `berth config default > berth.toml`."
    )]
    Default,
    /// Validate a configuration file and print the effective configuration.
    #[command(long_about = "Validate a configuration file and print the effective \
        configuration.\n\n\
        On success prints `ok: FILE` followed by the effective configuration (every setting, \
        defaults filled in) to stdout and exits 0. On failure prints the error, naming the file \
        and the offending key, to stderr and exits 1. Unknown keys are errors.")]
    Check {
        /// Configuration file (TOML) to check.
        #[arg(long, short = 'c', value_name = "FILE", env = "BERTH_CONFIG")]
        config: PathBuf,
    },
}

/// Why a command failed; printed to stderr by `main`, which then exits with status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration could not be loaded or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server could not start or stopped with an error.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The async runtime could not be started.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    /// Writing the command's output failed.
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] io::Error),
    /// A server owns the root but its admin socket does not answer.
    #[error("{source}; its admin socket {} does not answer either, so the pass cannot run there", socket.display())]
    RootInUse {
        /// The refusal to take the root.
        source: ServeError,
        /// The socket that was tried.
        socket: PathBuf,
    },
    /// The pass failed in the server, or talking to it did.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The pass failed in this process.
    #[error("garbage collection failed: {0}")]
    Gc(#[source] berth_store::StoreError),
    /// The scrub failed in this process.
    #[error("scrub failed: {0}")]
    Scrub(#[source] berth_store::StoreError),
    /// A scrub found problems that remain unrepaired (exit status 2).
    #[error("scrub found {problems} problem(s) that remain unrepaired{}",
        if *repair { "" } else { "; `berth scrub --repair` mends what can be mended" })]
    Unrepaired {
        /// How many problems remain.
        problems: usize,
        /// Whether the scrub repaired.
        repair: bool,
    },
}

impl CliError {
    /// The process's exit status for this failure: 2 when a scrub found problems that remain
    /// unrepaired (scripts rely on it), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unrepaired { .. } => 2,
            _ => 1,
        }
    }
}

impl Cli {
    /// The `[log]` settings of the configuration the command uses: the defaults for a command
    /// that reads none, or when the configuration is invalid (the command then reports why).
    pub fn log_config(&self) -> LogConfig {
        let args = match &self.command {
            Command::Serve(args) => Some(&args.config),
            Command::Meta(MetaCommand::Rebuild(args)) => Some(args),
            Command::Gc(args) => Some(&args.config),
            Command::Scrub(args) => Some(&args.config),
            Command::Config(_) | Command::Bench(_) => None,
        };
        args.and_then(|a| a.load().ok())
            .map(|c| c.log)
            .unwrap_or_default()
    }

    /// Runs the parsed command to completion.
    pub fn run(self) -> Result<(), CliError> {
        self.run_with(Logging::none())
    }

    /// Runs the parsed command to completion; `logging` is the process's subscriber, whose
    /// level a server's configuration reload may change.
    pub fn run_with(self, logging: Logging) -> Result<(), CliError> {
        match self.command {
            Command::Serve(args) => serve(&args, logging),
            Command::Config(ConfigCommand::Default) => print(DEFAULT_TEMPLATE),
            Command::Config(ConfigCommand::Check { config }) => check(&config),
            Command::Meta(MetaCommand::Rebuild(args)) => meta_rebuild(&args),
            Command::Bench(args) => match berth_bench::main_with_args(args) {
                0 => Ok(()),
                code => std::process::exit(code),
            },
            Command::Gc(args) => gc(&args),
            Command::Scrub(args) => scrub(&args),
        }
    }
}

fn serve(args: &ServeArgs, logging: Logging) -> Result<(), CliError> {
    let config = args.load()?;
    // SIGHUP reads the file again with the same command-line overrides.
    let source: Option<ConfigSource> = args.config.config.is_some().then(|| {
        let args = args.clone();
        Box::new(move || args.load()) as ConfigSource
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let served = runtime.block_on(crate::serve::run(config, source, logging));
    // Requests cut off by [api] shutdown_timeout end with the runtime; do not wait on them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    Ok(())
}

fn meta_rebuild(args: &ConfigArgs) -> Result<(), CliError> {
    let config = args.load()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let reconcile = Progress::new("reconcile", "");
    let dedupe = Progress::new("dedupe", "");
    let progress = |event: ReconcileEvent<'_>| {
        let (phase, line) = match event {
            ReconcileEvent::Started {
                phase,
                repositories,
            } => (phase, PassLine::Started { repositories }),
            ReconcileEvent::Repository {
                phase,
                done,
                total,
                name,
            } => (
                phase,
                PassLine::Repository {
                    done,
                    total,
                    name: name.to_string(),
                },
            ),
        };
        match phase {
            ReconcilePhase::Reconcile => reconcile.line(&line),
            ReconcilePhase::Dedupe => {
                reconcile.finish();
                dedupe.line(&line);
            }
        }
    };
    let summary = runtime.block_on(crate::serve::meta_rebuild(&config, &progress));
    reconcile.finish();
    dedupe.finish();
    let summary = summary?;
    print(&format!(
        "rebuilt the metadata store of {}\n  repositories: {}\n  manifests: {}\n  tags: {}\n  repository blobs: {}\n  shared blobs: {}\n  copies replaced by links: {} ({} bytes freed)\n  corrupt blobs left alone: {}\n",
        config.root.display(),
        summary.counts.repositories,
        summary.counts.manifests,
        summary.counts.tags,
        summary.counts.repo_blobs,
        summary.counts.shared_blobs,
        summary.dedupe.blobs_deduped,
        summary.dedupe.bytes_saved,
        summary.dedupe.blobs_corrupt,
    ))
}

fn gc(args: &GcArgs) -> Result<(), CliError> {
    let config = args.config.load()?;
    let report = run_pass(
        &config,
        Progress::new("gc", "sweeping the shared blob store"),
        async |stream: UnixStream, socket: &Path, progress: &Progress| {
            admin::request_gc(stream, socket, args.dry_run, args.repo.as_ref(), |l| {
                progress.line(l)
            })
            .await
        },
        async |registry: Arc<Registry>, progress: &Progress| {
            let opts = config.gc_options(args.dry_run, args.repo.clone())?;
            registry
                .gc(&opts, &|event| progress.event(&event))
                .await
                .map_err(CliError::Gc)
        },
    )?;
    if args.json {
        return print_json(&report);
    }
    let view: GcReportView = report_view(&report, &config)?;
    print(&view.summary(&config.root))
}

fn scrub(args: &ScrubArgs) -> Result<(), CliError> {
    let config = args.config.load()?;
    let report = run_pass(
        &config,
        Progress::new("scrub", "checking the shared blob store"),
        async |stream: UnixStream, socket: &Path, progress: &Progress| {
            admin::request_scrub(stream, socket, args.repair, args.repo.as_ref(), |l| {
                progress.line(l)
            })
            .await
        },
        async |registry: Arc<Registry>, progress: &Progress| {
            let opts = ScrubOptions {
                repo: args.repo.clone(),
                repair: args.repair,
            };
            registry
                .scrub(&opts, &|event| progress.event(&event))
                .await
                .map_err(CliError::Scrub)
        },
    )?;
    let view: ScrubReportView = report_view(&report, &config)?;
    if args.json {
        print_json(&report)?;
    } else {
        print(&view.summary(&config.root))?;
    }
    match view.unrepaired() {
        0 => Ok(()),
        problems => Err(CliError::Unrepaired {
            problems,
            repair: view.repair,
        }),
    }
}

/// Runs a pass (`berth gc`, `berth scrub`) with its progress on stderr: in the server that owns
/// the root, through `remote` over its admin socket, when one answers there; otherwise through
/// `local` here, after taking the root's lock. Returns the report as JSON (as the admin channel
/// carries it).
fn run_pass<R: Serialize>(
    config: &Config,
    progress: Progress,
    remote: impl AsyncFnOnce(UnixStream, &Path, &Progress) -> Result<Map<String, Value>, AdminError>,
    local: impl AsyncFnOnce(Arc<Registry>, &Progress) -> Result<R, CliError>,
) -> Result<Value, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let report = runtime.block_on(async {
        let socket = admin::socket_path(&config.root);
        if let Some(stream) = admin::connect(&config.root).await {
            return Ok(Value::Object(remote(stream, &socket, &progress).await?));
        }
        let (_lock, registry) = match crate::serve::open_registry(config).await {
            Ok(opened) => opened,
            Err(source @ ServeError::RootInUse { .. }) => {
                return Err(CliError::RootInUse { source, socket })
            }
            Err(e) => return Err(e.into()),
        };
        let report = local(registry, &progress).await?;
        serde_json::to_value(&report).map_err(|e| {
            CliError::Admin(AdminError::Failed(format!("cannot encode the report: {e}")))
        })
    });
    progress.finish();
    report
}

/// Reads the parts of a report that a summary shows.
fn report_view<T: DeserializeOwned>(report: &Value, config: &Config) -> Result<T, CliError> {
    T::deserialize(report).map_err(|e| {
        CliError::Admin(AdminError::Protocol {
            socket: admin::socket_path(&config.root),
            reason: format!("unreadable report: {e}"),
        })
    })
}

/// Prints a report whole, as `--json` asks.
fn print_json(report: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the report: {e}\"}}"));
    print(&format!("{text}\n"))
}

/// Progress of a pass on stderr: a bar over repositories on a terminal, plain lines prefixed by
/// the command's name otherwise.
struct Progress {
    /// `gc` or `scrub`.
    name: &'static str,
    /// What the pass does with the shared blob store, for the plain line.
    shared_store: &'static str,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(name: &'static str, shared_store: &'static str) -> Self {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                "{name} {{bar:30}} {{pos}}/{{len}} repositories  {{wide_msg}}"
            )) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            name,
            shared_store,
            bar,
        }
    }

    /// A progress event of a pass run here (`GcEvent`, `ScrubEvent`): the admin channel's
    /// lines share their JSON shape.
    fn event(&self, event: &impl Serialize) {
        if let Ok(line) = serde_json::to_value(event).and_then(PassLine::deserialize) {
            self.line(&line);
        }
    }

    fn line(&self, line: &PassLine) {
        let name = self.name;
        match (&self.bar, line) {
            (Some(bar), PassLine::Started { repositories }) => {
                bar.set_length(*repositories as u64);
            }
            (Some(bar), PassLine::Repository { done, total, name }) => {
                bar.set_length(*total as u64);
                bar.set_position(*done as u64);
                bar.set_message(name.clone());
            }
            (Some(bar), PassLine::SharedStore) => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.set_message("the shared blob store");
            }
            (None, PassLine::Started { repositories }) => {
                eprintln!("{name}: repositories to check: {repositories}");
            }
            (
                None,
                PassLine::Repository {
                    done,
                    total,
                    name: repo,
                },
            ) => {
                eprintln!("{name}: [{}/{total}] {repo}", done + 1);
            }
            (None, PassLine::SharedStore) => {
                eprintln!("{name}: {}", self.shared_store);
            }
            (_, PassLine::Report(_) | PassLine::Error { .. } | PassLine::Other) => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The parts of a garbage collection report the summary shows (the report travels as JSON from
/// the server, and `--json` prints it whole).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GcReportView {
    dry_run: bool,
    repositories: u64,
    tags: u64,
    manifests: u64,
    blobs: u64,
    shared_blobs: u64,
    uploads: u64,
    bytes_freed: u64,
    actions: Vec<GcActionView>,
    problems: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GcActionView {
    kind: String,
    repository: Option<String>,
    target: String,
    reason: String,
}

impl GcReportView {
    fn summary(&self, root: &Path) -> String {
        let mut out = format!(
            "garbage collection of {}{}\n  repositories checked: {}\n  tags: {}\n  manifests: {}\n  blobs: {}\n  shared blobs: {}\n  uploads: {}\n  {}: {}\n",
            root.display(),
            if self.dry_run {
                " (dry run: nothing was removed)"
            } else {
                ""
            },
            self.repositories,
            self.tags,
            self.manifests,
            self.blobs,
            self.shared_blobs,
            self.uploads,
            if self.dry_run {
                "bytes that would be freed"
            } else {
                "bytes freed"
            },
            bytesize::ByteSize(self.bytes_freed),
        );
        for a in &self.actions {
            out.push_str(&format!(
                "{} {} {}: {}\n",
                a.kind,
                a.repository.as_deref().unwrap_or("-"),
                a.target,
                a.reason
            ));
        }
        for p in &self.problems {
            out.push_str(&format!("problem: {p}\n"));
        }
        out
    }
}

/// The parts of a scrub report the summary shows (the report travels as JSON from the server,
/// and `--json` prints it whole).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ScrubReportView {
    repair: bool,
    repositories: u64,
    manifests_checked: u64,
    blobs_checked: u64,
    bytes_hashed: u64,
    problems: Vec<ScrubProblemView>,
    repaired: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ScrubProblemView {
    kind: String,
    repository: Option<String>,
    tags: Vec<String>,
    digest: Option<String>,
    detail: String,
    repaired: Option<String>,
}

impl ScrubReportView {
    /// Problems that no repair mended.
    fn unrepaired(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.repaired.is_none())
            .count()
    }

    fn summary(&self, root: &Path) -> String {
        let mut out = format!(
            "scrub of {}{}\n  repositories: {}\n  manifests: {}\n  blobs: {}\n  bytes hashed: {}\n  problems: {}\n  repaired: {}\n",
            root.display(),
            if self.repair { " (repair)" } else { "" },
            self.repositories,
            self.manifests_checked,
            self.blobs_checked,
            bytesize::ByteSize(self.bytes_hashed),
            self.problems.len(),
            self.repaired,
        );
        for p in &self.problems {
            out.push_str(&p.line());
            out.push('\n');
        }
        out
    }
}

impl ScrubProblemView {
    /// `<kind> <repository> [tags] <digest>: <detail>[ -> repaired: ...]`; `-` for a missing
    /// repository or digest, no brackets without tags.
    fn line(&self) -> String {
        let mut line = format!(
            "{} {}{} {}: {}",
            self.kind,
            self.repository.as_deref().unwrap_or("-"),
            if self.tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.tags.join(", "))
            },
            self.digest.as_deref().unwrap_or("-"),
            self.detail
        );
        if let Some(repaired) = &self.repaired {
            line.push_str(&format!(" -> repaired: {repaired}"));
        }
        line
    }
}

fn check(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    print(&format!(
        "ok: {}\n{}",
        path.display(),
        config.to_toml_redacted()
    ))
}

fn print(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_overrides_apply_over_defaults() {
        let cli = Cli::try_parse_from([
            "berth",
            "serve",
            "--listen",
            "0.0.0.0:6000",
            "--root",
            "/srv/berth",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.load().unwrap();
        assert_eq!(config.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(config.root, PathBuf::from("/srv/berth"));
        assert_eq!(config.api, Config::default().api);
    }

    #[test]
    fn serve_overrides_apply_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:7000\"\nroot = \"from-file\"\n").unwrap();
        let args = ServeArgs {
            config: ConfigArgs {
                config: Some(path),
                root: Some(PathBuf::from("from-flag")),
            },
            listen: None,
        };
        let config = args.load().unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.root, PathBuf::from("from-flag"));
    }
}
