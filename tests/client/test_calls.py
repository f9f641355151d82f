"""The client's pure layer without a server: how each call is built, how answers and errors
are read, and how images of every accepted kind become uploads."""

from __future__ import annotations

import base64
import email.utils
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tenacity
from PIL import Image

from promptserve.client import calls, errors
from promptserve.client.images import folder_examples, is_single, to_upload, to_uploads
from promptserve.client.policy import RetryPolicy
from promptserve.client.types import ClassifyResult, Job
from tests.client.mock_server import classify_body, error, job_body, ok

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def form(call: calls.Call) -> tuple[dict[str, list[str]], list[tuple[str, str, bytes]]]:
    """The fields and files of a call's multipart body, parsed back."""
    request = httpx.Request("POST", "http://x/", content=call.content, headers=call.headers)
    boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
    fields: dict[str, list[str]] = {}
    files = []
    for part in request.content.split(b"--" + boundary)[1:-1]:
        head, _, body = part.strip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode().split("\r\n")[0]
        name = disposition.split('name="')[1].split('"')[0]
        if 'filename="' in disposition:
            filename = disposition.split('filename="')[1].split('"')[0]
            files.append((name, filename, body))
        else:
            fields.setdefault(name, []).append(body.decode())
    return fields, files


def test_classify_sends_multipart_files_and_fields() -> None:
    call = calls.classify(
        [PNG, PNG], classifier="parts@prod", top_k=2, labels=["a", "b"], version=None
    )
    assert (call.method, call.path) == ("POST", "/v1/classify")
    fields, files = form(call)
    assert fields == {"classifier": ["parts@prod"], "top_k": ["2"], "labels": ["a", "b"]}
    assert [(n, f) for n, f, _ in files] == [("images", "image-0.png"), ("images", "image-1.png")]
    assert files[0][2] == PNG
    assert call.retry_safe
    assert call.idempotent


def test_classify_labels_with_commas_go_as_json() -> None:
    call = calls.classify(PNG, labels=["red, dark", "blue"], classifiers=["a", "b@2"])
    assert call.content is None
    assert call.json == {
        "images": [base64.b64encode(PNG).decode()],
        "labels": ["red, dark", "blue"],
        "classifiers": ["a", "b@2"],
    }


def test_classify_refuses_a_string_for_a_list() -> None:
    with pytest.raises(TypeError, match="lists of names"):
        calls.classify(PNG, labels="cat")


def test_images_of_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    array = np.zeros((5, 6, 3), np.uint8)
    uploads = to_uploads([path, str(path), path.read_bytes(), Image.open(path), array])
    assert [u[0] for u in uploads][:2] == ["a.png", "a.png"]
    assert all(kind == "image/png" for _, _, kind in uploads)
    assert all(data.startswith(b"\x89PNG") for _, data, _ in uploads)
    assert Image.open(__import__("io").BytesIO(uploads[4][1])).size == (6, 5)
    assert to_upload(b"\xff\xd8\xff\xe0rest")[1:] == (b"\xff\xd8\xff\xe0rest", "image/jpeg")


def test_one_image_or_a_list() -> None:
    assert is_single(PNG)
    assert is_single("x.png")
    assert is_single(Path("x.png"))
    assert is_single(np.zeros((4, 4, 3), np.uint8))
    assert is_single(Image.new("RGB", (2, 2)))
    assert not is_single([PNG])
    assert not is_single(np.zeros((2, 4, 4, 3), np.uint8))
    assert len(to_uploads(np.zeros((2, 4, 4, 3), np.uint8))) == 2
    with pytest.raises(ValueError, match="no images"):
        to_uploads([])
    with pytest.raises(TypeError, match="uint8"):
        to_upload(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="a path, bytes"):
        to_upload(3.5)


def test_adapt_from_a_folder(tmp_path: Path) -> None:
    for label in ("part-17", "part-42"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "part-42" / "notes.txt").write_text("not an image")
    call = calls.adapt("parts", folder=tmp_path, method="coop", shots=1, epochs=2,
                       publish="gated", alias="prod", config={"n_ctx": 4})  # fmt: skip
    fields, files = form(call)
    assert fields["labels"] == ["part-17", "part-17", "part-42", "part-42"]
    assert [f for _, f, _ in files] == ["0.png", "1.png", "0.png", "1.png"]
    assert {k: v[0] for k, v in fields.items() if k != "labels"} == {
        "name": "parts", "method": "coop", "shots": "1", "epochs": "2", "publish": "gated",
        "alias": "prod", "config": json.dumps({"n_ctx": 4}),
    }  # fmt: skip
    assert call.headers["Idempotency-Key"].startswith("promptserve-client-")
    assert call.upload == "uploading 4 images"
    # each call is a new request: a new key; a given key is sent as it is
    assert (
        calls.adapt("p", examples=[(PNG, "a")]).headers["Idempotency-Key"]
        != (call.headers["Idempotency-Key"])
    )
    assert (
        calls.adapt("p", examples=[(PNG, "a")], idempotency_key="k1").headers["Idempotency-Key"]
        == "k1"
    )


def test_adapt_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one of folder"):
        calls.adapt("p")
    with pytest.raises(ValueError, match="one of folder"):
        calls.adapt("p", folder=tmp_path, dataset="d")
    with pytest.raises(ValueError, match="publish"):
        calls.adapt("p", examples=[(PNG, "a")], publish="sometimes")
    with pytest.raises(ValueError, match="no images under"):
        folder_examples(tmp_path)
    with pytest.raises(FileNotFoundError):
        folder_examples(tmp_path / "missing")


