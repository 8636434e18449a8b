//! `berth bench`: zb-style workloads against any OCI Distribution registry over HTTP (berth, the
//! CNCF distribution registry, ...), with latency percentiles, throughput and, given the
//! server's pid, its CPU time per op and peak memory. `bench/compare.sh` runs it side by side
//! against berth and distribution.
//!
//! Every pushed image is unique pseudo-random data (unless `--same`), generated as a stream from
//! a seed so big bodies never sit in memory; digests are computed before timing. Setup data
//! (images to pull, tags to list, repositories for the catalog) is created before timing, is
//! idempotent (a second run reuses it), and lives under `--repo-prefix`.

pub mod ceiling;
pub mod client;
pub mod gen;
pub mod procfs;
pub mod runner;
pub mod stats;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytesize::ByteSize;
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};

use client::{manifest_for, Image, MemBlob, Registry, Res};
use runner::{op, parallel, say, OpFn, Progress};
use stats::Latency;
pub use workload::{PushMode, Selection, Size, Workload};

/// Arguments of `berth bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_long_help = "Runs each --workload in turn: untimed setup first (images to pull, tags, catalog \
    repositories; reused by later runs), then up to -n ops with -c concurrent connections, \
    stopping early at --duration-limit. Reports ops/s, MiB/s and latency percentiles per \
    workload; with --pid, the server's CPU time per op and peak RSS from /proc.\n\n\
    Workloads: catalog, manifest-head, manifest-get, tag-list, push-{mono,chunked,stream}-\
    {1,10,100}mib, pull-{1,10,100}mib, mixed-sizes, mixed-pull-push, push-tag-empty-repo, \
    push-tag-large-repo, ceiling-pull-{1,10,100}mib (the client's own receive+verify ceiling \
    against an in-process server), or all.\n\n\
    Exit status: 0 when every op succeeded, 3 when some op or setup failed (results are still \
    printed), 1 when the bench could not run."
)]
pub struct BenchArgs {
    /// Registry base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5000")]
    pub url: String,
    /// Concurrent connections (workers).
    #[arg(
        short = 'c',
        long = "concurrency",
        value_name = "N",
        default_value_t = 1
    )]
    pub concurrency: usize,
    /// Ops per workload (default: per workload, e.g. 1000 small requests, 20 100 MiB pushes).
    #[arg(short = 'n', long = "ops", value_name = "N")]
    pub ops: Option<u64>,
    /// Workloads to run, in order (repeatable, comma-separated, or `all`).
    #[arg(
        short = 'w',
        long = "workload",
        value_name = "W",
        value_delimiter = ',',
        num_args = 1..,
        value_parser = workload::parse_selection
    )]
    pub workloads: Vec<Selection>,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Push the same image every time instead of unique random data.
    #[arg(long)]
    pub same: bool,
    /// Layers per pushed or pulled image (the image's size is split evenly across them).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub layers: usize,
    /// PATCH size of the push-chunked workloads.
    #[arg(long, value_name = "SIZE", default_value = "10MiB")]
    pub chunk_size: ByteSize,
    /// Stop a workload's loop after this long (ops in flight finish).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration_limit: Duration,
    /// The server's pid: report its CPU time per op and peak RSS (from /proc).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Repositories the catalog setup creates (one tiny image each).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub catalog_repos: usize,
    /// Page size (`n`) the catalog workload asks for, following `Link` to the end.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub catalog_page: usize,
    /// Tags the push-tag-large-repo setup puts into its repository first.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub large_repo_tags: usize,
    /// Every repository the bench creates is named under this prefix.
    #[arg(long, value_name = "NAME", default_value = "berth-bench")]
    pub repo_prefix: String,
    /// Concurrency of the (untimed) setup requests.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub setup_concurrency: usize,
    /// No progress or status lines on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Parser)]
#[command(name = "berth bench")]
struct Standalone {
    #[command(flatten)]
    args: BenchArgs,
}

