"""``promptserve client``: the remote command line, on `promptserve.client.Client`.

    promptserve client classify red_star.png --top-k 3
    promptserve client adapt parts images/ --shots 12 --wait
    promptserve client jobs | classifiers | aliases ...

It talks to a running service (``--url``, default ``$PROMPTSERVE_URL`` or
http://127.0.0.1:8000; ``--api-key``, default ``$PROMPTSERVE_API_KEY``) and loads neither torch
nor the service. ``--json`` prints the API's answer as JSON. Exit status: 0 done, 1 the service
answered with an error, 2 a usage or local input error, 3 the service could not be reached,
4 a waited-for job failed, was cancelled or did not end in time.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from promptserve.client import errors
from promptserve.client.client import DEFAULT_URL, Client
from promptserve.client.types import ClassifyResult, Job

EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_CONNECTION, EXIT_JOB = 0, 1, 2, 3, 4
HELP = "a remote service: classify, tune (adapt), jobs, classifiers and aliases over HTTP"
DESCRIPTION = (
    "Talk to a running promptserve service over its /v1 HTTP API (commands: classify, "
    "embeddings, adapt, jobs, classifiers, aliases; see `promptserve client COMMAND --help`). "
    "Exit status: 0 done, 1 the service answered with an error, 2 a usage or input error, "
    "3 the service could not be reached, 4 a waited-for job failed, was cancelled or timed out."
)


def common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--url, --api-key, --json, --no-progress, --timeout and --retries, before or after the
    command (a value given after it wins)."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--url",
        default=default,
        help=f"the service's base URL (default: $PROMPTSERVE_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key", default=default, help="the API key (default: $PROMPTSERVE_API_KEY)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print the API's answer as JSON",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="no progress bars (they are shown only on a terminal anyway)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0 if top else argparse.SUPPRESS,
        help="seconds to wait for each answer (default 60)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=4 if top else argparse.SUPPRESS,
        help="retries of a busy (429, 503) or unreachable service (default 4)",
    )


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``client`` to the `promptserve` command's subparsers."""
    parser = commands.add_parser("client", help=HELP, description=DESCRIPTION)
    fill_parser(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptserve client", description=DESCRIPTION)
    fill_parser(parser)
    return parser


def fill_parser(parser: argparse.ArgumentParser) -> None:
    common_options(parser, top=True)
    commands = parser.add_subparsers(dest="client_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, run: Callable[..., int]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        common_options(sub, top=False)
        sub.set_defaults(run=run)
        return sub

    classify = command("classify", "classify image files", run_classify)
    classify.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    classify.add_argument(
        "--classifier",
        help="NAME, NAME@ALIAS or NAME@VERSION (default: the service's default classifier)",
    )
    classify.add_argument("--version", help="a version of --classifier (digits or an alias)")
    classify.add_argument("--top-k", type=int, help="labels per image")
    classify.add_argument("--labels", nargs="+", metavar="LABEL", help="score only these labels")
    classify.add_argument(
        "--classifiers", nargs="+", metavar="NAME", help="several classifiers, each scoring all"
    )

    embed = command(
        "embeddings", "the classifier's embeddings of images or label texts", run_embeddings
    )
    embed.add_argument("images", nargs="*", type=Path, metavar="IMAGE", help="image files")
    embed.add_argument("--texts", nargs="+", metavar="TEXT", help="label texts instead of images")
    embed.add_argument("--classifier", help="NAME[@REF] (default: the default classifier)")

    adapt = command(
        "adapt",
        "queue a tuning job from a folder with one sub-folder of images per class",
        run_adapt,
    )
    adapt.add_argument("name", help="the classifier to create, or to add a version to")
    adapt.add_argument("folder", type=Path, help="a folder with one sub-folder of images per class")
    adapt.add_argument("--method", help="the prompt-learning method (default: the service's, coop)")
    adapt.add_argument("--shots", type=int, help="training images per class (the rest: held out)")
    adapt.add_argument("--epochs", type=int, help="default: the method's")
    adapt.add_argument("--seed", type=int, help="shot sampling and init")
    adapt.add_argument("--backbone", help="ARCH or ARCH:TAG (default: the default classifier's)")
    adapt.add_argument("--preset", help="a named recipe of the method")
    adapt.add_argument("--config", type=json_object, help="method config overrides, a JSON object")
    adapt.add_argument(
        "--publish",
        choices=("gated", "always"),
        help="gated: the new version takes --alias only if it beats zero-shot and "
        "the current version on the held-out images (default: the service's)",
    )
    adapt.add_argument("--alias", help="the alias the new version takes (default latest)")
    add_wait_options(adapt, switch=True)

    jobs = command("jobs", "tuning jobs: list (default), show, wait, cancel, events", run_jobs)
    jobs.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "show", "wait", "cancel", "events"),
        help="what to do (default: list)",
    )
    jobs.add_argument("job", nargs="?", help="the job id (all but list)")
    jobs.add_argument("--limit", type=int, help="jobs per page (list)")
    add_wait_options(jobs, switch=False)

    listing = command(
        "classifiers",
        "classifiers: list (default), show NAME, delete NAME VERSION",
        run_classifiers,
    )
    listing.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "show", "delete"),
        help="what to do (default: list)",
    )
    listing.add_argument("name", nargs="?", help="the classifier (show, delete)")
    listing.add_argument("version", nargs="?", help="the version to delete")

    aliases = command(
        "aliases", "aliases: list NAME, set NAME ALIAS VERSION, delete NAME ALIAS", run_aliases
    )
    aliases.add_argument("action", choices=("list", "set", "delete"), help="what to do")
    aliases.add_argument("name", help="the classifier")
    aliases.add_argument("alias", nargs="?", help="the alias (set, delete)")
    aliases.add_argument("version", nargs="?", help="the version it points at (set)")


