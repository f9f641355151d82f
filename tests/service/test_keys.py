"""The keys file: parsing and validation, hashing, look-up, reload on change (keeping the last
good keys on a broken edit), the single key, prefixes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from promptserve.service.keys import (
    Key,
    KeyRing,
    KeysFileError,
    hash_secret,
    new_secret,
    parse_keys,
    write_keys,
)

SECRET, OTHER = "s3cret-acme", "s3cret-ops"


def entry(name: str, secret: str, *scopes: str, prefix: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name, "sha256": hash_secret(secret), "scopes": list(scopes)}
    return data | ({"prefix": prefix} if prefix else {})


def write(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


def test_hash_is_the_hex_sha256_of_the_secret() -> None:
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    first, second = new_secret(), new_secret()
    assert first != second
    assert len(first) > 40


def test_a_valid_file_parses() -> None:
    keys = parse_keys(json.dumps({"keys": [entry("acme", SECRET, "classify", prefix="acme-")]}))
    (key,) = keys.keys
    assert key == Key(name="acme", sha256=hash_secret(SECRET), scopes=("classify",), prefix="acme-")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not JSON"),
        (json.dumps({"keys": [entry("acme", SECRET, "launch")]}), "keys.0.scopes.0"),
        (json.dumps({"keys": [entry("acme", SECRET)]}), "keys.0.scopes"),
        (json.dumps({"keys": [{"name": "acme", "sha256": "abc", "scopes": ["tune"]}]}), "sha256"),
        (json.dumps({"keys": [entry("a b", SECRET, "tune")]}), "keys.0.name"),
        (json.dumps({"keys": [entry("acme", SECRET, "tune") | {"secret": SECRET}]}), "secret"),
        (json.dumps({"keys": [entry("x", SECRET, "tune"), entry("x", OTHER, "tune")]}), "name"),
        (json.dumps({"keys": [entry("x", SECRET, "tune"), entry("y", SECRET, "tune")]}), "sha256"),
    ],
)
def test_a_broken_file_is_an_error_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(KeysFileError, match="keys file") as raised:
        parse_keys(text)
    assert problem in str(raised.value)


def test_lookup_finds_the_key_of_a_token(tmp_path: Path) -> None:
    path = write(
        tmp_path / "keys.json", entry("acme", SECRET, "classify"), entry("ops", OTHER, "admin")
    )
    ring = KeyRing(path)
    assert ring.enabled
    assert [getattr(ring.lookup(token), "name", None) for token in (SECRET, OTHER)] == [
        "acme",
        "ops",
    ]
    assert ring.lookup("wrong") is None
    assert ring.lookup(hash_secret(SECRET)) is None  # the hash is not the secret


def test_scopes_and_prefixes() -> None:
    tune = Key(name="t", sha256=hash_secret("t"), scopes=("tune",), prefix="acme-")
    admin = Key(name="a", sha256=hash_secret("a"), scopes=("admin",))
    assert tune.allows("tune")
    assert not tune.allows("classify")
    assert not tune.allows("admin")
    assert all(admin.allows(scope) for scope in ("classify", "tune", "admin", "metrics"))
    assert tune.may_use("acme-parts")
    assert tune.may_use("acme-parts@3")
    assert not tune.may_use("default")
    assert not tune.may_use("other-acme-")
    assert not tune.may_use("acm")
    assert admin.may_use("anything")


def test_the_single_key_is_an_admin_key_named_default(tmp_path: Path) -> None:
    ring = KeyRing(None, "sesame")
    key = ring.lookup("sesame")
    assert key is not None
    assert (key.name, key.scopes) == ("default", ("admin",))
    both = KeyRing(write(tmp_path / "keys.json", entry("acme", SECRET, "classify")), "sesame")
    assert {k.name for k in both.current()} == {"acme", "default"}
    with pytest.raises(KeysFileError, match="PROMPTSERVE_API_KEY"):
        KeyRing(write(tmp_path / "clash.json", entry("default", SECRET, "tune")), "sesame")


def test_no_key_configured_is_open() -> None:
    ring = KeyRing(None, None)
    assert not ring.enabled
    assert ring.lookup("anything") is None


def test_a_missing_or_broken_file_at_start_up_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match="missing.json"):
        KeyRing(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(KeysFileError, match="broken.json: not JSON"):
        KeyRing(tmp_path / "broken.json")


def test_the_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.json", entry("acme", SECRET, "classify"))
    ring = KeyRing(path, check_s=0.0)
    assert ring.lookup(SECRET) is not None
    write(path, entry("ops", OTHER, "admin"))  # in place: a new size
    assert ring.lookup(SECRET) is None
    assert ring.lookup(OTHER) is not None


def test_a_rename_over_the_file_is_seen_even_with_the_same_size_and_time(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.json", entry("acme", SECRET, "classify"))
    ring = KeyRing(path, check_s=0.0)
    info = path.stat()
    staging = write(tmp_path / "new.json", entry("acme", "s3cret-emca", "classify"))
    os.utime(staging, ns=(info.st_atime_ns, info.st_mtime_ns))
    staging.replace(path)  # a new inode, same size and mtime
    assert ring.lookup(SECRET) is None
    assert ring.lookup("s3cret-emca") is not None


def test_the_file_is_looked_at_no_more_than_every_check_s(tmp_path: Path) -> None:
    path = write(tmp_path / "keys.json", entry("acme", SECRET, "classify"))
    ring = KeyRing(path, check_s=3600.0)
    write(path, entry("ops", OTHER, "admin"))
    assert ring.lookup(SECRET) is not None  # not looked at again yet


def test_a_broken_edit_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "keys.json", entry("acme", SECRET, "classify"))
    ring = KeyRing(path, check_s=0.0)
    path.write_text('{"keys": [{"name": "acme", "scopes": ')
    with caplog.at_level(logging.ERROR, logger="promptserve.service.keys"):
        assert ring.lookup(SECRET) is not None
    assert "keeping the last good keys" in caplog.text
    assert "not JSON" in caplog.text
    path.unlink()
    assert ring.lookup(SECRET) is not None  # a removed file keeps them too
    write(path, entry("ops", OTHER, "admin"))  # mended: read again
    assert ring.lookup(SECRET) is None
    assert ring.lookup(OTHER) is not None


def test_write_keys_round_trips_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "keys.json"
    keys = parse_keys(json.dumps({"keys": [entry("acme", SECRET, "classify", "tune")]}))
    write_keys(path, keys)
    assert SECRET not in path.read_text()
    assert KeyRing(path).lookup(SECRET) is not None
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(path.parent.glob(".*.tmp"))
