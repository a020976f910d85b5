"""Text-prompted segmenters: the interface stages use, and the backends behind it.

Production uses SAM3 (``sam3`` package, GPU, imported only when selected). The toy world uses
:class:`r2i.sim.segmenter.SimSegmenter`, a test double answering from the scenes' ground truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def make_segmenter(cfg: Mapping[str, Any]) -> Segmenter:
    """Build the configured backend (``segmenter`` config section)."""
    backend = cfg.get("backend", "sim")
    if backend == "sim":
        from r2i.sim.segmenter import SimSegmenter

        seg = SimSegmenter(cfg["sim"]["world"])
        return seg
    if backend == "sam3":
        from r2i.sam3_backend import Sam3Segmenter

        return Sam3Segmenter(**cfg["sam3"])
    raise ValueError(f"config key 'segmenter.backend': unknown backend '{backend}'")
