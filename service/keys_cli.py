"""``promptserve keys``: add, list and remove the keys of a keys file, and hash a secret.

``add`` makes a new random secret, prints it once, and writes only its hash; the file is
replaced atomically, so a running server reloads it within a second or so and never reads half
of it. The file is ``--file`` or ``$PROMPTSERVE_API_KEYS_FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptserve.service.keys import (
    SCOPES,
    Key,
    KeysFile,
    KeysFileError,
    hash_secret,
    new_secret,
    problems,
    read_keys,
    write_keys,
)

FILE_ENV = "PROMPTSERVE_API_KEYS_FILE"


def add_keys_command(commands: Any) -> None:
    keys = commands.add_parser(
        "keys",
        help="manage the scoped API keys of a keys file",
        description=f"Add, list and remove API keys in the keys file (--file, or ${FILE_ENV}). "
        "The file holds each key's SHA-256, never its secret; a running server reloads it.",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a key; prints its secret once")
    add.add_argument("name", help="the key's name (in audit lines and job owners)")
    add.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    add.add_argument("--prefix", default=None, help="the classifier names it may use start so")
    remove = actions.add_parser("remove", help="remove a key (revoked at the next reload)")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="the keys: name, scopes, prefix")
    for parser in (add, remove, listing):
        parser.add_argument("--file", type=Path, default=None, help=f"default: ${FILE_ENV}")
    actions.add_parser("hash", help="the SHA-256 the keys file stores for a secret on stdin")


def run_keys(args: argparse.Namespace) -> int:
    try:
        if args.keys_command == "hash":
            secret = sys.stdin.read().strip()
            if not secret:
                raise KeysFileError("no secret on stdin")
            sys.stdout.write(hash_secret(secret) + "\n")
            return 0
        path = _keys_path(args.file)
        if args.keys_command == "add":
            return _add(path, args.name, args.scopes, args.prefix)
        keys = read_keys(path)
        if args.keys_command == "remove":
            kept = [key for key in keys.keys if key.name != args.name]
            if len(kept) == len(keys.keys):
                raise KeysFileError(f"{path}: no key named {args.name!r}")
            write_keys(path, KeysFile(keys=kept))
            sys.stdout.write(f"removed key {args.name!r} from {path}\n")
            return 0
        for key in keys.keys:
            sys.stdout.write(f"{key.name}\t{','.join(key.scopes)}\t{key.prefix or '-'}\n")
        return 0
    except KeysFileError as exc:
        sys.stderr.write(f"promptserve keys: {exc}\n")
        return 2


def _keys_path(given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get(FILE_ENV):
        return Path(os.environ[FILE_ENV])
    raise KeysFileError(f"name the keys file with --file or ${FILE_ENV}")


def _add(path: Path, name: str, scopes: str, prefix: str | None) -> int:
    keys = read_keys(path) if path.exists() else KeysFile()
    secret = new_secret()
    try:
        key = Key.model_validate(
            {
                "name": name,
                "sha256": hash_secret(secret),
                "scopes": [part.strip() for part in scopes.split(",") if part.strip()],
                "prefix": prefix,
            }
        )
        updated = KeysFile(keys=[*keys.keys, key])
    except ValidationError as exc:
        raise KeysFileError(problems(exc)) from None
    write_keys(path, updated)
    sys.stderr.write(f"added key {name!r} to {path}; its secret, shown only now:\n")
    sys.stdout.write(secret + "\n")
    return 0
