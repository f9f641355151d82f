"""A classifier's published versions, listed again only when its directory changed.

`Catalog.versions` runs on every request. Listing the directory costs a readdir and a stat per
entry: a classifier with 50 versions cost 50 stats per request. The listing is kept against
the directory's (inode, mtime_ns), which change whenever a version is renamed in or removed, so
each request pays one stat. A directory's mtime moves in steps of the kernel's clock tick, and
two changes within one tick leave the same mtime behind: a listing is therefore kept only once
its directory's mtime is `SETTLED_S` old (Git treats "racily clean" index entries the same
way), and a directory changed in the last `SETTLED_S` is listed on every call.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from promptserve.models.artifact import check_name, list_versions

SETTLED_S = 2.0  # a directory unchanged this long has a listing worth keeping
MAX_KEPT = 4096  # classifiers whose listing is kept (least recently used out)

Stamp = tuple[int, int]  # the directory's (inode, mtime_ns)


class VersionListing:
    """`list_versions` of the store at `root`, kept per classifier (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._kept: OrderedDict[str, tuple[Stamp, list[str]]] = OrderedDict()
        self._lock = threading.Lock()  # guards `_kept`

    def versions(self, name: str) -> list[str]:
        """Published versions of `name`, oldest first ([] when it has none)."""
        try:
            info = os.stat(self.root / check_name(name))
        except OSError:
            return []
        stamp = (info.st_ino, info.st_mtime_ns)
        with self._lock:
            hit = self._kept.get(name)
            if hit is not None and hit[0] == stamp:
                self._kept.move_to_end(name)
                return list(hit[1])
        versions = list_versions(self.root, name)
        if time.time_ns() - info.st_mtime_ns >= SETTLED_S * 1e9:
            with self._lock:
                self._kept[name] = (stamp, versions)
                self._kept.move_to_end(name)
                while len(self._kept) > MAX_KEPT:
                    self._kept.popitem(last=False)
        return list(versions)
