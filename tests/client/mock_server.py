"""A fake /v1 service for the client's unit tests: an `httpx.MockTransport` handler that
records every request and answers from a queue of scripted responses per route."""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import httpx

Answer = httpx.Response | Callable[[httpx.Request], httpx.Response]


def job_body(state: str = "queued", **fields: Any) -> dict[str, Any]:
    return {
        "id": "job-1",
        "state": state,
        "name": "parts",
        "method": "coop",
        "backbone": "mini",
        "preset": "mini",
        "shots": 12,
        "epochs": 2,
        "seed": 1,
        "config": {},
        "data": "upload",
        "classes": ["part-17", "part-42"],
        "images": 4,
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "started_at": None,
        "finished_at": None,
        "progress": None,
        "result": None,
        "error": None,
        "cancel_requested": False,
        **fields,
    }


def classify_body(classifier: str = "default", version: str = "1") -> dict[str, Any]:
    return {
        "results": [
            {
                "classifier": classifier,
                "version": version,
                "alias": "latest",
                "predictions": [[{"label": "red star", "score": 0.9}]],
                "encoded_labels": [],
            }
        ]
    }


def error(status: int, code: str, message: str = "nope", **extra: Any) -> httpx.Response:
    headers = {"X-Request-ID": "req-123", **extra.pop("headers", {})}
    body = {"error": {"code": code, "message": message, "request_id": "req-123", **extra}}
    return httpx.Response(status, json=body, headers=headers)


class FakeService:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: dict[tuple[str, str], deque[Answer]] = defaultdict(deque)
        self.default: dict[tuple[str, str], Answer] = {}

    def on(self, method: str, path: str, *answers: Answer) -> FakeService:
        """Answer the next requests to `path` with `answers` in turn, then the last forever."""
        queue = self.answers[(method, path)]
        queue.extend(answers)
        self.default[(method, path)] = answers[-1]
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        key = (request.method, request.url.path)
        queue = self.answers.get(key)
        answer = queue.popleft() if queue else self.default.get(key)
        if answer is None:
            return error(404, "not_found", f"no route {key}")
        return answer(request) if callable(answer) else answer

    def sync(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def asynchronous(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            await request.aread()
            return self(request)

        return httpx.MockTransport(handler)


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body), headers={
        "Content-Type": "application/json", "X-Request-ID": "req-ok", **headers})  # fmt: skip
