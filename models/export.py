"""A learner as artifact files: class embeddings, learned weights, and the visual graph as ONNX
and TorchScript, checked against eager PyTorch through the engines of `models.engines`.

`write_files` fills a staging directory; `models.artifact` hashes it, writes the manifest and
publishes it. Both graph formats are written from the same module (`Learner.visual_graph()`:
pixels [B, 3, S, S] -> normalised embeddings [B, D]) and must agree with it at more than one
batch size before an artifact is published. The example batch used for export (2) is neither
of the parity batches (1 and 7), so a graph that baked in its example's batch size fails the
check instead of shipping.

ONNX goes through torch's dynamo exporter (`torch.export` + onnxscript), the default in torch
2.9+. The legacy TorchScript-based exporter cannot export this graph: in eval mode PyTorch's
`nn.MultiheadAttention` takes its fused fast path (`aten::_native_multi_head_attention`), which
the legacy exporter has no symbolic for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from promptserve.models.engines import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    TORCHSCRIPT_FILE,
    EngineKind,
    VisualEngine,
    open_engine,
    quiet_jit_deprecation,
)
from promptserve.models.errors import ArtifactError, ExportParityError
from promptserve.models.methods import Learner

log = logging.getLogger(__name__)

CLASSES_FILE = "classes.safetensors"
LEARNER_FILE = "learner.safetensors"
ONNX_OPSET = 18  # the opset torch's ONNX function library is written in; no version conversion
EXAMPLE_BATCH = 2  # export example; deliberately not a parity batch (see module docstring)
PARITY_BATCHES = (1, 7)
PARITY_SEED = 0


def export_onnx(
    graph: nn.Module, path: Path, example: Tensor, inputs: dict[str, Tensor] | None = None
) -> None:
    """Write `graph` as one self-contained ONNX file with a dynamic batch axis.

    Args:
        graph: eval-mode module, pixels [B, 3, S, S] (then `inputs`, in order) -> [B, D].
        path: destination ``.onnx`` file; the weights are embedded (no external data file).
        example: example pixels with a batch of at least 2 (torch.export specialises 0 and 1).
        inputs: further per-sample inputs (a shared prompt graph's), batched like `example`;
            they keep their names in the ONNX graph.
    """
    batch = torch.export.Dim("batch", min=1)
    extra = dict(inputs or {})
    try:
        program = torch.onnx.export(
            graph,
            (example, *extra.values()),
            input_names=[INPUT_NAME, *extra],
            output_names=[OUTPUT_NAME],
            opset_version=ONNX_OPSET,
            dynamic_shapes=tuple({0: batch} for _ in range(1 + len(extra))),
            dynamo=True,
            verbose=False,
        )
    except Exception as exc:  # the exporter's failures have no common type; report as ours
        raise ArtifactError(f"could not export the visual graph to ONNX: {exc}") from exc
    if program is None:  # only the legacy exporter returns None
        raise ArtifactError("the ONNX exporter returned no program")
    # external_data defaults to True when torch.onnx.export writes a file itself; models under
    # protobuf's 2 GB limit (ViT-L included) fit in one file, which keeps the artifact atomic
    program.save(str(path), external_data=False)


def export_torchscript(
    graph: nn.Module, path: Path, example: Tensor, inputs: dict[str, Tensor] | None = None
) -> None:
    """Trace `graph` on `example` (and `inputs`, in order), freeze it, and save it with
    `torch.jit.save`.

    A trace keeps every submodule of `graph`, used or not; `VisualGraph` holds the whole
    learner, text tower included (ViT-B-16: 600 MB instead of 350 MB). Freezing inlines the
    weights the graph uses as constants and drops the rest. `optimize_numerics=False` keeps the
    arithmetic exactly eager's.
    """
    with quiet_jit_deprecation(), torch.no_grad():
        args = (example, *(inputs or {}).values())
        traced = torch.jit.trace(graph, args, check_trace=False)
        frozen = torch.jit.freeze(traced, optimize_numerics=False)
        fixed = device_constants(frozen.graph)
        if fixed:  # traced on the CPU, the graph would then fail on any other device
            raise ArtifactError(f"the traced graph fixes devices {fixed}; derive them from inputs")
        torch.jit.save(frozen, str(path))


def device_constants(graph: torch.Graph) -> list[str]:
    """The devices a TorchScript graph holds as constants (a trace records the device of
    every tensor created from scratch in forward, e.g. ``torch.arange(n, device=x.device)``)."""
    return sorted(
        {
            str(node.output().toIValue())
            for node in graph.findAllNodes("prim::Constant")  # type: ignore[attr-defined]
            if node.output().type().kind() == "DeviceObjType"
        }
    )


def parity_pixels(batch: int, size: int, seed: int = PARITY_SEED) -> Tensor:
    """Seeded standard-normal pixels [batch, 3, size, size] (normalised images are ~N(0, 1))."""
    generator = torch.Generator().manual_seed(seed + batch)
    return torch.randn(batch, 3, size, size, generator=generator)


def max_abs_difference(
    reference: Callable[[Tensor], Tensor], engine: VisualEngine, pixels: Tensor
) -> float:
    """max |reference(pixels) - engine(pixels)|; inf when the shapes disagree."""
    with torch.no_grad():
        expected = reference(pixels).float().cpu()
    actual = engine(pixels).float().cpu()
    if actual.shape != expected.shape:
        log.error(
            "exported graph gave shape %s, eager %s", tuple(actual.shape), tuple(expected.shape)
        )
        return float("inf")
    return float((actual - expected).abs().max())


def export_visual_graph(
    graph: nn.Module, directory: Path, image_size: int, tolerance: float
) -> dict[str, dict[str, float] | float]:
    """Write ``visual.onnx`` and ``visual.torchscript.pt`` and check both against eager `graph`.

    Args:
        graph: eval-mode module on the CPU, pixels [B, 3, S, S] -> normalised embeddings [B, D].
        directory: where the two files are written.
        image_size: S.
        tolerance: the largest max-abs difference accepted at every parity batch.

    Returns:
        The parity figures for the manifest:
        ``{"onnx": {"batch_1": d, "batch_7": d}, "torchscript": {...}, "tolerance": t}``.

    Raises:
        ExportParityError: an exported graph differs from eager by more than `tolerance` (or
            gives NaN); the caller must not publish the files.
    """
    example = parity_pixels(EXAMPLE_BATCH, image_size)
    export_onnx(graph, directory / ONNX_FILE, example)
    export_torchscript(graph, directory / TORCHSCRIPT_FILE, example)
    return check_parity(graph, directory, image_size, tolerance)


def check_parity(
    graph: nn.Module,
    directory: Path,
    image_size: int,
    tolerance: float,
    opener: Callable[[Path, EngineKind], VisualEngine] = open_engine,
) -> dict[str, dict[str, float] | float]:
    """Run the graphs already in `directory` against eager `graph` at every parity batch.

    Used for a freshly exported graph and for a classifier published on a shared graph that
    an earlier classifier exported (its own eager path must give what the shared graph gives);
    `opener(directory, kind)` opens the engine (a shared prompt graph's binds the
    classifier's tensors). Returns the parity figures; raises `ExportParityError` past
    `tolerance` (NaN included).
    """
    figures: dict[str, dict[str, float] | float] = {}
    failures = []
    engines: tuple[EngineKind, ...] = ("onnx", "torchscript")
    for engine_name in engines:
        engine = opener(directory, engine_name)
        per_batch = {}
        for batch in PARITY_BATCHES:
            diff = max_abs_difference(graph, engine, parity_pixels(batch, image_size))
            per_batch[f"batch_{batch}"] = diff
            if not diff <= tolerance:  # written so that NaN fails too
                failures.append(f"{engine_name} batch {batch}: {diff:.3g}")
        figures[engine_name] = per_batch
    figures["tolerance"] = tolerance
    log.info("export parity (max abs difference vs eager): %s", figures)
    if failures:
        raise ExportParityError(
            f"exported visual graph disagrees with eager PyTorch beyond {tolerance:g}: "
            + "; ".join(failures)
        )
    return figures


def write_files(
    learner: Learner, class_names: list[str], directory: Path, tolerance: float
) -> dict[str, Any]:
    """Write the four files of a self-contained artifact for `learner` on `class_names` into
    `directory`: its tensors (`write_tensors`) and its visual graph as ONNX and TorchScript.

    The learner is in eval mode throughout and its previous mode is restored afterwards; the
    graph is exported and checked on the CPU. Returns the parity figures (see
    `export_visual_graph`), which raises `ExportParityError` when they exceed `tolerance`.
    """
    write_tensors(learner, class_names, directory)
    with eager_visual_graph(learner) as graph:
        return export_visual_graph(graph, directory, learner.preprocess.size, tolerance)


def write_tensors(learner: Learner, class_names: list[str], directory: Path) -> None:
    """Write what is the classifier's own: ``classes.safetensors`` (its class embeddings,
    computed on the learner's device in eval mode) and ``learner.safetensors``."""
    with _eval_mode(learner):
        with torch.no_grad():
            classes = learner.encode_classes(list(class_names)).float().cpu().contiguous()  # [C, D]
        save_file({"embeddings": classes}, str(directory / CLASSES_FILE), metadata={"format": "pt"})
        # a method with nothing learned (zeroshot) writes an empty state: safetensors stores {}
        learned = {
            k: v.detach().cpu().contiguous().clone()
            for k, v in learner.learned_state_dict().items()
        }
        save_file(learned, str(directory / LEARNER_FILE), metadata={"format": "pt"})


@contextmanager
def eager_visual_graph(learner: Learner) -> Iterator[nn.Module]:
    """`learner`'s eval-mode visual graph on the CPU, as exported and parity-checked; the
    learner's mode and device are restored afterwards."""
    with _eval_mode(learner), _on_cpu(learner):
        yield learner.visual_graph().eval()


@contextmanager
def _eval_mode(learner: Learner) -> Iterator[None]:
    was_training = learner.training
    learner.eval()
    try:
        yield
    finally:
        learner.train(was_training)


@contextmanager
def _on_cpu(learner: Learner) -> Iterator[None]:
    # Exporting on the CPU keeps the parity check free of TF32 and kernel differences. A trace
    # records the device of any tensor created in forward (here: cpu), so the graph is refused
    # when it holds one (`device_constants`): it could run nowhere else.
    device = learner.device
    learner.to("cpu")
    try:
        yield
    finally:
        learner.to(device)
