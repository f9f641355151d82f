"""The `promptserve` commands that write artifacts out of the store or data sets into a folder:
`export` (a self-contained artifact, or a Triton model) and `make-dataset` (a CoOp/Dassl root).
Registered by `training.cli`, which runs them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_export_command(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a stored classifier as a self-contained artifact, or as a Triton model",
        description="Copy NAME[:VERSION] out of a store as a self-contained (format 1) "
        "artifact: manifest, class embeddings, learned tensors, visual.onnx and "
        "visual.torchscript.pt, usable without the store. With --triton, write it into the "
        "NVIDIA Triton model repository OUT instead (OUT/<model>/config.pbtxt with dynamic "
        "batching, OUT/<model>/<version>/model.onnx).",
    )
    export.add_argument("classifier", help="NAME or NAME:VERSION (default: the newest)")
    export.add_argument(
        "out", type=Path, help="a new (or empty) directory; with --triton, a repository"
    )
    export.add_argument("--store", type=Path, default=Path("store"), help="(default ./store)")
    export.add_argument("--triton", action="store_true", help="write a Triton model repository")
    export.add_argument("--triton-name", default=None, help="Triton model name (default NAME)")
    export.add_argument("--max-batch-size", type=int, default=64, help="Triton's (default 64)")
    export.add_argument(
        "--instance-kind",
        choices=["KIND_GPU", "KIND_CPU", "KIND_AUTO"],
        default="KIND_GPU",
        help="where Triton runs the model (default KIND_GPU)",
    )


def add_make_dataset_command(commands: Any) -> None:
    make = commands.add_parser(
        "make-dataset",
        help="write a data set spec (e.g. synthetic:color-shape?shift=hue25) as a CoOp/Dassl root",
        description="Writes OUT/split_zhou_<Name>.json (train/val/test, integer labels in sorted "
        "class-name order) and the images under OUT/images/, readable with --data OUT.",
    )
    make.add_argument("spec", help="a data set spec, e.g. synthetic:color-shape?shift=hue25")
    make.add_argument("out", type=Path, help="output directory (must not exist or be empty)")
    make.add_argument("--name", default=None, help="the <Name> of split_zhou_<Name>.json")
    for split in ("train", "val", "test"):
        make.add_argument(
            f"--{split}", type=int, default=None, metavar="N",
            help=f"synthetic specs: {split} images per class (default: the spec's n)",
        )  # fmt: skip


def run_export(args: argparse.Namespace) -> int:
    from promptserve.models.artifact import resolve_version
    from promptserve.models.standalone import export_standalone

    name, _, version = args.classifier.partition(":")
    path = resolve_version(args.store, name, version or None)
    if args.triton:
        from promptserve.models.triton import export_triton

        model = export_triton(
            path,
            args.out,
            model_name=args.triton_name,
            max_batch_size=args.max_batch_size,
            instance_kind=args.instance_kind,
        )
        print(model)  # the model directory in the repository
        return 0
    out = export_standalone(path, args.out)
    print(f"exported {name} version {path.name} to {out}")
    return 0


def run_make_dataset(args: argparse.Namespace) -> int:
    from promptserve.training.dataset_writer import write_dassl_root

    counts = {s: getattr(args, s) for s in ("train", "val", "test") if getattr(args, s)}
    written = write_dassl_root(args.spec, args.out, name=args.name, counts=counts or None)
    sizes = ", ".join(f"{split} {n}" for split, n in written.counts.items())
    print(f"wrote {written.split_file} ({len(written.classes)} classes; {sizes} images)")
    return 0
