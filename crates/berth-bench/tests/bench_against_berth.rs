//! A tiny bench against a real berth: every op succeeds and is counted.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use berth_bench::BenchArgs;
use berth_testkit::TestRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_bench_against_berth_has_no_errors() {
    let started = Instant::now();
    let reg = TestRegistry::start();
    let pid = std::process::id().to_string();
    let args = BenchArgs::try_parse_from([
        "bench",
        "--url",
        reg.base.as_str(),
        "-n",
        "5",
        "-c",
        "2",
        "--quiet",
        "--catalog-repos",
        "5",
        "--layers",
        "2",
        "--chunk-size",
        "300KiB",
        "--duration-limit",
        "20s",
        "--pid",
        pid.as_str(),
        "--workload",
        "manifest-get,tag-list,catalog,push-mono-1mib,push-chunked-1mib,push-stream-1mib,pull-1mib",
        "--workload",
        "push-tag-empty-repo,ceiling-pull-1mib",
    ])
    .unwrap();
    let report = berth_bench::run(&args).await.unwrap();
    let names: Vec<&str> = report.results.iter().map(|r| r.workload.as_str()).collect();
    assert_eq!(
        names,
        [
            "manifest-get",
            "tag-list",
            "catalog",
            "push-mono-1mib",
            "push-chunked-1mib",
            "push-stream-1mib",
            "pull-1mib",
            "push-tag-empty-repo",
            "ceiling-pull-1mib"
        ]
    );
    for r in &report.results {
        assert_eq!(r.errors, 0, "{}: {:?}", r.workload, r.error_samples);
        assert_eq!(r.ops, 5, "{}", r.workload);
        assert!(r.ops_per_sec > 0.0, "{}", r.workload);
        assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.p50 <= r.latency_ms.max);
        if r.workload.ends_with("1mib") {
            assert!(r.bytes >= 5 << 20, "{}: {} bytes", r.workload, r.bytes);
            assert!(r.mib_per_sec > 0.0);
        }
        if r.workload != "ceiling-pull-1mib" {
            let server = r.server.as_ref().unwrap();
            assert!(server.peak_rss_kib > 0);
        }
    }
    let catalog = &report.results[2];
    assert!(catalog.extra["repositories"].as_u64().unwrap() >= 5);
    // The JSON form carries the same numbers.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["results"][0]["ops"], 5);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
