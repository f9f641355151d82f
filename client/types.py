"""Typed answers of the /v1 API (pydantic models). Fields the service adds later are kept
(``model_extra``) rather than refused, so an older client reads a newer server."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Prediction(Model):
    label: str
    score: float


class ClassifierResult(Model):
    """One classifier's answer: per image, its labels best first."""

    classifier: str
    version: str
    alias: str | None = None
    predictions: list[list[Prediction]]
    encoded_labels: list[str] = Field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The best label of each image."""
        return [row[0].label if row else "" for row in self.predictions]


class ClassifyResult(Model):
    """The answer of `classify`: one `ClassifierResult` per classifier asked for. The
    properties read the first (the only one unless ``classifiers=`` named several)."""

    results: list[ClassifierResult]
    request_id: str | None = None

    @property
    def classifier(self) -> str:
        return self.results[0].classifier

    @property
    def version(self) -> str:
        return self.results[0].version

    @property
    def predictions(self) -> list[list[Prediction]]:
        return self.results[0].predictions

    @property
    def labels(self) -> list[str]:
        return self.results[0].labels

    def __getitem__(self, classifier: str) -> ClassifierResult:
        """The result of the classifier named `classifier` (as the service answered it)."""
        for result in self.results:
            if classifier in (result.classifier, f"{result.classifier}@{result.version}"):
                return result
            if result.alias is not None and classifier == f"{result.classifier}@{result.alias}":
                return result
        raise KeyError(classifier)


class Embedding(Model):
    index: int
    modality: str
    embedding: list[float]
    object: str = "embedding"


class EmbeddingsResult(Model):
    """The OpenAI embeddings shape: one L2-normalised vector per input, in order."""

    data: list[Embedding]
    model: str
    classifier: str
    version: str
    usage: dict[str, int] = Field(default_factory=dict)
    object: str = "list"

    @property
    def vectors(self) -> list[list[float]]:
        return [item.embedding for item in self.data]

    def numpy(self) -> Any:
        """The vectors as one float32 array, (inputs, dim)."""
        import numpy as np

        return np.asarray(self.vectors, dtype=np.float32)


class ClassifierSummary(Model):
    name: str
    versions: list[str]
    latest: str
    default: bool
    aliases: dict[str, str] = Field(default_factory=dict)


class ClassifierList(Model):
    default: str
    classifiers: list[ClassifierSummary]

    def names(self) -> list[str]:
        return [c.name for c in self.classifiers]


class ClassifierVersion(Model):
    version: str
    created_at: str | None = None
    method: str | None = None
    class_names: list[str] = Field(default_factory=list)
    num_classes: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    backbone: dict[str, Any] = Field(default_factory=dict)
    loaded: bool | None = None
    open_vocabulary: bool = False
    aliases: list[str] = Field(default_factory=list)
    candidate: bool = False


class Classifier(Model):
    name: str
    default: bool
    latest: str
    versions: list[ClassifierVersion]
    aliases: dict[str, str] = Field(default_factory=dict)

    def version(self, version: str) -> ClassifierVersion:
        """A version by its digits or by an alias pointing at it."""
        wanted = self.aliases.get(version, version)
        for entry in self.versions:
            if entry.version == wanted:
                return entry
        raise KeyError(version)


class Alias(Model):
    alias: str
    version: str


class JobProgress(Model):
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    lr: float | None = None
    eta_s: float | None = None


class JobError(Model):
    reason: str
    message: str


class Gate(Model):
    passed: bool
    reason: str = ""
    heldout: dict[str, float | None] = Field(default_factory=dict)


class JobResult(Model):
    """What a succeeded job published. `published` is ``"alias"`` when the new version took
    `alias`, ``"candidate"`` when the gate held it back (`gate.reason` says why)."""

    classifier: str | None = None
    version: str | None = None
    published: str | None = None
    alias: str | None = None
    gate: Gate | None = None
    train_accuracy: float | None = None
    heldout_images: int | None = None
    heldout_accuracy: float | None = None
    heldout_zeroshot_accuracy: float | None = None


class Job(Model):
    id: str
    state: str
    name: str
    method: str | None = None
    backbone: str | None = None
    preset: str | None = None
    shots: int | None = None
    epochs: int | None = None
    seed: int | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    classes: list[str] = Field(default_factory=list)
    images: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    progress: JobProgress | None = None
    result: JobResult | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    publish: str | None = None  # "gated" or "always"
    alias: str | None = None  # the alias the new version takes if it passes
    owner: str | None = None  # the name of the API key that started it

    @property
    def done(self) -> bool:
        """Ended: succeeded, failed or cancelled."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"


class JobList(Model):
    data: list[Job]
    has_more: bool = False
    next_after: str | None = None


class JobEvent(Model):
    seq: int
    at: str
    level: str
    message: str
    data: dict[str, Any] | None = None


class JobEventList(Model):
    data: list[JobEvent]
    has_more: bool = False
