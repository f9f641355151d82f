"""A tuning job's uploaded images on the object store, so that no folder is shared by hosts.

With ``PROMPTSERVE_STORE=s3://bucket/prefix``, the replica that takes a ``POST /adapt`` writes
the images to its jobs folder as on one host, copies them to
``<prefix>/.jobs/<job id>/images/`` (the manifest last: a folder without one is incomplete) and
drops its own copy, all before the job is queued; the runner that claims the job downloads
them to the same path on its host before training; and the objects go with the job's local
folder when the job ends. ``.jobs`` is a dot-directory the classifier mirror never copies
(`objectstore.LOCAL_ONLY`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptserve.service.object_calls import CallLimits, open_filesystem
from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

JOBS_PREFIX = ".jobs"


@dataclass(frozen=True)
class UploadStore:
    url: str  # the classifier store's URL, s3://bucket/prefix
    endpoint_url: str | None = None  # an S3-compatible service's endpoint (MinIO, moto)
    limits: CallLimits = CallLimits()  # timeouts and attempts of each call

    @classmethod
    def of(cls, settings: Settings) -> UploadStore | None:
        """The object store of `settings`; None for a local store (the folder is enough)."""
        if settings.store_url is None:
            return None
        return cls(settings.store_url, settings.s3_endpoint_url, CallLimits.of(settings))

    @classmethod
    def at(cls, target: Mapping[str, str | None] | None) -> UploadStore | None:
        """From a runner's `publish_to` ({"url", "endpoint_url"}); None without a URL."""
        if not target or not target.get("url"):
            return None
        return cls(str(target["url"]), target.get("endpoint_url"))

    def push(self, job_id: str, manifest: Path) -> None:
        """Upload the folder of `manifest` (the manifest last), then remove the local copy."""
        fs, remote = self._fs(), self._remote(job_id)
        folder = manifest.parent
        for file in sorted(folder.iterdir()):
            if file != manifest:
                fs.put_file(str(file), f"{remote}/{file.name}")
        fs.put_file(str(manifest), f"{remote}/{manifest.name}")
        shutil.rmtree(folder)

    def pull(self, job_id: str, manifest: Path) -> None:
        """Download a job's uploads to the folder of `manifest`, unless they are already there."""
        if manifest.is_file():
            return
        fs, remote = self._fs(), self._remote(job_id)
        if not fs.exists(f"{remote}/{manifest.name}"):
            raise FileNotFoundError(f"the uploads of job {job_id} are not in {self.url}")
        staging = manifest.parent.with_name(manifest.parent.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for key in fs.ls(remote, detail=False):
            fs.get_file(key, str(staging / key.rsplit("/", 1)[1]))
        shutil.rmtree(manifest.parent, ignore_errors=True)
        staging.rename(manifest.parent)
        log.info("downloaded the uploads of job %s from %s", job_id, self.url)

    def drop(self, job_id: str) -> None:
        """Remove a job's uploads from the object store (nothing there is no error)."""
        with contextlib.suppress(FileNotFoundError):
            self._fs().rm(self._remote(job_id).rsplit("/", 1)[0], recursive=True)

    def _fs(self) -> Any:
        return open_filesystem(self.url, self.endpoint_url, self.limits)

    def _remote(self, job_id: str) -> str:
        base = self.url.split("://", 1)[1].rstrip("/")
        return f"{base}/{JOBS_PREFIX}/{job_id}/images"
