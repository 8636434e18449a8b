#!/usr/bin/env bash
# Side-by-side benchmark of berth and the CNCF distribution registry (Debian's docker-registry)
# on loopback, with `berth bench` as the client. See BENCHMARKS.md for a recorded run.
#
#   bench/compare.sh                         # the default comparison (~7-15 minutes on 2 cores)
#   ROUNDS=1 WORKLOADS="manifest-get:8 pull-1mib:8:100" bench/compare.sh
#
# Environment:
#   ROUNDS           rounds; each runs every workload once per side, alternating which side goes
#                    first (default 3)
#   WORKLOADS        space-separated NAME:CONCURRENCY[:OPS] (default: see DEFAULT_WORKLOADS)
#   DURATION         --duration-limit of each run (default 30s)
#   CATALOG_REPOS    repositories created before the catalog workload (default 2000)
#   LARGE_REPO_TAGS  tags created before push-tag-large-repo (default 10000)
#   OUT              results directory (default: a new /tmp/berth-compare.XXXXXX)
#   BERTH_BIN        berth binary (default: target/release/berth, built with cargo build --release)
#   SKIP_BUILD=1     do not run cargo build
#   BERTH_REV        what to report as berth's revision (default: git rev-parse HEAD of this tree)
#   KEEP=1           keep the registries' data directories
#
# Two pairs of servers run: a long-lived pair (small requests, catalog, tags, pulls, 1 MiB
# pushes) that keeps its setup data across rounds, and a pair started on fresh roots for each
# round's big pushes (10/100 MiB pushes and the mixed workloads), so disk use stays bounded.
# `sync` runs before every run (untimed), so no run pays for the previous one's deferred
# writeback. Only processes this script started are stopped (trap EXIT).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$PWD

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-30s}
CATALOG_REPOS=${CATALOG_REPOS:-2000}
LARGE_REPO_TAGS=${LARGE_REPO_TAGS:-10000}
BERTH_BIN=${BERTH_BIN:-$repo_root/target/release/berth}
DEFAULT_WORKLOADS="
  manifest-head:8:10000 manifest-get:8:10000 tag-list:8:5000 catalog:8:300
  push-tag-empty-repo:1:200 push-tag-large-repo:1:200
  push-mono-1mib:1:50 push-mono-1mib:8:100 pull-1mib:1:100 pull-1mib:8:200
  push-mono-100mib:1:8 push-mono-100mib:8:16 push-chunked-100mib:1:6 push-stream-100mib:1:6
  pull-100mib:1:12 pull-100mib:8:16 ceiling-pull-100mib:1:12 ceiling-pull-100mib:8:16
  mixed-sizes:8:40 mixed-pull-push:8:100
"
WORKLOADS=${WORKLOADS:-$DEFAULT_WORKLOADS}
OUT=${OUT:-$(mktemp -d /tmp/berth-compare.XXXXXX)}
mkdir -p "$OUT/json"
WORK=$(mktemp -d /tmp/berth-compare-data.XXXXXX)

SUDO=()
if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- servers --------------------------------------------------------------------------------

declare -A PID=() PORT=()

cleanup() {
    local key
    for key in "${!PID[@]}"; do
        kill "${PID[$key]}" 2>/dev/null || true
    done
    for key in "${!PID[@]}"; do
        wait "${PID[$key]}" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # KEY
    local key=$1 i
    for i in $(seq 1 300); do
        if curl -fsS -o /dev/null "http://127.0.0.1:${PORT[$key]}/v2/" 2>/dev/null; then return 0; fi
        if ! kill -0 "${PID[$key]}" 2>/dev/null; then
            log "$key exited during start-up; its log:"; cat "$OUT/$key.log" >&2; exit 1
        fi
        sleep 0.1
    done
    log "$key did not answer on port ${PORT[$key]}"; exit 1
}

start_berth() { # KEY ROOT
    local key=$1 root=$2
    PORT[$key]=$(free_port)
    mkdir -p "$root"
    RUST_LOG=warn "$BERTH_BIN" serve --root "$root" --listen "127.0.0.1:${PORT[$key]}" \
        >>"$OUT/$key.log" 2>&1 &
    PID[$key]=$!
    wait_ready "$key"
}

start_distribution() { # KEY ROOT
    local key=$1 root=$2
    PORT[$key]=$(free_port)
    mkdir -p "$root"
    cat >"$root.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $root
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:${PORT[$key]}
EOF
    /usr/bin/docker-registry serve "$root.yml" >>"$OUT/$key.log" 2>&1 &
    PID[$key]=$!
    wait_ready "$key"
}

