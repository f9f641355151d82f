"""The one-shot check of the GPU path (not a test; writes JSON after every step). Made for the
first minutes on a GPU host:

    python bench/gpu_check.py --out gpu_check.json      # cuda, mini backbone, ~8 minutes
    python bench/gpu_check.py --smoke --out smoke.json  # anywhere: CPU, tiny backbone, fast

Steps (each one's failure is recorded and the next one runs; a step that needs CUDA is
recorded as skipped, with the reason, where there is none):

  environment   driver, CUDA builds of torch and ONNX Runtime, the providers a probe session
                really gets (without torch, with torch imported, after ort.preload_dlls())
  providers     the providers each engine variant's session got (copy, bound, fp16, tensorrt)
  parity        zeroshot, coop, sep, provp (a shared graph): every variant against eager on the
                CPU (max-abs, min cosine, top-1 agreement)
  stream_order  a copy into the input queued behind a 0.5 s kernel, then the engine
  nvjpeg_race   a freed block still read by queued work, then a decode: bare and with the fix
  decode        4:2:0, 4:4:4, progressive, grey, EXIF 6/8, tiny and CMYK JPEGs on the device
                against the CPU path, with the fallbacks counted
  concurrency   64 concurrent requests through the real app and batcher against serial ones
  memory        10 loaded classifiers, batches 1..32: device memory and first-call latency
  tensorrt      two graphs of one structure sharing a cache give different embeddings
  training      2 epochs of coop (bf16 autocast on CUDA), and a spawned job pinned to its GPU
  bench         a short bench/gpu.py run, its rows labelled with the providers really used
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the steps (torch, the models) are imported in main(): spawned processes re-import this file
STEP_NAMES = [
    "environment",
    "providers",
    "parity",
    "stream_order",
    "nvjpeg_race",
    "decode",
    "concurrency",
    "memory",
    "tensorrt",
    "training",
    "pinned_job",
    "bench",
]


class Report:
    """The JSON written after every step: what ran, how long, its result, error or skip."""

    def __init__(self, out: Path, check: Any) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "mode": "smoke" if check.smoke else "gpu",
            "device": check.device,
            "backbone": check.backbone,
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "steps": {},
        }
        self.write()

    def run(self, name: str, step: Callable[[Any], dict[str, Any]], check: Any) -> None:
        started = time.perf_counter()
        entry: dict[str, Any]
        try:
            result = step(check)
            entry = {"status": "failed" if result.get("failures") else "ok", "result": result}
        except Exception as exc:  # every failure is a finding: record it, run the next step
            entry = failure_entry(exc)
        entry["seconds"] = round(time.perf_counter() - started, 2)
        self.data["steps"][name] = entry
        self.write()
        detail = entry.get("reason") or entry.get("error") or ""
        print(f"{name:<13} {entry['status']:<8} {entry['seconds']:>7.1f}s {detail}"[:160])

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def failure_entry(exc: Exception) -> dict[str, Any]:
    """A step's exception as its JSON entry: a skip gives a reason, anything else fails."""
    from gpu_check_steps import SkippedStepError

    if isinstance(exc, SkippedStepError):
        return {"status": "skipped", "reason": str(exc)}
    lines = traceback.format_exception(exc)
    return {
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(lines[-6:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny backbone, short steps")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    parser.add_argument("--backbone", default=None, help="default mini (tiny with --smoke)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--steps", nargs="*", default=STEP_NAMES, choices=STEP_NAMES)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gpu_check_serving import STEPS
    from gpu_check_steps import Check

    assert list(STEPS) == STEP_NAMES, "STEP_NAMES and gpu_check_serving.STEPS disagree"
    device = args.device or ("cpu" if args.smoke else "cuda")
    backbone = args.backbone or ("tiny" if args.smoke else "mini")
    with tempfile.TemporaryDirectory() as scratch:
        check = Check(device, backbone, args.smoke, Path(scratch), args.out.parent)
        report = Report(args.out, check)
        for name in args.steps:
            report.run(name, STEPS[name], check)
    failed = [n for n, e in report.data["steps"].items() if e["status"] == "failed"]
    print(f"written to {args.out}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
