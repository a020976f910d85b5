"""Logging set-up of a rule script: to the job's log file and to stderr.

Its own small module so that a job which only needs this (manifest, dataset, report, ...) does
not import the synthesis pipeline and its model client to get it.
"""

from __future__ import annotations

import logging
from pathlib import Path


def setup_logging(log_file: str | Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
