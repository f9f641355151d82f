"""The classes of a tuning job, checked before it is queued: their names and their number.

A job's class names become labels the classifier is served with, so they are held to the
label rules of `/v1/classify` (`models.names`: printable, one spelling per prompt, at most
`PROMPTSERVE_MAX_LABEL_CHARS` characters and `PROMPTSERVE_MAX_LABEL_TOKENS` tokens of the job's
backbone). The cost of a job grows with its class count (every step encodes every class), so
`PROMPTSERVE_MAX_JOB_CLASSES` bounds it before any training, and
`PROMPTSERVE_MIN_JOB_IMAGES_PER_CLASS` (default 1: one-shot tuning is a real regime) lets an
operator ask for more.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

from promptserve.models.backbone import parse_backbone_spec, register_project_configs
from promptserve.models.errors import InvalidLabelError
from promptserve.models.labels import bound_tokenizer_cache, label_token_count
from promptserve.models.names import check_distinct, check_name_text
from promptserve.service.errors import InvalidRequestError
from promptserve.service.settings import Settings

TOKENIZER_CACHE_WORDS = 2_000


@functools.cache
def _tokenizer(arch: str) -> object:
    register_project_configs()
    import open_clip  # on first use: it loads torchvision, timm and torch's compiler

    tokenizer = open_clip.get_tokenizer(arch)
    bound_tokenizer_cache(tokenizer, TOKENIZER_CACHE_WORDS)
    return tokenizer


def check_class_names(names: Sequence[str], backbone: str, settings: Settings) -> list[str]:
    """Each name checked (stripped, printable, within the character and token limits of the
    backbone's tokenizer), the distinct ones told apart as prompts; 422 naming the first bad one."""
    try:
        checked = [check_name_text(name, "class name") for name in names]
        distinct = list(dict.fromkeys(checked))
        check_distinct(distinct, "class names")
    except InvalidLabelError as exc:
        raise InvalidRequestError(str(exc)) from None
    tokenizer = _tokenizer(parse_backbone_spec(backbone)[0])
    for name in distinct:
        if len(name) > settings.max_label_chars:
            raise InvalidRequestError(
                f"class name {name[:40]!r}... is {len(name)} characters long; "
                f"at most {settings.max_label_chars} allowed"
            )
        tokens = label_token_count(tokenizer, name)
        if tokens > settings.max_label_tokens:
            raise InvalidRequestError(
                f"class name {name[:40]!r} is {tokens} tokens long; at most "
                f"{settings.max_label_tokens} allowed (as for labels in /v1/classify)"
            )
    return checked


def check_class_counts(labels: Sequence[str], settings: Settings) -> None:
    """At least 2 and at most PROMPTSERVE_MAX_JOB_CLASSES classes, each with at least
    PROMPTSERVE_MIN_JOB_IMAGES_PER_CLASS images."""
    counts = Counter(labels)
    if len(counts) < 2:
        raise InvalidRequestError(
            f"a classifier needs at least 2 classes; got only {sorted(counts)}"
        )
    if len(counts) > settings.max_job_classes:
        raise InvalidRequestError(
            f"{len(counts)} classes; a job takes at most {settings.max_job_classes}"
        )
    short = sorted(
        name for name, count in counts.items() if count < settings.min_job_images_per_class
    )
    if short:
        shown = ", ".join(map(repr, short[:5])) + (
            f" and {len(short) - 5} more" if len(short) > 5 else ""
        )
        raise InvalidRequestError(
            f"every class needs at least {settings.min_job_images_per_class} images; "
            f"{shown} {'has' if len(short) == 1 else 'have'} fewer"
        )
