"""The `promptserve` command line: training's commands plus ``serve``, ``worker``, ``keys``
and ``client``.

``serve`` and ``worker`` live here because imports flow service -> training -> models; every
other command is handed to `training.cli.main` unchanged. ``client`` (the remote command line,
`promptserve.client.cli`) is dispatched before anything else is imported, so it never loads
torch. `main(argv)` returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptserve.client.cli import add_parser as add_client_command
from promptserve.client.cli import main as client_main
from promptserve.service.keys_cli import add_keys_command, run_keys
from promptserve.service.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    from promptserve.training.cli import build_parser as build_training_parser

    return build_training_parser(add_commands=add_serve_command)


def add_serve_command(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the classifier store over HTTP",
        description="Run the HTTP API with uvicorn. Settings come from PROMPTSERVE_* environment "
        "variables; these flags override them.",
    )
    serve.add_argument("--store", type=Path, default=None, help="classifier store directory")
    serve.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API worker processes sharing the port (default 1, PROMPTSERVE_WORKERS); with more "
        "than one, one engine process holds the model and batches across all of them",
    )
    add_worker_command(commands)
    add_config_command(commands)
    add_client_command(commands)
    add_keys_command(commands)


def add_config_command(commands: Any) -> None:
    from promptserve.service.settings_report import add_config_command as add

    add(commands)


def add_worker_command(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="run tuning jobs from the shared job store",
        description="Claim queued tuning jobs and run them, without the HTTP API. Point every "
        "worker and API process at one job store (PROMPTSERVE_DATABASE_URL, or one store "
        "directory on one host) and one classifier store (PROMPTSERVE_STORE).",
    )
    worker.add_argument("--store", type=Path, default=None, help="classifier store directory")
    worker.add_argument(
        "--slots",
        type=int,
        default=None,
        help="jobs run at once (default: one per GPU, or 1 on the CPU)",
    )


def run_serve(args: argparse.Namespace) -> int:
    # imported here so that `promptserve train` and friends never load the web stack
    import uvicorn

    from promptserve.service.app import create_app
    from promptserve.service.connections import server_options
    from promptserve.service.settings import Settings

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("store", args.store),
            ("host", args.host),
            ("port", args.port),
            ("workers", args.workers),
        )
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.stderr.write(f"promptserve serve: invalid settings:\n{exc}\n")
        return 2
    if args.verbose:
        settings = settings.model_copy(update={"log_level": "debug"})
    code = start_up(
        "serve",
        settings,
        lambda: tracing_problem("api"),
        lambda: keys_problem(settings),
        lambda: device_problem(settings),
    )
    if code is not None:
        return code
    if settings.workers > 1:
        from promptserve.service.remote.supervisor import serve_workers

        return serve_workers(settings)
    uvicorn.run(create_app(settings), **server_options(settings))
    return 0


def keys_problem(settings: Any) -> str | None:
    """Why the keys file cannot be used (missing, not JSON, invalid), before anything starts."""
    from promptserve.service.keys import KeysFileError, key_ring

    try:
        key_ring(settings)
    except KeysFileError as exc:
        return f"PROMPTSERVE_API_KEYS_FILE: {exc}"
    return None


def device_problem(settings: Any) -> str | None:
    """Why the engine's device cannot serve as set (no GPU, a CUDA library, TensorRT), before
    anything starts; with several API workers the engine process re-checks it with a probe
    session (the supervisor should hold no CUDA context)."""
    from promptserve.models.devices import check_engine_device
    from promptserve.models.errors import ProviderError

    try:
        check_engine_device(
            settings.device,
            settings.engine,
            fp16=settings.onnx_fp16,
            tensorrt=settings.onnx_tensorrt,
            probe=settings.workers == 1,
        )
    except ProviderError as exc:
        return str(exc)
    return None


def start_up(command: str, settings: Any, *checks: Callable[[], str | None]) -> int | None:
    """What `serve` and `worker` do before they start: logging, the warning for variables that
    are no setting, the job database (exit 4: its schema is newer), then `checks` in order
    (exit 3 on the first problem). None when everything may start."""
    from promptserve.service.settings_report import warn_unknown_settings

    configure_logging(settings.log_level, settings.log_format)
    warn_unknown_settings()
    problem = job_database_problem(settings)
    if problem is not None:
        sys.stderr.write(f"promptserve {command}: {problem}\n")
        return 4
    for check in checks:
        problem = check()
        if problem is not None:
            sys.stderr.write(f"promptserve {command}: {problem}\n")
            return 3
    return None


def job_database_problem(settings: Any) -> str | None:
    """Why this release cannot use the job database (its schema is newer), before anything
    starts; opening it applies this release's migrations. A database that is locked, damaged
    or unreachable is no reason not to start: the service classifies, and jobs answer 503
    until it opens (`service.jobs.opening`)."""
    from promptserve.service.jobs.migrations import SchemaError
    from promptserve.service.jobs.opening import JobDatabase

    try:
        JobDatabase(settings.job_database, timeout_s=settings.job_db_timeout_s)
    except SchemaError as exc:
        return str(exc)
    return None


def tracing_problem(process: str) -> str | None:
    """Tracing turned on in this process as the OTEL_* variables ask, or why it cannot be."""
    from promptserve.service import tracing

    try:
        tracing.configure(process)
    except tracing.TracingUnavailableError as exc:
        return str(exc)
    return None


def run_worker(args: argparse.Namespace) -> int:
    import asyncio

    from promptserve.service.jobs.host import slot_devices, work
    from promptserve.service.settings import Settings

    try:
        settings = Settings(**({"store": args.store} if args.store is not None else {}))
        devices = slot_devices(settings.job_device, args.slots)
    except (ValidationError, ValueError) as exc:
        sys.stderr.write(f"promptserve worker: invalid settings:\n{exc}\n")
        return 2
    if args.verbose:
        settings = settings.model_copy(update={"log_level": "debug"})
    code = start_up("worker", settings, lambda: tracing_problem("worker"))
    if code is not None:
        return code
    asyncio.run(work(settings, devices))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["client"]:
        return client_main(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "worker":
        return run_worker(args)
    if args.command == "config":
        from promptserve.service.settings_report import run_config

        return run_config(args)
    if args.command == "keys":
        return run_keys(args)
    if args.command == "client":  # `promptserve -v client ...`
        from promptserve.client.cli import run as run_client

        return run_client(args)
    from promptserve.training.cli import main as training_main

    return training_main(arguments)


if __name__ == "__main__":
    sys.exit(main())
