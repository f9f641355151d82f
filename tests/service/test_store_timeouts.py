"""Object-store calls are bounded: against an endpoint that accepts connections and never
answers (a frozen or black-holed S3), a call fails within its timeout and attempts, and a
DELETE answers 503 `store_unavailable` with Retry-After, changing nothing, while classification
goes on from the local copy."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from promptserve.service.errors import StoreUnavailableError
from promptserve.service.object_calls import CallLimits
from promptserve.service.objectstore import StoreMirror
from tests.cluster.servers import S3_ENV
from tests.service.helpers import b64, make_settings, png_bytes, serve

TIMEOUT_S = 0.5


@dataclass
class SilentEndpoint:
    url: str
    connections: list[socket.socket] = field(default_factory=list)


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentEndpoint]:
    """An endpoint that accepts every connection and never sends a byte."""
    pytest.importorskip("s3fs", reason="s3fs is absent: pip install -e '.[dev]'")
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    endpoint = SilentEndpoint(f"http://127.0.0.1:{server.getsockname()[1]}")

    def accept() -> None:
        while True:
            try:
                endpoint.connections.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.close()
        for connection in endpoint.connections:
            connection.close()


def test_a_store_that_never_answers_fails_each_call_within_its_limits(
    silent: SilentEndpoint, tmp_path: Path
) -> None:
    limits = CallLimits(timeout_s=TIMEOUT_S, attempts=2)
    mirror = StoreMirror("s3://bucket/store", tmp_path, endpoint_url=silent.url, limits=limits)
    for call in (lambda: mirror.delete("cats", "1"), mirror.pull, mirror.remote_versions):
        began = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        # two attempts of 0.5 s and botocore's backoff between them; never the store's freeze
        assert time.monotonic() - began < 8 * TIMEOUT_S * limits.attempts
        assert caught.value.status == 503
        assert caught.value.headers == {"Retry-After": "1"}
    assert len(silent.connections) >= 2 * 3  # every call was tried twice


@pytest.mark.anyio
async def test_a_delete_is_503_while_the_store_never_answers_and_classify_goes_on(
    silent: SilentEndpoint, store: Path
) -> None:
    settings = make_settings(
        "s3://bucket/store",  # type: ignore[arg-type]  # the local copy is `store`
        store_cache=store,
        s3_endpoint_url=silent.url,
        s3_timeout_s=TIMEOUT_S,
        s3_attempts=1,
        store_poll_s=3600,
    )
    async with serve(settings) as (client, _):
        began = time.monotonic()
        refused = await client.delete("/classifiers/shapes/1")
        took = time.monotonic() - began
        classified = await client.post("/classify", json={"images": [b64(png_bytes())]})
        ready = await client.get("/health/ready")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "store_unavailable"
    assert refused.headers["Retry-After"] == "1"
    assert took < 10 * TIMEOUT_S
    assert (store / "shapes" / "1" / "manifest.json").is_file()  # nothing deleted
    assert classified.status_code == 200
    assert ready.status_code == 200
