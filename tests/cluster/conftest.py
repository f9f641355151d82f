import uuid

import pytest

from promptserve.service.object_calls import open_filesystem
from tests.cluster.servers import S3_ENV, S3Server, postgres, s3_server

__all__ = ["bucket_url", "postgres", "s3_server"]


@pytest.fixture
def bucket_url(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the S3 server, as s3://<bucket>/classifiers (credentials set)."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    name = f"b{uuid.uuid4().hex[:12]}"
    open_filesystem("s3://x", s3_server.endpoint).mkdir(name)
    return f"s3://{name}/classifiers"
