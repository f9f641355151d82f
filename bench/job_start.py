"""How long a short tuning job takes from its 202 to ``succeeded`` on a real `promptserve serve`,
the first job of the process against the ones after it (not a test; prints a table):

    python bench/job_start.py              # 4 zeroshot jobs, one after the other, on mini

Each job is a ``zeroshot`` classifier of four synthetic colour-shape classes (one image each),
so its own work (the text tower, an export and its parity check) is small and what is left is
the job process's start. Niceness 0 and one torch thread, so the figure is the start itself.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from vs_naive import promptserve

CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128,) * 3}


def png(colour: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, "PNG")
    return out.getvalue()


def run_job(http: httpx.Client, name: str) -> float:
    """Seconds from sending one zeroshot job to seeing it succeeded."""
    files = [("images", (f"{n}.png", png(c), "image/png")) for n, c in CLASSES.items()]
    data = {"labels": list(CLASSES), "name": name, "method": "zeroshot"}
    started = time.perf_counter()
    answer = http.post("/adapt", files=files, data=data)
    answer.raise_for_status()
    job_id = answer.json()["id"]
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.05)
    if job["state"] != "succeeded":
        raise SystemExit(f"job {job_id} ended {job['state']}: {job.get('error')}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        env = {"PROMPTSERVE_JOB_NICENESS": "0", "PROMPTSERVE_JOB_THREADS": "1"}
        server = promptserve(scratch / "store", 1, scratch, env)
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                seconds = [run_job(http, f"job{i}") for i in range(args.jobs)]
        finally:
            server.process.terminate()
            server.process.wait(timeout=60)
    print("| job | seconds from the 202 to succeeded |")
    print("|---|---|")
    print(f"| the process's first | {seconds[0]:.2f} |")
    later = seconds[1:]
    if later:
        print(f"| the {len(later)} after it (median) | {statistics.median(later):.2f} |")


if __name__ == "__main__":
    main()
