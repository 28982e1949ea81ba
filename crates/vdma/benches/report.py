#!/usr/bin/env python3
"""Markdown tables and target checks from the last `cargo bench -p vdma` run (benches `dma`
and `tracking`).

Reads criterion's estimates (target/criterion/<group>/<function>/<param>/new/estimates.json)
and the `threads` group's side file (target/criterion/threads/vdma-thread-stats.json) and prints
the tables of BENCHMARKS.md. Standard library only.

    python3 crates/vdma/benches/report.py [CRITERION_DIR]

The time of a benchmark is criterion's headline estimate: the slope of the linear regression
when criterion sampled linearly, otherwise the mean; the range after it is its 95% confidence
interval.
"""

import json
import os
import sys

FUNCS = ["memcpy", "vm-memory", "vdma"]
SIZES = [8, 64, 4096, 65536, 1048576]
COUNTS = [1, 1024, 65535]


def default_dir():
    if os.environ.get("CRITERION_HOME"):
        return os.environ["CRITERION_HOME"]
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.join(os.environ["CARGO_TARGET_DIR"], "criterion")
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "target", "criterion"))


ROOT = sys.argv[1] if len(sys.argv) > 1 else default_dir()


def estimate(group, func, param):
    """(point, low, high) in ns per iteration, or None if the benchmark did not run."""
    path = os.path.join(ROOT, group, func, str(param), "new", "estimates.json")
    try:
        with open(path) as f:
            e = json.load(f)
    except FileNotFoundError:
        return None
    est = e.get("slope") or e["mean"]
    ci = est["confidence_interval"]
    return est["point_estimate"], ci["lower_bound"], ci["upper_bound"]


def t(group, func, param):
    e = estimate(group, func, param)
    return e[0] if e else None


def fmt_ns(ns):
    unit = "ns"
    for u in ["µs", "ms"]:
        if ns >= 1000:
            ns /= 1000
            unit = u
    digits = 2 if ns < 10 else 1 if ns < 100 else 0
    return f"{ns:.{digits}f} {unit}"


def fmt_time(e):
    if e is None:
        return "–"
    p, lo, hi = e
    return f"{fmt_ns(p)} ({fmt_ns(lo)}–{fmt_ns(hi)})"


def gib_s(nbytes, ns):
    return nbytes / ns * 1e9 / 2**30


def fmt_size(n):
    if n >= 2**20:
        return f"{n // 2**20} MiB"
    if n >= 2**10:
        return f"{n // 2**10} KiB"
    return f"{n} B"


def ratio(a, b):
    return None if a is None or b is None else a / b


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}"


def copy_table(group):
    funcs = FUNCS + ["vdma-copy"]
    print(f"### `{group}`\n")
    print(
        "| size | memcpy | vm-memory | vdma | vdma-copy | memcpy GiB/s | vm-memory GiB/s "
        "| vdma GiB/s | vdma / memcpy (thrpt) | vdma / vm-memory (time) "
        "| vdma / vdma-copy (thrpt) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in SIZES:
        es = [estimate(group, f, size) for f in funcs]
        thr = [None if e is None else gib_s(size, e[0]) for e in es]
        cells = [fmt_time(e) for e in es]
        cells += ["–" if x is None else f"{x:.2f}" for x in thr[:3]]
        cells.append(fmt_ratio(ratio(thr[2], thr[0])))
        cells.append(fmt_ratio(ratio(t(group, "vdma", size), t(group, "vm-memory", size))))
        cells.append(fmt_ratio(ratio(thr[2], thr[3])))
        print(f"| {fmt_size(size)} | " + " | ".join(cells) + " |")
    print(
        "\nvdma-copy: vdma's copy routine alone (a `HostRegion` over the same memory, no address "
        "space): the last column is what the lookup costs.\n"
    )


ROUTINE_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144]


