"""Settings you can see: the ``PROMPTSERVE_*`` variables that are no setting (a warning at
start-up, naming the nearest setting), and ``promptserve config`` (every setting in force, where
it came from, secrets masked).

pydantic-settings ignores a variable it does not know (``extra="ignore"``: the project's other
``PROMPTSERVE_*`` variables below must not stop a start), so a typo would be silently dropped;
this module names it instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptserve.service.settings import Settings

log = logging.getLogger(__name__)

PREFIX = str(Settings.model_config.get("env_prefix", "PROMPTSERVE_"))
# Variables of the project that are not Settings fields: none of them is a typo. The one list.
OTHER_VARIABLES = {
    "PROMPTSERVE_URL": "the service URL of `promptserve client` and promptserve.client.Client",
    "PROMPTSERVE_WORKER_SETTINGS": "internal: the settings `serve --workers N` hands an API worker",
    "PROMPTSERVE_API_REPLICAS": "docker-compose.cluster.yml: how many API containers",
    "PROMPTSERVE_WORKER_REPLICAS": "docker-compose.cluster.yml: how many job worker containers",
    "PROMPTSERVE_API_GPU": "docker-compose.cluster.yml: the GPU of the API containers",
    "PROMPTSERVE_WORKER_GPU": "docker-compose.cluster.yml: the GPU of the worker containers",
    "PROMPTSERVE_IMAGE_CACHE": "tests/deploy: where the built image is kept between runs",
    "PROMPTSERVE_DOCKER": "tests/deploy: the docker command",
}
OTHER_PREFIXES = {"PROMPTSERVE_LOCAL_": "tests/deploy: the local stand-in images of compose"}
MASK = "**********"


def setting_variables() -> dict[str, str]:
    """Each setting's variable (``PROMPTSERVE_MAX_BATCH_SIZE``) and its field name."""
    return {f"{PREFIX}{name}".upper(): name for name in Settings.model_fields}


def dotenv_variables() -> dict[str, str | None]:
    """The variables of the ``.env`` file Settings reads (none when there is no such file)."""
    from dotenv import dotenv_values  # pydantic-settings' own reader of it

    path = Path(str(Settings.model_config.get("env_file") or ".env"))
    return {k.upper(): v for k, v in dotenv_values(path).items()} if path.is_file() else {}


def unknown_variables(names: list[str], where: str = "") -> list[str]:
    """A message for each of `names` that starts with the prefix and is no variable of ours."""
    known = [*setting_variables(), *OTHER_VARIABLES]
    messages = []
    for name in sorted({name.upper() for name in names if name.upper().startswith(PREFIX)}):
        if name in known or name.startswith(tuple(OTHER_PREFIXES)):
            continue
        # compared without the prefix, which every name shares and which would match anything
        nearest = difflib.get_close_matches(name[len(PREFIX) :], [k[len(PREFIX) :] for k in known])
        hint = (
            f"did you mean {PREFIX}{nearest[0]}?" if nearest else "see docs/reference/settings.md"
        )
        messages.append(f"{name}{where} is not a setting; {hint}")
    return messages


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """The unknown ``PROMPTSERVE_*`` variables of `environ` and of the ``.env`` file."""
    in_dotenv = unknown_variables(list(dotenv_variables()), " (in .env)")
    return unknown_variables(list(environ)) + in_dotenv


def warn_unknown_settings() -> list[str]:
    """Log a warning for each unknown setting of this process (`unknown_settings`); returns
    them. Called once by each command that starts the service, not by the processes it starts."""
    messages = unknown_settings(os.environ)
    for message in messages:
        log.warning(message)
    return messages


@dataclass(frozen=True)
class SettingInForce:
    name: str  # the field
    variable: str
    value: Any  # as JSON; a secret masked
    source: str  # env, .env, default, or derived (from another setting)


def settings_in_force(settings: Settings, environ: Mapping[str, str]) -> list[SettingInForce]:
    values = settings.model_dump(mode="json")  # SecretStr dumps as the mask
    from_env = {name.upper() for name in environ}
    from_dotenv = set(dotenv_variables())
    rows = []
    for variable, name in setting_variables().items():
        field = Settings.model_fields[name]
        default = field.get_default(call_default_factory=True)
        if variable in from_env:
            source = "env"
        elif variable in from_dotenv:
            source = ".env"
        elif getattr(settings, name) == default:
            source = "default"
        else:
            source = "derived"
        rows.append(SettingInForce(name, variable, values[name], source))
    return rows


def add_config_command(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print the settings in force and where each came from",
        description="Every setting of `promptserve serve` and `promptserve worker` as this "
        "environment (and ./.env) gives it, with its source: env, .env, default, or derived "
        "from another setting. Secrets are masked.",
    )
    config.add_argument("--json", action="store_true", help="one JSON object, keyed by setting")


def run_config(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.stderr.write(f"promptserve config: invalid settings:\n{exc}\n")
        return 2
    rows = settings_in_force(settings, os.environ)
    unknown = unknown_settings(os.environ)
    if args.json:
        body = {row.name: {k: v for k, v in asdict(row).items() if k != "name"} for row in rows}
        sys.stdout.write(json.dumps({"settings": body, "unknown": unknown}, indent=2) + "\n")
        return 0
    shown = [("VARIABLE", "VALUE", "SOURCE")]
    shown += [(row.variable, _text(row.value), row.source) for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(2)]
    lines = [
        f"{variable:<{widths[0]}}  {value:<{widths[1]}}  {source}"
        for variable, value, source in shown
    ]
    lines += [f"warning: {message}" for message in unknown]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
