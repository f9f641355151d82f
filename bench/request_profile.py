"""Where a single-image ``POST /classify`` spends the server's CPU (not a test; prints a table).

A real `promptserve serve` (``--workers N``) is loaded by ``wrk`` with one small PNG per request
(multipart or JSON) while ``py-spy`` (``pip install py-spy``) samples every server process. The
samples are summed per function, inclusive and self, and the inclusive shares of the main stages
of a request are printed: HTTP parsing (uvicorn), routing and middleware, body parsing, image
decoding, the engine, scoring, the response.

    python bench/request_profile.py --shape multipart --seconds 15
    python bench/request_profile.py --shape json --workers 2
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from request_cpu import LUA, descendants, small_png, start

# (stage, substring of a "function (file:line)" frame); a stack counts for the innermost frame
# that names a stage, so time in a library (pydantic, PIL) goes to the step that called it
STAGES = (
    ("engine (ONNX Runtime)", "onnxruntime"),
    ("image decode + preprocess", "prepare_image"),
    ("image decode + preprocess", "service/classify/images.py"),
    ("body parsing", "read_form"),
    ("body parsing", "read_multipart"),
    ("body parsing", "read_json"),
    ("scoring (rank)", "rank ("),
    ("labels and classifier lookup", "store.py"),
    ("labels and classifier lookup", "labels.py"),
    ("response encoding", "serialize_response"),
    ("response encoding", "encode_result"),
    ("response encoding", "jsonable_encoder"),
    ("response encoding", "render ("),
    ("engine link (worker <-> engine)", "service/remote"),
    ("batcher", "batcher.py"),
    ("classify route and pipeline", "service/api/routes/classify.py"),
    ("classify route and pipeline", "pipeline.py"),
    ("metrics, admission, body limit", "service/api/middleware.py"),
    ("metrics, admission, body limit", "service/api/request_metrics.py"),
    ("metrics, admission, body limit", "service/metrics.py"),
    ("FastAPI: dependencies, params", "fastapi/"),
    ("Starlette: routing, requests", "starlette/"),
    ("HTTP protocol (uvicorn)", "uvicorn/"),
    ("HTTP protocol (uvicorn)", "httptools"),
    ("HTTP protocol (uvicorn)", "h11"),
    ("thread hand-offs", "concurrent/futures"),
    ("thread hand-offs", "to_thread"),
    ("event loop", "asyncio/"),
    ("event loop", "uvloop"),
)
# leaves of a thread that waits (py-spy samples them too): a selector, a condition, a pool
# worker waiting for work
IDLE = (".select (", "Condition.wait (", "Queue.get (", "_worker (", "sleep (")


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, needle in STAGES:
            if needle in frame:
                return stage
    return "other"


def summarise(raw: Path, top: int) -> None:
    samples = 0
    stages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if any(frames[-1].startswith(idle) or idle in frames[-1] for idle in IDLE):
            continue
        samples += count
        stages[stage_of(frames)] += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"\n{samples} samples of running threads")
    print(f"\n{'stage':<36} {'share':>6}")
    for stage, count in stages.most_common():
        print(f"{stage:<36} {100 * count / samples:>5.1f}%")
    print(f"\n{'self %':>6}  top functions by own time")
    for frame, count in self_time.most_common(top):
        print(f"{100 * count / samples:>5.1f}%  {frame[:120]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mini")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shape", choices=["multipart", "json"], default="multipart")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    args.shapes = [args.shape]
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or Path(scratch) / "store"
        image = Path(scratch) / "image.png"
        image.write_bytes(small_png(args.image_size))
        process, url = start(store, args.workers, args)
        try:
            wrk = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds + 4}s"]
            load = subprocess.Popen([*wrk, "-s", str(LUA), url, "--", str(image), args.shape])
            spies = []
            for pid in descendants(process.pid):
                out = Path(scratch) / f"{pid}.txt"
                command = ["py-spy", "record", "--format", "raw", "-d", str(args.seconds)]
                command += ["-r", "200", "-p", str(pid), "-o", str(out), "--nonblocking"]
                spies.append((out, subprocess.Popen(command, stdout=subprocess.DEVNULL)))
            for _, spy in spies:
                spy.wait()
            load.wait()
        finally:
            process.terminate()
            process.wait(timeout=60)
        merged = Path(scratch) / "all.txt"
        merged.write_text("".join(out.read_text() for out, _ in spies if out.exists()))
        summarise(merged, args.top)


if __name__ == "__main__":
    main()
