"""Open-vocabulary labels: names a classifier was not trained on, encoded at request time
through its own learned text path, for every method; the per-sample rule, the cache, the limits.

Each method is trained for one epoch on 2 shots of the synthetic base classes (tiny backbone)
and asked about novel class names.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from promptserve.models.classifier import load_classifier
from promptserve.models.labels import LabelEncoder, encode_labels, load_learner
from promptserve.models.methods import list_methods
from promptserve.service.settings import Settings
from promptserve.training.synthetic.tasks import task_classes
from tests.numerics import assert_close
from tests.service.helpers import CLASS_NAMES, ClientFactory, b64, make_settings, png_bytes, serve

NOVEL = task_classes("color-shape-novel")
BASE = task_classes("color-shape-base")


@pytest.fixture(scope="session")
def method_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every method trained briefly on the base classes, published under its own name."""
    from promptserve.training.api import TrainRequest, train_classifier

    store = tmp_path_factory.mktemp("open-vocab-store")
    for method in list_methods():
        request = TrainRequest(
            method=method,
            data="synthetic:color-shape-base?n=2&size=32",
            store=store,
            name=method,
            backbone="tiny",
            shots=2,
            epochs=1,
            overrides={} if method == "zeroshot" else {"batch_size": 32},
        )
        train_classifier(request)
    return store


def method_settings(store: Path, **overrides: object) -> Settings:
    return make_settings(store, default_classifier="zeroshot", **overrides)


@pytest.mark.anyio
@pytest.mark.parametrize("method", list_methods())
async def test_novel_labels_are_encoded_by_the_method(method_store: Path, method: str) -> None:
    labels = [BASE[0], NOVEL[0], BASE[1], NOVEL[1], NOVEL[2]]
    image = png_bytes((30, 30, 220))
    async with serve(method_settings(method_store)) as (client, runtime):
        payload = {"images": [b64(image)], "classifier": method, "labels": labels, "top_k": 99}
        response = await client.post("/classify", json=payload)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["encoded_labels"] == [NOVEL[0], NOVEL[1], NOVEL[2]]
        (row,) = body["predictions"]
        assert {p["label"] for p in row} == set(labels)
        assert math.isclose(sum(p["score"] for p in row), 1.0, rel_tol=1e-5)
        classifier = await runtime.local.load(method)
        served = runtime.local.labels.encode(classifier, NOVEL[:3])  # from the cache
        described = await client.get(f"/classifiers/{method}")
    assert all(v["open_vocabulary"] for v in described.json()["versions"])

    artifact = method_store / method / classifier.version
    offline = encode_labels(load_learner(artifact), NOVEL[:3])  # [3, D]
    assert_close(served, offline)

    # the scores are those of the stored base rows and the offline novel rows
    reference = load_classifier(artifact)
    base_rows = reference.class_embeddings[[reference.class_names.index(n) for n in BASE[:2]]]
    table = {BASE[0]: base_rows[0], BASE[1]: base_rows[1]}
    table |= dict(zip(NOVEL[:3], offline, strict=True))
    pixels = reference.transform(Image.open(io.BytesIO(image)).convert("RGB"))
    probs = F.softmax(
        reference.logits(reference.embed(pixels[None]), torch.stack([table[n] for n in labels])),
        dim=-1,
    )[0]
    expected = dict(zip(labels, probs.tolist(), strict=True))
    for p in row:
        assert math.isclose(p["score"], expected[p["label"]], abs_tol=1e-4)


@pytest.mark.parametrize("method", list_methods())
def test_label_embedding_is_per_sample(method_store: Path, method: str) -> None:
    classifier = load_classifier(method_store / method / "1")
    alone = LabelEncoder().encode(classifier, [NOVEL[3]])  # [1, D]
    crowd = LabelEncoder().encode(classifier, [NOVEL[4], NOVEL[3], NOVEL[5], BASE[2]])
    assert_close(alone[0], crowd[1])


