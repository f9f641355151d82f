"""`service.cli`: training's commands plus `serve`."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptserve.service import cli


def test_serve_is_added_to_the_training_commands() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["serve", "--store", "s", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.command, args.store, args.host, args.port) == ("serve", Path("s"), "0.0.0.0", 9000)
    assert parser.parse_args(["serve"]).port is None  # unset flags leave the settings alone
    for command in ("train", "eval"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


def test_other_commands_go_to_training(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval"]) == 2  # training's own error: eval needs --store, --name, --data
    assert "eval needs" in capsys.readouterr().err


def test_serve_runs_uvicorn_with_the_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = {}

    def fake_run(app: object, **kwargs: object) -> None:
        calls.update(kwargs, app=app)

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setenv("PROMPTSERVE_PORT", "7000")
    monkeypatch.setenv("PROMPTSERVE_HOST", "127.0.0.2")
    assert cli.main(["serve", "--store", str(tmp_path), "--port", "8123"]) == 0
    assert calls["port"] == 8123  # the flag wins over the environment
    assert calls["host"] == "127.0.0.2"
    assert calls["app"].state.runtime.settings.store == tmp_path  # type: ignore[attr-defined]


def test_serve_reports_invalid_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROMPTSERVE_MAX_BATCH_SIZE", "0")
    assert cli.main(["serve"]) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_serve_with_workers_starts_the_engine_process_and_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = {}

    def fake_serve_workers(settings: object) -> int:
        seen["settings"] = settings
        return 0

    monkeypatch.setattr("promptserve.service.remote.supervisor.serve_workers", fake_serve_workers)
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("one process started"))
    assert cli.main(["serve", "--store", str(tmp_path), "--workers", "3"]) == 0
    assert seen["settings"].workers == 3  # type: ignore[attr-defined]
    monkeypatch.setenv("PROMPTSERVE_WORKERS", "0")
    assert cli.main(["serve", "--store", str(tmp_path)]) == 2  # at least one worker