impl BenchArgs {
    /// Parses arguments as `berth bench` would (the first item is the program name).
    pub fn try_parse_from<I, T>(args: I) -> Result<BenchArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Standalone::try_parse_from(args).map(|s| s.args)
    }

    fn progress(&self) -> Progress {
        if self.quiet {
            Progress::Quiet
        } else {
            Progress::Stderr
        }
    }
}

/// The server's resource use over one workload's timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStats {
    /// utime + stime consumed during the timed phase, in ms.
    pub cpu_ms: f64,
    /// `cpu_ms` per successful op.
    pub cpu_ms_per_op: f64,
    /// `VmHWM` at the end, in KiB: the peak of this workload if `peak_reset`, else since start.
    pub peak_rss_kib: u64,
    /// Whether `VmHWM` was reset (`/proc/PID/clear_refs`) when the workload started.
    pub peak_reset: bool,
    /// The largest `VmRSS` sampled (every 100 ms) during the timed phase, in KiB.
    pub max_sampled_rss_kib: u64,
    /// `VmRSS` samples taken.
    pub rss_samples: u64,
}

/// One workload's results.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    /// Workload name.
    pub workload: String,
    /// Workers.
    pub concurrency: usize,
    /// Ops asked for (`-n` or the default).
    pub ops_planned: u64,
    /// Successful ops.
    pub ops: u64,
    /// Failed ops, plus one for a failed setup.
    pub errors: u64,
    /// Whether `--duration-limit` ended the loop early.
    pub stopped_by_duration_limit: bool,
    /// Wall time of the timed phase.
    pub seconds: f64,
    /// Successful ops per second.
    pub ops_per_sec: f64,
    /// Payload bytes moved by successful ops.
    pub bytes: u64,
    /// `bytes` per second, in MiB/s.
    pub mib_per_sec: f64,
    /// Latency of successful ops, ms.
    pub latency_ms: Latency,
    /// The server's CPU and memory (with `--pid`).
    pub server: Option<ServerStats>,
    /// Untimed setup, seconds.
    pub setup_seconds: f64,
    /// The first distinct error messages.
    pub error_samples: Vec<String>,
    /// Workload-specific facts (catalog size, the client's sha256 speed, ...).
    pub extra: BTreeMap<String, Value>,
}

/// A whole `berth bench` run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `berth-bench <version>`.
    pub tool: String,
    /// Registry base URL.
    pub url: String,
    /// Workers.
    pub concurrency: usize,
    /// Layers per image.
    pub layers: usize,
    /// `--same`.
    pub same: bool,
    /// `--chunk-size` in bytes.
    pub chunk_size: u64,
    /// `--duration-limit` in seconds.
    pub duration_limit_secs: f64,
    /// The server's pid, if given.
    pub pid: Option<u32>,
    /// Start time (Unix seconds).
    pub started_unix: u64,
    /// One entry per workload, in order.
    pub results: Vec<WorkloadResult>,
}

impl Report {
    /// Total failed ops and setups.
    pub fn errors(&self) -> u64 {
        self.results.iter().map(|r| r.errors).sum()
    }
}

/// `berth bench`: runs, prints the table (or JSON) and returns the exit status.
pub fn main_with_args(args: BenchArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", table(&report));
            }
            if report.errors() > 0 {
                3
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Runs every selected workload against `args.url`.
pub async fn run(args: &BenchArgs) -> Res<Report> {
    let workloads = workload::flatten(&args.workloads);
    let op_timeout = args.duration_limit + Duration::from_secs(60);
    let reg = Registry::new(
        &args.url,
        args.concurrency.max(args.setup_concurrency),
        op_timeout,
    )?;
    if workloads.iter().any(|w| !matches!(w, Workload::Ceiling(_))) {
        reg.ping()
            .await
            .map_err(|e| format!("registry at {} does not answer: {e}", args.url))?;
    }
    if let Some(pid) = args.pid {
        procfs::cpu_ticks(pid)?;
    }
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let run_seed = gen::word(
        started.as_nanos() as u64,
        u64::from(std::process::id()) << 20,
    );
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        reg,
        run_id: format!("{:08x}", run_seed as u32),
        run_seed,
        prefix: args.repo_prefix.trim_matches('/').to_owned(),
    });
    let mut results = Vec::new();
    for w in workloads {
        let result = run_one(&ctx, w, op_timeout).await;
        if !args.quiet && !args.json {
            say(ctx.args.progress(), &summary_line(&result));
        }
        results.push(result);
    }
    Ok(Report {
        tool: format!("berth-bench {}", env!("CARGO_PKG_VERSION")),
        url: args.url.clone(),
        concurrency: args.concurrency,
        layers: args.layers.max(1),
        same: args.same,
        chunk_size: args.chunk_size.as_u64(),
        duration_limit_secs: args.duration_limit.as_secs_f64(),
        pid: args.pid,
        started_unix: started.as_secs(),
        results,
    })
}

