"""One comparison for embeddings and activations, with the tolerance scaled to what is compared.

float32 results differ between CPUs: oneDNN and MKL pick other kernels on AVX2, AVX-512 and AMX,
and the thread count changes the order of reductions. The difference is a few units in the last
place per operation and grows with depth, so an absolute 1e-5 on the states of a 4-block tower is
a coin toss (it failed on an AVX-512/AMX Xeon at 1.39e-5). Hence:

- two paths that must compute the same function (a cached prefix against the full pass, a
  folded graph against the eager learner) are compared in float64 where the model runs in it
  (`RTOL_FLOAT64`): any real difference is then orders of magnitude above the rounding;
- everything else is compared relative to the largest magnitude of the expected tensor,
  `RTOL_FLOAT32` (about 100 float32 ulps), which still fails on a wrong row, mask or slot
  (those move results by 1e-2 and more), and `RTOL_EXPORT` for ONNX Runtime against torch.

Set NUMERICS_LOG=path to append every comparison (test, difference, scale) as a JSON line: this
is how the margins in the comparisons were measured across kernels.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

RTOL_FLOAT32 = 1e-5  # the same float32 computation, batched or ordered differently
RTOL_FLOAT64 = 1e-10  # the same computation in float64
RTOL_EXPORT = 1e-4  # an exported graph (ONNX Runtime, TorchScript) against eager torch
# softmax scores: a logit scale of up to 100 multiplies the embeddings' rounding a hundredfold
RTOL_SCORES = 1e-4


def assert_close(actual: Any, expected: Any, rtol: float = RTOL_FLOAT32, what: str = "") -> None:
    """max |actual - expected| <= rtol * max |expected| (tensors or arrays of one shape)."""
    a = _float64(actual)
    b = _float64(expected)
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    _log(diff, scale, rtol, what)
    assert diff <= rtol * max(scale, 1e-30), (
        f"{what}: max |difference| {diff:.3g} > {rtol:g} x max |expected| {scale:.3g}"
    )


def _float64(value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return torch.as_tensor(value).detach().cpu().to(torch.float64)


def _log(diff: float, scale: float, rtol: float, what: str) -> None:
    path = os.environ.get("NUMERICS_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").removesuffix(" (call)")
        record = {"test": test, "what": what, "diff": diff, "scale": scale, "rtol": rtol}
        with open(path, "a") as out:
            out.write(json.dumps(record) + "\n")
