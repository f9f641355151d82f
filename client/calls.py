"""The pure half of the client: each API call as a `Call` (what to send, whether it may be
retried, how to read the answer), and the parsing of answers and errors. Nothing here does I/O:
`Client` and `AsyncClient` send a `Call` with their own transport and return `call.parse` of
the response, so the two share every request and every answer's meaning."""

from __future__ import annotations

import base64
import email.utils
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from promptserve.client import errors
from promptserve.client.images import ImageInput, folder_examples, to_upload, to_uploads
from promptserve.client.types import (
    Alias,
    Classifier,
    ClassifierList,
    ClassifierVersion,
    ClassifyResult,
    EmbeddingsResult,
    Job,
    JobEventList,
    JobList,
)

T = TypeVar("T")
API = "/v1"
PUBLISH_MODES = ("gated", "always")


@dataclass
class Call(Generic[T]):
    """One request and how to read its answer.

    `retry_safe`: a 429 or 503 answer (the service did not act on the request) may be retried,
    and so may a connection that failed before the request was sent. `idempotent`: a request
    whose answer was lost (a read error) may be sent again too.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_safe: bool = True
    idempotent: bool = True
    upload: str | None = None  # a progress bar's description while the body is sent
    timeout: float | None = None  # overrides the client's read timeout

    def request(self, http: httpx.Client | httpx.AsyncClient, content: Any = None) -> httpx.Request:
        headers = dict(self.headers)
        if content is not None and self.content is not None:
            headers["Content-Length"] = str(len(self.content))
        extensions = {}
        if self.timeout is not None:
            timeout = http.timeout
            extensions["timeout"] = httpx.Timeout(
                timeout.connect, read=self.timeout, write=self.timeout, pool=timeout.pool
            ).as_dict()
        return http.build_request(
            self.method,
            self.path,
            params=self.params,
            json=self.json,
            content=content if content is not None else self.content,
            headers=headers,
            extensions=extensions or None,
        )


# --- answers -------------------------------------------------------------------------------


def request_id(response: httpx.Response) -> str | None:
    return response.headers.get("X-Request-ID")


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def api_error(response: httpx.Response) -> errors.APIError:
    """The typed exception of an error answer, from the body's ``error`` object when there is
    one (any body, even none, still gives the status and request id)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {}
    message = detail.get("message") or response.text[:500] or response.reason_phrase
    fields = tuple(
        errors.FieldError(tuple(item.get("path") or ()), str(item.get("message", "")))
        for item in detail.get("fields") or ()
        if isinstance(item, dict)
    )
    return errors.error_class(response.status_code)(
        str(message),
        code=detail.get("code") or f"http_{response.status_code}",
        status=response.status_code,
        request_id=detail.get("request_id") or request_id(response),
        retry_after=retry_after(response),
        fields=fields,
        body=body,
    )


def checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    raise api_error(response)


def model(kind: type[T]) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        return kind.model_validate(checked(response).json())  # type: ignore[attr-defined,no-any-return]

    return parse


def nothing(response: httpx.Response) -> None:
    checked(response)


def classify_result(response: httpx.Response) -> ClassifyResult:
    body = checked(response).json()
    return ClassifyResult.model_validate({**body, "request_id": request_id(response)})


def transport_error(exc: httpx.TransportError, url: str) -> errors.APIConnectionError:
    kind: type[errors.APIConnectionError] = (
        errors.APITimeoutError
        if isinstance(exc, httpx.TimeoutException)
        else errors.APIConnectionError
    )
    what = type(exc).__name__
    return kind(f"{url}: {what}: {exc or 'no answer'}", code="connection_error")


# --- requests ------------------------------------------------------------------------------


