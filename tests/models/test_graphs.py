"""Artifact format 2: shared visual graphs per backbone, shared engines, a store holding both
formats, and the self-contained export."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

from promptserve.models.artifact import publish_classifier, read_manifest
from promptserve.models.backbone import Backbone
from promptserve.models.classifier import load_classifier
from promptserve.models.engine_pool import EnginePool
from promptserve.models.errors import ArtifactError
from promptserve.models.graphs import BACKBONES_DIR, GRAPHS_DIR, PLAIN, GraphRef, graph_dir
from promptserve.models.input_engines import BoundInputs
from promptserve.models.integrity import verify_artifact
from promptserve.models.labels import load_learner
from promptserve.models.methods import create_method
from promptserve.models.standalone import export_standalone
from promptserve.training.cli import main
from tests import helpers
from tests.numerics import RTOL_EXPORT, assert_close

NAMES = ["red circle", "blue square", "green star"]
OWN = {"manifest.json", "classes.safetensors", "learner.safetensors"}
SHARED = ("provp", "provp-b", "pmpo")  # on a shared prompt graph: their tensors are inputs
FORMAT_2 = ("zs", "coop-a", "coop-b", "pre", *SHARED, "dcp")


@pytest.fixture(scope="module")
def store(tiny_backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zeroshot, two coops, pre, two provps, pmpo and dcp in format 2, and coop in format 1."""
    root = tmp_path_factory.mktemp("store")
    for method, name, fmt in [
        ("zeroshot", "zs", 2),
        ("coop", "coop-a", 2),
        ("coop", "coop-b", 2),
        ("pre", "pre", 2),
        ("provp", "provp", 2),
        ("provp", "provp-b", 2),
        ("pmpo", "pmpo", 2),
        ("dcp", "dcp", 2),
        ("coop", "old", 1),
    ]:
        learner = create_method(method, tiny_backbone)
        helpers.perturb(learner, seed=len(name), scale=0.1)
        publish_classifier(learner, NAMES, root, name, format_version=fmt)
    return root


def _graphs(store: Path) -> list[Path]:
    return sorted((store / BACKBONES_DIR).glob(f"*/{GRAPHS_DIR}/*"))


def test_a_version_holds_only_its_own_tensors(store: Path) -> None:
    for name in FORMAT_2:
        version = store / name / "1"
        own = OWN | ({"inputs.safetensors"} if name in SHARED else set())
        assert {p.name for p in version.iterdir()} == own
        manifest = verify_artifact(version)
        assert manifest["format_version"] == 2
        assert set(manifest["files"]) == own - {"manifest.json"}
        assert max(manifest["parity"]["onnx"].values()) <= 1e-4  # checked per classifier
        assert max(manifest["parity"]["torchscript"].values()) <= 1e-4
        assert sum(p.stat().st_size for p in version.iterdir()) < 1 << 20
    assert "visual.onnx" in {p.name for p in (store / "old" / "1").iterdir()}


def test_plain_methods_share_one_graph_and_others_get_their_own(
    store: Path, tiny_backbone: Backbone
) -> None:
    graphs = _graphs(store)
    # plain (zeroshot, coop x2, pre), provp's shared one, pmpo's shared one, dcp's own
    assert len(graphs) == 4
    refs = {n: GraphRef.from_json(read_manifest(store / n / "1")["graph"]) for n in FORMAT_2}
    for name in ("zs", "coop-a", "coop-b", "pre"):
        assert refs[name] == GraphRef(tiny_backbone.id.weights_sha256, PLAIN)
    assert refs["provp"] == refs["provp-b"]
    assert len({refs["provp"], refs["pmpo"], refs["dcp"], refs["zs"]}) == 4
    kinds = {
        name: json.loads((graph_dir(store, refs[name]) / "graph.json").read_text())["kind"]
        for name in ("zs", "provp", "pmpo", "dcp")
    }
    assert kinds == {"zs": "plain", "provp": "shared", "pmpo": "shared", "dcp": "own"}


def test_shared_engine_gives_each_classifier_its_eager_embeddings(
    store: Path, tiny_backbone: Backbone
) -> None:
    pool = EnginePool()
    loaded = {
        n: load_classifier(store / n / "1", engines=pool)
        for n in ("zs", "coop-a", "coop-b", "pre", "provp", "old")
    }
    assert loaded["zs"].engine is loaded["coop-a"].engine is loaded["pre"].engine
    assert loaded["provp"].engine is not loaded["zs"].engine
    assert len(pool) == 2  # the format-1 classifier keeps its own engine, outside the pool
    images = helpers.pixels(3)
    for name, classifier in loaded.items():
        eager = load_learner(store / name / "1", backbone=tiny_backbone)
        with torch.no_grad():
            expected = eager.encode_images(images)
        assert_close(classifier.embed(images), expected, RTOL_EXPORT, name)