def routine_table():
    group = "copy_routine"
    print(f"### `{group}` (hot copies: glibc memcpy against vdma's copy routine)\n")
    print("| size | memcpy read | vdma-copy read | memcpy write | vdma-copy write "
          "| read: vdma-copy / memcpy (thrpt) | write: vdma-copy / memcpy (thrpt) |")
    print("|---|---|---|---|---|---|---|")
    for size in ROUTINE_SIZES:
        cells = []
        for d in ["read", "write"]:
            cells += [fmt_time(estimate(group, f"{f}-{d}", size)) for f in ["memcpy", "vdma-copy"]]
        for d in ["read", "write"]:
            cells.append(fmt_ratio(ratio(t(group, f"memcpy-{d}", size),
                                         t(group, f"vdma-copy-{d}", size))))
        print(f"| {fmt_size(size)} | " + " | ".join(cells) + " |")
    print()


def lookup_random_table():
    group = "lookup_random_8b"
    print(f"### `{group}` (time per 8-byte read)\n")
    print("| mappings | memcpy | vm-memory | vdma | vdma / vm-memory |")
    print("|---|---|---|---|---|")
    for n in COUNTS:
        cells = [fmt_time(estimate(group, f, n)) for f in FUNCS]
        cells.append(fmt_ratio(ratio(t(group, "vdma", n), t(group, "vm-memory", n))))
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    print()


def lookup_hot_table():
    group = "lookup_hot_8b"
    print(f"### `{group}` (time per 8-byte read, same address)\n")
    print("| mappings | vm-memory | vdma | vdma / vm-memory |")
    print("|---|---|---|---|")
    for n in [1, 65535]:
        cells = [fmt_time(estimate(group, f, n)) for f in ["vm-memory", "vdma"]]
        cells.append(fmt_ratio(ratio(t(group, "vdma", n), t(group, "vm-memory", n))))
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    for f in ["vm-memory", "vdma"]:
        r = ratio(t(group, f, 65535), t(group, f, 1))
        print(f"\n{f}: 65,535 mappings / 1 mapping = {fmt_ratio(r)}")
    print()


THREAD_FUNCS = ["memcpy", "vdma", "vdma+map_unmap"]
# Mappers at a set rate of map+unmap calls per second (1 reader only).
PACED_FUNCS = ["vdma+map_unmap@10k", "vdma+map_unmap@100k"]


