"""The object-store mirror against moto's real S3 server: manifest-last visibility, immutable
versions, renumbering on a race, deletes reaching every replica, dot-directories mirrored."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from promptserve.service.objectstore import STARTUP_CREATOR, StoreMirror
from tests.cluster.servers import S3Server


def mirror(url: str, local: Path, s3_server: S3Server) -> StoreMirror:
    return StoreMirror(url, local, endpoint_url=s3_server.endpoint)


def write_version(root: Path, name: str, version: str, payload: bytes) -> Path:
    directory = root / name / version
    directory.mkdir(parents=True)
    (directory / "classes.safetensors").write_bytes(payload)
    (directory / "visual.onnx").write_bytes(payload * 2)
    manifest = {"name": name, "version": version, "payload": payload.decode()}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_a_pushed_version_reaches_another_replica_byte_for_byte(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    worker = mirror(bucket_url, tmp_path / "worker", s3_server)
    replica = mirror(bucket_url, tmp_path / "replica", s3_server)
    write_version(tmp_path / "worker", "cats", "1", b"one")
    shared = tmp_path / "worker" / ".backbones" / "sha-abc"
    shared.mkdir(parents=True)
    (shared / "weights.bin").write_bytes(b"w" * 1000)
    (tmp_path / "worker" / ".backbones" / "sha-def.onnx").write_bytes(b"graph")
    (tmp_path / "worker" / ".jobs").mkdir()
    (tmp_path / "worker" / ".jobs" / "jobs.db").write_bytes(b"local only")
    assert worker.push("cats", "1") == "1"
    report = replica.pull()
    assert report.added == [("cats", "1")]
    for file in ("classes.safetensors", "visual.onnx", "manifest.json"):
        assert (tmp_path / "replica" / "cats" / "1" / file).read_bytes() == (
            tmp_path / "worker" / "cats" / "1" / file
        ).read_bytes()
    assert (tmp_path / "replica" / ".backbones" / "sha-abc" / "weights.bin").read_bytes() == (
        b"w" * 1000
    )
    assert (tmp_path / "replica" / ".backbones" / "sha-def.onnx").read_bytes() == b"graph"
    assert not (tmp_path / "replica" / ".jobs").exists()
    assert replica.pull().added == []  # nothing new: nothing downloaded again


def test_a_version_without_its_manifest_is_invisible(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    replica = mirror(bucket_url, tmp_path / "replica", s3_server)
    fs = replica.fs
    fs.pipe_file(f"{replica.base}/cats/1/classes.safetensors", b"half an upload")
    assert replica.remote_versions() == set()
    assert replica.pull().added == []
    assert not (tmp_path / "replica" / "cats").exists()
    fs.pipe_file(f"{replica.base}/cats/1/manifest.json", b"{}")
    assert replica.pull().added == [("cats", "1")]


def test_a_taken_number_is_never_overwritten_the_later_version_is_renumbered(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    first = mirror(bucket_url, tmp_path / "a", s3_server)
    second = mirror(bucket_url, tmp_path / "b", s3_server)
    write_version(tmp_path / "a", "cats", "1", b"from a")
    write_version(tmp_path / "b", "cats", "1", b"from b")
    assert first.push("cats", "1") == "1"
    assert second.push("cats", "1") == "2"
    renumbered = json.loads((tmp_path / "b" / "cats" / "2" / "manifest.json").read_text())
    assert renumbered["version"] == "2"
    assert not (tmp_path / "b" / "cats" / "1").exists()
    remote = first.fs.cat_file(f"{first.base}/cats/1/classes.safetensors")
    assert remote == b"from a"


def test_a_deleted_number_is_never_published_again_by_any_host(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    first, second, third = (mirror(bucket_url, tmp_path / n, s3_server) for n in "abc")
    write_version(first.local, "cats", "1", b"one")
    write_version(first.local, "cats", "2", b"two")
    assert (first.push("cats", "1"), first.push("cats", "2")) == ("1", "2")
    first.delete("cats", "2")
    write_version(second.local, "cats", "2", b"never saw 2")  # its own store knew only 1
    assert second.push("cats", "2") == "3"
    assert (second.local / "cats" / ".last-version").read_text() == "3\n"  # here too
    first.delete("cats", "1")
    first.delete("cats", "3")
    write_version(third.local, "cats", "1", b"a fresh host")
    assert third.push("cats", "1") == "4"  # every version deleted: numbering goes on
    assert third.remote_versions() == {("cats", "4")}


def test_a_store_without_counters_goes_on_from_its_highest_version(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    old = mirror(bucket_url, tmp_path / "old", s3_server)
    old.fs.pipe_file(f"{old.base}/cats/5/manifest.json", b"{}")  # written before counters
    write_version(old.local, "cats", "1", b"new")
    assert old.push("cats", "1") == "6"


def test_a_delete_stops_every_replica_from_holding_the_version(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    worker = mirror(bucket_url, tmp_path / "worker", s3_server)
    replicas = [mirror(bucket_url, tmp_path / f"r{i}", s3_server) for i in range(2)]
    write_version(tmp_path / "worker", "cats", "1", b"one")
    write_version(tmp_path / "worker", "cats", "2", b"two")
    worker.push("cats", "1")
    worker.push("cats", "2")
    for replica in replicas:
        assert replica.pull().added == [("cats", "1"), ("cats", "2")]
    replicas[0].delete("cats", "1")
    for replica, root in zip(replicas, ("r0", "r1"), strict=True):
        assert replica.pull().removed == [("cats", "1")]
        assert sorted(p.name for p in (tmp_path / root / "cats").iterdir()) == ["2"]
    assert replicas[0].remote_versions() == {("cats", "2")}


def test_a_version_created_locally_is_uploaded_by_the_next_pull(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    replica = mirror(bucket_url, tmp_path / "replica", s3_server)
    assert replica.pull().pushed == []
    write_version(tmp_path / "replica", "default", "1", b"zero-shot")
    assert replica.pull().pushed == [("default", "1")]
    other = mirror(bucket_url, tmp_path / "other", s3_server)
    assert other.pull().added == [("default", "1")]


def test_replicas_started_together_keep_one_start_up_default(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    first, second = (mirror(bucket_url, tmp_path / n, s3_server) for n in ("first", "second"))
    for replica, payload in ((first, b"first's"), (second, b"second's")):
        directory = write_version(replica.local, "default", "1", payload)
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["training"] = {"created_by": STARTUP_CREATOR}
        (directory / "manifest.json").write_text(json.dumps(manifest))
    # the second replica lists the bucket just before the first uploads its default
    second.remote_versions = _empty_once(second.remote_versions)  # type: ignore[method-assign]
    assert first.pull().pushed == [("default", "1")]
    assert second.pull().pushed == []  # not renumbered to a second copy: dropped
    assert first.remote_versions() == {("default", "1")}
    assert second.pull().added == [("default", "1")]
    assert (second.local / "default" / "1" / "classes.safetensors").read_bytes() == b"first's"


def _empty_once(listing: Callable[[], set[tuple[str, str]]]) -> Callable[[], set[Any]]:
    """A listing of the bucket that finds it empty once, then lists it as it is."""
    calls = iter(range(1_000_000))
    return lambda: set() if next(calls) == 0 else listing()


def test_a_local_store_path_is_refused_as_a_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an object store URL"):
        StoreMirror(str(tmp_path), tmp_path / "cache")


@pytest.mark.parametrize(
    "value", ["s3://bucket/prefix", "s3://bucket/prefix/", Path("s3://bucket/prefix")]
)
def test_the_store_setting_may_name_an_object_store(value: str | Path) -> None:
    from promptserve.service.settings import Settings

    settings = Settings(store=value)
    assert settings.store_url == "s3://bucket/prefix"
    assert settings.store == Path("store")  # the local copy
    cached = Settings(store=value, store_cache=Path("/var/cache/ps"))
    assert cached.store == Path("/var/cache/ps")
    plain = Settings(store=Path("/srv/store"))
    assert (plain.store, plain.store_url) == (Path("/srv/store"), None)


def test_a_catalog_delete_by_alias_goes_everywhere_and_keeps_the_aliases_rules(
    bucket_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """`Catalog.delete` with a mirror: the alias resolves before anything changes, a version an
    alias holds (or the protected name's only one) is refused with the object store untouched,
    and a delete removes the version remotely, here and, on their next pull, on other replicas,
    with a pinned ``latest`` dropped and the aliases file uploaded."""
    from promptserve.service.catalog import Catalog
    from promptserve.service.errors import DeleteRefusedError

    publisher = mirror(bucket_url, tmp_path / "publisher", s3_server)
    for version in ("1", "2", "3"):
        write_version(tmp_path / "publisher", "cats", version, version.encode())
        publisher.push("cats", version)
    write_version(tmp_path / "publisher", "solo", "1", b"solo")
    publisher.push("solo", "1")
    here = Catalog(tmp_path / "here", mirror(bucket_url, tmp_path / "here", s3_server))
    other = mirror(bucket_url, tmp_path / "other", s3_server)
    assert here.mirror is not None
    here.mirror.pull()
    other.pull()
    here.aliases.set("cats", "prod", "2")
    here.aliases.set("cats", "latest", "3")  # pinned

    with pytest.raises(DeleteRefusedError, match="prod"):
        here.delete("cats", "prod")  # prod -> 2, which prod holds
    with pytest.raises(DeleteRefusedError, match="only version"):
        here.delete("solo", "1", protected="solo")
    everything = {("cats", "1"), ("cats", "2"), ("cats", "3"), ("solo", "1")}
    assert here.mirror.remote_versions() == everything  # nothing refused was deleted
    assert here.versions("cats") == ["1", "2", "3"]

    here.delete("cats", "latest")  # the pinned latest: version 3
    assert here.mirror.remote_versions() == everything - {("cats", "3")}
    assert here.versions("cats") == ["1", "2"]
    assert here.aliases.explicit("cats") == {"prod": "2"}  # latest follows the newest again
    assert here.resolve("cats") == "2"
    assert other.pull().removed == [("cats", "3")]
    aliases = json.loads((tmp_path / "other" / "cats" / "aliases.json").read_text())
    assert "latest" not in json.dumps(aliases)  # the aliases file went up with the delete
    assert "prod" in json.dumps(aliases)
