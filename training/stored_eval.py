"""A stored classifier's top-1 accuracy on a labelled dataset, scored through its exported
graph as the service scores it (`promptserve eval`, the service's publishing gate)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from promptserve.models.artifact import resolve_version
from promptserve.models.classifier import load_classifier, rank, resolve_labels
from promptserve.models.preprocess import eval_transform
from promptserve.training.data import ImageDataset, ImageSource, make_loader, open_dataset
from promptserve.training.errors import DataError


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # top-1, percent
    images: int
    classes: list[str]
    classifier: str
    version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_classifier(
    store: Path,
    name: str,
    data: str | ImageSource,
    *,
    version: str | None = None,
    engine: str = "onnx",
    batch_size: int = 64,
) -> EvalResult:
    """Top-1 accuracy of a stored classifier (its exported graph) on a labelled dataset."""
    path = resolve_version(store, name, version)
    classifier = load_classifier(path, engine=engine)  # type: ignore[arg-type]
    source = open_dataset(data, split="test") if isinstance(data, str) else data
    unknown = sorted(set(source.class_names) - set(classifier.class_names))
    if unknown:
        raise DataError(f"the data has classes the classifier does not know: {unknown[:10]}")
    dataset = ImageDataset(source, eval_transform(classifier.preprocess), classifier.class_names)
    classes = resolve_labels(classifier, None)  # scored as the service scores them
    correct = seen = 0
    for pixels, labels in make_loader(dataset, batch_size, shuffle=False, seed=0):
        best = rank(classifier, classifier.embed(pixels), classes, top_k=1)
        truth = [classifier.class_names[int(label)] for label in labels]
        correct += sum(row[0].label == name for row, name in zip(best, truth, strict=True))
        seen += len(labels)
    return EvalResult(
        accuracy=100.0 * correct / max(1, seen),
        images=seen,
        classes=classifier.class_names,
        classifier=name,
        version=path.name,
    )
