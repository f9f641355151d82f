"""Scoped API keys: the keys file (``PROMPTSERVE_API_KEYS_FILE``), its validation, and the
look-up of a bearer token.

The file holds, per key, a name, the SHA-256 of its secret (never the secret), its scopes and
optionally a classifier-name prefix. A token is looked up by hashing it and comparing the hash
with every entry's by `hmac.compare_digest`, with no early exit: the time does not depend on
which entry (if any) matches. Plain SHA-256 rather than a password hash: the secrets are
random 256-bit tokens (`new_secret`), so there is nothing to guess, and every request hashes.

`KeyRing` holds the keys in force: those of the file, reloaded when the file's (mtime, size,
inode) changes, looked at no more than every `check_s` seconds; an edit that does not parse
keeps the last good keys and logs an error. ``PROMPTSERVE_API_KEY``, when set, is one more key,
named ``default``, with every scope. This module imports no web framework.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

Scope = Literal["classify", "tune", "admin", "metrics"]
SCOPES: tuple[Scope, ...] = ("classify", "tune", "admin", "metrics")
CHECK_S = 1.0  # how often the keys file's stat is looked at, at most
DEFAULT_KEY_NAME = "default"  # the name of PROMPTSERVE_API_KEY's key
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe in a log line and a job record


class KeysFileError(Exception):
    """The keys file is missing, is not JSON, or does not validate."""


class Key(BaseModel):
    """One key of the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="who holds it; logged, never the secret")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the secret")
    scopes: tuple[Scope, ...] = Field(min_length=1, description="what it may do")
    prefix: str | None = Field(
        default=None, min_length=1, description="the classifier names it may use start with this"
    )

    def allows(self, scope: Scope) -> bool:
        """Whether the key holds `scope` (``admin`` holds every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def may_use(self, classifier: str) -> bool:
        """Whether the key may use the classifier `classifier` (a name, or ``name@ref``)."""
        return self.prefix is None or classifier.split("@", 1)[0].startswith(self.prefix)


class KeysFile(BaseModel):
    """The keys file: ``{"keys": [{"name", "sha256", "scopes", "prefix"?}, ...]}``."""

    model_config = ConfigDict(extra="forbid")

    keys: list[Key] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        for field in ("name", "sha256"):
            values = [getattr(key, field) for key in self.keys]
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ValueError(f"two keys with the same {field}: {', '.join(repeated)}")
        return self


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a key's secret, as the keys file stores it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A new random key secret (256 bits)."""
    return "ps_" + secrets.token_urlsafe(32)


def parse_keys(text: str, source: str = "keys file") -> KeysFile:
    """The keys of a file's text; KeysFileError, naming `source`, when it is not valid."""
    try:
        return KeysFile.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise KeysFileError(f"{source}: not JSON: {exc}") from None
    except ValidationError as exc:
        raise KeysFileError(f"{source}: {problems(exc)}") from None


def problems(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``keys.0.scopes.0: Input should be ...; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
        for error in exc.errors()
    )


def read_keys(path: Path) -> KeysFile:
    """The keys file at `path`; KeysFileError when it cannot be read or is not valid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeysFileError(f"{path}: {exc.strerror or exc}") from None
    return parse_keys(text, str(path))


def write_keys(path: Path, keys: KeysFile) -> None:
    """Write the keys file atomically (a temporary file renamed over it): a server reloading
    it never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(keys.model_dump_json(indent=2, exclude_none=True) + "\n", "utf-8")
    os.chmod(staging, 0o600)
    staging.replace(path)


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size, info.st_ino


class KeyRing:
    """The keys in force: the file's (reloaded when it changes) plus the single key.

    `enabled` is False when neither is configured: the API is then open.
    """

    def __init__(
        self, path: Path | None, single: str | None = None, *, check_s: float = CHECK_S
    ) -> None:
        self.path = path
        self.check_s = check_s
        self.enabled = path is not None or single is not None
        self._single = (
            [Key(name=DEFAULT_KEY_NAME, sha256=hash_secret(single), scopes=("admin",))]
            if single is not None
            else []
        )
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp: tuple[int, int, int] | None = None
        self._set(list(self._single))
        if path is not None:  # at start-up a broken file is an error, not a warning
            self._stamp = _stamp(path) if path.exists() else None
            self._set(self._merge(read_keys(path)))

    def _set(self, keys: list[Key]) -> None:
        self._keys = keys
        self._digests = [(key.sha256.encode(), key) for key in keys]  # compared per request

    def _merge(self, keys: KeysFile) -> list[Key]:
        names = {key.name for key in keys.keys}
        if self._single and DEFAULT_KEY_NAME in names:
            raise KeysFileError(
                f"{self.path}: the name {DEFAULT_KEY_NAME!r} belongs to PROMPTSERVE_API_KEY"
            )
        return [*keys.keys, *self._single]

    def current(self) -> list[Key]:
        """The keys in force now (the file looked at again when `check_s` has passed)."""
        self._look_again()
        return self._keys

    def lookup(self, token: str) -> Key | None:
        """The key whose secret is `token`, or None; compares with every key, in constant
        time per key."""
        digest = hash_secret(token).encode()
        self._look_again()
        found = None
        for expected, key in self._digests:  # every entry, whichever matches
            if hmac.compare_digest(digest, expected):
                found = key
        return found

    def _look_again(self) -> None:
        if self.path is not None and time.monotonic() - self._checked >= self.check_s:
            self._refresh(self.path)

    def _refresh(self, path: Path) -> None:
        with self._lock:
            self._checked = time.monotonic()
            try:
                stamp = _stamp(path)
            except OSError as exc:
                if self._stamp is not None:
                    log.error("keys file %s: %s; keeping the last good keys", path, exc.strerror)
                    self._stamp = None
                return
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._set(self._merge(read_keys(path)))
            except KeysFileError as exc:
                log.error("keys file not reloaded, keeping the last good keys: %s", exc)
                return
            log.info("keys file %s reloaded: %d keys", path, len(self._keys))


def key_ring(settings: Settings) -> KeyRing:
    """The keys of `settings`; KeysFileError when the keys file is missing or broken."""
    single = settings.api_key.get_secret_value() if settings.api_key is not None else None
    return KeyRing(settings.api_keys_file, single)
