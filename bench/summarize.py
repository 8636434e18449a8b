#!/usr/bin/env python3
"""Summarise a bench/compare.sh results directory as Markdown tables.

Reads OUT/json/<workload>_c<C>_r<round>_<side>.json (one `berth bench --json` report each),
OUT/order.txt (workload specs in run order) and OUT/env.txt, and prints: the environment, a
throughput table (median over rounds per side, ratio berth/distribution, spread), a server
resources table (CPU ms/op, peak RSS), peak RSS per round of the 8-connection runs, and the
issue's targets, each met or missed.

    python3 bench/summarize.py OUT
"""

import json
import os
import re
import statistics
import sys

SIDES = ("berth", "distribution")


def load(out):
    runs = {}  # (workload, c) -> side -> [result per round, in round order]
    pat = re.compile(r"^(?P<w>.+)_c(?P<c>\d+)_r(?P<r>\d+)_(?P<side>[a-z]+)\.json$")
    files = sorted(os.listdir(os.path.join(out, "json")))
    for f in files:
        m = pat.match(f)
        if not m:
            continue
        try:
            report = json.load(open(os.path.join(out, "json", f)))
        except (OSError, ValueError):
            continue
        for r in report.get("results", []):
            r["round"] = int(m["r"])
            key = (m["w"], int(m["c"]))
            runs.setdefault(key, {}).setdefault(m["side"], []).append(r)
    for sides in runs.values():
        for lst in sides.values():
            lst.sort(key=lambda r: r["round"])
    order = []
    try:
        for line in open(os.path.join(out, "order.txt")):
            parts = line.strip().split(":")
            if parts and parts[0]:
                key = (parts[0], int(parts[1]) if len(parts) > 1 and parts[1] else 1)
                if key not in order:
                    order.append(key)
    except OSError:
        pass
    for key in sorted(runs):
        if key not in order:
            order.append(key)
    return runs, [k for k in order if k in runs]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    """Relative spread (max-min)/median across rounds, as a percentage string."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return "-"
    m = statistics.median(xs)
    if not m:
        return "-"
    return f"±{(max(xs) - min(xs)) / m * 50:.0f}%"


def fmt(x, digits=1):
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def xfmt(r):
    return "-" if r is None else f"**{r:.2f}x**"


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def metric(results, name):
    out = []
    for r in results or []:
        if r["ops"] == 0:
            out.append(None)
            continue
        if name == "cpu":
            out.append((r.get("server") or {}).get("cpu_ms_per_op"))
        elif name == "rss":
            s = r.get("server") or {}
            out.append(s["peak_rss_kib"] / 1024 if s else None)
        elif name == "p50":
            out.append(r["latency_ms"]["p50"])
        elif name == "p99":
            out.append(r["latency_ms"]["p99"])
        else:
            out.append(r[name])
    return out


def is_transfer(w):
    return "mib" in w or w.startswith("mixed")


def main(out):
    runs, order = load(out)
    try:
        print("```text\n" + open(os.path.join(out, "env.txt")).read().rstrip() + "\n```\n")
    except OSError:
        pass
    rounds = max((len(v) for s in runs.values() for v in s.values()), default=0)
    print(f"Medians over {rounds} round(s); ± is half the min-max range across rounds, relative "
          "to the median (the noise). Ratio = berth / distribution.\n")

    print("| workload | c | berth ops/s | distribution ops/s | ratio | berth MiB/s | "
          "distribution MiB/s | ratio | berth p50 / p99 ms | distribution p50 / p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in order:
        w, c = key
        sides = runs[key]
        if "client" in sides:
            rs = sides["client"]
            print(f"| {w} (client only) | {c} | {fmt(med(metric(rs, 'ops_per_sec')))} "
                  f"{spread(metric(rs, 'ops_per_sec'))} | | | "
                  f"{fmt(med(metric(rs, 'mib_per_sec')))} {spread(metric(rs, 'mib_per_sec'))} | | | "
                  f"{fmt(med(metric(rs, 'p50')), 2)} / {fmt(med(metric(rs, 'p99')), 2)} | | "
                  f"{sum(r['errors'] for r in rs)} |")
            continue
        b, d = sides.get("berth"), sides.get("distribution")
        bo, do = med(metric(b, "ops_per_sec")), med(metric(d, "ops_per_sec"))
        row = [w, str(c),
               f"{fmt(bo)} {spread(metric(b, 'ops_per_sec'))}",
               f"{fmt(do)} {spread(metric(d, 'ops_per_sec'))}",
               xfmt(ratio(bo, do))]
        if is_transfer(w):
            bm, dm = med(metric(b, "mib_per_sec")), med(metric(d, "mib_per_sec"))
            row += [f"{fmt(bm)} {spread(metric(b, 'mib_per_sec'))}",
                    f"{fmt(dm)} {spread(metric(d, 'mib_per_sec'))}",
                    xfmt(ratio(bm, dm))]
        else:
            row += ["", "", ""]
        row += [f"{fmt(med(metric(b, 'p50')), 2)} / {fmt(med(metric(b, 'p99')), 2)}",
                f"{fmt(med(metric(d, 'p50')), 2)} / {fmt(med(metric(d, 'p99')), 2)}",
                f"{sum(r['errors'] for r in b or [])} / {sum(r['errors'] for r in d or [])}"]
        print("| " + " | ".join(row) + " |")

    print("\nServer resources over each timed phase (from /proc/PID): CPU = utime+stime per "
          "successful op; peak RSS = VmHWM, reset at each workload's start.\n")
    print("| workload | c | berth CPU ms/op | distribution CPU ms/op | ratio | "
          "berth peak RSS MiB | distribution peak RSS MiB | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in order:
        w, c = key
        sides = runs[key]
        if "client" in sides:
            continue
        b, d = sides.get("berth"), sides.get("distribution")
        bc, dc = med(metric(b, "cpu")), med(metric(d, "cpu"))
        br, dr = med(metric(b, "rss")), med(metric(d, "rss"))
        print(f"| {w} | {c} | {fmt(bc, 3)} {spread(metric(b, 'cpu'))} | "
              f"{fmt(dc, 3)} {spread(metric(d, 'cpu'))} | {fmt(ratio(bc, dc), 2)} | "
              f"{fmt(br)} | {fmt(dr)} | {fmt(ratio(br, dr), 2)} |")

    # Peak RSS of the 8-connection runs, per round (flat across repetitions?).
    print("\nPeak RSS (MiB) over all 8-connection runs, per round (long-lived servers; "
          "10/100 MiB pushes and mixed run on a fresh pair each round):\n")
    print("| side | server | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |")
    print("|---|---|" + "---:|" * rounds)
    rss_rounds = {}
    for side in SIDES:
        for inst, pred in (("long-lived", lambda w: not fresh(w)), ("fresh per round", fresh)):
            per_round = {}
            for (w, c), sides in runs.items():
                if c != 8 or not pred(w):
                    continue
                for r in sides.get(side, []):
                    s = r.get("server") or {}
                    if s:
                        per_round[r["round"]] = max(per_round.get(r["round"], 0), s["peak_rss_kib"] / 1024)
            vals = [per_round.get(i + 1) for i in range(rounds)]
            rss_rounds[(side, inst)] = vals
            print(f"| {side} | {inst} | " + " | ".join(fmt(v) for v in vals) + " |")

    print("\n### Targets\n")
    print("| target | measured | met |")
    print("|---|---|---|")

    def get(w, c, side, m):
        return med(metric(runs.get((w, c), {}).get(side), m))

    def target(label, value, ok, text):
        text = text.replace("-x", "not measured")
        print(f"| {label} | {text} | {'-' if value is None else ('yes' if ok else '**no**')} |")

    for w in ("manifest-head", "manifest-get", "tag-list"):
        r = ratio(get(w, 8, "berth", "ops_per_sec"), get(w, 8, "distribution", "ops_per_sec"))
        target(f"{w} at 8 connections >= 10x ops/s", r, r is not None and r >= 10, f"{fmt(r, 2)}x")
    cat = [k for k in order if k[0] == "catalog"]
    for w, c in cat:
        r = ratio(get(w, c, "berth", "ops_per_sec"), get(w, c, "distribution", "ops_per_sec"))
        target(f"catalog ({c} conn) >= 20x ops/s", r, r is not None and r >= 20, f"{fmt(r, 2)}x")
    for side in SIDES:
        large = get("push-tag-large-repo", 1, side, "ops_per_sec")
        empty = get("push-tag-empty-repo", 1, side, "ops_per_sec")
        r = ratio(empty, large)  # cost ratio = time per op large / empty
        if side == "berth":
            target("push a tag into a 10,000-tag repo <= 2x the cost of an empty one (berth)",
                   r, r is not None and r <= 2, f"{fmt(r, 2)}x")
        else:
            print(f"| (distribution, for reference: same ratio) | {fmt(r, 2)}x | |")
    for c, want in ((1, 1.8), (8, 2.0)):
        r = ratio(get("push-mono-100mib", c, "berth", "mib_per_sec"),
                  get("push-mono-100mib", c, "distribution", "mib_per_sec"))
        target(f"push 100 MiB at {c} connection(s) >= {want}x MiB/s", r, r is not None and r >= want,
               f"{fmt(r, 2)}x")
    for c in sorted({k[1] for k in order if k[0] == "push-mono-1mib"}):
        r = ratio(get("push-mono-1mib", c, "berth", "ops_per_sec"),
                  get("push-mono-1mib", c, "distribution", "ops_per_sec"))
        target(f"push 1 MiB ({c} conn) >= 3x ops/s", r, r is not None and r >= 3, f"{fmt(r, 2)}x")
    for c in sorted({k[1] for k in order if k[0] == "pull-100mib"}):
        ceil_runs = runs.get(("ceiling-pull-100mib", c), {}).get("client")
        cl = med(metric(ceil_runs, "mib_per_sec"))
        sha = med([r["extra"].get("client_sha256_mib_per_sec") for r in ceil_runs or []])
        b = get("pull-100mib", c, "berth", "mib_per_sec")
        d = get("pull-100mib", c, "distribution", "mib_per_sec")
        r = ratio(b, cl)
        target(f"pull 100 MiB ({c} conn) >= 95% of the verifying client's ceiling", r,
               r is not None and r >= 0.95,
               f"berth {fmt(b)} MiB/s vs ceiling {fmt(cl)} MiB/s = {fmt(None if r is None else r * 100, 0)}% "
               f"(distribution {fmt(d)} MiB/s; client sha256 alone {fmt(sha, 0)} MiB/s)"
               if cl else f"{fmt(b)} MiB/s (no ceiling-pull-100mib run at {c} connections)")
    for c in sorted({k[1] for k in order if k[0] == "pull-1mib"}):
        r = ratio(get("pull-1mib", c, "berth", "ops_per_sec"),
                  get("pull-1mib", c, "distribution", "ops_per_sec"))
        target(f"pull 1 MiB ({c} conn) >= 5x ops/s", r, r is not None and r >= 5, f"{fmt(r, 2)}x")
    met, total, worst = 0, 0, None
    for (w, c), sides in runs.items():
        if "client" in sides:
            continue
        r = ratio(get(w, c, "berth", "cpu"), get(w, c, "distribution", "cpu"))
        if r is None:
            continue
        total += 1
        met += r <= 1 / 3
        if worst is None or r > worst[0]:
            worst = (r, f"{w} c={c}")
    target("server CPU per op <= 1/3 of distribution's (every workload)", total or None,
           total and met == total,
           f"{met} of {total} workloads" + (f"; worst {worst[1]} at {worst[0]:.2f}x" if worst else ""))
    for inst in ("long-lived", "fresh per round"):
        bv = [v for v in rss_rounds.get(("berth", inst), []) if v]
        dv = [v for v in rss_rounds.get(("distribution", inst), []) if v]
        if not bv or not dv:
            continue
        r = max(bv) / max(dv)
        flat = (max(bv) - min(bv)) / min(bv) <= 0.10
        target(f"peak RSS over the 8-connection runs ({inst}) <= 1/2 of distribution's, flat",
               r, r <= 0.5 and flat,
               f"{max(bv):.0f} vs {max(dv):.0f} MiB = {r:.2f}x; berth per round "
               + ", ".join(f"{v:.0f}" for v in bv) + (" (flat)" if flat else " (not flat: >10%)"))


def fresh(w):
    return (w.startswith("push-") and (w.endswith("-10mib") or w.endswith("-100mib"))) or w.startswith("mixed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
