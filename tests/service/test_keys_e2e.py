"""Scoped keys against a real `promptserve serve` (one process, and API workers that each
reload the keys file on their own): a classify key classifies (also through the Python client)
but is refused an admin route, and once removed from the file it is refused within the reload
interval, while the other keys keep working."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from promptserve.client import Client, PermissionDeniedError
from promptserve.service.keys import hash_secret
from tests.service.helpers import png_bytes
from tests.service.servers import copy_store, start_server, stop_server

pytestmark = pytest.mark.slow  # a real server process

READER, OPS = "s3cret-reader", "s3cret-ops"
RELOAD_S = 1.0  # the keys file is looked at no more than this often (service.keys.CHECK_S)


def write_keys(path: Path, **secrets: tuple[str, list[str]]) -> None:
    entries = [
        {"name": name, "sha256": hash_secret(secret), "scopes": scopes}
        for name, (secret, scopes) in secrets.items()
    ]
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps({"keys": entries}))
    staging.replace(path)  # as `promptserve keys` writes it


def classify(url: str, secret: str) -> httpx.Response:
    files = {"images": ("a.png", png_bytes(), "image/png")}
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.post(f"{url}/v1/classify", files=files, headers=headers, timeout=60)


@pytest.mark.parametrize("workers", [1, 2])
def test_scopes_and_revocation_on_a_real_server(
    workers: int, template_store: Path, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    write_keys(keys_file, reader=(READER, ["classify"]), ops=(OPS, ["admin"]))
    server = start_server(
        copy_store(template_store, tmp_path / "store"),
        tmp_path / "server.log",
        timeout=300,
        PROMPTSERVE_API_KEYS_FILE=str(keys_file),
        PROMPTSERVE_WORKERS=str(workers),
    )
    try:
        for _ in range(2 * workers):  # whichever worker answers
            response = classify(server.url, READER)
            assert response.status_code == 200, response.text
        with Client(server.url, api_key=READER, progress=False) as client:
            assert client.classify(png_bytes(), classifier="shapes").classifier == "shapes"
            with pytest.raises(PermissionDeniedError, match="'admin' scope"):
                client.delete("shapes", "1")
        refused = httpx.delete(
            f"{server.url}/v1/classifiers/shapes/versions/1",
            headers={"Authorization": f"Bearer {READER}"},
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert "'admin' scope" in refused.json()["error"]["message"]

        write_keys(keys_file, ops=(OPS, ["admin"]))
        removed = time.monotonic()
        time.sleep(RELOAD_S + 0.2)
        for _ in range(2 * workers):
            response = classify(server.url, READER)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["code"] == "unauthorized"
            assert classify(server.url, OPS).status_code == 200
        assert time.monotonic() - removed < 30
    finally:
        stop_server(server)
    log = server.log.read_text()
    assert "keys file" in log
    assert READER not in log
