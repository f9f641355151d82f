"""The accuracy gate a reduced-precision engine passes before it serves a classifier.

A classifier's answers on the reduced engine are compared with float32's on a calibration set:
top-1 agreement (the share of images whose best class is the same), the top-1 accuracy change
where the images' labels are known, and the smallest per-image cosine between the two
embeddings. Published artifacts carry no images, so the set is a fixed, seeded one: smooth
random colour fields with a few bright squares, decoded and preprocessed like a request's
image (`calibration_images`). Static int8 calibration (measured in `bench/precision.py`) uses
another seed, so a gate would never score the images a quantizer was fitted on.

Below `GateThresholds` the classifier is served by float32 instead (`models.classifier`), and
the service logs it and counts it in ``/metrics``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from promptserve.models.backbone import PreprocessConfig
from promptserve.models.engines import VisualEngine
from promptserve.models.errors import PrecisionError
from promptserve.models.precision import Precision
from promptserve.models.preprocess import FastEvalTransform

log = logging.getLogger(__name__)

GATE_SEED = 1  # the gate's images
CALIBRATION_SEED = 2  # the int8 graph's static calibration (never the gate's)
GATE_IMAGES = 32
GATE_BATCH = 8  # images per engine call while gating


@dataclass(frozen=True, kw_only=True)
class GateThresholds:
    """What a reduced engine must reach against float32 to serve a classifier."""

    min_agreement: float = 0.99  # share of images with the same top-1 class
    min_cosine: float = 0.99  # smallest per-image embedding cosine
    images: int = GATE_IMAGES  # size of the fixed calibration set


@dataclass(frozen=True)
class GateResult:
    """One gate run: a reduced `precision` against float32 for one classifier."""

    precision: str
    images: int
    agreement: float
    accuracy_change: float | None  # reduced minus float32 top-1 accuracy; None: no labels
    min_cosine: float
    passed: bool
    error: str | None = None  # why the reduced engine could not open (then no figures)

    @property
    def served(self) -> str:
        """The precision that serves the classifier: the reduced one, or fp32 on a failure."""
        return self.precision if self.passed else "fp32"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"served": self.served}


def calibration_images(count: int, size: int, seed: int = GATE_SEED) -> list[Image.Image]:
    """`count` seeded RGB images of `size` px: low-frequency colour fields (an 8x8 grid of
    random colours, upsampled) with three random bright squares, so they have the edges and
    flat regions of photos rather than white noise."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        field = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        smooth = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
        image = np.asarray(smooth).copy()
        for _ in range(3):
            side = int(rng.integers(size // 8, size // 3))
            y, x = (int(v) for v in rng.integers(0, size - side, 2))
            image[y : y + side, x : x + side] = rng.integers(0, 256, 3, dtype=np.uint8)
        images.append(Image.fromarray(image))
    return images


def calibration_pixels(
    transform: Callable[[Image.Image], Tensor], size: int, count: int, seed: int = GATE_SEED
) -> Tensor:
    """The calibration images through a classifier's `transform`: [count, 3, S, S]."""
    return torch.stack([transform(image) for image in calibration_images(count, size, seed)])


def embed_all(engine: VisualEngine, pixels: Tensor) -> Tensor:
    """[N, D] float32 embeddings of `pixels` [N, 3, S, S], GATE_BATCH images per call."""
    parts = [engine(batch).detach().float().cpu() for batch in pixels.split(GATE_BATCH)]
    return torch.cat(parts)


# Classifiers on one shared graph are gated on the same images through the same two engines:
# each reduced engine embeds the calibration set once (with its float32 peer) while it lives.
EmbeddedKey = tuple[int, PreprocessConfig, int]  # (id of the float32 engine, preprocessing, N)
_embedded: weakref.WeakKeyDictionary[Any, dict[EmbeddedKey, tuple[Tensor, Tensor]]] = (
    weakref.WeakKeyDictionary()
)
_embedded_lock = threading.Lock()


def gate_embeddings(
    reduced: VisualEngine, full: VisualEngine, preprocess: PreprocessConfig, count: int
) -> tuple[Tensor, Tensor]:
    """The calibration set's [N, D] embeddings through `reduced` and `full`, computed once per
    pair (an engine bound to one classifier's inputs is its own pair, so never shared)."""
    key = (id(full), preprocess, count)
    with _embedded_lock:
        hit = _embedded.get(reduced, {}).get(key)
    if hit is not None:
        return hit
    pixels = calibration_pixels(FastEvalTransform(preprocess), preprocess.size, count)
    pair = embed_all(reduced, pixels), embed_all(full, pixels)
    with _embedded_lock:
        _embedded.setdefault(reduced, {})[key] = pair
    return pair


def run_gate(
    precision: str,
    reduced: VisualEngine,
    full: VisualEngine,
    class_embeddings: Tensor,
    pixels: Tensor,
    thresholds: GateThresholds,
    labels: Tensor | None = None,
) -> GateResult:
    """Compare `reduced` with `full` on `pixels` [N, 3, S, S] for a classifier with
    `class_embeddings` [C, D]; `labels` [N] (class indices), when known, give the accuracy
    change. A NaN anywhere counts as total disagreement."""
    ours, reference = embed_all(reduced, pixels), embed_all(full, pixels)  # [N, D]
    return judge(precision, ours, reference, class_embeddings, thresholds, labels)


def judge(
    precision: str,
    ours: Tensor,
    reference: Tensor,
    class_embeddings: Tensor,
    thresholds: GateThresholds,
    labels: Tensor | None = None,
) -> GateResult:
    """The gate's figures from the reduced engine's embeddings `ours` and float32's
    `reference` (both [N, D]); see `run_gate`."""
    cosine = F.cosine_similarity(ours, reference, dim=1).nan_to_num(nan=-1.0)  # [N]
    classes = class_embeddings.detach().float().cpu()
    top_ours = (ours.nan_to_num(nan=0.0) @ classes.t()).argmax(1)  # [N]
    top_full = (reference @ classes.t()).argmax(1)
    agreement = float((top_ours == top_full).float().mean())
    change = None
    if labels is not None:
        change = float((top_ours == labels).float().mean() - (top_full == labels).float().mean())
    worst = float(cosine.min())
    passed = agreement >= thresholds.min_agreement and worst >= thresholds.min_cosine
    return GateResult(precision, int(ours.shape[0]), agreement, change, worst, passed)


def gated_engine(
    name: str,
    precision: Precision,
    open_at: Callable[[Precision], VisualEngine],
    class_embeddings: Tensor,
    preprocess: PreprocessConfig,
    thresholds: GateThresholds,
) -> tuple[VisualEngine, GateResult | None]:
    """The engine that serves classifier `name`: at `precision` when it passes the gate
    against float32 on the fixed calibration set, else float32 (logged as a warning).
    `open_at` opens the classifier's graph at a precision; float32 needs no gate. A reduced
    engine that cannot open (a graph the quantizer fails on) falls back the same way; a
    precision this host cannot run (`PrecisionError`) is refused."""
    full = open_at("fp32")
    if precision == "fp32":
        return full, None
    try:
        reduced = open_at(precision)
    except PrecisionError:
        raise  # asked for what this host cannot run: refused, not quietly replaced
    except Exception as exc:  # the quantizer's and exporter's failures have no common type
        log.warning(
            "classifier %s: the %s engine could not open (%s); serving float32 instead",
            name,
            precision,
            exc,
        )
        return full, GateResult(precision, 0, 0.0, None, -1.0, False, error=str(exc))
    ours, reference = gate_embeddings(reduced, full, preprocess, thresholds.images)
    result = judge(precision, ours, reference, class_embeddings, thresholds)
    figures = (name, precision, result.agreement, result.min_cosine, result.images)
    if result.passed:
        log.info(
            "classifier %s: %s engine passed its gate (agreement %.4f, cosine %.5f, %d images)",
            *figures,
        )
        return reduced, result
    short = [
        f"{label} {value:.5f} < {bound}"
        for label, value, bound in (
            ("agreement", result.agreement, thresholds.min_agreement),
            ("cosine", result.min_cosine, thresholds.min_cosine),
        )
        if value < bound
    ]
    log.warning(
        "classifier %s: %s engine failed its accuracy gate (%s, %d images); serving float32 "
        "instead",
        name,
        precision,
        ", ".join(short),
        result.images,
    )
    return full, result
