"""The `promptserve` command line: train, eval, classify, pretrain-mini (serve: the service).

`main(argv)` returns an exit code and never calls sys.exit itself, so tests run it in-process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from promptserve.models.backbone import DEFAULT_BACKBONE
from promptserve.models.errors import ConfigError, PromptserveError
from promptserve.models.methods import parse_overrides
from promptserve.training.api import TrainRequest, evaluate_classifier, train_classifier
from promptserve.training.auto import method_choices
from promptserve.training.benchmarks import benchmark_path, list_benchmarks
from promptserve.training.cli_store import (
    add_export_command,
    add_make_dataset_command,
    run_export,
    run_make_dataset,
)
from promptserve.training.logs import configure_logging, env_log_format
from promptserve.training.progress import step_progress
from promptserve.training.protocols import (
    PROTOCOLS,
    SYNTHETIC,
    ProtocolRequest,
    format_table,
    run_protocol,
)
from promptserve.training.request import AUTO_BUDGET_S
from promptserve.training.synthetic.pretrain import add_arguments as add_pretrain_arguments
from promptserve.training.synthetic.pretrain import run as run_pretrain

R = TypeVar("R")


def build_parser(add_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; `add_commands(subparsers)` lets a caller add its own
    (the service adds ``serve``, since imports flow service -> training only)."""
    parser = argparse.ArgumentParser(prog="promptserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--version", action="version", version=f"promptserve {package_version()}",
        help="print the package version and exit",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    if add_commands is not None:
        add_commands(commands)

    train = commands.add_parser("train", help="learn prompts and publish a classifier version")
    train.add_argument(
        "--method", required=True, choices=method_choices(),
        help="the method, or auto: choose one on the training images (docs/guides/training.md)",
    )  # fmt: skip
    train.add_argument("--data", default=None, help="image folder, CSV/JSONL manifest, ...")
    add_dataset_arguments(train)
    train.add_argument("--shots", type=int, default=16, help="images per class (default 16)")
    train.add_argument("--seed", type=int, default=1, help="shot sampling and init (default 1)")
    train.add_argument("--epochs", type=int, default=None, help="default: the method's recipe")
    train.add_argument("--store", type=Path, required=True, help="classifier store directory")
    train.add_argument("--name", required=True, help="classifier name")
    train.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="mini (default), ARCH (random init), ARCH:TAG (pretrained), ARCH@FILE or FILE",
    )
    add_overrides_argument(train)
    train.add_argument("--preset", default=None, help="a named recipe preset of the method")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    add_budget_argument(train)
    train.add_argument(
        "--heldout",
        action="store_true",
        help="score the images left out by --shots, tuned and zero-shot (as POST /adapt does)",
    )

    evaluate = commands.add_parser(
        "eval",
        help="top-1 accuracy of a stored classifier, or a paper protocol (--protocol)",
        description="Either score a stored classifier (--store, --name, --data) or run a "
        "protocol end to end (--protocol, --method; synthetic world by default).",
    )
    evaluate.add_argument("--store", type=Path, default=None, help="classifier store directory")
    evaluate.add_argument("--name", default=None, help="the stored classifier to score")
    add_classifier_version_argument(evaluate)
    evaluate.add_argument("--data", default=None, help="default for protocols: synthetic")
    add_dataset_arguments(evaluate)
    evaluate.add_argument(
        "--engine", choices=["onnx", "torchscript"], default="onnx", help="graph to run"
    )
    evaluate.add_argument("--json", type=Path, default=None, help="also write the result here")
    evaluate.add_argument(
        "--protocol", choices=PROTOCOLS, default=None, help="run this protocol end to end"
    )
    evaluate.add_argument(
        "--method", choices=method_choices(), default=None,
        help="the method a protocol trains (auto: chosen per seed)",
    )  # fmt: skip
    evaluate.add_argument("--shots", type=int, default=16, help="images per class (default 16)")
    evaluate.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per seed (default 1 2 3)"
    )
    evaluate.add_argument("--epochs", type=int, default=None, help="default: the method's recipe")
    evaluate.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help="as for train (default mini)"
    )
    evaluate.add_argument(
        "--target",
        action="append",
        default=[],
        help="domain/cross test set: a path, or a benchmark name with --data-root",
    )
    add_overrides_argument(evaluate)
    evaluate.add_argument(
        "--preset", default=None, help="a named recipe preset (default: the backbone's, if any)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.add_argument("--workers", type=int, default=0, help="data-loader processes")
    add_budget_argument(evaluate)
    pretrain = commands.add_parser(
        "pretrain-mini",
        help="pretrain the embedded mini CLIP on the synthetic world (deterministic)",
    )
    add_pretrain_arguments(pretrain)
    add_classify_command(commands)
    add_export_command(commands)
    add_make_dataset_command(commands)
    return parser


def add_overrides_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the method's config (repeatable)",
    )


