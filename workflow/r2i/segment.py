"""Text-prompted segmenters: the interface stages use, and the backends behind it.

Production uses SAM3 (``sam3`` package, GPU, imported only when selected). The toy world uses
:class:`r2i.sim.segmenter.SimSegmenter`, a test double answering from the scenes' ground truth.
"""

from __future__ import annotations

import threading
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
    """The configured segmenter, built in a background thread, off the first request's path.

    Building it takes time that the first model requests need not wait for: SAM3 moves its
    weights onto the GPU (seconds), the simulator reads the toy world (numpy and a 2 MB index,
    which would also hold the interpreter lock while the job prepares its first requests). The
    objects stage needs the segmenter only once the teacher's first object list is back, so the
    synthesis job calls :meth:`start` when its first request is about to go out
    (``ModelSet(on_first_request=...)``); ``start=True`` builds from the moment of creation.
    ``segment`` (and ``name``) start the build if nobody has and wait for it (a job whose calls
    are all cached starts it there). A build error (a missing checkpoint, no ``sam3`` package)
    is raised there, at the first use, which ends the job like any unexpected error. A wrong
    ``backend`` fails at once.
    """

    def __init__(self, cfg: Mapping[str, Any], *, start: bool = True) -> None:
        self._load = _loader(cfg)
        self._cfg = cfg
        self._lock = threading.Lock()
        self._future: Future[Segmenter] | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Begin building (once; later calls do nothing)."""
        with self._lock:
            if self._future is None:
                pool = ThreadPoolExecutor(1, thread_name_prefix="r2i-segmenter-load")
                self._future = pool.submit(self._load, self._cfg)
                pool.shutdown(wait=False)

    def _built(self) -> Segmenter:
        self.start()
        assert self._future is not None
        return self._future.result()

    @property
    def name(self) -> str:
        return self._built().name

    def segment(self, image: Image.Image, phrases: Sequence[str]) -> list[list[Instance]]:
        return self._built().segment(image, phrases)
