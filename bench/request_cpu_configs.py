"""``bench/request_cpu.py --configs``: server CPU per request under several server environments
in one run (not a test; prints a table).

Every configuration of `CONFIGS` gets its own `promptserve serve` (started one after the other
on one store, all kept running, each writing its output to a file as a deployment would), and
each round measures every server in turn (the order rotates from round to round), as
`request_cpu.measure_one` measures one: the server's CPU time from /proc over the requests
wrk sent. Per configuration the table gives the median over the rounds and their spread (max
- min), and the difference to the baseline: the median over the rounds of (configuration -
baseline, same round), which cancels the machine's drift between rounds. A configuration
whose variables the server does not know yet runs all the same (unknown variables are ignored)
and then measures like the baseline.

    python bench/request_cpu.py --configs --rounds 5 --seconds 10
    python bench/request_cpu.py --configs tracing --rounds 3     # the baseline always runs
    python bench/request_cpu.py --configs --before ../old-checkout  # + that code, as "before"

With ``--before DIR`` a row ``before`` runs the baseline environment on the code of another
checkout (a ``git worktree`` of an older commit with its own ``.venv``), in the same rounds, so
"baseline - before" is what the newer code costs per request.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from request_cpu import Row, measure_one, small_png, start

# name -> the server environment over the bench's own (see request_cpu.start); the first is
# the baseline every other is compared with. Add a row to compare another setting.
CONFIGS: dict[str, dict[str, str]] = {
    "baseline": {},
    "json-logs": {"PROMPTSERVE_LOG_FORMAT": "json"},
    "access-log": {"PROMPTSERVE_ACCESS_LOG": "true"},
    # every request traced, exported over OTLP to a closed local port (nothing listens)
    "tracing": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "bench"},
}
BASELINE = next(iter(CONFIGS))
BEFORE = "before"  # --before DIR: the baseline environment on the code of another checkout


def compare_configs(args: argparse.Namespace) -> None:
    names = [BASELINE] + [name for name in (args.configs or CONFIGS) if name != BASELINE]
    unknown = [name for name in names if name not in CONFIGS]
    if args.before is not None:  # the same baseline environment, on an older checkout's code
        names.append(BEFORE)
    if unknown:
        sys.exit(f"unknown configs {unknown}; known: {', '.join(CONFIGS)}")
    workers, shape = args.workers[0], args.shapes[0]
    rows: dict[str, list[Row]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or Path(scratch) / "store"
        image = Path(scratch) / "image.png"
        image.write_bytes(small_png(args.image_size))
        servers = {}
        try:
            for name in names:
                log = (Path(scratch) / f"{name}.log").open("wb")
                if name == BEFORE:
                    servers[name] = start(store, workers, args, {}, log, checkout=args.before)
                else:
                    servers[name] = start(store, workers, args, CONFIGS[name], log)
            for round_ in range(args.rounds):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    process, url = servers[name]
                    rows[name].append(measure_one(process, url, workers, shape, image, args))
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    print_table(rows, args, workers, shape)


def print_table(
    rows: dict[str, list[Row]], args: argparse.Namespace, workers: int, shape: str
) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{args.backbone}, {args.image_size} px PNG, {shape}, {workers} worker(s), wrk -t1 "
        f"-c{args.connections} {args.seconds} s x {args.rounds} rounds, onnx_threads 1, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    header = (
        f"{'config':<12} {'req/s':>8} {'server ms/req':>14} {'spread':>7} "
        f"{'non-engine ms/req':>18} {'spread':>7} {'d server ms':>12} {'d non-engine ms':>16}"
    )
    print(header)
    print("-" * len(header))
    base = rows[BASELINE]
    for name, runs in rows.items():
        server = [r.per_request_ms for r in runs]
        other = [r.non_engine_ms for r in runs]
        d_server = [a.per_request_ms - b.per_request_ms for a, b in zip(runs, base, strict=True)]
        d_other = [a.non_engine_ms - b.non_engine_ms for a, b in zip(runs, base, strict=True)]
        print(
            f"{name:<12} {statistics.median(r.requests / r.seconds for r in runs):>8.1f} "
            f"{statistics.median(server):>14.3f} {max(server) - min(server):>7.3f} "
            f"{statistics.median(other):>18.3f} {max(other) - min(other):>7.3f} "
            f"{statistics.median(d_server):>+12.3f} {statistics.median(d_other):>+16.3f}"
        )
