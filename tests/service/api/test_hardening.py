"""Hostile and careless input: every limit holds before the work it bounds, nothing stalls the
server, and nothing grows without bound. In process; the real-server checks are in
test_overload_e2e.py."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageFile

from promptserve.models.classifier import check_labels, load_classifier
from promptserve.models.errors import InvalidLabelError
from promptserve.models.labels import BoundedCache, LabelEncoder
from promptserve.service.api.middleware import AdmissionMiddleware
from promptserve.service.classify.decoding import decode_image
from promptserve.service.errors import ImageTooLargeError
from promptserve.service.jobs.process import without_paths
from tests.service.helpers import ClientFactory, b64, bomb_png, engine_held, png_bytes
from tests.waiting import eventually

pytestmark = pytest.mark.anyio

MANY_LABELS = [f"label {i}" for i in range(20_000)]  # ~240 KB of JSON
JOB_IMAGES = [  # two classes of two images: the smallest valid /adapt
    {"data": b64(png_bytes(colour)), "label": label}
    for colour, label in (((200, 0, 0), "a"), ((0, 0, 200), "b"))
    for _ in range(2)
]


def _never(what: str) -> Any:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(what)

    return refuse


@pytest.fixture
def never_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Pillow decodes any image's pixels: a refusal must come from the header."""
    monkeypatch.setattr(ImageFile.ImageFile, "load", _never("pixels were decoded"))


# --- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["json", "hf", "multipart", "query"])
async def test_twenty_thousand_labels_are_refused_at_once(
    client_factory: ClientFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = png_bytes()
    monkeypatch.setattr(LabelEncoder, "encode", _never("a refused label list was encoded"))
    async with client_factory() as (client, _):
        if shape == "json":
            response = await client.post(
                "/classify", json={"images": [b64(image)], "labels": MANY_LABELS}
            )
        elif shape == "hf":
            body = {"inputs": b64(image), "parameters": {"candidate_labels": MANY_LABELS}}
            response = await client.post("/classify", json=body)
        elif shape == "multipart":
            response = await client.post(
                "/classify",
                files=[("images", ("x.png", image))],
                data={"labels": ",".join(MANY_LABELS)},
            )
        else:
            response = await client.post(
                "/classify",
                content=image,
                headers={"Content-Type": "image/png"},
                params={"labels": ",".join(MANY_LABELS[:3000])},
            )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_label"
    assert "at most 1000" in response.json()["error"]["message"]


def test_label_checks_are_linear(tiny_artifact: Path) -> None:
    classifier = load_classifier(tiny_artifact)
    names = [f"name {i}" for i in range(200_000)]

    def seconds(count: int) -> float:
        start = time.perf_counter()
        check_labels(classifier, names[:count])  # no limits: everything is counted and compared
        return time.perf_counter() - start

    small = min(seconds(20_000) for _ in range(3))
    large = min(seconds(200_000) for _ in range(3))
    # Linear is ~10x, though caches and the allocator make it up to ~40x on a loaded machine.
    # Quadratic is ~100x, and already seconds for the small list (4e8 comparisons), so the 1 s
    # floor absorbs noise without letting a quadratic check through.
    assert large < 60 * small + 1.0, (small, large)
    assert len(check_labels(classifier, names).new) == len(names)
    with pytest.raises(InvalidLabelError, match="duplicate"):
        check_labels(classifier, [*names, "name 7"])


def test_a_long_label_is_refused_before_tokenizing(tiny_artifact: Path) -> None:
    classifier = load_classifier(tiny_artifact)
    with pytest.raises(InvalidLabelError, match="characters"):
        check_labels(classifier, ["x" * 1_000_000], max_chars=300)


def test_the_tokenizer_forgets_old_words(tiny_artifact: Path) -> None:
    classifier = load_classifier(tiny_artifact)
    encoder = LabelEncoder()
    encoder.encode(classifier, ["warm up"])
    tokenizer = next(iter(encoder._backbones.values())).tokenizer
    assert isinstance(tokenizer.cache, BoundedCache)
    tokenizer.cache.max_entries = 50
    for start in range(0, 400, 100):
        encoder.encode(classifier, [f"zq{i}x" for i in range(start, start + 100)])
    assert len(tokenizer.cache) <= 50 + len(tokenizer.cache.pinned)
    assert all(token in tokenizer.cache for token in tokenizer.cache.pinned)


# --- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1_562_500, 16), (25_000_000, 1), (16, 1_562_500)])
def test_long_thin_images_are_refused_before_decoding(
    width: int, height: int, never_decoded: None
) -> None:
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        decode_image(bomb_png(width, height), max_pixels=25_000_000, resize_to=64)


async def test_sixteen_strips_in_one_request_are_a_413(
    client_factory: ClientFactory, never_decoded: None
) -> None:
    strips = [("images", (f"{i}.png", bomb_png(1_562_500, 16))) for i in range(16)]
    async with client_factory(max_images_per_request=16) as (client, _):
        response = await client.post("/classify", files=strips)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "image_too_large"


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (40, 20), (220, 20, 20))
    upright.paste((20, 20, 220), (20, 0, 40, 20))  # left red, right blue
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buffer.getvalue(), max_pixels=10_000)
    assert decoded.size == (40, 20)
    left, right = decoded.getpixel((5, 10)), decoded.getpixel((35, 10))
    assert left[0] > 150 > left[2]  # type: ignore[index]
    assert right[2] > 150 > right[0]  # type: ignore[index]


