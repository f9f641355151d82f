"""The float16 visual graph (`OnnxOptions.fp16`) and the accuracy gate it passes when it opens.

The converter keeps ONNX Runtime's own block list (TopK, Range, CumSum, Min, Max, ...) and adds
the ops whose float16 results change what the model picks: the norms and softmax, and SEP's
token ranking (squares of activations above 256 overflow float16, and the comparisons would
then see ties that float32 does not). The graph's inputs and outputs stay float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from promptserve.models.errors import Fp16AccuracyError

# kept float32 on top of ONNX Runtime's DEFAULT_OP_BLOCK_LIST
FP32_OPS = [
    "LayerNormalization",
    "Softmax",
    "ReduceL2",
    "Pow",  # SEP's energy: mean squared activation per token
    "ReduceMean",
    "Greater",  # SEP's ranking compares energies
    "Less",
    "Equal",
]
# the gate: per sample, the cosine of the float16 and float32 embeddings of one probe batch;
# ViT-B/16 in float16 with this block list stays above 0.9999 on real photos, so 0.999 is a
# broken conversion or provider, not rounding
FP16_MIN_COSINE = 0.999
PROBE_BATCH = 2


def fp16_block_list() -> list[str]:
    """The ops the float16 graph keeps in float32: ONNX Runtime's defaults and ours."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return [*DEFAULT_OP_BLOCK_LIST, *(op for op in FP32_OPS if op not in DEFAULT_OP_BLOCK_LIST)]


def float16_graph(path: Path) -> bytes:
    """``visual.onnx`` converted to float16 (what `OnnxOptions.fp16` runs), as model bytes."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(path)), keep_io_types=True, op_block_list=fp16_block_list()
    )
    # the converter inserts one Cast per use of an initializer that several float32 ops share
    # (e.g. a LayerNorm weight used in every prompt pass), all with the same name and output
    seen: set[tuple[str, ...]] = set()
    unique = []
    for node in model.graph.node:
        if tuple(node.output) not in seen:
            seen.add(tuple(node.output))
            unique.append(node)
    del model.graph.node[:]
    model.graph.node.extend(unique)
    return model.SerializeToString()  # type: ignore[no-any-return]


def probe_feed(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded normal values for every input of `session`, batch PROBE_BATCH."""
    rng = np.random.default_rng(seed)
    feed = {}
    for graph_input in session.get_inputs():
        shape = [d if isinstance(d, int) else PROBE_BATCH for d in graph_input.shape]
        feed[graph_input.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def check_fp16(full: ort.InferenceSession, half: ort.InferenceSession) -> float:
    """The smallest per-sample cosine of `half`'s outputs against `full`'s on a probe batch;
    Fp16AccuracyError below FP16_MIN_COSINE (or on a NaN)."""
    feed = probe_feed(full)
    a, b = (s.run(None, feed)[0].reshape(PROBE_BATCH, -1) for s in (full, half))
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    worst = float(np.nan_to_num(cosine, nan=-1.0).min())
    if worst < FP16_MIN_COSINE:
        raise Fp16AccuracyError(
            f"the float16 graph disagrees with float32: cosine {worst:.5f} < {FP16_MIN_COSINE}"
        )
    return worst
