"""``SimSegmenter``: a text-prompted segmenter SIMULATED on the toy world (stands in for SAM3).

TEST DOUBLE / OFFLINE DEMO, not a model. Like the production segmenter it takes an image and
noun phrases and returns, per phrase, the instances it finds (boxes in the image's pixels, with a
score). It locates the image in the toy world from its pixels (:mod:`r2i.toy.vision`), then
matches each phrase to object names the way an open-vocabulary segmenter roughly behaves:

* normalised exact name match first;
* else the name with the best word overlap (Jaccard) if it reaches ``min_overlap``;
* every object carrying that name is returned, so a duplicated object yields two instances and
  stage 1's "exactly one instance" filter can drop it; the score is the object's ``seg_score``
  (some are < 0.75, for the score filter);
* an unknown phrase, or an image that is not a toy scene, yields no instance.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from r2i.segment import Instance
from r2i.toy.vision import SceneRegistry, load_registry
from r2i.toy.world import ToyObject

__all__ = ["Instance", "SimSegmenter"]


def _tokens(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [w for w in words if w not in ("a", "an", "the")]


class SimSegmenter:
    """Simulated text-prompted segmenter over a toy world (TEST DOUBLE)."""

    name = "sim-segmenter"

    def __init__(self, world_dir: str | Path, min_overlap: float = 0.6) -> None:
        self.world_dir = Path(world_dir)
        self.registry: SceneRegistry = load_registry(self.world_dir)
        self.min_overlap = min_overlap

    def segment(self, image: Image.Image, phrases: list[str]) -> list[list[Instance]]:
        """Instances per phrase (same order as ``phrases``)."""
        reg = self.registry.register(image)
        if reg is None:
            return [[] for _ in phrases]
        scene = self.registry.scene(reg.scene_id)
        rx0, ry0, rx1, ry1 = reg.region
        sx = image.width / (rx1 - rx0)
        sy = image.height / (ry1 - ry0)
        # only objects (at least partly) inside the shown region can be found
        visible = [o for o in scene.objects
                   if o.bbox[0] < rx1 and o.bbox[2] > rx0 and o.bbox[1] < ry1 and o.bbox[3] > ry0]
        out: list[list[Instance]] = []
        for phrase in phrases:
            hits = self._match(phrase, visible)
            insts = []
            for o in hits:
                x0, y0, x1, y1 = o.bbox
                box = (max(0.0, (x0 - rx0) * sx), max(0.0, (y0 - ry0) * sy),
                       min(float(image.width), (x1 - rx0) * sx),
                       min(float(image.height), (y1 - ry0) * sy))
                insts.append(Instance(box=tuple(round(v, 2) for v in box),  # type: ignore[arg-type]
                                      score=round(o.seg_score, 4)))
            out.append(insts)
        return out

    def _match(self, phrase: str, objects: list[ToyObject]) -> list[ToyObject]:
        toks = _tokens(phrase)
        if not toks:
            return []
        norm = " ".join(toks)
        exact = [o for o in objects if " ".join(_tokens(o.name)) == norm]
        if exact:
            return exact
        q = set(toks)
        best_name, best = None, 0.0
        for o in objects:
            t = set(_tokens(o.name))
            score = len(q & t) / len(q | t)
            if score > best or (score == best and best_name is not None and o.name < best_name):
                best_name, best = o.name, score
        if best_name is None or best < self.min_overlap:
            return []
        return [o for o in objects if o.name == best_name]
