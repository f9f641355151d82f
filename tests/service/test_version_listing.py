"""A classifier's versions are listed again only when its directory changed, and always while
the change is too recent to trust its mtime (`service.version_listing`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from promptserve.service import version_listing
from promptserve.service.version_listing import SETTLED_S, VersionListing


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names whose directory was actually listed, in call order."""
    calls: list[str] = []
    real = version_listing.list_versions

    def counting(root: Path, name: str) -> list[str]:
        calls.append(name)
        return real(root, name)

    monkeypatch.setattr(version_listing, "list_versions", counting)
    return calls


def settle(directory: Path) -> None:
    """Date the directory's last change back past SETTLED_S."""
    past = time.time() - 10 * SETTLED_S
    os.utime(directory, (past, past))


def test_an_unchanged_directory_is_listed_once(tmp_path: Path, listed: list[str]) -> None:
    for version in ("1", "2", "10"):
        (tmp_path / "pets" / version).mkdir(parents=True)
    settle(tmp_path / "pets")
    listing = VersionListing(tmp_path)
    assert listing.versions("pets") == ["1", "2", "10"]
    assert listing.versions("pets") == ["1", "2", "10"]
    assert listed == ["pets"]


def test_a_version_added_or_removed_is_seen_at_once(tmp_path: Path, listed: list[str]) -> None:
    (tmp_path / "pets" / "1").mkdir(parents=True)
    settle(tmp_path / "pets")
    listing = VersionListing(tmp_path)
    assert listing.versions("pets") == ["1"]
    (tmp_path / "pets" / "2").mkdir()
    assert listing.versions("pets") == ["1", "2"]
    (tmp_path / "pets" / "1").rmdir()
    assert listing.versions("pets") == ["2"]
    assert listing.versions("nobody") == []


def test_two_changes_within_one_clock_tick_are_both_seen(tmp_path: Path) -> None:
    (tmp_path / "pets" / "1").mkdir(parents=True)
    listing = VersionListing(tmp_path)
    assert listing.versions("pets") == ["1"]  # listed just after a change: not kept
    before = os.stat(tmp_path / "pets")
    (tmp_path / "pets" / "2").mkdir()
    # the second change in the same tick: the directory's stamp is what it was
    os.utime(tmp_path / "pets", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert listing.versions("pets") == ["1", "2"]


def test_a_kept_listing_is_a_copy(tmp_path: Path) -> None:
    (tmp_path / "pets" / "1").mkdir(parents=True)
    settle(tmp_path / "pets")
    listing = VersionListing(tmp_path)
    listing.versions("pets").append("99")
    assert listing.versions("pets") == ["1"]
