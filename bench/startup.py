"""How long `promptserve serve` takes to be ready on a store of published classifiers, and the
memory its processes hold once ready (one process, and --workers 2), median of a few starts:

    python bench/startup.py                      # 5 starts each, mini default classifier

The store is made by a first start (it exports the default classifier; not counted). Memory is
the resident set (VmRSS) summed over the server's process tree, which counts pages the
processes share more than once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processes import descendants
from vs_naive import promptserve


def resident_mb(pid: int) -> float:
    total = 0
    for each in descendants(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def start(store: Path, workers: int, scratch: Path) -> tuple[float, float]:
    """(seconds to ready, resident MB once ready) of one start, then stop it."""
    started = time.perf_counter()
    server = promptserve(store, workers, scratch)
    ready = time.perf_counter() - started
    try:
        return ready, resident_mb(server.process.pid)
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        store = scratch / "store"
        start(store, 1, scratch)  # the first start exports the default classifier
        print("| processes | ready, s (median) | resident MB (median) | starts |")
        print("|---|---|---|---|")
        for workers in args.workers:
            runs = [start(store, workers, scratch) for _ in range(args.starts)]
            ready = statistics.median(r for r, _ in runs)
            resident = statistics.median(m for _, m in runs)
            label = "serve" if workers == 1 else f"serve --workers {workers}"
            print(f"| {label} | {ready:.2f} | {resident:.0f} | {len(runs)} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
