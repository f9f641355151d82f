"""Domain exceptions of the training package; the service maps them to HTTP codes in one place."""

import re

from promptserve.models.errors import PromptserveError

# an absolute path in a message: a "/" that does not follow a word, a dot, ":" or another "/"
# (so "1/2" and "http://" are left alone), up to whitespace, a quote, ":" or ","
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s:'\",]*")


class TrainingError(PromptserveError):
    """Base of the errors raised on purpose by the training package."""


class DataError(TrainingError):
    """A dataset that cannot be read: unknown spec, missing or corrupt images, bad manifest."""


class TrainingCancelled(TrainingError):  # noqa: N818  (a state, not a failure)
    """A training run stopped because its cancellation check returned True."""


def paths_in(message: str) -> list[str]:
    """The absolute paths a message names."""
    return ABSOLUTE_PATH.findall(message)


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its last component: errors shown to API
    clients must not tell them the server's directories (the full message goes to the log)."""
    return ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
