"""Every benchmark script imports: a renamed function or module breaks the script that uses it
here, not when someone next runs the benchmark (the scripts are not type-checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (REPO / "bench").glob("*.py"))


def test_every_bench_script_imports() -> None:
    assert len(SCRIPTS) >= 10, SCRIPTS
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *SCRIPTS],
        cwd=REPO / "bench",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