def test_engines_are_released_with_their_classifiers(store: Path) -> None:
    plain = (*GraphRef.from_json(read_manifest(store / "coop-a" / "1")["graph"]).key, "fp32")
    shared = (*GraphRef.from_json(read_manifest(store / "provp" / "1")["graph"]).key, "fp32")
    pool = EnginePool(keep=1)
    coop = load_classifier(store / "coop-a" / "1", engines=pool)
    provp = load_classifier(store / "provp" / "1", engines=pool)  # used last: the one kept
    assert set(pool.keys()) == {plain, shared}
    del coop
    gc.collect()
    assert pool.keys() == [shared]  # no classifier left on the plain graph, and not kept
    again = load_classifier(store / "coop-b" / "1", engines=pool)
    assert pool.opened == 3  # the plain graph opened again
    del again
    gc.collect()
    assert set(pool.keys()) == {plain, shared}  # provp's classifier holds one; plain is kept
    load_classifier(store / "coop-a" / "1", engines=pool)
    assert pool.opened == 3
    assert provp.class_names == NAMES  # (held to here on purpose)


def test_a_damaged_shared_graph_is_refused(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(store, tmp_path / "copy"))
    ref = GraphRef.from_json(read_manifest(copy / "zs" / "1")["graph"])
    with (graph_dir(copy, ref) / "visual.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="visual.onnx"):
        load_classifier(copy / "zs" / "1")
    shutil.rmtree(copy / BACKBONES_DIR)
    with pytest.raises(ArtifactError, match="missing"):
        load_classifier(copy / "coop-a" / "1")


def test_a_graph_reference_cannot_point_outside_the_store(store: Path, tmp_path: Path) -> None:
    import shutil

    version = Path(shutil.copytree(store / "zs" / "1", tmp_path / "zs" / "1"))
    manifest = read_manifest(version)
    manifest["graph"]["graph"] = "../../../elsewhere"
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="graph reference"):
        verify_artifact(version)


def test_a_mixed_batch_on_a_shared_prompt_graph_is_per_sample(
    store: Path, tiny_backbone: Backbone
) -> None:
    pool = EnginePool()
    a, b = (load_classifier(store / n / "1", engines=pool) for n in ("provp", "provp-b"))
    assert isinstance(a.engine, BoundInputs)
    assert isinstance(b.engine, BoundInputs)
    assert not torch.equal(a.engine.inputs["bank"], b.engine.inputs["bank"])
    images = helpers.pixels(5, seed=4)
    owners = [a, b, b, a, b]
    inputs = {
        name: torch.stack([c.engine.inputs[name] for c in owners])  # type: ignore[union-attr]
        for name in a.engine.inputs
    }
    mixed = a.engine.engine(images, inputs)  # one call, two classifiers
    for i, classifier in enumerate(owners):
        alone = classifier.embed(images[i : i + 1])
        assert_close(mixed[i : i + 1], alone)
    assert a.own_bytes == a.class_embeddings.nbytes + a.engine.nbytes


@pytest.mark.parametrize("name", ["coop-a", "provp", "dcp", "old"])
def test_standalone_export_is_self_contained_and_equal(
    store: Path, tmp_path: Path, name: str
) -> None:
    out = export_standalone(store / name / "1", tmp_path / "out")
    assert {p.name for p in out.iterdir()} == OWN | {"visual.onnx", "visual.torchscript.pt"}
    manifest = verify_artifact(out)
    assert manifest["format_version"] == 1
    assert "graph" not in manifest
    images = helpers.pixels(2, seed=3)
    served = load_classifier(store / name / "1")
    for engine in ("onnx", "torchscript"):
        alone = load_classifier(out, engine=engine)
        assert alone.class_names == served.class_names
        assert torch.equal(alone.class_embeddings, served.class_embeddings)
        assert_close(alone.embed(images), served.embed(images))
    with pytest.raises(ArtifactError, match="not an empty directory"):
        export_standalone(store / name / "1", out)


def test_cli_export(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "coop-b:1", str(tmp_path / "b"), "--store", str(store)]) == 0
    assert "exported coop-b version 1" in capsys.readouterr().out
    assert verify_artifact(tmp_path / "b")["name"] == "coop-b"
    assert main(["export", "coop-b:7", str(tmp_path / "c"), "--store", str(store)]) == 2
    assert "no version '7'" in capsys.readouterr().err
