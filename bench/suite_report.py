"""The suite's tables and chart: per-data-set and average base, novel and HM (bench/suite.py)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from promptserve.training.protocols import harmonic_mean


def average(results: dict[str, Any], names: list[str]) -> dict[str, dict[str, float]]:
    """Per method: the mean over data sets of base and novel, HM of those means (as the papers
    average), and the std over seeds of the per-seed suite averages."""
    methods = list(results[names[0]]["methods"])
    out: dict[str, dict[str, float]] = {}
    for method in methods:
        rows = [results[n]["methods"][method] for n in names]
        mean = {k: statistics.fmean(r[k] for r in rows) for k in ("base", "novel")}
        mean["hm"] = harmonic_mean(mean["base"], mean["novel"])  # as the papers average
        seeds = rows[0].get("per_seed") or []
        keys = ("base", "novel", "hm")
        per_seed = [
            {k: statistics.fmean(r["per_seed"][i][k] for r in rows) for k in keys}
            for i in range(len(seeds))
        ]
        for seed_row in per_seed:
            seed_row["hm"] = harmonic_mean(seed_row["base"], seed_row["novel"])
        std = {
            k: statistics.pstdev(s[k] for s in per_seed) if per_seed else 0.0
            for k in ("base", "novel", "hm")
        }
        out[method] = {**mean, **{f"{k}_std": v for k, v in std.items()}}
    return out


def markdown(results: dict[str, Any], suite_names: list[str]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.1f} ± {row['std'][key]:.1f}"

    methods = list(results[next(iter(results))]["methods"])
    lines = ["| method | " + " | ".join(suite_names + ["**average**"]) + " |"]
    lines.append("|---" * (len(suite_names) + 2) + "|")
    probe = [f"{results[n]['probe']:.1f}" for n in suite_names]
    mean_probe = statistics.fmean(results[n]["probe"] for n in suite_names)
    lines.append("| linear probe (base) | " + " | ".join([*probe, f"{mean_probe:.1f}"]) + " |")
    avg = average(results, suite_names)
    for method in methods:
        for key, label in (("base", "base"), ("novel", "novel"), ("hm", "HM")):
            cells = [cell(results[n]["methods"][method], key) for n in suite_names]
            a = avg[method]
            cells.append(f"**{a[key]:.1f}** ± {a[key + '_std']:.1f}")
            lines.append(f"| `{method}` {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: dict[str, Any], suite_names: list[str], path: Path, shots: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = average(results, suite_names)
    methods = list(avg)
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    width = 0.27
    for i, (key, label) in enumerate((("base", "base"), ("novel", "novel"), ("hm", "HM"))):
        xs = [m + (i - 1) * width for m in range(len(methods))]
        ax.bar(xs, [avg[m][key] for m in methods], width, label=label,
               yerr=[avg[m][key + "_std"] for m in methods], capsize=2)  # fmt: skip
    ax.axhline(avg["zeroshot"]["hm"], color="grey", lw=0.8, ls="--", label="zero-shot HM")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("top-1 % (suite average)")
    low = min(min(avg[m][k] for k in ("base", "novel", "hm")) for m in methods)
    ax.set_ylim(max(0, low - 10), 100)
    ax.legend(ncol=4, fontsize=8, loc="upper left")
    ax.set_title(f"mini, base-to-novel over {len(suite_names)} data sets, {shots} shots")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
