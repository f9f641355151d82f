"""Class names as a text tower reads them: one canonical form, and characters no name may hold.

open_clip's tokenizer lowercases, repairs and folds text and collapses its whitespace, so
``red star``, ``Red Star``, fullwidth ``ｒｅｄ ｓｔａｒ`` and ``red\\u00a0star`` are one prompt
to it. Two labels with the same `name_key` are therefore one class: accepting both would
split one class's score between them. Characters that print nothing or reorder text
(controls, zero-width and bidi formatting, unassigned code points) have no place in a class
name: a zero-width space makes the tokenizer read another word while the name looks the
same, and U+202E shows a name backwards in every client that displays it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from promptserve.models.errors import InvalidLabelError

REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})  # controls, format, unassigned


def name_key(name: str) -> str:
    """The form two names must share to read as the same prompt: NFKC, case-folded, its
    whitespace collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def check_name_text(name: str, what: str) -> str:
    """`name` stripped; InvalidLabelError (naming `what`) when empty or holding a character of
    REFUSED_CATEGORIES (tabs and newlines included: a name is one line)."""
    stripped = name.strip()
    if not name_key(stripped):
        raise InvalidLabelError(f"{what} is empty")
    for char in stripped:
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES:
            raise InvalidLabelError(
                f"{what} {stripped[:40]!r} holds the character U+{ord(char):04X} "
                f"({unicodedata.name(char, 'unnamed')}, category {category}); class names "
                "hold printable characters only"
            )
    return stripped


def check_distinct(names: Sequence[str], what: str) -> None:
    """InvalidLabelError when two names differ only in case, width or whitespace."""
    seen: dict[str, str] = {}
    for name in names:
        earlier = seen.setdefault(name_key(name), name)
        if earlier != name:
            raise InvalidLabelError(
                f"{what} {earlier!r} and {name!r} read as the same prompt (they differ only "
                "in case, width or whitespace): use one spelling"
            )
