"""Text-prompted segmenters: the interface stages use, and the backends behind it.

Production uses SAM3 (``sam3`` package, GPU, imported only when selected). The toy world uses
:class:`r2i.sim.segmenter.SimSegmenter`, a test double answering from the scenes' ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image


@dataclass(frozen=True)
class Instance:
    """One segmented instance: box ``(x0, y0, x1, y1)`` in the image's pixels and its score."""

    box: tuple[float, float, float, float]
    score: float


class Segmenter(Protocol):
    name: str

    def segment(self, image: Image.Image, phrases: Sequence[str]) -> list[list[Instance]]:
        """One list of instances per phrase (empty when the phrase is not found)."""
        ...


def _sim(cfg: Mapping[str, Any]) -> Segmenter:
    from r2i.sim.segmenter import SimSegmenter

    return SimSegmenter(cfg["sim"]["world"])


def _sam3(cfg: Mapping[str, Any]) -> Segmenter:
    from r2i.sam3_backend import Sam3Segmenter

    return Sam3Segmenter(**cfg["sam3"])


_BACKENDS: dict[str, Callable[[Mapping[str, Any]], Segmenter]] = {"sim": _sim, "sam3": _sam3}


def _loader(cfg: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], Segmenter]:
    backend = cfg.get("backend", "sim")
    if backend not in _BACKENDS:
        raise ValueError(f"config key 'segmenter.backend': unknown backend '{backend}'")
    return _BACKENDS[backend]


def make_segmenter(cfg: Mapping[str, Any]) -> Segmenter:
    """Build the configured backend (``segmenter`` config section)."""
    return _loader(cfg)(cfg)


class BackgroundSegmenter:
    """The configured segmenter, built in a background thread from the moment this is created.

    Building it takes time that the first model requests need not wait for: SAM3 moves its
    weights onto the GPU (seconds), the simulator reads the toy world. The objects stage needs
    the segmenter only once the teacher's first object list is back, so a synthesis job starts
    the build and sends its first requests meanwhile. ``segment`` (and ``name``) wait for the
    build; a build error (a missing checkpoint, no ``sam3`` package) is raised there, at the first
    use, which ends the job like any unexpected error. A wrong ``backend`` fails at once.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        load = _loader(cfg)
        pool = ThreadPoolExecutor(1, thread_name_prefix="r2i-segmenter-load")
        self._future: Future[Segmenter] = pool.submit(load, cfg)
        pool.shutdown(wait=False)

    @property
    def name(self) -> str:
        return self._future.result().name

    def segment(self, image: Image.Image, phrases: Sequence[str]) -> list[list[Instance]]:
        return self._future.result().segment(image, phrases)
