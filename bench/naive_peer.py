"""The server the FastAPI + open_clip tutorials show, as the peer `bench/vs_naive.py` measures
promptserve against (not part of the product; run by that script).

    python bench/naive_peer.py --store STORE --port 8001

One eager forward per request: each uploaded image is decoded with PIL, prepared by open_clip's
reference transform (`open_clip.image_transform`, the one `create_model_and_transforms`
returns), encoded by the model in PyTorch, and scored against text embeddings computed once at
start-up. The endpoint is a plain `def`, which FastAPI runs in its thread pool, with torch's
default thread count: what a tutorial leaves as it is. It takes the same weights and the same
class names as the classifier promptserve serves by default in `STORE` (the newest version of
`default`), and answers ``POST /classify`` with the same multipart fields (``images``,
``top_k``), so the same `wrk` script drives both.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Annotated

import open_clip
import torch
import uvicorn
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image

from promptserve.models.backbone import load_backbone

TEMPLATE = "a photo of a {}."


def newest_default(store: Path) -> dict[str, object]:
    versions = [p for p in (store / "default").iterdir() if (p / "manifest.json").is_file()]
    if not versions:
        raise SystemExit(f"{store} holds no default classifier: start promptserve on it once")
    newest = max(versions, key=lambda p: int(p.name))
    return dict(json.loads((newest / "manifest.json").read_text()))


def build_app(store: Path) -> FastAPI:
    manifest = newest_default(store)
    backbone = load_backbone(str(manifest["backbone"]["spec"]))  # type: ignore[index]
    model = backbone.model
    config = backbone.preprocess
    preprocess = open_clip.image_transform(
        config.size, is_train=False, mean=config.mean, std=config.std
    )
    names = [str(name) for name in manifest["class_names"]]  # type: ignore[attr-defined]
    with torch.no_grad():
        text = model.encode_text(backbone.tokenize([TEMPLATE.format(n) for n in names]))
        text = text / text.norm(dim=-1, keepdim=True)
    scale = backbone.logit_scale
    app = FastAPI()

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/classify")
    def classify(
        images: Annotated[list[UploadFile], File()], top_k: Annotated[int, Form()] = 5
    ) -> dict[str, object]:
        results = []
        for upload in images:
            image = Image.open(io.BytesIO(upload.file.read())).convert("RGB")
            pixels = preprocess(image).unsqueeze(0)
            with torch.no_grad():
                features = model.encode_image(pixels)
                features = features / features.norm(dim=-1, keepdim=True)
                probs = (scale * features @ text.T).softmax(dim=-1)[0]
            top = probs.topk(min(top_k, len(names)))
            results.append(
                {
                    "labels": [
                        {"label": names[i], "score": float(p)}
                        for p, i in zip(top.values, top.indices, strict=True)
                    ]
                }
            )
        return {"results": results}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build_app(args.store), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
