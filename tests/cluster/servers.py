"""Real infrastructure for the cluster tests, started on 127.0.0.1 with random ports: a
throwaway Postgres cluster (the Debian packages' initdb and pg_ctl), moto's S3 server, and
`promptserve worker` processes.

Each is skipped with a clear message only where its binaries or package are absent; `.ci/run`
installs Postgres and `make setup` installs moto (the dev extra).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service.servers import REPO, free_port


def _postgres_bin() -> Path | None:
    """The directory with initdb and pg_ctl: on PATH, or Debian's versioned directory."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the packages' `postgres` user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass(frozen=True)
class Postgres:
    url: str
    data: Path
    bin: Path


class UnavailableError(Exception):
    """A component cannot be started here (its binaries or package are absent)."""


@contextmanager
def running_postgres() -> Iterator[Postgres]:
    """A fresh Postgres cluster on a random port, removed afterwards; its URL names database
    `postgres`. Raises UnavailableError without the binaries."""
    bindir = _postgres_bin()
    if bindir is None:
        raise UnavailableError(
            "Postgres binaries (initdb, pg_ctl) are absent: apt-get install postgresql"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise UnavailableError("running as root without runuser: cannot start Postgres as postgres")
    # not under pytest's temporary root: that is private to the user who runs the tests
    root = Path(tempfile.mkdtemp(prefix="promptserve-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    init = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    options += " -c max_connections=300"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log")]
    try:
        _run(_as_postgres_user(init))
        _run(_as_postgres_user([*start, "-w", "start"]))
        yield Postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, bindir)
    finally:
        stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(_as_postgres_user(stop), check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pytest.importorskip("psycopg", reason="psycopg is absent: pip install -e '.[dev]'")
    try:
        with running_postgres() as server:
            yield server
    except UnavailableError as exc:
        pytest.skip(str(exc))


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{command[-1]} failed:\n{done.stdout}\n{done.stderr}")


def fresh_database(server: Postgres, name: str) -> str:
    """A new, empty database on `server`; returns its URL."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_s3(log: Path) -> Iterator[S3Server]:
    """moto's S3 server (a real HTTP server speaking the S3 API) on a random port."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield S3Server(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is absent: pip install -e '.[dev]'")
    pytest.importorskip("s3fs", reason="s3fs is absent: pip install -e '.[dev]'")
    with running_s3(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_worker(root: Path, index: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "promptserve.service.cli", "worker", "--slots", "2"]
    command += ["--store", str(root / f"worker{index}-store")]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    environment |= {"HF_HUB_OFFLINE": "1", **env}
    with (root / f"worker{index}.log").open("wb") as sink:
        # its own session: killing the group takes the worker and its job processes, as a
        # host that dies would
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
