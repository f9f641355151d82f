"""Process logging, set up once by each process's entry point with `configure_logging`.

Every process of the service logs the same lines: ``promptserve serve`` and each API worker and
the engine process of ``serve --workers N``, ``promptserve worker`` (a job host), and each job
process. A line names its process (`multiprocessing`'s process name: ``MainProcess``,
``promptserve-engine``, ``promptserve-<job id>``, uvicorn's ``SpawnProcess-<n>``), so the
interleaved output of a host reads apart.
"""

from __future__ import annotations

import logging

OWN_PACKAGES = ("promptserve",)
FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Our packages at `level`; everything else (exporters, ONNX passes) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for package in OWN_PACKAGES:
        logging.getLogger(package).setLevel(level.upper())
