"""Audit a synthesized dataset against the toy world's ground truth (embedded default only).

For every item, find the object the red box was drawn around, read which attribute the question
asks about, and check that the option named by the ground-truth letter equals the scene's true
answer. This measures how often teacher errors survive the method's filters; it only works on the
toy world (test double), where the truth is known.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r2i.io import read_parquet
from r2i.sim.toybrain import canonical_answer
from r2i.toy.world import World, parse_question


@dataclass
class AuditResult:
    items: int
    correct: int
    unresolved: int
    by_dimension: dict[str, list[int]]
    mistakes: list[dict[str, Any]]

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items, "correct": self.correct, "unresolved": self.unresolved,
            "accuracy": round(self.accuracy, 4), "by_dimension": self.by_dimension,
            "mistakes": self.mistakes[:20],
        }  # fmt: skip


def _scene_for(world: World, source_path: str) -> Any:
    name = Path(source_path).stem
    return world.scenes.get(name)


def audit_dataset(parquet_paths: list[str | Path], world_dir: str | Path) -> AuditResult:
    world = World.load(world_dir)
    items = correct = unresolved = 0
    by_dim: dict[str, list[int]] = {}
    mistakes: list[dict[str, Any]] = []
    for path in parquet_paths:
        table = read_parquet(path, columns=["reward_model", "extra_info"])
        for rm, info in zip(table.column("reward_model").to_pylist(), table.column("extra_info").to_pylist(), strict=True):
            items += 1
            scene = _scene_for(world, info["source_path"])
            parsed = parse_question(info["question"])
            box = info["box"]
            objs = scene.objects_in(box, min_inside=0.7) if scene else []
            objs = [o for o in objs if parsed and parsed[0] in o.attributes]
            if scene is None or parsed is None or not objs:
                unresolved += 1
                mistakes.append({"item_id": info["item_id"], "why": "unresolved", "question": info["question"]})
                continue
            attr = parsed[0]
            # The boxed object: the largest object inside the crop box that has the attribute.
            obj = max(objs, key=lambda o: o.area)
            truth = canonical_answer(obj.answer(attr))
            letter = rm["ground_truth"]
            chosen = info["options"][ord(letter) - ord("A")]
            ok = canonical_answer(chosen) == truth
            correct += ok
            counts = by_dim.setdefault(info["dimension"], [0, 0])
            counts[0] += ok
            counts[1] += 1
            if not ok:
                mistakes.append({"item_id": info["item_id"], "question": info["question"], "truth": obj.answer(attr), "labelled": chosen})
    return AuditResult(items, correct, unresolved, by_dim, mistakes)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Audit a toy-world dataset against the ground truth.")
    ap.add_argument("--world", required=True)
    ap.add_argument("parquet", nargs="+")
    args = ap.parse_args()
    res = audit_dataset(args.parquet, args.world)
    print(json.dumps(res.to_dict(), indent=1))
    print(Counter(m.get("why", "wrong") for m in res.mistakes))


if __name__ == "__main__":
    main()
