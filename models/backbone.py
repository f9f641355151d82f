"""Frozen CLIP backbones: loading, identity and preprocessing.

With `models.towers` (the `TextTower` / `VisionTower` adapters the prompting code uses), this is
the only module that touches open_clip internals, so an open_clip upgrade is absorbed here (the
version is pinned in pyproject.toml). open_clip is imported where it is first used, never with
the module: it brings torchvision, timm and torch's compiler with it (seconds of start-up and
about 100 MB), and a process that only serves exported classifiers needs none of them.

A backbone spec is one of:
  ``mini``                     the embedded backbone shipped with the package (default)
  ``ARCH``                     an open_clip architecture with random initial weights (seeded)
  ``ARCH:TAG``                 open_clip pretrained weights, e.g. ``ViT-B-16:openai``
  ``ARCH@/path/to/ckpt``       an architecture loaded from a local checkpoint file
  ``/path/ckpt.safetensors``     a checkpoint whose ``.json`` sidecar names its architecture
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from promptserve.models.errors import BackboneError
from promptserve.models.towers import TextTower, Tokenizer, VisionTower

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_BACKBONE = "mini"
RANDOM_INIT_SEED = 0  # random-init backbones are reproducible, so artifacts can be re-created


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """How pixels are prepared for the vision tower (from open_clip's config)."""

    size: int  # square input side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # resize filter
    resize_mode: str = "shortest"  # resize the short side, then centre-crop


@dataclass(frozen=True, kw_only=True)
class BackboneId:
    """Identifies the frozen weights an artifact was built on."""

    spec: str  # what the user asked for, e.g. "ViT-B-16:openai" or "mini"
    architecture: str  # open_clip model name
    pretrained: str | None  # pretrained tag or checkpoint file name; None for random init
    weights_sha256: str  # hash of the weights actually loaded


@dataclass(frozen=True)
class Backbone:
    """A frozen open_clip CLIP plus what is needed to use it."""

    model: nn.Module  # open_clip CLIP, eval mode, requires_grad False
    tokenizer: Tokenizer  # open_clip tokenizer: list[str] -> LongTensor [N, T]
    preprocess: PreprocessConfig
    id: BackboneId

    @property
    def logit_scale(self) -> float:
        return float(cast(Tensor, self.model.logit_scale).exp().item())

    def text_tower(self) -> TextTower:
        return TextTower(self.model, self.tokenizer)

    def vision_tower(self) -> VisionTower:
        return VisionTower(cast(Any, self.model).visual)

    def tokenize(self, texts: list[str]) -> Tensor:
        return cast(Tensor, self.tokenizer(texts))


def register_project_configs() -> list[str]:
    """Make the project's own architectures (``mini``, test configs) known to open_clip."""
    import open_clip  # on first use (the module docstring says why)

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if names and names[0] not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)
    return names


def parse_backbone_spec(spec: str) -> tuple[str, str | None, Path | None]:
    """Split a spec into (architecture, pretrained tag, checkpoint path)."""
    if "@" in spec:
        arch, _, path = spec.partition("@")
        return arch, None, Path(path)
    candidate = Path(spec)
    if candidate.suffix in {".safetensors", ".pt", ".pth", ".bin"}:
        return _architecture_from_sidecar(candidate), None, candidate
    arch, _, tag = spec.partition(":")
    return arch, (tag or None), None


def _architecture_from_sidecar(checkpoint: Path) -> str:
    sidecar = checkpoint.with_suffix(".json")
    if not sidecar.is_file():
        raise BackboneError(
            f"cannot tell the architecture of {checkpoint}: name it as ARCH@{checkpoint} "
            f"or put a {sidecar.name} with an 'architecture' field beside it"
        )
    return str(json.loads(sidecar.read_text())["architecture"])


def load_backbone(
    spec: str = DEFAULT_BACKBONE, *, device: str | torch.device = "cpu", allow_download: bool = True
) -> Backbone:
    """Load a frozen backbone from a spec (see the module docstring)."""
    import open_clip  # on first use (the module docstring says why)

    register_project_configs()
    arch, tag, checkpoint = parse_backbone_spec(spec)
    if arch not in open_clip.list_models():
        raise BackboneError(
            f"unknown architecture {arch!r}; known: {', '.join(list_architectures())}"
        )
    if checkpoint is None and tag is None and arch in _embedded_weights():
        checkpoint = _embedded_weights()[arch]
    if checkpoint is None and tag is not None:
        checkpoint = _resolve_pretrained(arch, tag, allow_download=allow_download)

    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(arch, pretrained=None)
    else:
        if not checkpoint.is_file():
            raise BackboneError(f"checkpoint {checkpoint} does not exist")
        with _without_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(arch, pretrained=None)
        _load_weights(model, checkpoint)

    model = model.to(device).eval().requires_grad_(False)
    backbone_id = BackboneId(
        spec=spec,
        architecture=arch,
        pretrained=tag if tag is not None else (checkpoint.name if checkpoint else None),
        weights_sha256=hash_state_dict(model.state_dict()),
    )
    return Backbone(
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        preprocess=_preprocess_config(model),
        id=backbone_id,
    )


class _RandomInitWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning (logged on the root logger) while we
    build a model whose weights we load ourselves: there it would be false."""
    root = logging.getLogger()
    quiet = _RandomInitWarningFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _load_weights(model: nn.Module, checkpoint: Path) -> None:
    import open_clip  # on first use (the module docstring says why)

    if checkpoint.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(str(checkpoint)).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # open_clip keeps the causal mask as a non-persistent buffer; nothing else may be absent
        if missing or unexpected:
            raise BackboneError(
                f"{checkpoint} does not match the architecture: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    else:
        open_clip.load_checkpoint(model, str(checkpoint))


def _preprocess_config(model: Any) -> PreprocessConfig:
    import open_clip  # on first use (the module docstring says why)

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    return PreprocessConfig(
        size=int(size[0] if isinstance(size, tuple | list) else size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=str(cfg.get("resize_mode", "shortest")),
    )


def _embedded_weights() -> dict[str, Path]:
    return {p.stem: p for p in WEIGHTS_DIR.glob("*.safetensors")}


def list_architectures() -> list[str]:
    import open_clip  # on first use (the module docstring says why)

    register_project_configs()
    return list(open_clip.list_models())


def _resolve_pretrained(arch: str, tag: str, *, allow_download: bool) -> Path:
    """Find pretrained weights in the local caches; download only if the hub is reachable."""
    import open_clip  # on first use (the module docstring says why)

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise BackboneError(f"no pretrained weights {tag!r} for {arch}; known tags: {tags}")
    cached = _cached_pretrained(cfg)
    if cached is not None:
        return cached
    how = (
        f"Pretrained weights {arch}:{tag} are not in the local cache and cannot be downloaded "
        f"here. Download them on a machine with network access (open_clip caches them under "
        f"~/.cache/huggingface), or point at a local file with --backbone {arch}@/path/to/"
        f"checkpoint (open_clip .pt/.bin/.safetensors)."
    )
    if not allow_download or os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable():
        raise BackboneError(how)
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as exc:  # the hub's own errors vary by transport; report them as ours
        raise BackboneError(f"{how} (download failed: {exc})") from exc


def _cached_pretrained(cfg: dict[str, Any]) -> Path | None:
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        for name in (filename or "open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.get("url"):
        path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if path.is_file():
            return path
    return None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hash_state_dict(state: dict[str, Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of a state dict, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