def multipart(
    files: Sequence[tuple[str, bytes, str]], data: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """A multipart body and its Content-Type, encoded once (so it can be resent and its upload
    progress shown)."""
    fields = {k: v for k, v in data.items() if v is not None}
    request = httpx.Request(
        "POST",
        "http://encode.invalid/",
        data=fields,
        files=[("images", upload) for upload in files],
    )
    return request.read(), {"Content-Type": request.headers["Content-Type"]}


def _fields(**values: Any) -> dict[str, Any]:
    """Form fields: None left out, numbers and switches as text, lists repeated."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            out[key] = [str(v) for v in value]
        else:
            out[key] = str(value)
    return out


def classify(
    images: ImageInput | Iterable[ImageInput],
    *,
    classifier: str | None = None,
    version: str | int | None = None,
    top_k: int | None = None,
    labels: Sequence[str] | None = None,
    classifiers: Sequence[str] | None = None,
) -> Call[ClassifyResult]:
    uploads = to_uploads(images)
    if isinstance(labels, str) or isinstance(classifiers, str):
        raise TypeError("labels and classifiers are lists of names, not one string")
    if any("," in label for label in labels or ()):
        # a form field splits on commas; JSON keeps such labels whole
        body = {
            "images": [base64.b64encode(data).decode() for _, data, _ in uploads],
            "classifier": classifier,
            "version": None if version is None else str(version),
            "top_k": top_k,
            "labels": list(labels or ()),
            "classifiers": list(classifiers) if classifiers is not None else None,
        }
        return Call("POST", f"{API}/classify", classify_result, json=_no_nones(body))
    content, headers = multipart(
        uploads,
        _fields(
            classifier=classifier,
            version=version,
            top_k=top_k,
            labels=list(labels) if labels is not None else None,
            classifiers=list(classifiers) if classifiers is not None else None,
        ),
    )
    return Call("POST", f"{API}/classify", classify_result, content=content, headers=headers)


def embeddings(
    images: ImageInput | Iterable[ImageInput] | None = None,
    texts: str | Sequence[str] | None = None,
    *,
    classifier: str | None = None,
) -> Call[EmbeddingsResult]:
    if (images is None) == (texts is None):
        raise ValueError("give images= or texts=, one of them")
    if texts is not None:
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ValueError("no texts given")
        body: dict[str, Any] = {"input": items, "modality": "text"}
    else:
        uploads = to_uploads(images)
        body = {
            "input": [base64.b64encode(data).decode() for _, data, _ in uploads],
            "modality": "image",
        }
    if classifier is not None:
        body["classifier"] = classifier
    return Call("POST", f"{API}/embeddings", model(EmbeddingsResult), json=body)


def adapt(
    name: str,
    *,
    folder: str | Any | None = None,
    examples: Iterable[tuple[ImageInput, str]] | None = None,
    dataset: str | None = None,
    method: str | None = None,
    shots: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    config: dict[str, Any] | None = None,
    publish: str | None = None,
    alias: str | None = None,
    idempotency_key: str | None = None,
) -> Call[Job]:
    """POST /v1/adapt with the images of `folder` (``<class>/*.png``), or `examples`
    (``(image, label)`` pairs), or a server-side `dataset`. An Idempotency-Key (a new one per
    call unless given) makes the call safe to retry: the service answers a repeated key with
    the job the first request created."""
    given = [x is not None for x in (folder, examples, dataset)]
    if sum(given) != 1:
        raise ValueError("give one of folder=, examples= or dataset=")
    if publish is not None and publish not in PUBLISH_MODES:
        raise ValueError(f"publish must be one of {PUBLISH_MODES}, not {publish!r}")
    headers = {"Idempotency-Key": idempotency_key or f"promptserve-client-{uuid.uuid4()}"}
    data = _fields(
        name=name,
        method=method,
        shots=shots,
        epochs=epochs,
        seed=seed,
        backbone=backbone,
        preset=preset,
        publish=publish,
        alias=alias,
        config=json.dumps(config) if config else None,
        dataset=dataset,
    )
    if dataset is not None:
        body = {k: v for k, v in data.items() if k != "config"}
        body |= {"config": config} if config else {}
        for key in ("shots", "epochs", "seed"):
            if key in body:
                body[key] = int(body[key])
        return Call("POST", f"{API}/adapt", model(Job), json=body, headers=headers)
    pairs = list(folder_examples(folder)) if folder is not None else list(examples or ())
    if not pairs:
        raise ValueError("no examples given")
    uploads = [to_upload(image, i) for i, (image, _) in enumerate(pairs)]
    data["labels"] = [str(label) for _, label in pairs]
    content, content_type = multipart(uploads, data)
    return Call(
        "POST",
        f"{API}/adapt",
        model(Job),
        content=content,
        headers=headers | content_type,
        idempotent=True,  # the Idempotency-Key makes a resent request return the same job
        upload=f"uploading {len(uploads)} images",
        timeout=300.0,
    )


def _no_nones(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def job(job_id: str) -> Call[Job]:
    return Call("GET", f"{API}/jobs/{_seg(job_id)}", model(Job))


def jobs(limit: int | None = None, after: str | None = None) -> Call[JobList]:
    return Call(
        "GET", f"{API}/jobs", model(JobList), params=_no_nones({"limit": limit, "after": after})
    )


def cancel(job_id: str) -> Call[Job]:
    # cancelling twice is harmless (the second is a 409 job_finished), so a lost answer is resent
    return Call("POST", f"{API}/jobs/{_seg(job_id)}/cancel", model(Job), timeout=30.0)


def events(job_id: str, after: int = 0, limit: int | None = None) -> Call[JobEventList]:
    params = _no_nones({"after": after or None, "limit": limit})
    return Call("GET", f"{API}/jobs/{_seg(job_id)}/events", model(JobEventList), params=params)


def classifiers() -> Call[ClassifierList]:
    return Call("GET", f"{API}/classifiers", model(ClassifierList))


def classifier(name: str) -> Call[Classifier]:
    return Call("GET", f"{API}/classifiers/{_seg(name)}", model(Classifier))


def classifier_version(name: str, version: str | int) -> Call[ClassifierVersion]:
    path = f"{API}/classifiers/{_seg(name)}/versions/{_seg(version)}"
    return Call("GET", path, model(ClassifierVersion))


def delete(name: str, version: str | int) -> Call[None]:
    path = f"{API}/classifiers/{_seg(name)}/versions/{_seg(version)}"
    return Call("DELETE", path, nothing)


def aliases(name: str) -> Call[dict[str, str]]:
    def parse(response: httpx.Response) -> dict[str, str]:
        return {str(k): str(v) for k, v in checked(response).json().items()}

    return Call("GET", f"{API}/classifiers/{_seg(name)}/aliases", parse)


def set_alias(name: str, alias: str, version: str | int) -> Call[Alias]:
    path = f"{API}/classifiers/{_seg(name)}/aliases/{_seg(alias)}"
    return Call("PUT", path, model(Alias), json={"version": str(version)})


def delete_alias(name: str, alias: str) -> Call[None]:
    return Call("DELETE", f"{API}/classifiers/{_seg(name)}/aliases/{_seg(alias)}", nothing)


def job_id_of(job: str | Job) -> str:
    return job.id if isinstance(job, Job) else str(job)
