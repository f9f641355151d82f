"""Docker for the deployment tests: the local base image, the wheels served to the build, the
image build, compose projects and waits on containers.

No registry is reachable from CI, so nothing is pulled: the base is a Debian bookworm made with
debootstrap and `docker import`ed once (the tarball and the image are kept between runs), and
the build installs torch and its CUDA wheels from the copies pip keeps on this machine's disk.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PROMPTSERVE_IMAGE_CACHE", Path.home() / ".cache/promptserve-image"))
BASE_IMAGE = "promptserve-base:bookworm"
MIRROR = "http://deb.debian.org/debian"
# Debian's docker.io CLI (what .ci/run installs) has BuildKit built in, so `--secret` works; a
# newer CLI without the buildx plugin falls back to the legacy builder, which has neither.
DOCKER = os.environ.get("PROMPTSERVE_DOCKER") or (
    "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else "docker"
)


def docker(*args: str, timeout: float = 600, check: bool = True) -> str:
    """Run the docker CLI; its stdout (stderr joins it in the error when `check` fails)."""
    done = subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | {"DOCKER_BUILDKIT": "1"},
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {done.returncode}\n{done.stderr[-4000:]}")
    return done.stdout


def daemon_answers() -> bool:
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_exists(tag: str) -> bool:
    return bool(docker("images", "-q", tag).strip())


def make_base_image() -> str:
    """The bookworm base, imported from a cached debootstrap tarball (made on the first run)."""
    if image_exists(BASE_IMAGE):
        return BASE_IMAGE
    tarball = CACHE / "bookworm.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
                check=True,
                capture_output=True,
                timeout=1200,
            )
            partial = tarball.with_suffix(".part")
            with partial.open("wb") as out:
                subprocess.run(["tar", "-C", str(rootfs), "-c", "."], stdout=out, check=True)
            partial.rename(tarball)
    docker("import", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


def wheel_folder(name: str = "wheels", requirements: tuple[str, ...] = ()) -> Path:
    """Every wheel an image installs, kept in the cache (by default the project's own): pip
    reads torch and its CUDA wheels from this machine's local indexes (pip config), the rest
    from the package index once."""
    folder = CACHE / name
    folder.mkdir(parents=True, exist_ok=True)
    wanted = requirements or (f"{ROOT}[cluster,tracing]", "setuptools>=68")
    key = (ROOT / "pyproject.toml").read_bytes() if not requirements else "\n".join(wanted).encode()
    stamp = folder / f".complete-{hashlib.sha256(key).hexdigest()[:16]}"
    if stamp.is_file():  # already downloaded for these requirements
        return folder
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder), *wanted],
        check=True,
        timeout=1800,
    )
    stamp.touch()
    return folder


@contextmanager
def served(folder: Path) -> Iterator[str]:
    """`folder` over HTTP on a free local port (a build with `--network host` reaches it)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def build_image(
    tag: str,
    base: str,
    wheels_url: str | None,
    *,
    dockerfile: Path | None = None,
    args: dict[str, str] | None = None,
) -> None:
    """The repository's Dockerfile (or `dockerfile`, built in its own folder) on `base`, with
    pip reading only the served wheels.

    Their URL reaches pip as the secret `pip_config`, not as a build argument: its port changes
    every run, and a build argument would be part of the cache key of the layers that install.
    """
    command = ["build", "--network", "host", "-t", tag, "--build-arg", f"BASE_IMAGE={base}"]
    for name, value in (args or {}).items():
        command += ["--build-arg", f"{name}={value}"]
    cert = pip_cert()
    if cert:
        command += ["--secret", f"id=pip_cert,src={cert}"]
    if dockerfile is not None:
        command += ["-f", str(dockerfile)]
    with tempfile.TemporaryDirectory() as tmp:
        if wheels_url is not None:
            config = Path(tmp) / "pip.conf"
            config.write_text(f"[global]\nno-index = true\nfind-links = {wheels_url}\n")
            command += ["--secret", f"id=pip_config,src={config}"]
        docker(*command, str(dockerfile.parent if dockerfile else ROOT), timeout=3600)


def pip_cert() -> str | None:
    """The CA bundle pip on this host is configured with, if any (handed to the build as a
    secret, for anything it fetches through a TLS-intercepting proxy)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    for path in re.findall(r"^\S*\.cert='([^']+)'$", listed, re.MULTILINE):
        if Path(path).is_file():
            return path
    return None


class _Reset:
    """Compose's `!reset`: the key is dropped from what the files before it said."""


def _reset(_loader: yaml.SafeLoader, _node: yaml.Node) -> _Reset:
    return _Reset()


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", _reset)


def merged_compose(*files: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compose files merged as `docker compose -f a -f b` does (mappings merged key by key,
    anything else replaced, `!reset` removes), so that Debian's compose 1.x, which has no
    `!reset`, runs exactly what compose 2 would."""
    merged: dict[str, Any] = {}
    for document in [*(yaml.load(f.read_text(), _ComposeLoader) for f in files), overrides or {}]:
        merged = _merge(merged, document)
    return merged


def _merge(base: Any, override: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, _Reset):
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def compose_command() -> list[str]:
    """Compose 2 (`docker compose`) where the CLI has it, else Debian's `docker-compose`."""
    if subprocess.run([DOCKER, "compose", "version"], capture_output=True).returncode == 0:
        return [DOCKER, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("no docker compose: install Debian's docker-compose (see .ci/run)")


def health(container: str) -> str:
    """The container's health status, or its state when it has stopped."""
    form = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
    state = docker("inspect", "-f", form, container)
    status, _, healthy = state.strip().partition(" ")
    return healthy if status == "running" and healthy else status


def wait_healthy(container: str, timeout: float = 600) -> float:
    """Seconds until Docker's own health check says `healthy` (raises on exit or timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        status = health(container)
        if status == "healthy":
            return time.monotonic() - start
        if status in ("exited", "dead") or restarts(container):
            break  # it stopped, or it crashed and Docker restarted it
        time.sleep(2)
    raise AssertionError(f"{container} is {health(container)}, not healthy:\n{logs(container)}")


def restarts(container: str) -> int:
    return int(docker("inspect", "-f", "{{.RestartCount}}", container))


def logs(container: str, tail: int = 80) -> str:
    """The container's output, stdout and stderr together."""
    done = subprocess.run(
        [DOCKER, "logs", "--tail", str(tail), container], capture_output=True, text=True
    )
    return done.stdout + done.stderr
