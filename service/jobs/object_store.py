"""What a job process does with an object store (``PROMPTSERVE_STORE=s3://...``): fetch the
job's uploaded images, and upload the version it published (`service.jobs.process`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptserve.service.jobs.process import JobLaunch
    from promptserve.service.jobs.spec import JobSpec
    from promptserve.service.jobs.store import JobStore


def pull_uploads(launch: JobLaunch, spec: JobSpec) -> None:
    """The images of a job that another host may have taken: from the object store."""
    if launch.store_url is None:
        return
    from promptserve.service.job_uploads import UploadStore  # here: it loads torch

    uploads = UploadStore(launch.store_url, launch.s3_endpoint_url, launch.s3_limits)
    uploads.pull(launch.job_id, Path(spec.train.data))


def mirror_of(launch: JobLaunch) -> Any:
    """The object store's mirror into this host's local store."""
    from promptserve.service.objectstore import StoreMirror

    assert launch.store_url is not None
    return StoreMirror(
        launch.store_url, launch.store, endpoint_url=launch.s3_endpoint_url, limits=launch.s3_limits
    )


def upload_version(jobs: JobStore, name: str, version: str, launch: JobLaunch) -> str:
    """Upload the published version to the object store; returns its number there (another
    host may have taken this one meanwhile)."""
    mirror = mirror_of(launch)
    mirror.publish_lock = jobs.publish_lock  # two hosts never take one number
    return str(mirror.push(name, version))