struct Ctx {
    args: BenchArgs,
    reg: Registry,
    run_id: String,
    run_seed: u64,
    prefix: String,
}

/// A prepared workload: the op, and facts for the report.
struct Prepared {
    op: OpFn,
    extra: BTreeMap<String, Value>,
}

async fn run_one(ctx: &Arc<Ctx>, w: Workload, op_timeout: Duration) -> WorkloadResult {
    let n = ctx.args.ops.unwrap_or_else(|| w.default_ops());
    let c = ctx.args.concurrency.max(1);
    let progress = ctx.args.progress();
    let mut result = WorkloadResult {
        workload: w.to_string(),
        concurrency: c,
        ops_planned: n,
        ops: 0,
        errors: 0,
        stopped_by_duration_limit: false,
        seconds: 0.0,
        ops_per_sec: 0.0,
        bytes: 0,
        mib_per_sec: 0.0,
        latency_ms: Latency::default(),
        server: None,
        setup_seconds: 0.0,
        error_samples: Vec::new(),
        extra: BTreeMap::new(),
    };
    let setup_start = Instant::now();
    say(progress, &format!("{w}: setup"));
    let prepared = prepare(ctx, w, n).await;
    result.setup_seconds = setup_start.elapsed().as_secs_f64();
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            result.errors = 1;
            result.error_samples.push(format!("setup: {e}"));
            return result;
        }
    };
    result.extra = prepared.extra;

    // The server's counters around the timed phase only.
    let pid = ctx.args.pid.filter(|_| !matches!(w, Workload::Ceiling(_)));
    let before = pid.map(|pid| {
        let reset = procfs::reset_peak(pid);
        (
            procfs::cpu_ticks(pid),
            reset,
            procfs::RssSampler::start(pid),
        )
    });
    let outcome = runner::drive(
        &w.to_string(),
        n,
        c,
        ctx.args.duration_limit,
        op_timeout,
        progress,
        prepared.op,
    )
    .await;
    let ops = outcome.lat_us.len() as u64;
    if let (Some(pid), Some((ticks0, reset, sampler))) = (pid, before) {
        let (max_rss, samples) = sampler.finish();
        let ticks1 = procfs::cpu_ticks(pid);
        let hwm = procfs::status_kib(pid, "VmHWM").unwrap_or(0);
        if let (Ok(t0), Ok(t1)) = (ticks0, ticks1) {
            let cpu_ms = t1.saturating_sub(t0) as f64 * 1000.0 / procfs::clock_ticks() as f64;
            result.server = Some(ServerStats {
                cpu_ms,
                cpu_ms_per_op: if ops > 0 { cpu_ms / ops as f64 } else { 0.0 },
                peak_rss_kib: hwm.max(max_rss),
                peak_reset: reset,
                max_sampled_rss_kib: max_rss,
                rss_samples: samples,
            });
        }
    }
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let mut lat = outcome.lat_us;
    result.ops = ops;
    result.errors = outcome.errors;
    result.stopped_by_duration_limit = outcome.limited;
    result.seconds = outcome.elapsed.as_secs_f64();
    result.ops_per_sec = ops as f64 / secs;
    result.bytes = outcome.bytes;
    result.mib_per_sec = outcome.bytes as f64 / (1 << 20) as f64 / secs;
    result.latency_ms = Latency::from_micros(&mut lat);
    result.error_samples = outcome.error_samples;
    result
}