# --- admission ------------------------------------------------------------------------------


class _Gate:
    """An ASGI app that holds every request until released (before reading its body, or after
    with `read_first`); counts body reads."""

    def __init__(self, *, read_first: bool = False) -> None:
        self.release = asyncio.Event()
        self.read_first = read_first
        self.entered = 0
        self.bodies_read = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        if self.read_first:
            message = await receive()
        await self.release.wait()
        if not self.read_first:
            message = await receive()
        self.bodies_read += message["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_admission_answers_429_before_reading_the_body() -> None:
    gate = _Gate()
    app = AdmissionMiddleware(
        gate, max_requests=2, max_bytes=1_000_000, body_limit=1_000_000, retry_after_s=3
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        held = [asyncio.create_task(client.post("/classify", content=b"x" * 10)) for _ in range(2)]
        await eventually(lambda: gate.entered == 2)
        refused = await client.post("/classify", content=b"x" * 10)
        health = asyncio.create_task(client.get("/health/live"))  # never refused
        await eventually(lambda: gate.entered == 3)
        gate.release.set()
        assert [r.status_code for r in await asyncio.gather(*held, health)] == [200, 200, 200]
        bodies_read = gate.bodies_read
        after = await client.post("/classify", content=b"x")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "overloaded"
    assert (
        bodies_read == 3
    )  # two held requests and the health check: the refused one was never read
    assert after.status_code == 200  # the budget came back


async def test_admission_budgets_body_bytes() -> None:
    """The bytes that arrived count (not what a request declares: see test_slow_bodies.py)."""
    gate = _Gate(read_first=True)
    app = AdmissionMiddleware(
        gate, max_requests=100, max_bytes=1_000, body_limit=10_000, retry_after_s=1
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        big = asyncio.create_task(client.post("/adapt", content=b"x" * 5_000))  # alone: admitted
        await eventually(lambda: gate.entered == 1)
        second = await client.post("/adapt", content=b"x" * 10)
        gate.release.set()
        assert (await big).status_code == 200
    assert second.status_code == 429


async def test_the_app_admits_at_most_its_limit_and_never_refuses_health(
    client_factory: ClientFactory,
) -> None:
    """Admission as `create_app` wires it: a request beyond MAX_INFLIGHT_REQUESTS is a 429
    while the one in flight is held in the engine; health and metrics still answer."""
    async with client_factory(max_inflight_requests=1, retry_after_s=7) as (client, runtime):
        body = {"images": [b64(png_bytes())]}
        with engine_held(runtime) as entered:
            running = asyncio.create_task(client.post("/classify", json=body))
            await eventually(entered.is_set)
            refused = await client.post("/classify", json=body)
            exempt = [await client.get(url) for url in ("/health/live", "/metrics")]
        assert (await running).status_code == 200
        after = await client.post("/classify", json=body)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "overloaded"
    assert "limit of 1 requests" in error["message"], error  # what was full, and when to retry
    assert "retry after 7 s" in error["message"], error
    assert error["request_id"] == refused.headers["X-Request-ID"]  # the body names the request
    assert refused.headers["Retry-After"] == "7"
    assert [r.status_code for r in exempt] == [200, 200]
    assert 'status="429"' in exempt[1].text
    # the refusal is counted under its reason, the error code the client saw
    assert 'promptserve_rejected_requests_total{reason="overloaded"} 1.0' in exempt[1].text
    assert after.status_code == 200  # the slot came back


async def test_admission_refuses_before_the_body_limit_reads_anything(
    client_factory: ClientFactory,
) -> None:
    """With the slot taken, a request over the body limit is refused by admission (429), which
    runs outside the body limit (413) and reads nothing."""
    async with client_factory(max_inflight_requests=1, max_body_bytes=1000) as (client, runtime):
        image = png_bytes(size=8)
        with engine_held(runtime) as entered:
            running = asyncio.create_task(
                client.post("/classify", content=image, headers={"Content-Type": "image/png"})
            )
            await eventually(entered.is_set)
            refused = await client.post("/classify", content=b"x" * 5000)
        assert (await running).status_code == 200
        too_big = await client.post("/classify", content=b"x" * 5000)
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 429
    assert too_big.status_code == 413
    error = too_big.json()["error"]
    assert error["code"] == "body_too_large"
    assert "the limit is 1000 bytes" in error["message"], error
    assert error["request_id"] == too_big.headers["X-Request-ID"]
    # the body was not read: the connection must not be reused to parse it as a request
    assert too_big.headers["Connection"] == "close"
    for reason in ("overloaded", "body_too_large"):
        assert f'promptserve_rejected_requests_total{{reason="{reason}"}} 1.0' in metrics


# --- metrics, docs, the default classifier, jobs ---------------------------------------------


async def test_invented_http_methods_add_no_metric_series(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, _):
        for i in range(50):
            await client.request(f"BREW{i}", "/classify")
        text = (await client.get("/metrics")).text
    assert "BREW" not in text
    assert 'method="other"' in text


async def test_docs_need_the_api_key_when_one_is_set(client_factory: ClientFactory) -> None:
    async with client_factory(api_key="s3cret") as (client, _):
        bare = [await client.get(path) for path in ("/docs", "/redoc", "/openapi.json")]
        auth = {"Authorization": "Bearer s3cret"}
        keyed = [
            await client.get(path, headers=auth) for path in ("/docs", "/redoc", "/openapi.json")
        ]
    assert [r.status_code for r in bare] == [401, 401, 401]
    assert [r.status_code for r in keyed] == [200, 200, 200]
    assert "/classify" in keyed[2].json()["paths"]


async def test_adapt_may_not_replace_the_default_classifier(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0) as (client, _):
        refused = await client.post("/adapt", json={"name": "default", "images": JOB_IMAGES})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "protected_classifier"
    async with client_factory(max_concurrent_jobs=0, allow_adapt_default=True) as (client, _):
        allowed = await client.post("/adapt", json={"name": "default", "images": JOB_IMAGES})
    assert allowed.status_code == 202, allowed.text


async def test_queued_jobs_are_bounded(client_factory: ClientFactory) -> None:
    async with client_factory(max_concurrent_jobs=0, max_queued_jobs=2) as (client, runtime):
        first = [
            await client.post("/adapt", json={"name": name, "images": JOB_IMAGES})
            for name in ("n1", "n2")
        ]
        third = await client.post("/adapt", json={"name": "n3", "images": JOB_IMAGES})
        jobs = runtime.jobs.count("queued")
    assert [r.status_code for r in first] == [202, 202]
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "too_many_jobs"
    assert "retry-after" in third.headers
    assert jobs == 2  # nothing written for the refused one


def test_job_messages_show_no_server_paths() -> None:
    message = "cannot read image /srv/data/set/bad/0.png: cannot identify '/srv/data/set/bad/0.png'"
    cleaned = without_paths(message)
    assert "/srv" not in cleaned
    assert cleaned.count("0.png") == 2
    assert (
        without_paths("epoch 1/2, see http://example.org/x")
        == "epoch 1/2, see http://example.org/x"
    )


async def test_start_up_removes_leftovers(client_factory: ClientFactory, store: Path) -> None:
    stale = store / "shapes" / ".tmp-killed-export"
    stale.mkdir()
    (stale / "visual.onnx").write_bytes(b"half")
    now = time.time()
    from promptserve.service.jobs.housekeeping import SUBMITTING_S
    from promptserve.service.jobs.store import JobStore

    jobs = JobStore(store / ".jobs" / "jobs.db")  # made two hours ago
    with jobs.db.connect() as db:
        db.execute("UPDATE schema_migrations SET applied_at = ?", (now - 7200,))

    def job_folder(name: str, modified: float) -> Path:
        images = store / ".jobs" / name / "images"
        images.mkdir(parents=True)
        (images / "0.png").write_bytes(png_bytes())
        os.utime(images.parent, (modified, modified))
        return images

    # newer than the database, none of its jobs', past a submission's time: an orphan
    orphan = job_folder("job-unknown", now - SUBMITTING_S - 60)
    # older than the database: an earlier (lost) database's job, whose uploads are kept
    earlier = job_folder("job-earlier", now - 10_000)
    # just made: a submission in progress on a replica sharing the job root (no row yet)
    submitting = job_folder("job-submitting", now)
    async with client_factory() as (client, _):
        assert (await client.get("/health/live")).status_code == 200
    assert not stale.exists()  # held by no process (tests/service/test_staging_cleanup.py)
    assert not orphan.parent.exists()
    assert (earlier / "0.png").is_file()
    assert (submitting / "0.png").is_file()


def test_ended_jobs_are_pruned_with_their_events(tmp_path: Path) -> None:
    from promptserve.service.jobs.store import JobStore
    from tests.service.jobs.helpers import SPEC

    jobs = JobStore(tmp_path / "jobs.db")
    old, _ = jobs.create(SPEC, fingerprint="a")
    live, _ = jobs.create(SPEC, fingerprint="b")
    jobs.add_event(old.id, "something")
    assert jobs.claim(old.id)
    jobs.finish(old.id, "succeeded", result={}, message="done")
    assert jobs.prune(time.time() - 3600) == []  # ended just now: kept
    assert jobs.prune(time.time() + 1) == [old.id]
    assert jobs.get(old.id) is None
    assert jobs.events(old.id) == []
    assert jobs.get(live.id) is not None  # queued jobs are never pruned


async def test_start_up_forgets_ended_jobs_past_their_retention(
    client_factory: ClientFactory, store: Path
) -> None:
    """The runner's housekeeping prunes at start-up (and every PRUNE_EVERY_S): an ended job
    older than JOB_RETENTION_DAYS is gone with its events and files; a recent one stays."""
    import sqlite3

    from promptserve.service.jobs.store import JobStore
    from tests.service.jobs.helpers import SPEC

    root = store / ".jobs"
    jobs = JobStore(root / "jobs.db")
    ids = []
    for fingerprint in ("old", "recent"):
        job, _ = jobs.create(SPEC, fingerprint=fingerprint)
        assert jobs.claim(job.id)
        jobs.finish(job.id, "succeeded", result={}, message="done")
        (root / job.id).mkdir(parents=True)
        (root / job.id / "log.txt").write_text("kept with the job")
        ids.append(job.id)
    old, recent = ids
    with sqlite3.connect(root / "jobs.db") as db:
        db.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (time.time() - 3 * 86400, old))
    async with client_factory(job_retention_days=2) as (client, _):
        gone = await client.get(f"/jobs/{old}")
        kept = await client.get(f"/jobs/{recent}")
    assert gone.status_code == 404
    assert kept.status_code == 200
    assert not (root / old).exists()
    assert (root / recent / "log.txt").exists()


@pytest.mark.parametrize("reference", ["a\0b", "x" * 5000])
async def test_odd_dataset_names_are_4xx(
    client_factory: ClientFactory, tmp_path: Path, reference: str
) -> None:
    async with client_factory(data_root=tmp_path, max_concurrent_jobs=0) as (client, _):
        response = await client.post("/adapt", json={"name": "ds", "dataset": reference})
    assert response.status_code == 422, response.text
    assert "dataset" in response.json()["error"]["message"]


def _dataset_root(tmp_path: Path) -> tuple[Path, Path]:
    """A data root with one good folder dataset, and a folder outside it with images."""
    root, outside = tmp_path / "data", tmp_path / "outside"
    for folder in (root / "good" / "a", root / "good" / "b", outside / "secret"):
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(png_bytes())
    return root, outside


async def test_datasets_may_not_reach_outside_the_data_root(
    client_factory: ClientFactory, tmp_path: Path
) -> None:
    root, outside = _dataset_root(tmp_path)
    linked = root / "linked"
    linked.mkdir()
    (linked / "a").symlink_to(root / "good" / "a")
    (linked / "b").symlink_to(outside / "secret")  # a class folder that is a symlink outside
    (root / "exists.jsonl").write_text(
        '{"path": "good/a/0.png", "label": "a"}\n'
        '{"path": "../outside/secret/0.png", "label": "b"}\n'
    )
    (root / "absent.jsonl").write_text(
        '{"path": "good/a/0.png", "label": "a"}\n'
        '{"path": "../outside/secret/nothing.png", "label": "b"}\n'
    )
    (root / "absolute.csv").write_text(
        f"path,label\ngood/a/0.png,a\n{outside / 'secret' / '0.png'},b\n"
    )
    async with client_factory(data_root=root, max_concurrent_jobs=0) as (client, _):
        good = await client.post("/adapt", json={"name": "ok", "dataset": "good"})
        answers = {
            name: await client.post("/adapt", json={"name": "x", "dataset": name})
            for name in ("linked", "exists.jsonl", "absent.jsonl", "absolute.csv")
        }
    assert good.status_code == 202, good.text
    for name, response in answers.items():
        assert response.status_code == 422, (name, response.text)
        message = response.json()["error"]["message"]
        assert "outside the data root" in message, message
        assert str(tmp_path) not in message
    # whether the outside file exists is not told
    exists = answers["exists.jsonl"].json()["error"]["message"].replace("exists", "X")
    absent = answers["absent.jsonl"].json()["error"]["message"].replace("absent", "X")
    assert exists == absent


def test_a_training_run_checks_the_data_root_again(tmp_path: Path) -> None:
    from promptserve.training.api import open_within
    from promptserve.training.errors import DataError

    root, outside = _dataset_root(tmp_path)
    assert len(open_within(str(root / "good"), str(root))) == 2
    (root / "good" / "b" / "0.png").unlink()
    (root / "good" / "b" / "0.png").symlink_to(outside / "secret" / "0.png")  # swapped later
    with pytest.raises(DataError, match="outside the data root"):
        open_within(str(root / "good"), str(root))
    assert len(open_within(str(root / "good"), None)) == 2  # the CLI trusts its user


@pytest.mark.anyio
async def test_a_client_leaving_mid_upload_is_no_server_error(
    client_factory: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up halfway through a multipart body (a load generator stopping, a
    closed tab) is logged as information, not as an unhandled error, and the service goes on."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png_bytes()[:20]
    async with client_factory() as (client, _):
        app = client._transport.app  # type: ignore[attr-defined]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/classify",
            "raw_path": b"/classify",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"test"),
                (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                (b"content-length", b"100000"),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
        }
        messages = [
            {"type": "http.request", "body": head, "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        with caplog.at_level("INFO"):
            await app(scope, receive, send)
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
        assert any("client left" in r.getMessage() for r in caplog.records)
        response = await client.post("/classify", files={"images": png_bytes()})
        assert response.status_code == 200