stop_server() { # KEY
    local key=$1
    kill "${PID[$key]}" 2>/dev/null || true
    wait "${PID[$key]}" 2>/dev/null || true
    unset "PID[$key]"
}

# --- prerequisites --------------------------------------------------------------------------

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release -p berth >&2
fi
if [ ! -x /usr/bin/docker-registry ]; then
    log "installing docker-registry (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "command: ROUNDS=$ROUNDS DURATION=$DURATION CATALOG_REPOS=$CATALOG_REPOS LARGE_REPO_TAGS=$LARGE_REPO_TAGS bench/compare.sh"
    echo "workloads: $(echo $WORKLOADS)"
    if [ -z "${BERTH_REV:-}" ]; then
        BERTH_REV="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        git -C "$repo_root" diff --quiet HEAD 2>/dev/null || BERTH_REV+=" (with uncommitted changes)"
    fi
    echo "berth: $BERTH_REV, $("$BERTH_BIN" --version)"
    echo "distribution: $(/usr/bin/docker-registry --version)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "disk: $(df -T "$WORK" | awk 'NR==2 {print $1, $2}') ($(lsblk -ndo NAME,ROTA,SIZE "$(df "$WORK" | awk 'NR==2 {print $1}')" 2>/dev/null | awk '{print ($2=="1" ? "rotational or virtual" : "non-rotational"), $3}'))"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

# Big pushes go to a fresh pair each round; everything else to the long-lived pair.
instance_of() {
    case $1 in
        push-*-10mib | push-*-100mib | mixed-*) echo fresh ;;
        *) echo main ;;
    esac
}

run_bench() { # SIDE KEY NAME C N ROUND
    local side=$1 key=$2 name=$3 c=$4 n=$5 round=$6 url pid_args=() n_args=() rc=0
    local file="$OUT/json/${name}_c${c}_r${round}_${side}.json"
    if [ "$side" = client ]; then
        url=http://127.0.0.1:9
    else
        url="http://127.0.0.1:${PORT[$key]}"
        pid_args=(--pid "${PID[$key]}")
    fi
    if [ -n "$n" ]; then n_args=(-n "$n"); fi
    # Start every run with no dirty pages: distribution does not fsync, and its deferred
    # writeback would otherwise land in (and slow down) whichever run comes next.
    sync
    "$BERTH_BIN" bench --url "$url" --workload "$name" -c "$c" "${n_args[@]}" --json \
        --duration-limit "$DURATION" --catalog-repos "$CATALOG_REPOS" \
        --large-repo-tags "$LARGE_REPO_TAGS" "${pid_args[@]}" \
        >"$file" 2>>"$OUT/bench.log" || rc=$?
    if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
        log "$side $name c=$c round $round failed (exit $rc); see $OUT/bench.log"
        rm -f "$file"
        return 0
    fi
    python3 - "$file" "$side" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
s = r.get("server") or {}
print(f"  {sys.argv[2]:>12} {r['workload']} c={r['concurrency']}: {r['ops']} ops, {r['errors']} err, "
      f"{r['ops_per_sec']:.1f} ops/s, {r['mib_per_sec']:.1f} MiB/s, p50 {r['latency_ms']['p50']:.2f} ms"
      + (f", cpu {s['cpu_ms_per_op']:.3f} ms/op, peak {s['peak_rss_kib']/1024:.0f} MiB" if s else "")
      + (f"  [{r['error_samples'][0]}]" if r['error_samples'] else ""))
EOF
}

# --- the run --------------------------------------------------------------------------------

started=$SECONDS
echo "$WORKLOADS" | xargs -n1 >"$OUT/order.txt"
start_berth berth.main "$WORK/main/berth"
start_distribution distribution.main "$WORK/main/distribution"
for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS"
    start_berth berth.fresh "$WORK/r$round/berth"
    start_distribution distribution.fresh "$WORK/r$round/distribution"
    if [ $((round % 2)) = 1 ]; then order="berth distribution"; else order="distribution berth"; fi
    for spec in $WORKLOADS; do
        IFS=: read -r name c n <<<"$spec"
        c=${c:-1}
        if [[ $name == ceiling-* ]]; then
            run_bench client - "$name" "$c" "${n:-}" "$round"
            continue
        fi
        inst=$(instance_of "$name")
        for side in $order; do
            run_bench "$side" "$side.$inst" "$name" "$c" "${n:-}" "$round"
        done
    done
    stop_server berth.fresh
    stop_server distribution.fresh
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK/r$round"; fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); run took $((SECONDS - started))s" >>"$OUT/env.txt"
log "done in $((SECONDS - started))s; results in $OUT"
python3 "$repo_root/bench/summarize.py" "$OUT" | tee "$OUT/summary.md"
