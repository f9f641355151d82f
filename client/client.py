"""`Client` and `AsyncClient`: thin transports over the calls of `promptserve.client.calls`.

Each method builds its `Call` there, sends it (retrying as `RetryPolicy` allows) and returns
`call.parse` of the answer; the two classes differ only in how they send and sleep.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import httpx
import tenacity

from promptserve.client import calls
from promptserve.client.calls import Call, job_id_of
from promptserve.client.images import ImageInput
from promptserve.client.policy import (
    JobWatch,
    RetryPolicy,
    achunks,
    as_policy,
    chunks,
    show_progress,
    upload_bar,
)
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
DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "PROMPTSERVE_URL"
KEY_ENV = "PROMPTSERVE_API_KEY"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("promptserve")
    except Exception:  # noqa: BLE001  # a checkout that was never installed
        return "0"


class _Base:
    """What both clients hold: the base URL, the key, the timeout, the retry policy."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float,
        retries: RetryPolicy | int | None,
        progress: bool | None,
        headers: dict[str, str] | None,
    ) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        self.retry = as_policy(retries)
        self.progress = progress
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.headers = {"User-Agent": f"promptserve-client/{_version()}", **(headers or {})}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def _progress(self, progress: bool | None) -> bool:
        return show_progress(self.progress if progress is None else progress)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Client(_Base):
    """The promptserve /v1 API over HTTP (sync).

    ``url`` defaults to ``$PROMPTSERVE_URL`` or http://127.0.0.1:8000, ``api_key`` to
    ``$PROMPTSERVE_API_KEY``. ``retries``: a `RetryPolicy`, or how many retries (0: none).
    ``progress``: progress bars for uploads and `wait` (default: when stderr is a terminal).
    Use it as a context manager, or call `close`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: RetryPolicy | int | None = None,
        progress: bool | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, progress, headers)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send `call`, retried as the policy allows; its parsed answer or a typed error."""
        for attempt in tenacity.Retrying(**self.retry.options(call)):
            with attempt:
                return self._once(call)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, call: Call[T]) -> T:
        bar = upload_bar(call, self._progress(None))
        try:
            content = chunks(call.content, bar) if bar is not None and call.content else None
            response = self._http.send(call.request(self._http, content))
        except httpx.TransportError as exc:
            raise calls.transport_error(exc, self.url) from exc
        finally:
            if bar is not None:
                bar.close()
        return call.parse(response)

    # --- classify and embeddings ---

    def classify(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        classifier: str | None = None,
        version: str | int | None = None,
        top_k: int | None = None,
        labels: Sequence[str] | None = None,
        classifiers: Sequence[str] | None = None,
    ) -> ClassifyResult:
        """Classify one image or a list (paths, bytes, PIL images, uint8 arrays). `classifier`
        may be ``name``, ``name@alias`` or ``name@3``; `classifiers` names several, each
        scoring every image; `labels` scores only those labels."""
        return self.send(
            calls.classify(
                images,
                classifier=classifier,
                version=version,
                top_k=top_k,
                labels=labels,
                classifiers=classifiers,
            )
        )

    def embeddings(
        self,
        images: ImageInput | Iterable[ImageInput] | None = None,
        *,
        texts: str | Sequence[str] | None = None,
        classifier: str | None = None,
    ) -> EmbeddingsResult:
        """The classifier's L2-normalised embeddings of `images`, or of label `texts`."""
        return self.send(calls.embeddings(images, texts, classifier=classifier))

    # --- tuning jobs ---

    def adapt(
        self,
        name: str,
        folder: str | os.PathLike[str] | None = None,
        *,
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
    ) -> Job:
        """Queue a tuning job for classifier `name` from `folder` (``<class>/*.png``), from
        `examples` (``(image, label)`` pairs) or from a server-side `dataset`; the queued
        `Job`. `publish` is ``"gated"`` or ``"always"`` (the server's default when omitted),
        `alias` the alias the new version takes."""
        return self.send(
            calls.adapt(
                name,
                folder=folder,
                examples=examples,
                dataset=dataset,
                method=method,
                shots=shots,
                epochs=epochs,
                seed=seed,
                backbone=backbone,
                preset=preset,
                config=config,
                publish=publish,
                alias=alias,
                idempotency_key=idempotency_key,
            )
        )

    def wait(
        self,
        job: str | Job,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool | None = None,
    ) -> Job:
        """Poll the job until it ends; the succeeded `Job`. Raises `JobFailed` when it failed or
        was cancelled, `JobTimeout` after `timeout` seconds."""
        watch = JobWatch(
            job_id_of(job),
            timeout=timeout,
            poll_interval=poll_interval,
            progress=self._progress(progress),
        )
        try:
            while (pause := watch.seen(self.job(watch.job_id))) is not None:
                time.sleep(pause)
        finally:
            watch.close()
        assert watch.job is not None
        return watch.job

    def job(self, job_id: str | Job) -> Job:
        return self.send(calls.job(job_id_of(job_id)))

    def jobs(self, *, limit: int | None = None, after: str | None = None) -> JobList:
        """A page of jobs, newest first (`after`: the previous page's `next_after`)."""
        return self.send(calls.jobs(limit, after))

    def cancel(self, job_id: str | Job) -> Job:
        return self.send(calls.cancel(job_id_of(job_id)))

    def events(
        self, job_id: str | Job, *, after: int = 0, limit: int | None = None
    ) -> JobEventList:
        return self.send(calls.events(job_id_of(job_id), after, limit))

    # --- classifiers, versions and aliases ---

    def classifiers(self) -> ClassifierList:
        return self.send(calls.classifiers())

    def classifier(self, name: str) -> Classifier:
        return self.send(calls.classifier(name))

    def classifier_version(self, name: str, version: str | int) -> ClassifierVersion:
        return self.send(calls.classifier_version(name, version))

    def delete(self, name: str, version: str | int) -> None:
        self.send(calls.delete(name, version))

    def aliases(self, name: str) -> dict[str, str]:
        return self.send(calls.aliases(name))

    def set_alias(self, name: str, alias: str, version: str | int) -> Alias:
        return self.send(calls.set_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        self.send(calls.delete_alias(name, alias))


class AsyncClient(_Base):
    """`Client`'s API with ``async`` methods (one httpx.AsyncClient; ``async with``)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: RetryPolicy | int | None = None,
        progress: bool | None = None,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, progress, headers)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        async for attempt in tenacity.AsyncRetrying(**self.retry.options(call)):
            with attempt:
                return await self._once(call)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, call: Call[T]) -> T:
        bar = upload_bar(call, self._progress(None))
        try:
            content = achunks(call.content, bar) if bar is not None and call.content else None
            response = await self._http.send(call.request(self._http, content))
        except httpx.TransportError as exc:
            raise calls.transport_error(exc, self.url) from exc
        finally:
            if bar is not None:
                bar.close()
        return call.parse(response)

    async def classify(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        classifier: str | None = None,
        version: str | int | None = None,
        top_k: int | None = None,
        labels: Sequence[str] | None = None,
        classifiers: Sequence[str] | None = None,
    ) -> ClassifyResult:
        """See `Client.classify`."""
        return await self.send(
            calls.classify(
                images,
                classifier=classifier,
                version=version,
                top_k=top_k,
                labels=labels,
                classifiers=classifiers,
            )
        )

    async def embeddings(
        self,
        images: ImageInput | Iterable[ImageInput] | None = None,
        *,
        texts: str | Sequence[str] | None = None,
        classifier: str | None = None,
    ) -> EmbeddingsResult:
        """See `Client.embeddings`."""
        return await self.send(calls.embeddings(images, texts, classifier=classifier))

    async def adapt(
        self,
        name: str,
        folder: str | os.PathLike[str] | None = None,
        *,
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
    ) -> Job:
        """See `Client.adapt`."""
        return await self.send(
            calls.adapt(
                name,
                folder=folder,
                examples=examples,
                dataset=dataset,
                method=method,
                shots=shots,
                epochs=epochs,
                seed=seed,
                backbone=backbone,
                preset=preset,
                config=config,
                publish=publish,
                alias=alias,
                idempotency_key=idempotency_key,
            )
        )

    async def wait(
        self,
        job: str | Job,
        *,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: bool | None = None,
    ) -> Job:
        """See `Client.wait`."""
        watch = JobWatch(
            job_id_of(job),
            timeout=timeout,
            poll_interval=poll_interval,
            progress=self._progress(progress),
        )
        try:
            while (pause := watch.seen(await self.job(watch.job_id))) is not None:
                await asyncio.sleep(pause)
        finally:
            watch.close()
        assert watch.job is not None
        return watch.job

    async def job(self, job_id: str | Job) -> Job:
        return await self.send(calls.job(job_id_of(job_id)))

    async def jobs(self, *, limit: int | None = None, after: str | None = None) -> JobList:
        return await self.send(calls.jobs(limit, after))

    async def cancel(self, job_id: str | Job) -> Job:
        return await self.send(calls.cancel(job_id_of(job_id)))

    async def events(
        self, job_id: str | Job, *, after: int = 0, limit: int | None = None
    ) -> JobEventList:
        return await self.send(calls.events(job_id_of(job_id), after, limit))

    async def classifiers(self) -> ClassifierList:
        return await self.send(calls.classifiers())

    async def classifier(self, name: str) -> Classifier:
        return await self.send(calls.classifier(name))

    async def classifier_version(self, name: str, version: str | int) -> ClassifierVersion:
        return await self.send(calls.classifier_version(name, version))

    async def delete(self, name: str, version: str | int) -> None:
        await self.send(calls.delete(name, version))

    async def aliases(self, name: str) -> dict[str, str]:
        return await self.send(calls.aliases(name))

    async def set_alias(self, name: str, alias: str, version: str | int) -> Alias:
        return await self.send(calls.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        await self.send(calls.delete_alias(name, alias))


__all__ = ["DEFAULT_URL", "AsyncClient", "Client"]