/// A stable 64-bit value for a name (FNV-1a), to derive per-workload seeds.
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The tiny image every catalog repository and tag setup uses: the same bytes every run.
fn tiny_image(annotation: Option<&str>) -> (MemBlob, MemBlob, MemBlob) {
    let layer = MemBlob::new(gen::bytes(0x7153, 0, 256));
    let (config, manifest) = manifest_for(
        0x7153,
        &[(layer.data.len() as u64, layer.digest.clone())],
        annotation,
    );
    (config, layer, manifest)
}

/// Generates images off the runtime on every core: image `i` from `seed_of(i)` with
/// `size_of(i)` bytes. With `--same`, every image is image 0.
async fn generate_images(
    same: bool,
    layers: usize,
    count: usize,
    seed_of: impl Fn(usize) -> u64,
    size_of: impl Fn(usize) -> u64,
) -> Res<Arc<Vec<Image>>> {
    let count = if same { count.min(1) } else { count };
    let layers = layers.max(1);
    let specs: Vec<(u64, u64)> = (0..count).map(|i| (seed_of(i), size_of(i))).collect();
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let images = tokio::task::spawn_blocking(move || {
        let mut out: Vec<Option<Image>> = vec![None; specs.len()];
        std::thread::scope(|s| {
            for (t, slot) in out
                .chunks_mut(specs.len().div_ceil(threads).max(1))
                .enumerate()
            {
                let specs = &specs;
                s.spawn(move || {
                    let base = t * specs.len().div_ceil(threads).max(1);
                    for (j, o) in slot.iter_mut().enumerate() {
                        let (seed, size) = specs[base + j];
                        *o = Some(Image::generate(seed, size, layers));
                    }
                });
            }
        });
        out.into_iter().flatten().collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("generating images: {e}"))?;
    Ok(Arc::new(images))
}

/// The image for op `i`: with `--same` there is only one.
fn nth(images: &[Image], i: usize) -> &Image {
    &images[i.min(images.len().saturating_sub(1))]
}

async fn prepare(ctx: &Arc<Ctx>, w: Workload, n: u64) -> Res<Prepared> {
    let mut extra = BTreeMap::new();
    let reg = ctx.reg.clone();
    let p = &ctx.prefix;
    let chunk = ctx.args.chunk_size.as_u64();
    let wseed = ctx.run_seed ^ name_hash(&w.to_string());
    let op = match w {
        Workload::ManifestHead | Workload::ManifestGet | Workload::TagList => {
            let (repo, tag, digest) = setup_small(ctx).await?;
            match w {
                Workload::ManifestHead => op(move |_| {
                    let (reg, repo, tag, digest) =
                        (reg.clone(), repo.clone(), tag.clone(), digest.clone());
                    async move {
                        match reg.head_manifest(&repo, &tag).await? {
                            Some(d) if d.is_empty() || d == digest => Ok(0),
                            Some(d) => {
                                Err(format!("HEAD {repo}:{tag}: digest {d}, expected {digest}"))
                            }
                            None => Err(format!("HEAD {repo}:{tag}: HTTP 404")),
                        }
                    }
                }),
                Workload::ManifestGet => op(move |_| {
                    let (reg, repo, tag, digest) =
                        (reg.clone(), repo.clone(), tag.clone(), digest.clone());
                    async move {
                        let body = reg.get_manifest(&repo, &tag, Some(&digest)).await?;
                        Ok(body.len() as u64)
                    }
                }),
                _ => op(move |_| {
                    let (reg, repo) = (reg.clone(), repo.clone());
                    async move {
                        let tags = reg.tag_list_once(&repo).await?;
                        if tags < SMALL_TAGS {
                            return Err(format!(
                                "tags/list of {repo}: {tags} tags, expected {SMALL_TAGS}"
                            ));
                        }
                        Ok(0)
                    }
                }),
            }
        }
        Workload::Catalog => {
            setup_catalog(ctx).await?;
            let page = ctx.args.catalog_page.max(1);
            let (count, pages) = reg.catalog(page).await?;
            extra.insert("repositories".into(), json!(count));
            extra.insert("requests_per_op".into(), json!(pages));
            let min = ctx.args.catalog_repos;
            op(move |_| {
                let reg = reg.clone();
                async move {
                    let (count, _) = reg.catalog(page).await?;
                    if count < min {
                        return Err(format!(
                            "catalog lists {count} repositories, expected >= {min}"
                        ));
                    }
                    Ok(0)
                }
            })
        }
        Workload::Push(mode, size) => {
            let images = generate_images(
                ctx.args.same,
                ctx.args.layers,
                n as usize,
                |i| gen::word(wseed, i as u64),
                |_| size.bytes(),
            )
            .await?;
            let repo = format!("{p}/push-{}-{}", mode.name(), size.name());
            let run = ctx.run_id.clone();
            op(move |i| {
                let (reg, repo, images, run) =
                    (reg.clone(), repo.clone(), images.clone(), run.clone());
                async move {
                    reg.push_image(
                        &repo,
                        &format!("{run}-{i}"),
                        nth(&images, i as usize),
                        mode,
                        chunk,
                    )
                    .await
                }
            })
        }
        Workload::MixedSizes => {
            let size_of = move |i: usize| match gen::word(wseed ^ 0x5153, i as u64) % 10 {
                0 | 1 => Size::Mib1.bytes(),
                9 => Size::Mib100.bytes(),
                _ => Size::Mib10.bytes(),
            };
            let images = generate_images(
                ctx.args.same,
                ctx.args.layers,
                n as usize,
                |i| gen::word(wseed, i as u64),
                size_of,
            )
            .await?;
            let repo = format!("{p}/mixed-sizes");
            let run = ctx.run_id.clone();
            op(move |i| {
                let (reg, repo, images, run) =
                    (reg.clone(), repo.clone(), images.clone(), run.clone());
                async move {
                    reg.push_image(
                        &repo,
                        &format!("{run}-{i}"),
                        nth(&images, i as usize),
                        PushMode::Mono,
                        chunk,
                    )
                    .await
                }
            })
        }
        Workload::Pull(size) => {
            let (repo, tags) = setup_pull(ctx, size).await?;
            op(move |i| {
                let (reg, repo) = (reg.clone(), repo.clone());
                let tag = tags[i as usize % tags.len()].clone();
                async move { reg.pull_image(&repo, &tag).await }
            })
        }
        Workload::MixedPullPush => {
            let (pull_repo, tags) = setup_pull(ctx, Size::Mib10).await?;
            let is_push = move |i: u64| gen::word(wseed ^ 0x9a11, i).is_multiple_of(4);
            // Images only for the push ops, indexed by op.
            let push_ops: Vec<u64> = (0..n).filter(|&i| is_push(i)).collect();
            let ops_for_seed = push_ops.clone();
            let images = generate_images(
                ctx.args.same,
                ctx.args.layers,
                push_ops.len(),
                move |k| gen::word(wseed, ops_for_seed[k]),
                |_| Size::Mib10.bytes(),
            )
            .await?;
            let index: Arc<BTreeMap<u64, usize>> =
                Arc::new(push_ops.iter().enumerate().map(|(k, &i)| (i, k)).collect());
            extra.insert("push_ops".into(), json!(push_ops.len()));
            let push_repo = format!("{p}/mixed-pull-push");
            let run = ctx.run_id.clone();
            op(move |i| {
                let (reg, images, index) = (reg.clone(), images.clone(), index.clone());
                let (pull_repo, push_repo, run) =
                    (pull_repo.clone(), push_repo.clone(), run.clone());
                let tag = tags[i as usize % tags.len()].clone();
                async move {
                    match index.get(&i) {
                        Some(&k) => {
                            reg.push_image(
                                &push_repo,
                                &format!("{run}-{i}"),
                                nth(&images, k),
                                PushMode::Mono,
                                chunk,
                            )
                            .await
                        }
                        None => reg.pull_image(&pull_repo, &tag).await,
                    }
                }
            })
        }
        Workload::PushTagEmptyRepo | Workload::PushTagLargeRepo => {
            let repo = if w == Workload::PushTagEmptyRepo {
                format!("{p}/tags-empty-{}", ctx.run_id)
            } else {
                format!("{p}/tags-large")
            };
            let (config, layer, base) = tiny_image(None);
            reg.push_mem(&repo, &config).await?;
            reg.push_mem(&repo, &layer).await?;
            if w == Workload::PushTagLargeRepo {
                let existing = setup_tags(ctx, &repo, &base, ctx.args.large_repo_tags).await?;
                extra.insert("tags_before".into(), json!(existing));
            } else {
                extra.insert("tags_before".into(), json!(0));
            }
            let same = ctx.args.same;
            let run = ctx.run_id.clone();
            let base = Arc::new(base);
            op(move |i| {
                let (reg, repo, run, base) = (reg.clone(), repo.clone(), run.clone(), base.clone());
                async move {
                    let tag = format!("{run}-{i}");
                    let manifest = if same {
                        (*base).clone()
                    } else {
                        tiny_image(Some(&tag)).2
                    };
                    reg.put_manifest(&repo, &tag, &manifest).await?;
                    Ok(manifest.data.len() as u64)
                }
            })
        }
        Workload::Ceiling(size) => {
            let body = gen::bytes(0xce11, 0, size.bytes() as usize);
            let digest = client::sha256(&body);
            let hash_body = body.clone();
            let rounds = (300 << 20) / body.len().max(1);
            let mib_s = tokio::task::spawn_blocking(move || {
                ceiling::sha256_mib_per_sec(&hash_body, rounds)
            })
            .await
            .map_err(|e| e.to_string())?;
            extra.insert("client_sha256_mib_per_sec".into(), json!(mib_s.round()));
            let server = Arc::new(ceiling::serve(body)?);
            let creg = Registry::new(&server.base, ctx.args.concurrency, Duration::from_secs(600))?;
            op(move |_| {
                let (creg, digest, server) = (creg.clone(), digest.clone(), server.clone());
                async move {
                    let url = format!("{}/blob", server.base);
                    creg.get_verified(&url, &digest, "GET ceiling blob").await
                }
            })
        }
    };
    Ok(Prepared { op, extra })
}

/// Tags in the repository of manifest-head, manifest-get and tag-list.
const SMALL_TAGS: usize = 100;

/// `<prefix>/small` with tags t000..t099 of the tiny image; returns (repo, tag, digest).
async fn setup_small(ctx: &Ctx) -> Res<(String, String, String)> {
    let repo = format!("{}/small", ctx.prefix);
    let (config, layer, manifest) = tiny_image(None);
    let digest = manifest.digest.clone();
    let have = ctx.reg.tags(&repo).await?;
    let missing: Vec<String> = (0..SMALL_TAGS)
        .map(|i| format!("t{i:03}"))
        .filter(|t| !have.contains(t))
        .collect();
    if !missing.is_empty() {
        ctx.reg.push_mem(&repo, &config).await?;
        ctx.reg.push_mem(&repo, &layer).await?;
        let (reg, repo2, missing) = (ctx.reg.clone(), repo.clone(), Arc::new(missing));
        let count = missing.len();
        parallel(count, ctx.args.setup_concurrency, move |i| {
            let (reg, repo, manifest, missing) = (
                reg.clone(),
                repo2.clone(),
                manifest.clone(),
                missing.clone(),
            );
            async move { reg.put_manifest(&repo, &missing[i], &manifest).await }
        })
        .await?;
    }
    Ok((repo, "t000".into(), digest))
}

/// `<prefix>-catalog/r00000...` (`--catalog-repos` of them), each holding the tiny image.
async fn setup_catalog(ctx: &Ctx) -> Res<()> {
    let count = ctx.args.catalog_repos;
    let prefix = format!("{}-catalog", ctx.prefix);
    let (config, layer, manifest) = tiny_image(None);
    let reg = ctx.reg.clone();
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let created2 = created.clone();
    let started = Instant::now();
    parallel(count, ctx.args.setup_concurrency, move |i| {
        let (reg, config, layer, manifest) =
            (reg.clone(), config.clone(), layer.clone(), manifest.clone());
        let repo = format!("{prefix}/r{i:05}");
        let created = created2.clone();
        async move {
            if reg.head_manifest(&repo, "latest").await?.is_none() {
                reg.push_mem(&repo, &config).await?;
                reg.push_mem(&repo, &layer).await?;
                reg.put_manifest(&repo, "latest", &manifest).await?;
                created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    let created = created.load(std::sync::atomic::Ordering::Relaxed);
    if created > 0 {
        say(
            ctx.args.progress(),
            &format!(
                "catalog: setup created {created} repositories in {:.1}s",
                started.elapsed().as_secs_f64()
            ),
        );
    }
    Ok(())
}

/// Ensures `repo` holds at least `want` tags (`base-00000...` of `manifest`, whose blobs must be
/// there); returns how many tags it held before the workload.
async fn setup_tags(ctx: &Ctx, repo: &str, manifest: &MemBlob, want: usize) -> Res<usize> {
    let have = ctx.reg.tags(repo).await?;
    if have.len() >= want {
        return Ok(have.len());
    }
    let have: std::collections::HashSet<String> = have.into_iter().collect();
    let missing: Arc<Vec<String>> = Arc::new(
        (0..want)
            .map(|i| format!("base-{i:05}"))
            .filter(|t| !have.contains(t))
            .collect(),
    );
    let started = Instant::now();
    say(
        ctx.args.progress(),
        &format!("{repo}: setup pushing {} tags", missing.len()),
    );
    let (reg, repo2, manifest) = (ctx.reg.clone(), repo.to_owned(), manifest.clone());
    parallel(missing.len(), ctx.args.setup_concurrency, move |i| {
        let (reg, repo, manifest, missing) = (
            reg.clone(),
            repo2.clone(),
            manifest.clone(),
            missing.clone(),
        );
        async move { reg.put_manifest(&repo, &missing[i], &manifest).await }
    })
    .await?;
    let after = ctx.reg.tags(repo).await?.len();
    say(
        ctx.args.progress(),
        &format!(
            "{repo}: {after} tags after {:.1}s of setup",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(after)
}

/// `<prefix>/pull-<size>-<K>l` with one image per worker (at most 8), the same images every run;
/// returns (repo, tags).
async fn setup_pull(ctx: &Ctx, size: Size) -> Res<(String, Arc<Vec<String>>)> {
    let layers = ctx.args.layers.max(1);
    let repo = format!("{}/pull-{}-{layers}l", ctx.prefix, size.name());
    let count = ctx.args.concurrency.clamp(1, 8);
    let tags: Vec<String> = (0..count).map(|k| format!("img-{k}")).collect();
    let mut missing = Vec::new();
    for (k, tag) in tags.iter().enumerate() {
        if ctx.reg.head_manifest(&repo, tag).await?.is_none() {
            missing.push(k);
        }
    }
    if !missing.is_empty() {
        let seed_base = name_hash(&repo);
        let missing2 = missing.clone();
        let images = generate_images(
            false,
            layers,
            missing.len(),
            move |j| gen::word(seed_base, missing2[j] as u64),
            |_| size.bytes(),
        )
        .await?;
        let (reg, repo2, tags2) = (ctx.reg.clone(), repo.clone(), tags.clone());
        let missing = Arc::new(missing);
        let chunk = ctx.args.chunk_size.as_u64();
        parallel(missing.len(), ctx.args.setup_concurrency.min(4), move |j| {
            let (reg, repo, images, missing) =
                (reg.clone(), repo2.clone(), images.clone(), missing.clone());
            let tag = tags2[missing[j]].clone();
            async move {
                reg.push_image(&repo, &tag, &images[j], PushMode::Mono, chunk)
                    .await
                    .map(|_| ())
            }
        })
        .await?;
    }
    Ok((repo, Arc::new(tags)))
}

fn summary_line(r: &WorkloadResult) -> String {
    let mut s = format!(
        "{}: {} ops, {} errors, {:.1} ops/s, {:.1} MiB/s, p50 {:.2} ms, p99 {:.2} ms",
        r.workload,
        r.ops,
        r.errors,
        r.ops_per_sec,
        r.mib_per_sec,
        r.latency_ms.p50,
        r.latency_ms.p99
    );
    if let Some(e) = r.error_samples.first() {
        s.push_str(&format!(" (first error: {e})"));
    }
    s
}

/// The human-readable results table.
pub fn table(report: &Report) -> String {
    let mut out = format!(
        "berth bench against {} (c={}, layers={}{})\n",
        report.url,
        report.concurrency,
        report.layers,
        if report.same { ", same image" } else { "" }
    );
    out.push_str(&format!(
        "{:<22} {:>6} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}\n",
        "workload",
        "ops",
        "err",
        "ops/s",
        "MiB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "cpu ms/op",
        "peak RSS"
    ));
    for r in &report.results {
        let (cpu, rss) = match &r.server {
            Some(s) => (
                format!("{:.3}", s.cpu_ms_per_op),
                format!("{:.1} MiB", s.peak_rss_kib as f64 / 1024.0),
            ),
            None => ("-".into(), "-".into()),
        };
        let transfer = r.workload.contains("mib") || r.workload.starts_with("mixed");
        let mib = if transfer {
            format!("{:.1}", r.mib_per_sec)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<22} {:>6} {:>5} {:>10.1} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>10}{}\n",
            r.workload,
            r.ops,
            r.errors,
            r.ops_per_sec,
            mib,
            r.latency_ms.p50,
            r.latency_ms.p90,
            r.latency_ms.p99,
            r.latency_ms.max,
            cpu,
            rss,
            if r.stopped_by_duration_limit {
                "  (duration limit)"
            } else {
                ""
            },
        ));
    }
    for r in &report.results {
        for e in &r.error_samples {
            out.push_str(&format!("{}: error: {e}\n", r.workload));
        }
        for (k, v) in &r.extra {
            out.push_str(&format!("{}: {k} = {v}\n", r.workload));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_with_defaults_and_units() {
        let a = BenchArgs::try_parse_from(["bench"]).unwrap();
        assert_eq!(a.url, "http://127.0.0.1:5000");
        assert_eq!(a.concurrency, 1);
        assert_eq!(a.chunk_size.as_u64(), 10 << 20);
        assert_eq!(a.duration_limit, Duration::from_secs(60));
        assert_eq!(workload::flatten(&a.workloads), Workload::defaults());

        let a = BenchArgs::try_parse_from([
            "bench",
            "--url",
            "http://127.0.0.1:1",
            "-c",
            "8",
            "-n",
            "5",
            "--workload",
            "push-chunked-1mib,pull-1mib",
            "--chunk-size",
            "256KiB",
            "--duration-limit",
            "1m 30s",
            "--json",
            "--same",
            "--layers",
            "3",
            "--pid",
            "42",
        ])
        .unwrap();
        assert_eq!(
            (a.concurrency, a.ops, a.layers, a.pid),
            (8, Some(5), 3, Some(42))
        );
        assert!(a.json && a.same);
        assert_eq!(a.chunk_size.as_u64(), 256 << 10);
        assert_eq!(a.duration_limit, Duration::from_secs(90));
        assert_eq!(
            workload::flatten(&a.workloads),
            vec![
                Workload::Push(PushMode::Chunked, Size::Mib1),
                Workload::Pull(Size::Mib1)
            ]
        );
        assert!(BenchArgs::try_parse_from(["bench", "--workload", "pull-3mib"]).is_err());
    }
}
