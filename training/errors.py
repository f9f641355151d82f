"""Domain exceptions of the training package; the service maps them to HTTP codes in one place."""

from models.errors import PromptserveError


class TrainingError(PromptserveError):
    """Base of the errors raised on purpose by the training package."""


class DataError(TrainingError):
    """A dataset that cannot be read: unknown spec, missing or corrupt images, bad manifest."""


class TrainingCancelled(TrainingError):  # noqa: N818  (a state, not a failure)
    """A training run stopped because its cancellation check returned True."""
