"""Settings you can see: a mistyped PROMPTSERVE_* variable warns at start-up with the nearest
setting (a real `promptserve serve`, and the .env file), the project's other PROMPTSERVE_*
variables do not, and `promptserve config` prints every setting with its source, secrets
masked, as text or JSON."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from promptserve.service.cli import main
from promptserve.service.settings import Settings
from promptserve.service.settings_report import (
    OTHER_PREFIXES,
    OTHER_VARIABLES,
    unknown_settings,
    warn_unknown_settings,
)
from tests.service.servers import REPO, free_port, stop_server
from tests.service.servers import Server as RunningServer
from tests.waiting import wait_until

TYPO = "PROMPTSERVE_MAX_BATCH_SZIE"
WARNING = f"{TYPO} is not a setting; did you mean PROMPTSERVE_MAX_BATCH_SIZE?"
# the deliberate typos of these tests and the docs: every other PROMPTSERVE_* name in the
# repository is a setting or one of OTHER_VARIABLES
EXAMPLE_TYPOS = {TYPO, "PROMPTSERVE_MAX_WAIT_MZ", "PROMPTSERVE_NO_SUCH_THING"}
SCANNED = {".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".conf", ".cfg", ".ini", ".txt"}
SKIPPED_DIRS = {".git", ".venv", "site", ".site", "build", "node_modules", ".typecheck"}


@pytest.mark.slow
def test_a_real_serve_start_warns_once_naming_the_nearest_setting(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSERVE_")}
    env |= {
        "PROMPTSERVE_DEVICE": "cpu",
        "PROMPTSERVE_CREATE_DEFAULT": "false",  # up at once, without exporting a classifier
        TYPO: "8",
        "PROMPTSERVE_URL": "http://127.0.0.1:1",  # the client's: no warning
        "PROMPTSERVE_API_REPLICAS": "2",  # compose's: no warning
    }
    command = [sys.executable, "-m", "promptserve.service.cli", "serve", "--store"]
    command += [str(tmp_path / "store"), "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until(
            lambda: "Application startup complete" in log.read_text() or process.poll() is not None,
            timeout=300,
        )
        text = log.read_text()
        assert process.poll() is None, text
    finally:
        stop_server(server)
    warnings = [line for line in text.splitlines() if "is not a setting" in line]
    assert len(warnings) == 1, text
    assert " WARNING " in warnings[0]
    assert warnings[0].endswith(WARNING)


def test_settings_in_any_case_and_the_projects_other_variables_do_not_warn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environ = dict.fromkeys(OTHER_VARIABLES, "1")
    environ |= {f"{prefix}POSTGRES": "x" for prefix in OTHER_PREFIXES}
    environ |= {"promptserve_max_batch_size": "8", "PROMPTSERVE_STORE": "s", "OTHER": "y"}
    assert unknown_settings(environ) == []
    assert unknown_settings({**environ, "PROMPTSERVE_NO_SUCH_THING": "1"}) == [
        "PROMPTSERVE_NO_SUCH_THING is not a setting; see docs/reference/settings.md"
    ]


def test_every_promptserve_variable_the_repository_names_is_known() -> None:
    found: dict[str, Path] = {}
    for path in REPO.rglob("*"):
        if SKIPPED_DIRS & set(path.relative_to(REPO).parts) or ".egg-info" in str(path):
            continue
        if path.is_file() and (path.suffix in SCANNED or path.name in {"Makefile", "Dockerfile"}):
            for name in re.findall(
                r"PROMPTSERVE_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_{])", path.read_text("utf-8")
            ):
                found.setdefault(name, path)
    unknown = {name for name in found if unknown_settings({name: "1"})} - EXAMPLE_TYPOS
    assert {name: str(found[name]) for name in sorted(unknown)} == {}
    assert "PROMPTSERVE_URL" in found  # the scan reads the repository


def test_a_typo_in_the_dotenv_file_warns_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PROMPTSERVE_MAX_WAIT_MZ=3\nPROMPTSERVE_PORT=9\n")
    monkeypatch.setenv(TYPO, "8")
    with caplog.at_level(logging.WARNING, logger="promptserve"):
        messages = warn_unknown_settings()
    assert messages == [
        WARNING,
        "PROMPTSERVE_MAX_WAIT_MZ (in .env) is not a setting; did you mean PROMPTSERVE_MAX_WAIT_MS?",
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == messages


def config_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PROMPTSERVE_MAX_WAIT_MS=7\n")
    monkeypatch.setenv("PROMPTSERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("PROMPTSERVE_API_KEY", "key-that-must-not-show")
    monkeypatch.setenv("PROMPTSERVE_DATABASE_URL", "postgresql://jobs:pw-not-shown@db/jobs")
    monkeypatch.setenv("PROMPTSERVE_STORE", "s3://bucket/classifiers")


def test_config_prints_each_setting_its_value_and_source_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_environment(tmp_path, monkeypatch)
    monkeypatch.setenv(TYPO, "9")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "key-that-must-not-show" not in out
    assert "pw-not-shown" not in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if line}
    assert rows["PROMPTSERVE_MAX_BATCH_SIZE"] == ["8", "env"]
    assert rows["PROMPTSERVE_MAX_WAIT_MS"] == ["7.0", ".env"]
    assert rows["PROMPTSERVE_PORT"] == ["8000", "default"]
    assert rows["PROMPTSERVE_API_KEY"] == ["**********", "env"]
    assert rows["PROMPTSERVE_DATABASE_URL"] == ["**********", "env"]
    assert rows["PROMPTSERVE_STORE_URL"] == ["s3://bucket/classifiers", "derived"]
    assert rows["warning:"] == WARNING.split()
    assert {f"PROMPTSERVE_{name.upper()}" for name in Settings.model_fields} <= set(rows)


def test_config_json_parses_with_the_same_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config_environment(tmp_path, monkeypatch)
    assert main(["config", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    settings = body["settings"]
    assert set(settings) == set(Settings.model_fields)
    assert settings["max_batch_size"] == {
        "variable": "PROMPTSERVE_MAX_BATCH_SIZE",
        "value": 8,
        "source": "env",
    }
    assert settings["max_wait_ms"]["source"] == ".env"
    assert settings["api_key"]["value"] == settings["database_url"]["value"] == "**********"
    assert settings["job_lease_s"] == {
        "variable": "PROMPTSERVE_JOB_LEASE_S",
        "value": 30.0,
        "source": "default",
    }
    assert body["unknown"] == []


def test_config_with_an_invalid_setting_says_so_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROMPTSERVE_MAX_BATCH_SIZE", "lots")
    assert main(["config"]) == 2
    assert "promptserve config: invalid settings" in capsys.readouterr().err
