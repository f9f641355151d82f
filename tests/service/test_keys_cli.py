"""``promptserve keys add/list/remove/hash``, and ``serve`` refusing a broken keys file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from promptserve.service import cli
from promptserve.service.keys import KeyRing, hash_secret


def keys(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["keys", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_add_prints_the_secret_once_and_writes_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.json"
    code, out, err = keys(
        capsys, "add", "acme", "--scopes", "classify,tune", "--prefix", "acme-", "--file", str(path)
    )
    assert code == 0, err
    secret = out.strip()
    assert "shown only now" in err
    assert secret not in path.read_text()
    (entry,) = json.loads(path.read_text())["keys"]
    assert entry == {
        "name": "acme",
        "sha256": hash_secret(secret),
        "scopes": ["classify", "tune"],
        "prefix": "acme-",
    }
    key = KeyRing(path).lookup(secret)
    assert key is not None
    assert key.name == "acme"


def test_list_and_remove_with_the_file_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.json"
    monkeypatch.setenv("PROMPTSERVE_API_KEYS_FILE", str(path))
    assert keys(capsys, "add", "ops", "--scopes", "admin")[0] == 0
    assert keys(capsys, "add", "prom", "--scopes", "metrics")[0] == 0
    code, out, _ = keys(capsys, "list")
    assert (code, out) == (0, "ops\tadmin\t-\nprom\tmetrics\t-\n")
    code, out, _ = keys(capsys, "remove", "ops")
    assert code == 0
    assert "removed key 'ops'" in out
    assert keys(capsys, "list")[1] == "prom\tmetrics\t-\n"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["add", "x", "--scopes", "launch"], "scopes.0"),
        (["add", "a b", "--scopes", "tune"], "name"),
        (["add", "prom", "--scopes", "tune"], "two keys with the same name: prom"),
        (["remove", "nobody"], "no key named 'nobody'"),
    ],
)
def test_bad_input_is_a_message_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], problem: str
) -> None:
    path = tmp_path / "keys.json"
    assert keys(capsys, "add", "prom", "--scopes", "metrics", "--file", str(path))[0] == 0
    before = path.read_text()
    code, _, err = keys(capsys, *argv, "--file", str(path))
    assert code == 2
    assert err.startswith("promptserve keys: ")
    assert problem in err
    assert path.read_text() == before


def test_a_keys_file_must_be_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMPTSERVE_API_KEYS_FILE", raising=False)
    code, _, err = keys(capsys, "list")
    assert code == 2
    assert "--file or $PROMPTSERVE_API_KEYS_FILE" in err


def test_hash_reads_the_secret_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n"))
    code, out, _ = keys(capsys, "hash")
    assert (code, out) == (0, hash_secret("abc") + "\n")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert keys(capsys, "hash")[0] == 2


def test_serve_refuses_a_broken_keys_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "x"}]}')
    monkeypatch.setenv("PROMPTSERVE_API_KEYS_FILE", str(path))
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("served a broken keys file"))
    assert cli.main(["serve", "--store", str(tmp_path / "store")]) == 3
    err = capsys.readouterr().err
    assert "PROMPTSERVE_API_KEYS_FILE" in err
    assert "keys.0.sha256" in err