def test_adapt_from_a_dataset_is_json() -> None:
    call = calls.adapt("p", dataset="parts/", shots=4, config={"lr": 0.1})
    assert call.json == {"name": "p", "dataset": "parts/", "shots": 4, "config": {"lr": 0.1}}


def test_embeddings_bodies() -> None:
    assert calls.embeddings(texts="a cat", classifier="parts@2").json == {
        "input": ["a cat"], "modality": "text", "classifier": "parts@2"}  # fmt: skip
    assert calls.embeddings([PNG]).json == {
        "input": [base64.b64encode(PNG).decode()], "modality": "image"}  # fmt: skip
    with pytest.raises(ValueError, match="one of them"):
        calls.embeddings()


def test_paths_quote_their_segments() -> None:
    assert calls.job("a/b").path == "/v1/jobs/a%2Fb"
    assert calls.delete("parts", 3).path == "/v1/classifiers/parts/versions/3"
    assert calls.set_alias("parts", "prod", 2).json == {"version": "2"}
    assert calls.set_alias("parts", "prod", 2).method == "PUT"
    assert calls.events("j", after=5).params == {"after": 5}
    assert calls.jobs(limit=3).params == {"limit": 3}


def test_answers_parse_into_types_and_keep_new_fields() -> None:
    body = classify_body("parts", "3")
    body["results"][0]["future"] = 1
    result = calls.classify_result(ok(body))
    assert isinstance(result, ClassifyResult)
    assert result.request_id == "req-ok"
    assert (result.classifier, result.version, result.labels) == ("parts", "3", ["red star"])
    assert result["parts"] is result["parts@latest"] is result["parts@3"] is result.results[0]
    assert result.results[0].model_extra == {"future": 1}
    job = calls.job("job-1").parse(
        ok(job_body("running", progress={"epoch": 1, "epochs": 2, "loss": 0.5, "new": True}))
    )
    assert isinstance(job, Job)
    assert job.progress is not None
    assert (job.progress.epoch, job.progress.loss, job.done) == (1, 0.5, False)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.PayloadTooLargeError),
        (422, errors.UnprocessableError),
        (429, errors.RateLimitError),
        (503, errors.ServiceUnavailableError),
        (500, errors.InternalServerError),
        (418, errors.APIError),
    ],
)
def test_error_answers_raise_typed_errors(status: int, kind: type[Exception]) -> None:
    with pytest.raises(kind) as raised:
        calls.job("x").parse(error(status, "some_code", "it broke"))
    exc = raised.value
    assert isinstance(exc, errors.PromptserveError)
    assert (exc.status, exc.code, exc.message, exc.request_id) == (
        status, "some_code", "it broke", "req-123")  # fmt: skip
    assert "req-123" in str(exc)
    assert "some_code" in str(exc)


def test_a_422_carries_its_fields() -> None:
    fields = [{"path": ["body", "images", 0], "message": "not base64"}]
    exc = calls.api_error(error(422, "invalid_request", "bad", fields=fields))
    assert exc.fields == (errors.FieldError(("body", "images", 0), "not base64"),)
    assert str(exc.fields[0]) == "images.0: not base64"


def test_an_error_without_a_json_body_still_has_status_and_request_id() -> None:
    response = httpx.Response(502, text="Bad Gateway", headers={"X-Request-ID": "r9"})
    exc = calls.api_error(response)
    assert isinstance(exc, errors.InternalServerError)
    assert (exc.code, exc.request_id, exc.message) == ("http_502", "r9", "Bad Gateway")


def test_retry_after_as_seconds_or_a_date() -> None:
    assert calls.retry_after(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = calls.retry_after(httpx.Response(429, headers={"Retry-After": when}))
    assert seconds is not None
    assert 25 <= seconds <= 31
    assert calls.retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert calls.retry_after(httpx.Response(429)) is None


def state_after(exc: BaseException, attempt: int = 1) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_retry_policy() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=4, max_retry_after=10)
    busy = calls.api_error(error(429, "overloaded", headers={"Retry-After": "2"}))
    assert busy.retry_after == 2.0
    safe = calls.job("x")
    unsafe = calls.Call("POST", "/v1/x", calls.nothing, retry_safe=False, idempotent=False)
    assert policy.should_retry(safe, busy)
    assert not policy.should_retry(unsafe, busy)
    assert policy.wait(state_after(busy)) == 2.0  # Retry-After, as the service asked
    unavailable = calls.api_error(error(503, "not_ready"))
    assert policy.should_retry(safe, unavailable)
    assert 0 <= policy.wait(state_after(unavailable, 5)) <= 4  # backoff, capped
    late = calls.api_error(error(429, "too_many_jobs", headers={"Retry-After": "30"}))
    assert not policy.should_retry(safe, late)  # longer than max_retry_after: raised at once
    for code in (400, 401, 404, 409, 422, 500):
        assert not policy.should_retry(safe, calls.api_error(error(code, "x")))
    refused = errors.APIConnectionError("refused")
    refused.__cause__ = httpx.ConnectError("refused")
    lost = errors.APIConnectionError("lost")
    lost.__cause__ = httpx.ReadError("lost")
    assert policy.should_retry(unsafe, refused) is False  # retry_safe=False: not even this
    assert policy.should_retry(calls.Call("POST", "/", calls.nothing, idempotent=False), refused)
    assert not policy.should_retry(calls.Call("POST", "/", calls.nothing, idempotent=False), lost)
    assert policy.should_retry(safe, lost)


def test_importing_the_client_loads_neither_torch_nor_the_service() -> None:
    script = (
        "import sys, promptserve.client, promptserve.client.cli\n"
        "print(sorted(m for m in ('torch', 'numpy', 'promptserve.service', "
        "'promptserve.models', 'promptserve.training', 'fastapi') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