def thread_stats():
    path = os.path.join(ROOT, "threads", "vdma-thread-stats.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def threads_table():
    group = "threads"
    stats = thread_stats()
    print(f"### `{group}` (4 KiB hot reads, total over the reader threads)\n")
    print(
        "| function | readers | time per read | GiB/s | vs 1 reader | reader CPU-s per wall-s "
        "| GiB/s per reader CPU-second | mapper CPU-s per wall-s | mapper map+unmap calls/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(f, n) for f in THREAD_FUNCS for n in [1, 2]] + [(f, 1) for f in PACED_FUNCS]
    for f, n in rows:
        e = estimate(group, f, n)
        thr = None if e is None else gib_s(4096, e[0])
        one = t(group, f, 1)
        vs1 = ratio(thr, None if one is None else gib_s(4096, one))
        s = stats.get(f"{f}/{n}")
        share = per_cpu = mapper_share = mapper = "–"
        if s and s["reader_cpu_ns"]:
            share = f"{s['reader_cpu_ns'] / s['wall_ns']:.2f}"
            per_cpu = f"{s['reads'] * 4096 / s['reader_cpu_ns'] * 1e9 / 2**30:.2f}"
            if s["mapper_ops"]:
                mapper_share = f"{s['mapper_cpu_ns'] / s['wall_ns']:.2f}"
                mapper = f"{s['mapper_ops'] / s['wall_ns'] * 1e9:,.0f}"
        print(
            f"| {f} | {n} | {fmt_time(e)} | {'–' if thr is None else f'{thr:.2f}'} "
            f"| {fmt_ratio(vs1)} | {share} | {per_cpu} | {mapper_share} | {mapper} |"
        )
    print(
        "\nCPU-s per wall-s: CPU time the reader (or mapper) threads got, from "
        "CLOCK_THREAD_CPUTIME_ID, per second of measured wall time, summed over all calls "
        "including warm-up: 2 readers that really ran in parallel show about 2.00. GiB/s per "
        "reader CPU-second: bytes read per second of reader CPU time, which a CPU taken away by "
        "another thread does not change. Calls/s: map and unmap calls per second of wall time.\n"
    )


def targets():
    rows = []

    def add(name, value, goal, ok):
        if value is None:
            rows.append((name, "–", goal, "not run"))
        else:
            rows.append((name, f"{value:.2f}", goal, "met" if ok(value) else "**missed**"))

    for d in ["read", "write"]:
        g = f"copy_hot_{d}"
        add(
            f"4 KiB hot {d}: vdma / memcpy throughput",
            ratio(t(g, "memcpy", 4096), t(g, "vdma", 4096)),
            ">= 0.95",
            lambda v: v >= 0.95,
        )
        for size in [65536, 1048576]:
            add(
                f"{fmt_size(size)} hot {d}: vdma / memcpy throughput",
                ratio(t(g, "memcpy", size), t(g, "vdma", size)),
                ">= 0.98",
                lambda v: v >= 0.98,
            )
        add(
            f"8 B hot {d}: vdma / vm-memory time per call",
            ratio(t(g, "vdma", 8), t(g, "vm-memory", 8)),
            "<= 0.80",
            lambda v: v <= 0.8,
        )
    add(
        "random 8 B over 65,535 mappings: vdma / vm-memory time",
        ratio(t("lookup_random_8b", "vdma", 65535), t("lookup_random_8b", "vm-memory", 65535)),
        "<= 0.50",
        lambda v: v <= 0.5,
    )
    add(
        "hot 8 B read, vdma: 65,535 mappings / 1 mapping time",
        ratio(t("lookup_hot_8b", "vdma", 65535), t("lookup_hot_8b", "vdma", 1)),
        "<= 1.50",
        lambda v: v <= 1.5,
    )
    g = "threads"
    add(
        "vdma 2 threads / 1 thread throughput",
        ratio(t(g, "vdma", 1), t(g, "vdma", 2)),
        ">= 1.90",
        lambda v: v >= 1.9,
    )
    stats = thread_stats()
    for n in [1, 2]:
        add(
            f"vdma {n} thread{'s' if n > 1 else ''} with / without map+unmap thread, throughput",
            ratio(t(g, "vdma", n), t(g, "vdma+map_unmap", n)),
            ">= 0.95 (\"unaffected\")",
            lambda v: v >= 0.95,
        )
        s = stats.get(f"vdma+map_unmap/{n}")
        if s and s["wall_ns"] and rows[-1][1] != "–":
            # How hard the mapper actually worked: with no CPU of its own it may barely run.
            share = s["mapper_cpu_ns"] / s["wall_ns"]
            result = rows[-1][3]
            if share < 0.5:
                result = f"inconclusive ({result}, but the mapper was starved of CPU)"
            rows[-1] = (
                rows[-1][0],
                f"{rows[-1][1]} (mapper: {share:.2f} CPU, "
                f"{s['mapper_ops'] / s['wall_ns'] * 1e9:,.0f} calls/s)",
                rows[-1][2],
                result,
            )
    for f in PACED_FUNCS:
        s = stats.get(f"{f}/1")
        rate = f", {s['mapper_ops'] / s['wall_ns'] * 1e9:,.0f} calls/s" if s and s["wall_ns"] else ""
        add(
            f"vdma 1 thread with / without a mapper paced at {f.split('@')[1]} calls/s{rate}",
            ratio(t(g, "vdma", 1), t(g, f, 1)),
            ">= 0.95 (\"unaffected\")",
            lambda v: v >= 0.95,
        )
    add(
        "reference: memcpy 2 threads / 1 thread throughput (machine limit)",
        ratio(t(g, "memcpy", 1), t(g, "memcpy", 2)),
        "–",
        lambda v: True,
    )
    rows[-1] = rows[-1][:3] + ("(reference)",)

    print("### Targets\n")
    print("| target | measured | goal | result |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def tracking_tables():
    """Issue 3: dirty tracking on/off, report + clear, pin + unpin (bench `tracking`)."""
    def est(group, func, param=None):
        path = os.path.join(ROOT, group, func, *( [str(param)] if param is not None else []), "new", "estimates.json")
        try:
            with open(path) as f:
                e = json.load(f)
        except OSError:
            return None
        key = "slope" if e.get("slope") else "mean"
        return e[key]["point_estimate"]

    rows = []
    off, on = est("dirty_write_4k", "tracking-off"), est("dirty_write_4k", "tracking-on")
    if off and on:
        rows.append(("4 KiB writes: tracking on / off throughput", f"{off / on:.2f}", ">= 0.95",
                     "met" if off / on >= 0.95 else "**missed**"))
    mc, rep = est("dirty_report_64g", "memcpy"), est("dirty_report_64g", "vdma")
    if mc and rep:
        rows.append(("report + clear of 64 GiB at 4 KiB (2 MiB bitmap) / memcpy of 2 MiB, bandwidth",
                     f"{mc / rep:.2f} ({fmt_ns(rep)} vs {fmt_ns(mc)})", ">= 0.50",
                     "met" if mc / rep >= 0.5 else "**missed**"))
    for name in ["vdma", "vdma-no-mlock"]:
        for n in [1, 512]:
            v = est("pin_unpin", name, n)
            if v:
                per = v / n
                rows.append((f"pin + unpin of {n} page{'s' if n > 1 else ''}, {name}: per page",
                             fmt_ns(per), "< 100 ns", "met" if per < 100 else "**missed**"))
    if not rows:
        return
    print("### Pinning and dirty tracking (`cargo bench -p vdma --bench tracking`)\n")
    print("| target | measured | goal | result |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def vfio_user_tables():
    """Issue 4: the vfio-user path (bench `engine` of crates/vdma-cli)."""
    ping, rtt = estimate("region_write_rtt", "socket-pingpong", ""), None
    rtt = estimate("region_write_rtt", "vdma", "")
    if rtt is None:
        return
    print("### vfio-user (`cargo bench -p vdma-cli --bench engine`)\n")
    print("| REGION_WRITE round trip (4 B register) | time |")
    print("|---|---|")
    print(f"| socketpair ping-pong of the same sizes (the limit) | {fmt_time(ping)} |")
    print(f"| vdma client -> vdma server -> dma-engine register | {fmt_time(rtt)} |")
    print()
    print("| COPY size | fd-mapped memory | message-backed (DMA_READ/WRITE) | fd GiB/s | message GiB/s | message / fd (thrpt) |")
    print("|---|---|---|---|---|---|")
    for size in [4096, 65536, 1048576]:
        fd, msg = estimate("engine_copy", "fd", size), estimate("engine_copy", "message", size)
        if fd is None or msg is None:
            continue
        print(f"| {fmt_size(size)} | {fmt_time(fd)} | {fmt_time(msg)} | {gib_s(size, fd[0]):.2f} | "
              f"{gib_s(size, msg[0]):.2f} | {fd[0] / msg[0]:.2f} |")
    print()


def main():
    if not os.path.isdir(ROOT):
        sys.exit(f"no criterion output at {ROOT}; run `cargo bench -p vdma --bench dma` first")
    print(f"<!-- generated by crates/vdma/benches/report.py from {ROOT} -->\n")
    targets()
    for g in ["copy_hot_read", "copy_hot_write", "copy_sweep_read", "copy_sweep_write"]:
        copy_table(g)
    routine_table()
    lookup_random_table()
    lookup_hot_table()
    threads_table()
    tracking_tables()
    vfio_user_tables()


if __name__ == "__main__":
    main()
