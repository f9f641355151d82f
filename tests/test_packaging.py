"""The project installs one top-level name, `promptserve`, mapped onto the four folders."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "training", "service", "client")


def test_every_package_folder_is_installed_under_promptserve() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {f"promptserve.{name}": name for name in FOLDERS}
    on_disk = {
        "promptserve." + ".".join(init.parent.relative_to(ROOT).parts)
        for name in FOLDERS
        for init in (ROOT / name).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk


def test_only_promptserve_is_importable_outside_the_checkout(tmp_path: Path) -> None:
    script = (
        "import importlib.util, promptserve.models.backbone, promptserve.service.cli\n"
        "print(all(importlib.util.find_spec(n) is None\n"
        "          for n in ('models', 'training', 'service', 'client')))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert answer.stdout.strip() == "True"


def test_no_module_imports_the_bare_folder_names() -> None:
    bare = re.compile(r"\s*(from|import)\s+(models|training|service|client)\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in (*FOLDERS, "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if bare.match(line)
    ]
    assert offenders == []


def test_the_mini_weights_are_committed_in_full() -> None:
    """The mini backbone is never a reason to skip: a packaging or LFS slip fails here."""
    from promptserve.models.backbone import WEIGHTS_DIR

    weights = WEIGHTS_DIR / "mini.safetensors"
    assert weights.is_file(), weights
    assert weights.stat().st_size > 1_000_000, "a pointer file, not the weights"
    assert not weights.read_bytes()[:100].startswith(b"version https://git-lfs")
