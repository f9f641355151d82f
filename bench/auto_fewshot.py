"""`method=auto` against every single method on suite sets, few-shot protocol, all classes (a
table, not a test).

Per data set of `bench/suite.py` (the quick sizing: 16 classes, 16 train / 2 val / 8 test
images per class) and seed: each method's test top-1 (`promptserve eval --protocol fewshot
--method M`, its `mini` preset when it has one; coop also with `mini_csc`), then auto's, and
auto's gap to the best single method of that set.

    python bench/auto_fewshot.py --sets Hue25 Sepia Synonyms --seeds 1   # ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import QUICK, SUITE, make_root  # noqa: E402

from promptserve.models.methods import get_method, list_methods  # noqa: E402
from promptserve.training.protocols import ProtocolRequest, run_protocol  # noqa: E402

# (label, method, preset): every registered method at its mini preset, and coop's csc variant
SINGLES = [(m, m, "mini" if "mini" in get_method(m).presets else None) for m in list_methods()]
SINGLES.append(("coop_csc", "coop", "mini_csc"))


def run(method: str, preset: str | None, root: Path, seeds: tuple[int, ...]) -> dict[str, Any]:
    request = ProtocolRequest(
        protocol="fewshot", method=method, shots=16, seeds=seeds, data=str(root), preset=preset
    )
    return run_protocol(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=[s.name for s in SUITE])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--work", type=Path, default=Path("bench-out/suite-data"))
    parser.add_argument("--json", type=Path, default=Path("bench-out/auto_fewshot.json"))
    args = parser.parse_args()
    seeds = tuple(args.seeds)
    rows: dict[str, Any] = {}
    for dataset in [s for s in SUITE if s.name in args.sets]:
        root = make_root(dataset, QUICK, args.work)
        singles = {label: float(run(m, p, root, seeds)["accuracy"]) for label, m, p in SINGLES}
        report = run("auto", None, root, seeds)
        best = max(singles, key=lambda label: singles[label])
        rows[dataset.name] = {
            "singles": singles,
            "auto": float(report["accuracy"]),
            "best": best,
            "chosen": [seed["winner"] for seed in report["auto"]],
            "leaderboards": report["auto"],
        }
        print(f"{dataset.name}: {rows[dataset.name]}", file=sys.stderr, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"seeds": seeds, "sets": rows}, indent=1))
    print(f"\nfew-shot, 16 shots, all classes, seeds {' '.join(map(str, seeds))}, test top-1\n")
    print("| set | best single method | auto (its choice per seed) | auto - best | every method |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        best, auto = row["singles"][row["best"]], row["auto"]
        every = ", ".join(f"{k} {v:.1f}" for k, v in row["singles"].items())
        chosen = ", ".join(row["chosen"])
        print(
            f"| {name} | {row['best']} {best:.1f} | {auto:.1f} ({chosen}) | {auto - best:+.1f} "
            f"| {every} |"
        )
    gaps = [row["auto"] - row["singles"][row["best"]] for row in rows.values()]
    print(f"\nmean gap {statistics.fmean(gaps):+.2f}, worst {min(gaps):+.2f}")


if __name__ == "__main__":
    main()
