"""Export a classifier version as an NVIDIA Triton model repository (the ONNX Runtime backend).

```
<out>/<model>/config.pbtxt     platform onnxruntime_onnx, dynamic batching, one output per head
<out>/<model>/labels.txt       class names, one a line, in logit order (Triton's classification)
<out>/<model>/<version>/model.onnx
```

The graph is the artifact's visual graph (pixels ``[B,3,S,S]`` -> normalised embeddings
``[B,D]``) with the scoring appended, so Triton answers both: ``embeddings`` and
``logits = s * embeddings @ classes^T`` (``[B,C]``). A later version of the same classifier is
added beside the earlier ones (Triton's integer version folders); the config must then still
describe every version, so a version with another label set or input size is refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from promptserve.models.artifact import MANIFEST_FILE, check_name, graph_ref
from promptserve.models.engines import ONNX_FILE
from promptserve.models.errors import ArtifactError
from promptserve.models.export import CLASSES_FILE
from promptserve.models.standalone import export_standalone

log = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
LOGITS = "logits"
EMBEDDINGS = "embeddings"


def export_triton(
    version_dir: Path,
    out: Path,
    *,
    model_name: str | None = None,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 2000,
    instance_kind: str = "KIND_GPU",
    instances: int = 1,
) -> Path:
    """Write (or add a version to) the Triton model for the classifier at `version_dir`.

    Returns the model directory ``<out>/<model>``. Raises ArtifactError when the version has
    no ONNX graph, or when `out` already holds the model with another label set or shape.
    """
    manifest = json.loads((version_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    name = check_name(model_name or manifest["name"])
    if max_batch_size < 1:
        raise ArtifactError(f"max_batch_size must be at least 1, not {max_batch_size}")
    if instance_kind not in ("KIND_GPU", "KIND_CPU", "KIND_AUTO"):
        raise ArtifactError(
            f"instance kind must be KIND_GPU, KIND_CPU or KIND_AUTO: {instance_kind}"
        )
    source = version_dir / ONNX_FILE
    if not source.is_file() and graph_ref(manifest) is not None:
        # format 2: the graph is shared in the store; assemble the self-contained one first
        with tempfile.TemporaryDirectory() as scratch:
            standalone = export_standalone(version_dir, Path(scratch) / "artifact")
            return export_triton(
                standalone,
                out,
                model_name=model_name,
                max_batch_size=max_batch_size,
                max_queue_delay_us=max_queue_delay_us,
                instance_kind=instance_kind,
                instances=instances,
            )
    if not source.is_file():
        raise ArtifactError(f"{version_dir} has no {ONNX_FILE} to export to Triton")
    classes = load_file(str(version_dir / CLASSES_FILE))["embeddings"]  # [C, D]
    graph = _with_logits(onnx.load(str(source)), classes, float(manifest["logit_scale"]))
    size = int(manifest["preprocessing"]["size"])
    labels = [str(n) for n in manifest["class_names"]]
    if len(labels) != classes.shape[0]:
        raise ArtifactError(f"{version_dir}: {len(labels)} class names, {classes.shape[0]} rows")
    model_dir = out / name
    pixels = graph.graph.input[0].name
    config = _config(name, pixels, size, classes.shape, max_batch_size, max_queue_delay_us)
    config += _instances(instance_kind, instances)
    _check_compatible(model_dir, config, labels)
    target = model_dir / str(int(manifest["version"]))
    staging = model_dir / f".staging-{target.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    onnx.save(graph, str(staging / MODEL_FILE))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (model_dir / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    (model_dir / CONFIG_FILE).write_text(config, encoding="utf-8")
    log.info("wrote Triton model %s version %s under %s", name, target.name, out)
    return model_dir


def _with_logits(model: onnx.ModelProto, classes: np.ndarray, scale: float) -> onnx.ModelProto:
    """Append ``logits = scale * embeddings @ classes^T`` to the visual graph."""
    graph = model.graph
    embedding = graph.output[0].name
    if embedding != EMBEDDINGS:  # the name Triton's config uses
        graph.node.append(helper.make_node("Identity", [embedding], [EMBEDDINGS]))
        del graph.output[:]
        dims = [1, classes.shape[1]]
        graph.output.append(helper.make_tensor_value_info(EMBEDDINGS, TensorProto.FLOAT, dims))
        graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.initializer.append(numpy_helper.from_array(classes.T.copy(), "class_embeddings_t"))
    graph.initializer.append(numpy_helper.from_array(classes.dtype.type(scale), "logit_scale"))
    graph.node.append(helper.make_node("MatMul", [EMBEDDINGS, "class_embeddings_t"], ["cosines"]))
    graph.node.append(helper.make_node("Mul", ["cosines", "logit_scale"], [LOGITS]))
    logits = helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", classes.shape[0]])
    graph.output.append(logits)
    onnx.checker.check_model(model)
    return model


def _config(
    name: str, pixels: str, size: int, shape: tuple[int, ...], max_batch: int, delay_us: int
) -> str:
    classes, embedding_dim = shape
    preferred = sorted({b for b in (8, 16, 32, max_batch) if b <= max_batch})
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        f'input [\n  {{ name: "{pixels}" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }}\n]\n'
        "output [\n"
        f'  {{ name: "{EMBEDDINGS}" data_type: TYPE_FP32 dims: [ {embedding_dim} ] }},\n'
        f'  {{ name: "{LOGITS}" data_type: TYPE_FP32 dims: [ {classes} ] '
        f'label_filename: "{LABELS_FILE}" }}\n'
        "]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {delay_us}\n"
        "}\n"
        "version_policy: { all: {} }\n"
    )


def _instances(kind: str, count: int) -> str:
    return f"instance_group [\n  {{ count: {count} kind: {kind} }}\n]\n"


def _check_compatible(model_dir: Path, config: str, labels: list[str]) -> None:
    """Every version of one Triton model shares its config and labels."""
    existing = model_dir / CONFIG_FILE
    if not existing.is_file():
        return
    old_labels = (model_dir / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    if existing.read_text(encoding="utf-8") != config or old_labels != labels:
        raise ArtifactError(
            f"{model_dir} already holds a model with another config or label set; "
            "export this version under another --triton-name"
        )