def add_budget_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--auto-budget",
        dest="auto_budget_s",
        type=float,
        default=AUTO_BUDGET_S,
        metavar="SECONDS",
        help=f"--method auto: no candidate starts after this (default {AUTO_BUDGET_S:g})",
    )


def add_dataset_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--dataset",
        default=None,
        help=f"a benchmark data set by name ({', '.join(list_benchmarks())}); needs --data-root",
    )
    command.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="the folder holding the benchmark data sets in CoOp's DATASETS.md layout",
    )


def resolve_data(args: argparse.Namespace) -> str | None:
    """--data as given, or the folder of --dataset under --data-root (checked)."""
    if args.dataset is None:
        return args.data  # type: ignore[no-any-return]
    if args.data is not None:
        raise ConfigError("give either --data or --dataset (with --data-root), not both")
    if args.data_root is None:
        raise ConfigError("--dataset needs --data-root, the folder that holds the data sets")
    return str(benchmark_path(args.dataset, args.data_root))


def resolve_target(target: str, data_root: Path | None) -> str:
    """A --target path as given; a benchmark name resolves under --data-root."""
    if data_root is not None and not Path(target).exists():
        return str(benchmark_path(target, data_root))
    return target


def add_classify_command(commands: Any) -> None:
    classify = commands.add_parser(
        "classify",
        help="classify image files with a stored classifier (labels it lacks are encoded)",
        description="Print one JSON line per image: the top-k labels with probabilities. "
        "--labels may name classes the classifier was not trained on; they are encoded "
        "through its learned text path.",
    )
    classify.add_argument("images", nargs="+", type=Path, help="image files")
    classify.add_argument("--classifier", required=True, help="classifier name")
    classify.add_argument("--store", type=Path, required=True, help="classifier store directory")
    add_classifier_version_argument(classify)
    classify.add_argument("--labels", nargs="+", default=None, help="default: its classes")
    classify.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    classify.add_argument(
        "--engine", choices=["onnx", "torchscript"], default="onnx", help="graph to run"
    )
    classify.add_argument("--device", default="cpu", help="cpu or cuda")


def add_classifier_version_argument(command: argparse.ArgumentParser) -> None:
    # `--version` was this flag's first spelling; it stays accepted, though `promptserve
    # --version` (before the command) now prints the package version
    command.add_argument(
        "--classifier-version",
        "--version",
        dest="version",
        default=None,
        help="the classifier version (default: the newest); --version is the older spelling",
    )


