"""Base64 image text as encoders write it: wrapped lines, the URL-safe alphabet, no padding."""

from __future__ import annotations

import base64

import pytest

from promptserve.service.classify.decoding import decode_base64
from promptserve.service.errors import InvalidImageError
from tests.service.helpers import png_bytes

DATA = png_bytes(size=40)


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(DATA).decode(),
        base64.encodebytes(DATA).decode(),  # wrapped at 76 characters, trailing newline
        base64.encodebytes(DATA).decode().replace("\n", "\r\n"),
        base64.urlsafe_b64encode(DATA).decode(),
        base64.b64encode(DATA).decode().rstrip("="),
        base64.urlsafe_b64encode(DATA).decode().rstrip("="),
        "data:image/png;base64," + base64.encodebytes(DATA).decode(),
    ],
    ids=[
        "standard",
        "wrapped",
        "wrapped-crlf",
        "url-safe",
        "unpadded",
        "url-safe-unpadded",
        "data-url",
    ],
)
def test_common_encodings_decode_to_the_same_bytes(text: str) -> None:
    assert decode_base64(text, 0) == DATA


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("***not base64***", "'*' is not a base64 character"),
        ("iVBORw0KGgo\u00e9", "'\u00e9' is not a base64 character"),
        ("abcde", "length or padding"),
    ],
)
def test_other_text_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(InvalidImageError, match="image 3 is not valid base64") as caught:
        decode_base64(text, 3)
    assert why in str(caught.value)
