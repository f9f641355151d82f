"""docker-compose.cluster.yml as a compose project of its own: the images that stand in for the
ones no registry serves here (tests/deploy/substitutes), the merged compose file, and the
project's containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.deploy.docker import (
    ROOT,
    build_image,
    compose_command,
    docker,
    merged_compose,
    served,
    wheel_folder,
)

SUBSTITUTES = Path(__file__).resolve().parent / "substitutes"


def build_substitutes(base: str, suffix: str) -> dict[str, str]:
    """Postgres, nginx and an S3 server (moto) built on `base`; the variables of
    substitutes/docker-compose.local.yml that name them, tagged `suffix`."""
    moto = f"moto[server]=={metadata.version('moto')}"
    tags = {name: f"promptserve-local-{name}:{suffix}" for name in ("postgres", "nginx", "s3")}
    build_image(tags["postgres"], base, None, dockerfile=SUBSTITUTES / "postgres.Dockerfile")
    build_image(tags["nginx"], base, None, dockerfile=SUBSTITUTES / "nginx.Dockerfile")
    with served(wheel_folder("wheels-moto", (moto,))) as url:
        build_image(
            tags["s3"],
            base,
            url,
            dockerfile=SUBSTITUTES / "s3.Dockerfile",
            args={"MOTO_VERSION": metadata.version("moto")},
        )
    return {f"PROMPTSERVE_LOCAL_{name.upper()}": tag for name, tag in tags.items()}


def cluster_file(image: str, folder: Path) -> Path:
    """docker-compose.cluster.yml with the local override, merged as compose 2 merges them,
    on `image`, written as one file that compose 1.x reads too."""
    merged = merged_compose(
        ROOT / "docker-compose.cluster.yml", SUBSTITUTES / "docker-compose.local.yml"
    )
    for name in ("api", "worker"):
        service = merged["services"][name]
        del service["build"]  # the image is the one built for this session
        service["image"] = image
    for service in merged["services"].values():
        service["volumes"] = [_absolute(volume) for volume in service.get("volumes", [])]
    written = folder / "docker-compose.yml"
    written.write_text(json.dumps(merged))  # JSON is YAML
    return written


def _absolute(volume: str) -> str:
    """A bind mount's `./path` relative to the repository, where the cluster file lies (the
    merged file is elsewhere)."""
    return f"{ROOT}/{volume[2:]}" if volume.startswith("./") else volume


@dataclass(frozen=True)
class Project:
    """A compose project: its name, its file and the variables compose interpolates."""

    name: str
    file: Path
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 600) -> str:
        command = [*compose_command(), "-p", self.name, "-f", str(self.file), *args]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=os.environ | self.env
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.returncode}\n{done.stderr[-4000:]}")
        return done.stdout

    def containers(self, service: str) -> list[str]:
        """The ids of the service's containers (stopped ones too), in replica order."""
        ids = docker(
            "ps", "-aq", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).split()  # fmt: skip
        return sorted(ids, key=lambda c: int(label(c, "com.docker.compose.container-number")))

    def published(self, container: str, port: int = 8000) -> str:
        """The URL of the container's `port` on this host."""
        address = docker("port", container, str(port)).split()[0]
        return f"http://{address}"


def label(container: str, key: str) -> str:
    return docker("inspect", "-f", f'{{{{index .Config.Labels "{key}"}}}}', container).strip()


def hostname(container: str) -> str:
    """The container's host name, as its runner ids name it."""
    return docker("inspect", "-f", "{{.Config.Hostname}}", container).strip()


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.5) -> float:
    """Seconds until `predicate()` holds; AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start
