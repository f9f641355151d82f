"""A job's uploads through the object store (moto's real S3 server): pushed by the replica
that took the request, pulled by the host that runs it, removed with the job; and the
classifier mirror never copies them."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptserve.service.job_uploads import UploadStore
from promptserve.service.object_calls import open_filesystem
from promptserve.service.objectstore import StoreMirror
from tests.cluster.servers import S3Server


@pytest.fixture
def store(bucket_url: str, s3_server: S3Server) -> UploadStore:
    return UploadStore(bucket_url, s3_server.endpoint)


def write_uploads(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "000000.png").write_bytes(b"first image")
    (folder / "000001.jpg").write_bytes(b"second image")
    manifest = folder / "manifest.jsonl"
    manifest.write_text('{"path": "000000.png", "label": "a"}\n')
    return manifest


def test_uploads_travel_from_the_replica_to_the_worker_and_go_with_the_job(
    store: UploadStore, tmp_path: Path
) -> None:
    replica = write_uploads(tmp_path / "replica" / "job-1" / "images")
    expected = {f.name: f.read_bytes() for f in replica.parent.iterdir()}
    store.push("job-1", replica)
    assert not replica.parent.exists()  # the object store holds the only copy

    worker = tmp_path / "worker" / "job-1" / "images" / "manifest.jsonl"
    store.pull("job-1", worker)
    assert {f.name: f.read_bytes() for f in worker.parent.iterdir()} == expected
    store.pull("job-1", worker)  # already there: nothing downloaded again

    store.drop("job-1")
    store.drop("job-1")  # nothing left is no error
    with pytest.raises(FileNotFoundError, match="job-1"):
        store.pull("job-1", tmp_path / "late" / "job-1" / "images" / "manifest.jsonl")


def test_uploads_without_their_manifest_are_incomplete(store: UploadStore, tmp_path: Path) -> None:
    manifest = write_uploads(tmp_path / "replica" / "job-2" / "images")
    fs = open_filesystem(store.url, store.endpoint_url)
    remote = f"{store.url.split('://', 1)[1]}/.jobs/job-2/images"
    fs.put_file(str(manifest.parent / "000000.png"), f"{remote}/000000.png")  # a push cut short
    with pytest.raises(FileNotFoundError):
        store.pull("job-2", tmp_path / "worker" / "job-2" / "images" / "manifest.jsonl")


def test_the_classifier_mirror_leaves_the_uploads_alone(store: UploadStore, tmp_path: Path) -> None:
    store.push("job-3", write_uploads(tmp_path / "replica" / "job-3" / "images"))
    replica = StoreMirror(store.url, tmp_path / "mirror", endpoint_url=store.endpoint_url)
    assert replica.pull().added == []
    assert not (tmp_path / "mirror" / ".jobs").exists()
