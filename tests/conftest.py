"""Shared fixtures: tiny random-init backbones, and the mini template store that every end-to-end
server runs a copy of (tests/service/servers.py); nothing is downloaded. Every test runs
isolated from the caller's environment and from the tests before it (`isolated`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch

# the session's mini template store for the end-to-end servers, and a test's copy of it
from tests.scheduling import slow_modules_first
from tests.service.servers import mini_store, mini_template_store  # noqa: F401 (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: no test may reach a hub
# The service reads every PROMPTSERVE_* variable; a test pins what it means (Settings arguments,
# monkeypatch.setenv, a subprocess's env), so none may come from the shell that runs pytest.
for _name in [name for name in os.environ if name.startswith("PROMPTSERVE_")]:
    del os.environ[_name]
# OMP_NUM_THREADS, when set, picks the kernels' thread count (the tolerances must hold for any);
# under pytest-xdist the workers share the cores out rather than each taking two
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or _THREADS))


@pytest.fixture(scope="session")
def tiny_backbone():  # type: ignore[no-untyped-def]
    """One tiny backbone for the session: a test that changes its weights must work on a copy
    (`copy.deepcopy`), or every later test runs on other weights; checked at the end."""
    from promptserve.models.backbone import hash_state_dict, load_backbone

    backbone = load_backbone("tiny")
    before = hash_state_dict(backbone.model.state_dict())
    yield backbone
    assert hash_state_dict(backbone.model.state_dict()) == before, "a test changed tiny_backbone"


@pytest.fixture(autouse=True)
def isolated() -> Iterator[None]:
    """Around every test: no PROMPTSERVE_* variable set, and afterwards the environment, the
    working directory and the logging configuration (levels, handlers) as they were before it."""
    environment = dict(os.environ)
    for name in [name for name in os.environ if name.startswith("PROMPTSERVE_")]:
        del os.environ[name]
    directory = os.getcwd()
    root = logging.getLogger()
    named = {name: logging.getLogger(name) for name in list(logging.root.manager.loggerDict)}
    saved = {
        name: (log.level, list(log.handlers), log.propagate, log.disabled)
        for name, log in named.items()
    }
    root_level, root_handlers = root.level, list(root.handlers)
    yield
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(directory)
    root.setLevel(root_level)
    for handler in root.handlers[:]:  # pytest moves its own capture handlers per test phase
        if handler not in root_handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    for name in list(logging.root.manager.loggerDict):
        log = logging.getLogger(name)
        level, handlers, propagate, disabled = saved.get(name, (logging.NOTSET, [], True, False))
        log.setLevel(level)
        log.handlers[:] = handlers
        log.propagate, log.disabled = propagate, disabled


# STRICT_SKIPS=1 (set by .ci/run): a test skipped for a missing dependency (Postgres, an S3
# server, chromium, curl, tritonclient, ...) fails instead; only the CUDA tests may skip, since
# CI has no GPU, and the bf16 engine's tests, since not every CI CPU has bf16 instructions (their
# skip reason starts "this CPU has none of"). Locally a missing dependency stays a skip (-ra).
STRICT_SKIPS = os.environ.get("STRICT_SKIPS") == "1"
MAY_SKIP = ("CUDA", "GPU", "this CPU has none of")  # hardware the machine lacks, never software


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        if not any(word in reason for word in MAY_SKIP):
            report.outcome = "failed"
            report.longrepr = f"skipped under STRICT_SKIPS=1: {reason}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the modules holding slow tests are handed out first
    (tests/scheduling.py); this runs after pytest-randomly's shuffle."""
    if hasattr(config, "workerinput"):  # set in an xdist worker only
        items[:] = slow_modules_first(items)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The test order's seed, also under -q (pytest-randomly prints it only in the header)."""
    seed = getattr(config.option, "randomly_seed", None)
    if config.pluginmanager.hasplugin("randomly") and isinstance(seed, int):
        terminalreporter.write_line(f"tests ran in random order: --randomly-seed={seed} repeats it")
