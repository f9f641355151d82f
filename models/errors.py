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


class ExportParityError(ArtifactError):
    """An exported graph disagrees with eager PyTorch beyond tolerance; nothing is published."""
