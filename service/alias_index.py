"""The catalog's aliases: cached reads of each classifier's aliases file, what an alias
resolves to, and alias changes (through to the object store when there is one).

The file format and classifier references are `service.aliases`; this is the view the catalog
(`service.catalog`) serves from. A file is read again when its stat changes (one stat per
lookup). ``latest`` is implicit: the newest version that is not a candidate, unless it was set
explicitly (pinned). A change is made under the catalog's write lock (one change to the store at
a time in this process) and, with an object store, under the mirror's lock, after pulling that
classifier's aliases from it (another replica may have changed them), so a change here does not
undo theirs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING, Any

from promptserve.models.artifact import check_name
from promptserve.models.errors import UnknownVersionError
from promptserve.service import aliases as alias_store
from promptserve.service.aliases import LATEST, check_alias
from promptserve.service.errors import UnknownAliasError

if TYPE_CHECKING:
    from promptserve.service.catalog import Catalog

log = logging.getLogger(__name__)

FileStamp = tuple[int, int, int]  # (inode, mtime_ns, size) of an aliases file


class AliasIndex:
    """The aliases of `catalog`'s classifiers."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._read: dict[str, tuple[FileStamp, dict[str, str]]] = {}
        self._lock = threading.Lock()  # guards `_read`

    def explicit(self, name: str) -> dict[str, str]:
        """The aliases set for `name` (the file's content; `latest` only when pinned)."""
        root = self.catalog.root
        path = alias_store.aliases_path(root, check_name(name))
        try:
            info = path.stat()
        except OSError:
            return {}
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            hit = self._read.get(name)
        if hit is not None and hit[0] == stamp:
            return dict(hit[1])
        aliases = alias_store.read_aliases(root, name)
        with self._lock:
            self._read[name] = (stamp, aliases)
        return dict(aliases)

    def of(self, name: str, versions: list[str] | None = None) -> dict[str, str]:
        """Every alias of `name` with its version, `latest` included; an alias whose version
        is gone is left out."""
        versions = versions if versions is not None else self.catalog.versions(name)
        explicit = self.explicit(name)
        found = {alias: v for alias, v in explicit.items() if v in versions}
        found[LATEST] = self.latest(name, versions, explicit)
        return dict(sorted(found.items()))

    def is_candidate(self, name: str, version: str, explicit: dict[str, str] | None = None) -> bool:
        """A version published as a candidate that no alias has been set to since."""
        explicit = explicit if explicit is not None else self.explicit(name)
        if version in explicit.values():
            return False
        return self.catalog.version_info(name, version).published_as_candidate

    def latest(self, name: str, versions: list[str], explicit: dict[str, str]) -> str:
        """The version ``latest`` of `name` is: pinned, or the newest that is not a candidate."""
        pinned = explicit.get(LATEST)
        if pinned is not None and pinned in versions:
            return pinned
        for version in reversed(versions):
            with contextlib.suppress(UnknownVersionError):
                if not self.is_candidate(name, version, explicit):
                    return version
        return versions[-1]  # only candidates: the newest of them

    def resolve(self, name: str, alias: str, versions: list[str]) -> str:
        """The version `alias` of `name` points at, one of `versions`; UnknownVersionError
        when it is not set (or its version is gone)."""
        explicit = self.explicit(name)
        if alias == LATEST:
            return self.latest(name, versions, explicit)
        version = explicit.get(alias)
        if version is None or version not in versions:
            known = ", ".join(sorted(set(explicit) | {LATEST}))
            raise UnknownVersionError(
                f"classifier {name!r} has no version or alias {alias!r}; aliases: {known}"
            )
        return version

    def set(self, name: str, alias: str, version: str) -> str:
        """Point `alias` of `name` at `version` (a version or an alias, resolved now);
        returns the version. Blocking: call off the loop."""
        check_alias(alias)
        with self.catalog.write_lock, self._mirror_lock():
            self._pull(name)
            resolved = self.catalog.resolve(name, version)
            explicit = self.explicit(name)
            explicit[alias] = resolved
            self._write(name, explicit)
        log.info("alias %s of %s now points at version %s", alias, name, resolved)
        return resolved

    def delete(self, name: str, alias: str) -> None:
        """Remove an alias set explicitly (a deleted `latest` follows the newest again);
        UnknownAliasError when `name` has no such alias set."""
        check_alias(alias)
        self.catalog.versions(name)  # UnknownClassifierError first
        with self.catalog.write_lock, self._mirror_lock():
            self._pull(name)
            explicit = self.explicit(name)
            if alias not in explicit:
                raise UnknownAliasError(f"classifier {name!r} has no alias {alias!r} set")
            del explicit[alias]
            self._write(name, explicit)
        log.info("deleted alias %s of %s", alias, name)

    def _write(self, name: str, aliases: dict[str, str]) -> None:
        """Replace the aliases of `name` (here, then in the object store); the caller holds
        the catalog's write lock."""
        alias_store.write_aliases(self.catalog.root, name, aliases)
        if self.catalog.mirror is not None:
            self.catalog.mirror.push_aliases(name)

    def _mirror_lock(self) -> contextlib.AbstractContextManager[Any]:
        mirror = self.catalog.mirror
        return mirror.lock if mirror is not None else contextlib.nullcontext()

    def _pull(self, name: str) -> None:
        if self.catalog.mirror is not None:
            self.catalog.mirror.pull_aliases(name)
