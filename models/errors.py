"""Domain exceptions of the model package; the service maps them to HTTP codes in one place."""


class PromptserveError(Exception):
    """Base of every error promptserve raises on purpose."""


class BackboneError(PromptserveError):
    """A backbone cannot be loaded (unknown architecture, missing weights, unsupported tower)."""


class UnknownMethodError(PromptserveError, KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateMethodError(PromptserveError):
    """A method name registered twice."""


class ConfigError(PromptserveError, ValueError):
    """A method or training configuration that is not valid."""


class ArtifactError(PromptserveError):
    """A classifier artifact that is missing, corrupt, or fails its checks."""


class InvalidNameError(ArtifactError, ValueError):
    """A classifier or version name that is not one safe path component (a user's mistake)."""


class NotFoundError(ArtifactError, LookupError):
    """Something asked for by name that the store does not hold."""


class UnknownClassifierError(NotFoundError):
    """A classifier name with no published version."""


class UnknownVersionError(NotFoundError):
    """A version that the classifier does not have (or no longer has)."""


class LabelError(PromptserveError, ValueError):
    """Labels asked of a classifier that it cannot score."""


class InvalidLabelError(LabelError):
    """An empty, duplicate or too long label, too many labels, or too many new ones."""


class UnknownLabelError(LabelError):
    """A label the classifier lacks, when new labels may not be encoded."""


class ExportParityError(ArtifactError):
    """An exported graph disagrees with eager PyTorch beyond tolerance; nothing is published."""


class ProviderError(PromptserveError):
    """An execution provider or device asked for cannot run here; names what is missing."""


class Fp16AccuracyError(ArtifactError):
    """A float16 graph strays from its float32 graph beyond tolerance when it opens."""


class PrecisionError(PromptserveError, ValueError):
    """A reduced engine precision this host or device cannot run (bf16 without bf16 CPU flags,
    int8 or bf16 on CUDA)."""