def package_version() -> str:
    """The installed promptserve's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptserve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def request_from_args(cls: type[R], args: argparse.Namespace, **given: Any) -> R:
    """A request dataclass from parsed arguments: each field not `given` comes from the
    argument of the same name, where there is one (else the field's default)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**(values | given))


def run_train(args: argparse.Namespace) -> int:
    data = resolve_data(args)
    if data is None:
        raise ConfigError("train needs --data, or --dataset with --data-root")
    request = request_from_args(
        TrainRequest, args, data=data, overrides=parse_overrides(args.overrides)
    )
    with step_progress(f"train {args.method}") as report:
        outcome = train_classifier(request, progress=report)
    loss = outcome.summary["final_loss"]
    loss_text = "n/a" if loss is None else f"{loss:.4f}"
    print(f"published {args.name} version {outcome.version} at {outcome.artifact}")
    print(
        f"steps {outcome.summary['steps']}, final loss {loss_text}, {outcome.summary['seconds']}s"
    )
    print(", ".join(f"{key} {value}" for key, value in outcome.metrics.items()))
    if "auto" in outcome.summary:
        print(format_leaderboard(outcome.summary["auto"]))
    return 0


def format_leaderboard(auto: dict[str, Any]) -> str:
    """method=auto's choice: one line per candidate, then the winner and why."""
    lines = [f"auto: {auto['validation']['scheme']} validation on {auto['validation']['images']} "
             "images"]  # fmt: skip
    for entry in auto["candidates"]:
        if "skipped" in entry:
            lines.append(f"  {entry['label']:<14} skipped ({entry['skipped']})")
        else:
            lines.append(
                f"  {entry['label']:<14} {entry['val_accuracy']:6.2f} %  {entry['seconds']:.1f} s"
            )
    lines.append(f"auto: chose {auto['winner']}, {auto['reason']}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    args.data = resolve_data(args)
    args.dataset = None
    if args.protocol is not None:
        return run_protocol_eval(args)
    missing = [flag for flag in ("store", "name", "data") if getattr(args, flag) is None]
    if missing:
        raise ConfigError("eval needs --" + ", --".join(missing) + " (or --protocol and --method)")
    result = evaluate_classifier(
        args.store, args.name, args.data, version=args.version, engine=args.engine
    )
    print(
        f"{result.classifier} v{result.version}: top-1 {result.accuracy:.2f}% "
        f"on {result.images} images, {len(result.classes)} classes"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0


def run_protocol_eval(args: argparse.Namespace) -> int:
    if args.method is None:
        raise ConfigError("--protocol needs --method")
    request = request_from_args(
        ProtocolRequest,
        args,
        seeds=tuple(args.seeds),
        data=args.data or SYNTHETIC,
        targets=tuple(resolve_target(t, args.data_root) for t in args.target),
        overrides=parse_overrides(args.overrides),
    )
    with step_progress(f"{args.protocol} {args.method}") as steps:
        report = run_protocol(
            request, progress=lambda line: print(line, file=sys.stderr), steps=steps
        )
    print(format_table(report))
    for chosen in report.get("auto", []):  # method auto: each seed's leaderboard
        print(f"seed {chosen['seed']} " + format_leaderboard(chosen))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from PIL import Image

    from promptserve.models.artifact import resolve_version
    from promptserve.models.classifier import load_classifier

    path = resolve_version(args.store, args.classifier, args.version)
    classifier = load_classifier(path, engine=args.engine, device=args.device)
    try:
        images = [Image.open(file).convert("RGB") for file in args.images]
    except OSError as exc:
        raise ConfigError(f"cannot read image: {exc}") from None
    try:
        rows = classifier.classify(images, top_k=args.top_k, labels=args.labels)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known = set(classifier.class_names)
    encoded = [label for label in args.labels or () if label not in known]
    for file, row in zip(args.images, rows, strict=True):
        predictions = [{"label": label, "score": round(score, 6)} for label, score in row]
        line = {"image": str(file), "predictions": predictions, "encoded_labels": encoded}
        print(json.dumps(line))
    return 0


COMMANDS = {
    "train": run_train,
    "eval": run_eval,
    "pretrain-mini": run_pretrain,
    "classify": run_classify,
    "export": run_export,
    "make-dataset": run_make_dataset,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("info" if args.verbose else "warning", env_log_format())
    try:
        return COMMANDS[args.command](args)
    except PromptserveError as exc:
        print(f"promptserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
