"""The image, built once per session from the repository's Dockerfile on the local base."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.deploy.docker import (
    build_image,
    daemon_answers,
    docker,
    make_base_image,
    served,
    wheel_folder,
)

log = logging.getLogger(__name__)
NO_DAEMON = "no Docker daemon answers: start dockerd (.ci/run installs and starts one)"


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    """A fresh tag of the image, removed at the end (the base and the wheels stay cached)."""
    if not daemon_answers():
        pytest.skip(NO_DAEMON)
    tag = f"promptserve-test:{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    base = make_base_image()
    with served(wheel_folder()) as url:
        build_image(tag, base, url)
    log.warning("image %s built in %.0f s", tag, time.monotonic() - start)
    yield tag
    docker("rmi", "-f", tag, check=False)