@pytest.mark.anyio
async def test_cache_serves_a_repeated_label_without_encoding(
    client_factory: ClientFactory,
) -> None:
    image = [b64(png_bytes())]
    async with client_factory() as (client, runtime):
        encoder = runtime.local.labels
        calls: list[list[str]] = []
        encode = encoder.encode

        def spy(classifier: object, names: list[str], *limits: int) -> torch.Tensor:
            before = encoder.encode_calls
            result = encode(classifier, names, *limits)  # type: ignore[arg-type]
            if encoder.encode_calls > before:
                calls.append(list(names))
            return result

        encoder.encode = spy  # type: ignore[method-assign]
        first = await client.post("/classify", json={"images": image, "labels": ["teal kite"]})
        again = await client.post(
            "/classify", json={"images": image, "labels": ["teal kite", CLASS_NAMES[0]]}
        )
        both = await client.post(
            "/classify", json={"images": image, "labels": ["teal kite", "pink moon", "grey owl"]}
        )
    assert [r.status_code for r in (first, again, both)] == [200, 200, 200]
    assert again.json()["encoded_labels"] == ["teal kite"]
    assert both.json()["encoded_labels"] == ["teal kite", "pink moon", "grey owl"]
    assert encoder.encode_calls == 2  # the first request, then the two new names together
    assert calls == [["teal kite"], ["teal kite", "pink moon", "grey owl"]]
    assert encoder.cached_labels() == 3


@pytest.mark.anyio
async def test_known_labels_need_no_text_path(client_factory: ClientFactory) -> None:
    async with client_factory() as (client, runtime):
        payload = {"images": [b64(png_bytes())], "labels": CLASS_NAMES[:2]}
        response = await client.post("/classify", json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["encoded_labels"] == []
    assert runtime.local.labels.encode_calls == 0


@pytest.mark.anyio
async def test_hugging_face_shape_stays_a_bare_list(client_factory: ClientFactory) -> None:
    payload = {"inputs": b64(png_bytes()), "parameters": {"candidate_labels": ["dog", "cat"]}}
    async with client_factory() as (client, _):
        response = await client.post("/classify", json=payload)
    assert response.status_code == 200, response.text
    assert sorted(p["label"] for p in response.json()) == ["cat", "dog"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("overrides", "labels", "code", "needle"),
    [
        ({"max_new_labels": 2}, ["a", "b", "c"], "invalid_label", "at most 2 new"),
        ({"max_label_tokens": 3}, ["a very long and winding name"], "invalid_label", "at most 3"),
        ({}, ["red circle", ""], "invalid_label", "non-empty"),
        ({}, ["dog", "red circle", "dog"], "invalid_label", "duplicate"),
        ({"max_labels": 2}, ["dog", "cat", "owl"], "invalid_label", "at most 2"),
        ({"max_new_labels": 0}, ["dog"], "unknown_label", "has no class"),
    ],
    ids=["too-many-new", "too-long", "empty", "duplicate", "too-many", "open-vocab-off"],
)
async def test_label_limits(
    client_factory: ClientFactory,
    overrides: dict[str, int],
    labels: list[str],
    code: str,
    needle: str,
) -> None:
    async with client_factory(**overrides) as (client, _):
        response = await client.post(
            "/classify", json={"images": [b64(png_bytes())], "labels": labels}
        )
        good = await client.post(
            "/classify", json={"images": [b64(png_bytes())], "labels": ["owl"]}
        )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert needle in error["message"]
    if overrides.get("max_new_labels") != 0:
        assert good.status_code == 200, good.text


def test_python_api_classifies_with_new_labels(tiny_artifact: Path) -> None:
    classifier = load_classifier(tiny_artifact)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    labels = [CLASS_NAMES[1], "teal kite", "pink moon"]
    (row,) = classifier.classify([image], top_k=3, labels=labels)
    assert sorted(name for name, _ in row) == sorted(labels)
    rows = classifier.label_set(labels).embeddings  # [3, D]
    offline = load_learner(tiny_artifact).encode_classes(labels[1:])
    assert_close(rows[1:], offline)
    assert torch.equal(rows[0], classifier.class_embeddings[1])
    with pytest.raises(ValueError, match="distinct"):
        classifier.classify([image], labels=["owl", "owl"])


def test_cli_classify_with_new_labels(
    template_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from promptserve.service.cli import main

    image = tmp_path / "red.png"
    image.write_bytes(png_bytes())
    argv = ["classify", "--classifier", "shapes", "--store", str(template_store)]
    argv += ["--labels", CLASS_NAMES[0], "teal kite", "--top-k", "2", str(image)]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["image"] == str(image)
    assert {p["label"] for p in line["predictions"]} == {CLASS_NAMES[0], "teal kite"}
    assert line["encoded_labels"] == ["teal kite"]