def add_wait_options(parser: argparse.ArgumentParser, *, switch: bool) -> None:
    if switch:
        parser.add_argument("--wait", action="store_true", help="wait until the job ends")
    parser.add_argument(
        "--wait-timeout", type=float, default=None, help="give up waiting after this many seconds"
    )


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object, e.g. '{\"n_ctx\": 8}'")
    return value


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """``promptserve client ...``; the exit status (never calls sys.exit past argparse's)."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        with Client(
            args.url,
            api_key=args.api_key,
            timeout=args.timeout,
            retries=args.retries,
            progress=False if args.no_progress else None,
        ) as client:
            return int(args.run(client, args))
    except errors.JobFailed as exc:
        emit(args, exc.job)
        return fail(str(exc), EXIT_JOB)
    except errors.JobTimeout as exc:
        return fail(str(exc), EXIT_JOB)
    except errors.APIConnectionError as exc:
        return fail(f"cannot reach the service: {exc}", EXIT_CONNECTION)
    except errors.PromptserveError as exc:
        lines = [str(exc), *(f"  {field}" for field in exc.fields)]
        return fail("\n".join(lines), EXIT_API)
    except (UsageError, OSError, ValueError, TypeError) as exc:
        return fail(str(exc), EXIT_USAGE)


def fail(message: str, code: int) -> int:
    sys.stderr.write(f"promptserve client: {message}\n")
    return code


def emit(args: argparse.Namespace, value: Any, text: str | None = None) -> None:
    """Print `value` as JSON with --json, else `text` (or the JSON when there is no text)."""
    if args.json or text is None:
        data = (
            value.model_dump(mode="json", exclude_none=False)
            if isinstance(value, BaseModel)
            else value
        )
        sys.stdout.write(json.dumps(data, indent=None if args.json else 2) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


# --- the commands ---


def run_classify(client: Client, args: argparse.Namespace) -> int:
    result = client.classify(
        args.images,
        classifier=args.classifier,
        version=args.version,
        top_k=args.top_k,
        labels=args.labels,
        classifiers=args.classifiers,
    )
    emit(args, result, classify_text(result, args.images))
    return EXIT_OK


def classify_text(result: ClassifyResult, images: Sequence[Path]) -> str:
    lines = []
    for answer in result.results:
        head = f"{answer.classifier} version {answer.version}"
        if answer.alias:
            head += f" ({answer.alias})"
        lines.append(head)
        for image, row in zip(images, answer.predictions, strict=False):
            ranked = ", ".join(f"{p.label} {p.score:.2f}" for p in row)
            lines.append(f"  {image}: {ranked}")
    return "\n".join(lines)


def run_embeddings(client: Client, args: argparse.Namespace) -> int:
    if bool(args.images) == bool(args.texts):
        raise UsageError("give image files or --texts, one of them")
    result = client.embeddings(args.images or None, texts=args.texts, classifier=args.classifier)
    text = "\n".join(
        f"{item.index}: {item.modality} [{', '.join(f'{v:.4f}' for v in item.embedding[:4])}, "
        f"...] ({len(item.embedding)} dims)"
        for item in result.data
    )
    emit(args, result, f"{result.model}\n{text}")
    return EXIT_OK


def run_adapt(client: Client, args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        raise UsageError(f"{args.folder}: not a folder (expected {args.folder}/<class>/*.png)")
    job = client.adapt(
        args.name,
        args.folder,
        method=args.method,
        shots=args.shots,
        epochs=args.epochs,
        seed=args.seed,
        backbone=args.backbone,
        preset=args.preset,
        config=args.config,
        publish=args.publish,
        alias=args.alias,
    )
    if not args.wait:
        emit(args, job, job_text(job))
        return EXIT_OK
    if not args.json:
        sys.stderr.write(f"{job_text(job)}\n")
    done = client.wait(job, timeout=args.wait_timeout)
    emit(args, done, job_text(done))
    return EXIT_OK


def job_text(job: Job) -> str:
    line = f"job {job.id} {job.state}: {job.name} ({job.method}, {job.images} images"
    line += f", classes {', '.join(job.classes)})" if job.classes else ")"
    p = job.progress
    if p is not None and not job.done and p.epoch is not None:
        line += f", epoch {p.epoch}/{p.epochs}" + (f", loss {p.loss:.4f}" if p.loss else "")
    r = job.result
    if r is not None and r.version is not None:
        line += f"\n  version {r.version} of {r.classifier or job.name}"
        if r.published == "candidate":
            line += " published as a candidate"
        elif r.alias:
            line += f" published as {r.alias}"
        if r.heldout_accuracy is not None:
            line += f"; held-out accuracy {r.heldout_accuracy:.1f}"
            if r.heldout_zeroshot_accuracy is not None:
                line += f" (zero-shot {r.heldout_zeroshot_accuracy:.1f})"
        if r.gate is not None and r.gate.reason:
            line += f"\n  gate: {'passed' if r.gate.passed else 'held back'}: {r.gate.reason}"
    if job.error is not None:
        line += f"\n  {job.error.reason}: {job.error.message}"
    return line


def run_jobs(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        page = client.jobs(limit=args.limit)
        rows = [f"{j.id}  {j.state:<9}  {j.name}  {j.method}  {j.created_at}" for j in page.data]
        emit(args, page, "\n".join(rows) or "no jobs")
        return EXIT_OK
    if not args.job:
        raise UsageError(f"jobs {args.action} needs a job id")
    if args.action == "show":
        job = client.job(args.job)
    elif args.action == "cancel":
        job = client.cancel(args.job)
    elif args.action == "wait":
        job = client.wait(args.job, timeout=args.wait_timeout)
    else:
        events = client.events(args.job, limit=1000)
        lines = [f"{e.seq:>4}  {e.at}  {e.level:<7}  {e.message}" for e in events.data]
        emit(args, events, "\n".join(lines))
        return EXIT_OK
    emit(args, job, job_text(job))
    return EXIT_OK


def run_classifiers(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        listing = client.classifiers()
        rows = []
        for c in listing.classifiers:
            aliases = ", ".join(f"{a}={v}" for a, v in sorted(c.aliases.items()))
            mark = " (default)" if c.default else ""
            rows.append(f"{c.name}{mark}  versions {', '.join(c.versions)}  {aliases}".rstrip())
        emit(args, listing, "\n".join(rows))
        return EXIT_OK
    if not args.name:
        raise UsageError(f"classifiers {args.action} needs a classifier name")
    if args.action == "show":
        detail = client.classifier(args.name)
        rows = [f"{detail.name}: latest {detail.latest}"]
        for v in detail.versions:
            marks = ", ".join(v.aliases) + (" candidate" if v.candidate else "")
            rows.append(f"  {v.version}  {v.method or ''}  {v.num_classes} classes  {marks}")
        emit(args, detail, "\n".join(rows))
        return EXIT_OK
    if not args.version:
        raise UsageError("classifiers delete needs NAME VERSION")
    client.delete(args.name, args.version)
    emit(
        args,
        {"deleted": {"name": args.name, "version": args.version}},
        f"deleted {args.name} version {args.version}",
    )
    return EXIT_OK


def run_aliases(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        aliases = client.aliases(args.name)
        emit(args, aliases, "\n".join(f"{a} -> {v}" for a, v in sorted(aliases.items())))
        return EXIT_OK
    if not args.alias:
        raise UsageError(f"aliases {args.action} needs NAME ALIAS")
    if args.action == "set":
        if not args.version:
            raise UsageError("aliases set needs NAME ALIAS VERSION")
        alias = client.set_alias(args.name, args.alias, args.version)
        emit(args, alias, f"{args.name}@{alias.alias} -> {alias.version}")
        return EXIT_OK
    client.delete_alias(args.name, args.alias)
    emit(
        args,
        {"deleted": {"name": args.name, "alias": args.alias}},
        f"deleted {args.name}@{args.alias}",
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
