"""The TOY WORLD: procedural high-resolution scenes with many small annotated objects.

TEST DOUBLE / OFFLINE DEMO. No GPU or model weights exist where the embedded default runs, so the
pipeline is exercised on generated scenes whose ground truth is known. The simulated models in
:mod:`r2i.sim` answer from this ground truth; production code never imports this module.

Why the world looks like this:

* Scenes are large (short side >= 2000 px) and objects are small, so the decisive detail of most
  questions (glyph height, dot diameter, stripe period, icon size) is a few to a few dozen pixels:
  resolvable on a 2x micro-crop, often not on the whole image downscaled to a student's pixel
  budget. That gap is what R2I exists to close, so the toy world must reproduce it.
* Every object carries ``evidence_px`` per attribute: the size in scene pixels of the detail a
  viewer must resolve to answer a question about that attribute. The simulated student uses it.
* Objects cover the six ZoomBench dimensions: counting (dot panels), OCR (signs with codes or
  words), color (every object), structure/shape (badges, sign/tile/panel outlines), material-like
  texture (patterned tiles) and object identity (drawn icons).
* Filters of stage 1-2 need something to drop: each scene holds duplicate objects (same name twice,
  so the segmenter finds two instances), objects with a low segmenter score (< 0.75) and one or two
  large objects (>= 10 % of the image area).
* Pure red is reserved for the pipeline's red box overlay, so no pixel of a scene is reddish
  (R > 110 and G, B < 0.4 R); the vision registration relies on that.
* Rendering uses only integer PIL primitives and a built-in bitmap font (no FreeType), so the
  same seed yields byte-identical PNG and JSON files.

Files written by :func:`generate_world` (paths relative to ``out_dir``)::

    pools/toy/<scene_id>.png           training-pool images (no ground truth next to them)
    truth/<scene_id>.json              ground truth for every scene (pool and benchmark)
    benchmark/images/<scene_id>.png    held-out benchmark scenes (never in the pool)
    benchmark/zoombench_toy.parquet    ZoomBench-shaped benchmark (HF Image structs)
    index.json                         what was generated, with relative paths
    vision_index.npz                   cache of the registration index (r2i.toy.vision)
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ALL_SHAPES",
    "ATTRIBUTES",
    "COLORS",
    "IDENTITIES",
    "MATERIALS",
    "QUESTION_TEMPLATES",
    "QUESTION_TYPES",
    "SIZES",
    "TEXT_WORDS",
    "Scene",
    "ToyObject",
    "World",
    "WorldIndex",
    "attribute_from_question",
    "generate_world",
    "is_reddish",
    "match_reference",
    "parse_question",
    "parse_reference",
    "plausible_values",
    "size_params",
]

WORLD_VERSION = 1

# ---------------------------------------------------------------------------------------------
# Vocabulary. Every word belongs to one attribute vocabulary only, so a referring expression can
# be parsed back into attribute constraints without ambiguity.
# ---------------------------------------------------------------------------------------------

#: Object colors. No reddish color: red is the pipeline's overlay color.
COLORS: dict[str, tuple[int, int, int]] = {
    "orange": (245, 140, 20),
    "yellow": (240, 205, 30),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (130, 60, 180),
    "pink": (240, 130, 185),
    "brown": (125, 80, 40),
    "teal": (20, 150, 150),
    "navy": (25, 35, 110),
    "white": (246, 246, 246),
    "black": (22, 22, 22),
    "gray": (128, 128, 128),
}
CHROMATIC = tuple(c for c in COLORS if c not in ("white", "black", "gray"))

SIGN_SHAPES = ("rectangle", "hexagon", "arrow", "oval")
PANEL_SHAPES = ("square", "circle", "hexagon")
TILE_SHAPES = ("square", "circle", "triangle", "hexagon", "diamond")
BADGE_SHAPES = ("triangle", "square", "pentagon", "hexagon", "star", "diamond", "cross", "circle")
PLAQUE_SHAPES = ("circle", "square", "hexagon")
ALL_SHAPES = tuple(dict.fromkeys(SIGN_SHAPES + PANEL_SHAPES + TILE_SHAPES + BADGE_SHAPES))

MATERIALS = ("striped", "checkered", "dotted", "wavy", "brick", "plain")
IDENTITIES = (
    "key", "cup", "umbrella", "fish", "leaf", "bell",
    "heart", "house", "tree", "moon", "mushroom", "boat",
)
#: Short words printed on some signs (the others carry random codes).
TEXT_WORDS = (
    "EXIT", "OPEN", "SALE", "CAFE", "PARK", "GATE", "DOCK", "BANK", "HALL", "LAKE",
    "MILK", "SOAP", "TAXI", "ZONE", "WEST", "EAST", "NORTH", "SOUTH", "BREAD", "PLAZA",
)
#: Code alphabet without look-alikes (O/0, I/1) so every code has one reading.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

#: The attributes an object may carry, in a fixed order.
ATTRIBUTES = ("color", "shape", "material", "text", "count", "identity")
#: ZoomBench question_type of each attribute.
QUESTION_TYPES = {
    "count": "counting",
    "text": "ocr",
    "color": "color",
    "shape": "structure",
    "material": "material",
    "identity": "object_identification",
}
KIND_NOUNS = {"sign": "sign", "panel": "dot panel", "tile": "tile", "icon": "icon", "badge": "badge"}

#: Question templates per attribute; ``{ref}`` is a referring expression that omits the asked
#: attribute (so the question does not contain its own answer). The simulated teachers write
#: questions from these and parse them back; the toy benchmark uses them too.
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {ref}?", "What is the main color of the {ref}?"),
    "count": ("How many dots are in the {ref}?", "How many dots are printed on the {ref}?"),
    "text": ("What text is written on the {ref}?", "What does the {ref} say?"),
    "shape": ("What shape is the {ref}?", "What is the outline shape of the {ref}?"),
    "material": ("What surface pattern does the {ref} have?", "What texture covers the {ref}?"),
    "identity": ("What kind of object is the {ref}?", "What object is depicted on the {ref}?"),
}

#: World sizes: scene counts for ``--size`` (tiny is for unit tests).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_scenes": 2, "n_benchmark_scenes": 1, "short_side": 2000},
    "small": {"n_scenes": 8, "n_benchmark_scenes": 4, "short_side": 2048},
    "medium": {"n_scenes": 32, "n_benchmark_scenes": 8, "short_side": 2048},
    "large": {"n_scenes": 128, "n_benchmark_scenes": 16, "short_side": 2048},
}


def size_params(size: str) -> dict[str, int]:
    """Keyword arguments of :func:`generate_world` for a named size (tiny/small/medium/large)."""
    try:
        return dict(SIZES[size])
    except KeyError:
        raise ValueError(f"unknown world size {size!r}; use one of {sorted(SIZES)}") from None


def is_reddish(rgb: Sequence[int]) -> bool:
    """True for colors the vision registration would take for the pipeline's red box.

    Same rule as :func:`r2i.toy.vision.red_mask`; no color of the toy palette or background (nor
    any blend of them, since G/R of a blend stays >= the smallest G/R of its parts) satisfies it.
    """
    lim = (int(rgb[0]) * 2) // 5
    return rgb[0] > 110 and rgb[1] < lim and rgb[2] < lim


# ---------------------------------------------------------------------------------------------
# Ground-truth records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ToyObject:
    """One annotated object of a scene (ground truth)."""

    id: str
    kind: str
    name: str
    bbox: tuple[int, int, int, int]
    attributes: dict[str, Any]
    evidence_px: dict[str, float]
    duplicate: bool = False
    seg_score: float = 0.9
    large: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyObject:
        return cls(
            id=str(d["id"]),
            kind=str(d["kind"]),
            name=str(d["name"]),
            bbox=tuple(int(v) for v in d["bbox"]),  # type: ignore[arg-type]
            attributes=dict(d["attributes"]),
            evidence_px={k: float(v) for k, v in d["evidence_px"].items()},
            duplicate=bool(d.get("duplicate", False)),
            seg_score=float(d.get("seg_score", 0.9)),
            large=bool(d.get("large", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "bbox": list(self.bbox),
            "attributes": dict(self.attributes),
            "evidence_px": {k: round(v, 2) for k, v in self.evidence_px.items()},
            "duplicate": self.duplicate,
            "seg_score": round(self.seg_score, 3),
            "large": self.large,
        }

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.bbox
        return (x1 - x0) * (y1 - y0)

    def answer(self, attribute: str) -> str:
        """The true answer text for ``attribute`` (numbers as digits)."""
        return str(self.attributes[attribute])

    def describe(self, omit: str | None = None) -> str:
        """Referring expression; ``omit`` drops one attribute (the one a question asks about)."""
        return describe(self.kind, self.attributes, omit)

    def reference(self, attribute: str) -> str:
        """How a question about ``attribute`` names this object: without the asked attribute
        (no answer leaks into the question), plus the dot count for panels when it is not asked
        (panels otherwise differ only by color and shape)."""
        ref = self.describe(omit=attribute)
        if self.kind == "panel" and attribute != "count":
            ref += f" with {self.attributes['count']} dots"
        return ref


def describe(kind: str, attrs: dict[str, Any], omit: str | None = None) -> str:
    """Noun phrase for an object of ``kind``; the full phrase (omit=None) is its unique name."""

    def part(attr: str, text: str) -> str:
        return "" if attr == omit or attr not in attrs else text

    color = part("color", str(attrs.get("color", "")))
    shape = part("shape", str(attrs.get("shape", "")))
    if kind == "sign":
        words = [color, shape, "sign", part("text", f"reading {attrs.get('text', '')}")]
    elif kind == "panel":
        words = [color, shape, "dot panel"]
    elif kind == "tile":
        words = [color, part("material", str(attrs.get("material", ""))), shape, "tile"]
    elif kind == "icon":
        ident = part("identity", str(attrs.get("identity", "")))
        words = [color, ident, "icon", f"on a {shape} plaque" if shape else ""]
    elif kind == "badge":
        words = [color, shape, "badge"]
    else:
        raise ValueError(f"unknown object kind {kind!r}")
    return " ".join(w for w in words if w)


@dataclass(frozen=True, eq=False)
class Scene:
    """Ground truth of one scene: size, split, image path and its objects."""

    scene_id: str
    split: str
    width: int
    height: int
    image: str  # relative to the world dir
    objects: tuple[ToyObject, ...]
    questions: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(
            scene_id=str(d["scene_id"]),
            split=str(d["split"]),
            width=int(d["width"]),
            height=int(d["height"]),
            image=str(d["image"]),
            objects=tuple(ToyObject.from_dict(o) for o in d["objects"]),
            questions=tuple(d.get("questions", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "scene_id": self.scene_id,
            "split": self.split,
            "width": self.width,
            "height": self.height,
            "image": self.image,
            "objects": [o.to_dict() for o in self.objects],
            "questions": list(self.questions),
        }

    def objects_named(self, name: str) -> list[ToyObject]:
        return [o for o in self.objects if o.name == name]

    def objects_in(self, region: Sequence[float], min_inside: float = 0.7) -> list[ToyObject]:
        """Objects whose box lies at least ``min_inside`` (area fraction) inside ``region``."""
        out = []
        for o in self.objects:
            inter = _intersection(o.bbox, region)
            if o.area > 0 and inter / o.area >= min_inside:
                out.append(o)
        return out


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(0.0, w) * max(0.0, h))


class WorldIndex(TypedDict):
    """Content of ``index.json``."""

    version: int
    generator: str
    seed: int
    short_side: int
    objects_per_scene: list[int]
    scenes: list[dict[str, Any]]
    benchmark: dict[str, Any]


@dataclass
class World:
    """A generated world loaded from disk (index + ground truth of every scene)."""

    root: Path
    index: dict[str, Any]
    scenes: dict[str, Scene] = field(default_factory=dict)

    @classmethod
    def load(cls, world_dir: str | Path) -> World:
        root = Path(world_dir)
        index = json.loads((root / "index.json").read_text())
        scenes: dict[str, Scene] = {}
        for entry in index["scenes"]:
            truth = json.loads((root / entry["truth"]).read_text())
            scenes[entry["scene_id"]] = Scene.from_dict(truth)
        return cls(root=root, index=index, scenes=scenes)

    def image_path(self, scene_id: str) -> Path:
        return self.root / self.scenes[scene_id].image


# ---------------------------------------------------------------------------------------------
# Referring expressions and questions: parsing back what the templates produce
# ---------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z0-9]+")
_READING_RE = re.compile(r"\breading\s+[\"'“]?([A-Za-z0-9]+)[\"'”]?", re.IGNORECASE)
_WITH_DOTS_RE = re.compile(r"\bwith\s+(\d+)\s+dots?\b", re.IGNORECASE)


def parse_reference(phrase: str) -> dict[str, Any]:
    """Attribute constraints named in a referring expression (``kind`` included when named).

    ``"orange hexagon sign reading K7Q"`` -> ``{color: orange, shape: hexagon, kind: sign,
    text: K7Q}``. Words outside the vocabularies are ignored; conflicting words of one attribute
    (two colors) are kept as a list, which no object matches.
    """
    cons: dict[str, Any] = {}
    m = _READING_RE.search(phrase)
    if m:
        cons["text"] = m.group(1).upper()
        phrase = phrase[: m.start()] + " " + phrase[m.end() :]
    m = _WITH_DOTS_RE.search(phrase)
    if m:
        cons["count"] = int(m.group(1))
        phrase = phrase[: m.start()] + " " + phrase[m.end() :]
    words = _WORD_RE.findall(phrase.lower())

    def add(key: str, value: Any) -> None:
        if key in cons and cons[key] != value:
            prev = cons[key] if isinstance(cons[key], list) else [cons[key]]
            cons[key] = [*prev, value]
        else:
            cons[key] = value

    for w in words:
        if w in COLORS or w == "grey":
            add("color", "gray" if w == "grey" else w)
        elif w in ALL_SHAPES:
            add("shape", w)
        elif w in MATERIALS:
            add("material", w)
        elif w in IDENTITIES:
            add("identity", w)
    if "icon" in words or "plaque" in words:
        cons["kind"] = "icon"
    elif "panel" in words:
        cons["kind"] = "panel"
    elif "sign" in words:
        cons["kind"] = "sign"
    elif "tile" in words:
        cons["kind"] = "tile"
    elif "badge" in words:
        cons["kind"] = "badge"
    return cons


def match_reference(phrase: str, objects: Iterable[ToyObject]) -> list[ToyObject]:
    """Objects consistent with every constraint of ``phrase`` (empty if it names nothing)."""
    cons = parse_reference(phrase)
    if not cons:
        return []
    out = []
    for o in objects:
        ok = True
        for key, value in cons.items():
            have = o.kind if key == "kind" else o.attributes.get(key)
            if isinstance(value, list) or have is None or str(have).lower() != str(value).lower():
                ok = False
                break
        if ok:
            out.append(o)
    return out


def _template_regex(template: str) -> re.Pattern[str]:
    head, _, tail = template.partition("{ref}")
    return re.compile(re.escape(head) + r"(?P<ref>[^?\n]+?)" + re.escape(tail), re.IGNORECASE)


_TEMPLATE_RES: list[tuple[str, re.Pattern[str]]] = [
    (attr, _template_regex(t)) for attr, ts in QUESTION_TEMPLATES.items() for t in ts
]
_ATTR_KEYWORDS: list[tuple[str, re.Pattern[str]]] = [
    ("count", re.compile(r"\bhow many\b|\bnumber of\b|\bcount\b", re.I)),
    ("text", re.compile(r"\btext\b|\bwritten\b|\bsay\b|\bread\b|\bword\b|\bcode\b|\bletters\b", re.I)),
    ("material", re.compile(r"\bpattern\b|\btexture\b|\bmaterial\b|\bsurface\b", re.I)),
    ("shape", re.compile(r"\bshape\b|\boutline\b|\bgeometric\b", re.I)),
    ("identity", re.compile(r"\bkind of object\b|\bwhat object\b|\bwhich object\b|\bdepicted\b|\bicon show", re.I)),
    ("color", re.compile(r"\bcolou?r\b", re.I)),
]
_FALLBACK_REF = re.compile(r"\bthe\s+(?P<ref>[^?\n]+?)\s*\?", re.IGNORECASE)


def attribute_from_question(question: str) -> str | None:
    """The attribute a free-form question asks about, from keywords (None if unclear)."""
    for attr, rx in _ATTR_KEYWORDS:
        if rx.search(question):
            return attr
    return None


def parse_question(text: str) -> tuple[str, str] | None:
    """(attribute, referring expression) of the first templated question found in ``text``.

    Falls back to keywords for the attribute and the phrase after the last "the" before a
    question mark for the referent, so lightly reworded questions still parse.
    """
    best: tuple[int, str, str] | None = None
    for attr, rx in _TEMPLATE_RES:
        m = rx.search(text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), attr, m.group("ref").strip())
    if best is not None:
        return best[1], best[2]
    attr = attribute_from_question(text)
    m = _FALLBACK_REF.search(text)
    if attr is None or m is None:
        return None
    return attr, m.group("ref").strip()


def plausible_values(attribute: str, truth: str, rng: np.random.Generator | Any, k: int) -> list[str]:
    """``k`` distinct wrong-but-plausible values for ``attribute`` (distractors, guesses).

    ``rng`` is a numpy Generator or a :class:`random.Random`.
    """
    truth_s = str(truth).strip()
    pool: list[str]
    if attribute == "color":
        pool = [c for c in COLORS if c != truth_s.lower()]
    elif attribute == "shape":
        pool = [s for s in ALL_SHAPES if s != truth_s.lower()]
    elif attribute == "material":
        pool = [m for m in MATERIALS if m != truth_s.lower()]
    elif attribute == "identity":
        pool = [i for i in IDENTITIES if i != truth_s.lower()]
    elif attribute == "count":
        try:
            t = int(truth_s)
        except ValueError:
            t = 5
        pool = [str(v) for v in (t - 1, t + 1, t - 2, t + 2, t + 3, t - 3, t + 4) if v > 0 and v != t]
        pool = pool[: max(k, 4)]
    elif attribute == "text":
        pool = _similar_codes(truth_s.upper() or "ABC", rng, k + 3)
    else:
        pool = ["unknown", "none", "unclear", "other"]
    order = _permutation(rng, len(pool))
    out: list[str] = []
    for i in order:
        if pool[i] not in out and pool[i].lower() != truth_s.lower():
            out.append(pool[i])
        if len(out) == k:
            break
    return out


_CONFUSABLE = {"B": "8", "8": "B", "S": "5", "5": "S", "Z": "2", "2": "Z", "G": "6", "6": "G",
               "Q": "D", "D": "Q", "E": "F", "F": "E", "P": "R", "R": "P", "M": "N", "N": "M",
               "U": "V", "V": "U", "K": "X", "X": "K", "H": "N", "C": "G", "T": "Y", "Y": "T",
               "A": "4", "4": "A", "7": "T", "3": "8", "9": "8", "W": "V", "L": "J", "J": "L"}


def _similar_codes(text: str, rng: Any, k: int) -> list[str]:
    out: list[str] = []
    for attempt in range(8 * k + 8):
        chars = list(text)
        n_changes = 1 + (attempt % 2)
        for _ in range(n_changes):
            i = _randint(rng, len(chars))
            c = chars[i]
            chars[i] = _CONFUSABLE.get(c, CODE_ALPHABET[_randint(rng, len(CODE_ALPHABET))])
        cand = "".join(chars)
        if cand != text and cand not in out:
            out.append(cand)
        if len(out) >= k:
            break
    return out


def _randint(rng: Any, n: int) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(n))
    return int(rng.randrange(n))


def _permutation(rng: Any, n: int) -> list[int]:
    if isinstance(rng, np.random.Generator):
        return [int(i) for i in rng.permutation(n)]
    idx = list(range(n))
    rng.shuffle(idx)
    return idx


# ---------------------------------------------------------------------------------------------
# Rendering primitives
# ---------------------------------------------------------------------------------------------

_FONT_5X7: dict[str, tuple[str, ...]] = {
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "B": ("11110", "10001", "10001", "11110", "10001", "10001", "11110"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "D": ("11110", "10001", "10001", "10001", "10001", "10001", "11110"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "F": ("11111", "10000", "10000", "11110", "10000", "10000", "10000"),
    "G": ("01110", "10001", "10000", "10111", "10001", "10001", "01111"),
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "I": ("01110", "00100", "00100", "00100", "00100", "00100", "01110"),
    "J": ("00111", "00010", "00010", "00010", "00010", "10010", "01100"),
    "K": ("10001", "10010", "10100", "11000", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "M": ("10001", "11011", "10101", "10101", "10001", "10001", "10001"),
    "N": ("10001", "10001", "11001", "10101", "10011", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "Q": ("01110", "10001", "10001", "10001", "10101", "10010", "01101"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "U": ("10001", "10001", "10001", "10001", "10001", "10001", "01110"),
    "V": ("10001", "10001", "10001", "10001", "10001", "01010", "00100"),
    "W": ("10001", "10001", "10001", "10101", "10101", "10101", "01010"),
    "X": ("10001", "10001", "01010", "00100", "01010", "10001", "10001"),
    "Y": ("10001", "10001", "01010", "00100", "00100", "00100", "00100"),
    "Z": ("11111", "00001", "00010", "00100", "01000", "10000", "11111"),
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}


def _text_width(text: str, glyph_h: float) -> float:
    u = glyph_h / 7.0
    return len(text) * 6 * u - u


def _draw_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, glyph_h: float,
               fill: tuple[int, int, int]) -> None:
    """Draw ``text`` with the 5x7 bitmap font, glyph height ``glyph_h`` px, top-left at (x, y)."""
    u = glyph_h / 7.0
    for k, ch in enumerate(text):
        rows = _FONT_5X7[ch]
        gx = x + k * 6 * u
        for r, row in enumerate(rows):
            c = 0
            while c < 5:  # merge horizontal runs into one rectangle
                if row[c] == "1":
                    c_end = c
                    while c_end + 1 < 5 and row[c_end + 1] == "1":
                        c_end += 1
                    x0 = round(gx + c * u)
                    x1 = max(x0, round(gx + (c_end + 1) * u) - 1)
                    y0 = round(y + r * u)
                    y1 = max(y0, round(y + (r + 1) * u) - 1)
                    draw.rectangle((x0, y0, x1, y1), fill=fill)
                    c = c_end + 1
                else:
                    c += 1


Box = tuple[float, float, float, float]


def _regular_polygon(box: Box, n: int, rotation: float = -math.pi / 2) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return [(cx + rx * math.cos(rotation + 2 * math.pi * i / n),
             cy + ry * math.sin(rotation + 2 * math.pi * i / n)) for i in range(n)]


def _shape_polygon(shape: str, box: Box) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` fitted into ``box`` (None for ellipse-like shapes)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape in ("square", "rectangle"):
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape in ("circle", "oval"):
        return None
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "pentagon":
        return _regular_polygon(box, 5)
    if shape == "hexagon":
        inset = min(w * 0.25, h * 0.5)
        return [(x0, cy), (x0 + inset, y0), (x1 - inset, y0), (x1, cy), (x1 - inset, y1),
                (x0 + inset, y1)]
    if shape == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.42
            a = -math.pi / 2 + math.pi * i / 5
            pts.append((cx + r * w / 2 * math.cos(a), cy + r * h / 2 * math.sin(a) + h * 0.05))
        return pts
    if shape == "cross":
        t = 0.18
        return [(cx - w * t, y0), (cx + w * t, y0), (cx + w * t, cy - h * t), (x1, cy - h * t),
                (x1, cy + h * t), (cx + w * t, cy + h * t), (cx + w * t, y1), (cx - w * t, y1),
                (cx - w * t, cy + h * t), (x0, cy + h * t), (x0, cy - h * t), (cx - w * t, cy - h * t)]
    if shape == "arrow":
        tip = min(h * 0.5, w * 0.3)
        return [(x0, y0), (x1 - tip, y0), (x1, cy), (x1 - tip, y1), (x0, y1)]
    raise ValueError(f"unknown shape {shape!r}")


def _fill_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: Any) -> None:
    poly = _shape_polygon(shape, box)
    if poly is None:
        draw.ellipse(tuple(round(v) for v in box), fill=fill)
    else:
        draw.polygon([(round(x), round(y)) for x, y in poly], fill=fill)


# Icons in a unit square: (primitive, coords, use_background_color)
_ICONS: dict[str, tuple[tuple[str, tuple[float, ...], bool], ...]] = {
    "key": (("ellipse", (0.05, 0.28, 0.47, 0.72), False), ("ellipse", (0.16, 0.41, 0.34, 0.59), True),
            ("rect", (0.42, 0.44, 0.95, 0.56), False), ("rect", (0.74, 0.56, 0.81, 0.72), False),
            ("rect", (0.86, 0.56, 0.94, 0.68), False)),
    "cup": (("ellipse", (0.55, 0.36, 0.9, 0.72), False), ("ellipse", (0.64, 0.46, 0.8, 0.62), True),
            ("poly", (0.18, 0.28, 0.72, 0.28, 0.66, 0.84, 0.24, 0.84), False),
            ("rect", (0.1, 0.84, 0.8, 0.9), False)),
    "umbrella": (("pie", (0.05, 0.12, 0.95, 0.88), False), ("rect", (0.47, 0.48, 0.53, 0.86), False),
                 ("rect", (0.33, 0.8, 0.38, 0.9), False), ("rect", (0.33, 0.86, 0.53, 0.91), False)),
    "fish": (("ellipse", (0.08, 0.3, 0.68, 0.7), False),
             ("poly", (0.62, 0.5, 0.95, 0.24, 0.95, 0.76), False),
             ("ellipse", (0.2, 0.42, 0.29, 0.51), True)),
    "leaf": (("poly", (0.1, 0.9, 0.18, 0.52, 0.42, 0.22, 0.9, 0.1, 0.8, 0.55, 0.52, 0.8), False),
             ("line", (0.16, 0.84, 0.82, 0.18), True)),
    "bell": (("poly", (0.5, 0.1, 0.65, 0.18, 0.7, 0.48, 0.86, 0.76, 0.14, 0.76, 0.3, 0.48, 0.35, 0.18), False),
             ("ellipse", (0.41, 0.74, 0.59, 0.92), False), ("ellipse", (0.44, 0.02, 0.56, 0.14), False)),
    "heart": (("ellipse", (0.08, 0.14, 0.52, 0.56), False), ("ellipse", (0.48, 0.14, 0.92, 0.56), False),
              ("poly", (0.11, 0.44, 0.89, 0.44, 0.5, 0.9), False)),
    "house": (("poly", (0.5, 0.06, 0.94, 0.46, 0.06, 0.46), False), ("rect", (0.17, 0.44, 0.83, 0.92), False),
              ("rect", (0.42, 0.62, 0.58, 0.92), True)),
    "tree": (("ellipse", (0.18, 0.04, 0.82, 0.62), False), ("rect", (0.43, 0.55, 0.57, 0.94), False)),
    "moon": (("ellipse", (0.08, 0.08, 0.92, 0.92), False), ("ellipse", (0.32, 0.0, 1.08, 0.78), True)),
    "mushroom": (("pie", (0.08, 0.12, 0.92, 0.88), False), ("rect", (0.37, 0.5, 0.63, 0.9), False),
                 ("ellipse", (0.3, 0.24, 0.42, 0.36), True), ("ellipse", (0.58, 0.3, 0.7, 0.42), True)),
    "boat": (("poly", (0.04, 0.62, 0.96, 0.62, 0.8, 0.88, 0.2, 0.88), False),
             ("rect", (0.47, 0.08, 0.53, 0.62), False),
             ("poly", (0.54, 0.1, 0.88, 0.56, 0.54, 0.56), False)),
}


def _draw_icon(draw: ImageDraw.ImageDraw, identity: str, box: Box, fg: tuple[int, int, int],
               bg: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0

    def pt(u: float, v: float) -> tuple[int, int]:
        return round(x0 + u * w), round(y0 + v * h)

    for prim, c, use_bg in _ICONS[identity]:
        color = bg if use_bg else fg
        if prim == "ellipse":
            draw.ellipse((*pt(c[0], c[1]), *pt(c[2], c[3])), fill=color)
        elif prim == "rect":
            draw.rectangle((*pt(c[0], c[1]), *pt(c[2], c[3])), fill=color)
        elif prim == "pie":
            draw.pieslice((*pt(c[0], c[1]), *pt(c[2], c[3])), 180, 360, fill=color)
        elif prim == "poly":
            draw.polygon([pt(c[i], c[i + 1]) for i in range(0, len(c), 2)], fill=color)
        elif prim == "line":
            draw.line((*pt(c[0], c[1]), *pt(c[2], c[3])), fill=color, width=max(1, round(w * 0.05)))


def _texture(material: str, w: int, h: int, period: float, fg: tuple[int, int, int],
             bg: tuple[int, int, int]) -> np.ndarray:
    """RGB patch of size (h, w) showing ``material`` with the given pattern period."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = max(period, 2.0)
    if material == "striped":
        on = ((xx + yy) % p) < p / 2
    elif material == "checkered":
        on = ((np.floor(xx / (p / 2)) + np.floor(yy / (p / 2))) % 2) == 0
    elif material == "dotted":
        on = ((xx % p - p / 2) ** 2 + (yy % p - p / 2) ** 2) < (0.3 * p) ** 2
    elif material == "wavy":
        on = ((yy + (p / 3) * np.sin(2 * np.pi * xx / p)) % p) < p / 2
    elif material == "brick":
        row = np.floor(yy / (p / 2))
        mortar = max(1.0, p / 8)
        on = ~(((yy % (p / 2)) < mortar) | (((xx + (row % 2) * p / 2) % p) < mortar))
    elif material == "plain":
        on = np.ones((h, w), dtype=bool)
    else:
        raise ValueError(f"unknown material {material!r}")
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[...] = bg
    out[on] = fg
    return out


def _lum(rgb: Sequence[int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _blend(a: Sequence[int], b: Sequence[int], t: float) -> tuple[int, int, int]:
    return (round(a[0] * (1 - t) + b[0] * t), round(a[1] * (1 - t) + b[1] * t),
            round(a[2] * (1 - t) + b[2] * t))


# ---------------------------------------------------------------------------------------------
# Object planning (attributes + size) and drawing
# ---------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass
class _Plan:
    """An object before placement: attributes, size and drawing parameters."""

    kind: str
    attributes: dict[str, Any]
    core: float  # the size parameter everything scales with (glyph height, dot diameter, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    w: int = 0
    h: int = 0
    evidence_px: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return describe(self.kind, self.attributes)

    def sized(self, core: float) -> _Plan:
        """Compute box size and evidence for a given core size (objects scale linearly)."""
        self.core = core
        a, k = self.attributes, self.kind
        if k == "sign":
            g = core
            h = 1.9 * g
            w = _text_width(a["text"], g) + 1.2 * g
            if a["shape"] == "hexagon":
                w += h
            elif a["shape"] == "arrow":
                w += 0.6 * h
            elif a["shape"] == "oval":
                w = w * 1.3 + 0.3 * h
            self.evidence_px = {"text": g, "color": h, "shape": 0.55 * h}
        elif k == "panel":
            d = core
            n = int(a["count"])
            cols = math.ceil(math.sqrt(n))
            rows = math.ceil(n / cols)
            side = max(cols, rows) * 2.1 * d + 1.8 * d
            if a["shape"] == "circle":
                side *= 1.45
            elif a["shape"] == "hexagon":
                side *= 1.35
            w = h = side
            self.extra.update(cols=cols, rows=rows)
            self.evidence_px = {"count": d, "color": side, "shape": 0.25 * side}
        elif k == "tile":
            p = core
            side = p * float(self.extra["periods"])
            w = h = side
            mat = p if a["material"] != "plain" else 0.3 * side
            self.evidence_px = {"material": mat, "color": 0.8 * side, "shape": 0.3 * side}
        elif k == "icon":
            w = h = core
            self.evidence_px = {"identity": 0.35 * core, "color": 0.4 * core, "shape": 0.3 * core}
        elif k == "badge":
            w = h = core
            self.evidence_px = {"shape": 0.4 * core, "color": 0.7 * core}
        else:
            raise ValueError(k)
        self.w, self.h = max(4, round(w)), max(4, round(h))
        return self


_KINDS = ("sign", "panel", "tile", "icon", "badge")
_KIND_P = (0.24, 0.2, 0.2, 0.2, 0.16)


def _random_text(rng: np.random.Generator) -> str:
    if rng.random() < 0.35:
        return str(_choice(rng, TEXT_WORDS))
    n = int(rng.integers(3, 5))
    return "".join(_choice(rng, CODE_ALPHABET) for _ in range(n))


def _plan_object(rng: np.random.Generator, kind: str) -> _Plan:
    if kind == "sign":
        attrs = {"color": _choice(rng, list(COLORS)), "shape": _choice(rng, SIGN_SHAPES),
                 "text": _random_text(rng)}
        return _Plan(kind, attrs, 0).sized(_log_uniform(rng, 8.0, 40.0))
    if kind == "panel":
        attrs = {"color": _choice(rng, list(COLORS)), "shape": _choice(rng, PANEL_SHAPES),
                 "count": int(rng.integers(2, 10))}
        return _Plan(kind, attrs, 0).sized(_log_uniform(rng, 8.0, 30.0))
    if kind == "tile":
        attrs = {"color": _choice(rng, list(COLORS)), "shape": _choice(rng, TILE_SHAPES),
                 "material": _choice(rng, MATERIALS)}
        plan = _Plan(kind, attrs, 0, extra={"periods": float(rng.uniform(4.0, 7.0))})
        return plan.sized(_log_uniform(rng, 8.0, 32.0))
    if kind == "icon":
        attrs = {"color": _choice(rng, CHROMATIC), "shape": _choice(rng, PLAQUE_SHAPES),
                 "identity": _choice(rng, IDENTITIES)}
        plan = _Plan(kind, attrs, 0, extra={"plaque": "light" if rng.random() < 0.7 else "dark"})
        return plan.sized(_log_uniform(rng, 27.0, 110.0))
    if kind == "badge":
        attrs = {"color": _choice(rng, list(COLORS)), "shape": _choice(rng, BADGE_SHAPES)}
        return _Plan(kind, attrs, 0).sized(_log_uniform(rng, 20.0, 80.0))
    raise ValueError(kind)


def _draw_object(img: Image.Image, draw: ImageDraw.ImageDraw, plan: _Plan, x: int, y: int,
                 rng: np.random.Generator) -> None:
    a = plan.attributes
    box: Box = (x, y, x + plan.w - 1, y + plan.h - 1)
    color = COLORS[a["color"]]
    if plan.kind == "sign":
        _fill_shape(draw, a["shape"], box, color)
        g = plan.core
        ink = (20, 20, 20) if _lum(color) > 120 else (245, 245, 245)
        tw = _text_width(a["text"], g)
        tx = x + (plan.w - tw) / 2
        if a["shape"] == "arrow":
            tx -= 0.3 * 1.9 * g * 0.5
        _draw_text(draw, tx, y + (plan.h - g) / 2, a["text"], g, ink)
    elif plan.kind == "panel":
        _fill_shape(draw, a["shape"], box, color)
        d = plan.core
        dot = (25, 25, 25) if _lum(color) > 110 else (240, 240, 240)
        cols, rows = int(plan.extra["cols"]), int(plan.extra["rows"])
        pitch = 2.1 * d
        gx0 = x + (plan.w - cols * pitch) / 2
        gy0 = y + (plan.h - rows * pitch) / 2
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        for idx in sorted(int(i) for i in rng.permutation(len(cells))[: int(a["count"])]):
            r, c = cells[idx]
            jx, jy = rng.uniform(-0.25, 0.25, 2) * d
            cx = gx0 + (c + 0.5) * pitch + jx
            cy = gy0 + (r + 0.5) * pitch + jy
            draw.ellipse((round(cx - d / 2), round(cy - d / 2), round(cx + d / 2) - 1,
                          round(cy + d / 2) - 1), fill=dot)
    elif plan.kind == "tile":
        fg = color
        bg = _blend(fg, (255, 255, 255) if _lum(fg) < 170 else (60, 60, 60), 0.55)
        patch = Image.fromarray(_texture(a["material"], plan.w, plan.h, plan.core, fg, bg))
        mask = Image.new("L", (plan.w, plan.h), 0)
        _fill_shape(ImageDraw.Draw(mask), a["shape"], (0, 0, plan.w - 1, plan.h - 1), 255)
        img.paste(patch, (x, y), mask)
    elif plan.kind == "icon":
        plaque = (236, 234, 226) if plan.extra["plaque"] == "light" else (48, 48, 54)
        _fill_shape(draw, a["shape"], box, plaque)
        m = 0.17 * plan.w
        _draw_icon(draw, a["identity"], (x + m, y + m, x + plan.w - 1 - m, y + plan.h - 1 - m),
                   color, plaque)
    elif plan.kind == "badge":
        _fill_shape(draw, a["shape"], box, color)


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------

_ASPECTS = (1.25, 4 / 3, 1.5)
_BORDER = 24


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth, varied, never-reddish background plus faint large clutter shapes."""
    gw, gh = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    base = rng.uniform(125, 215, 3)
    grid = np.clip(base + rng.uniform(-35, 35, (gh, gw, 3)), 105, 235).astype(np.uint8)
    img = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 11))):
        col = tuple(int(v) for v in np.clip(base + rng.uniform(-45, 45, 3), 105, 235))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(150, 700), rng.uniform(100, 600)
        kind = int(rng.integers(3))
        bb = (round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry))
        if kind == 0:
            draw.ellipse(bb, fill=col)
        elif kind == 1:
            draw.rectangle(bb, fill=col)
        else:
            draw.line((bb[0], bb[1], bb[2], bb[3]), fill=col, width=int(rng.integers(20, 80)))
    if rng.random() < 0.5:  # faint floor/wall grid
        step = int(rng.integers(180, 420))
        col = tuple(int(v) for v in np.clip(base - 25, 105, 235))
        for gx in range(step, w, step):
            draw.line((gx, 0, gx, h), fill=col, width=3)
        for gy in range(step, h, step):
            draw.line((0, gy, w, gy), fill=col, width=3)
    return img


def _overlaps(box: tuple[int, int, int, int], placed: np.ndarray, gap: float) -> bool:
    if len(placed) == 0:
        return False
    x0, y0, x1, y1 = box
    return bool(np.any((x0 - gap < placed[:, 2] + placed[:, 4]) & (x1 + gap > placed[:, 0] - placed[:, 4])
                       & (y0 - gap < placed[:, 3] + placed[:, 4]) & (y1 + gap > placed[:, 1] - placed[:, 4])))


def _make_scene(rng: np.random.Generator, scene_id: str, split: str, short_side: int,
                objects_per_scene: tuple[int, int], image_rel: str
                ) -> tuple[Image.Image, Scene]:
    aspect = float(_choice(rng, _ASPECTS))
    long_side = int(round(short_side * aspect / 8) * 8)
    w, h = (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)

    n_total = int(rng.integers(objects_per_scene[0], objects_per_scene[1] + 1))
    n_large = 1 if rng.random() < 0.6 else 2
    n_dup = 1 if rng.random() < 0.5 else 2
    n_small = max(3, n_total - n_large - n_dup)

    plans: list[tuple[_Plan, bool, bool]] = []  # (plan, large, duplicate)
    names: set[str] = set()

    def unique_plan(kind: str) -> _Plan:
        for _ in range(50):
            p = _plan_object(rng, kind)
            if p.name not in names:
                names.add(p.name)
                return p
        raise RuntimeError("could not find a unique object name")

    for _ in range(n_large):
        p = unique_plan(str(_choice(rng, ("panel", "tile", "icon", "badge"))))
        target = rng.uniform(0.105, 0.14) * w * h
        p.sized(p.core * math.sqrt(target / (p.w * p.h)))
        plans.append((p, True, False))
    kinds = [str(k) for k in rng.choice(_KINDS, size=n_small, p=_KIND_P)]
    small = [unique_plan(k) for k in kinds]
    plans += [(p, False, False) for p in small]
    for p in small[:n_dup]:  # a duplicate is the same object (same name, same look) drawn twice
        twin = _Plan(p.kind, dict(p.attributes), p.core, extra=dict(p.extra))
        plans.append((twin.sized(p.core), False, True))

    # Place the biggest first; keep a gap so 5-10 % box expansions never swallow a neighbour.
    order = sorted(range(len(plans)), key=lambda i: -plans[i][0].w * plans[i][0].h)
    placed = np.zeros((0, 5), dtype=np.float64)  # x0, y0, x1, y1, own gap
    boxes: dict[int, tuple[int, int, int, int]] = {}
    for i in order:
        p = plans[i][0]
        gap = 14 + 0.12 * max(p.w, p.h)
        for _ in range(400):
            x = int(rng.integers(_BORDER, w - _BORDER - p.w))
            y = int(rng.integers(_BORDER, h - _BORDER - p.h))
            box = (x, y, x + p.w, y + p.h)
            if not _overlaps(box, placed, gap):
                boxes[i] = box
                placed = np.vstack([placed, [*box, gap]])
                break

    low_score = {int(i) for i in rng.choice(n_small, size=min(3, n_small), replace=False)
                 if rng.random() < 0.85}
    drawn = [i for i in range(len(plans)) if i in boxes]
    name_counts: dict[str, int] = {}
    for i in drawn:
        name_counts[plans[i][0].name] = name_counts.get(plans[i][0].name, 0) + 1
    objects: list[ToyObject] = []
    for i in drawn:
        p, large, _twin = plans[i]
        x0, y0, x1, y1 = boxes[i]
        _draw_object(img, draw, p, x0, y0, rng)
        low = n_large <= i < n_large + n_small and (i - n_large) in low_score
        score = float(rng.uniform(0.45, 0.72)) if low else float(rng.uniform(0.8, 0.99))
        objects.append(ToyObject(
            id="", kind=p.kind, name=p.name, bbox=(x0, y0, x1, y1), attributes=dict(p.attributes),
            evidence_px=dict(p.evidence_px), duplicate=name_counts[p.name] > 1, seg_score=score,
            large=large,
        ))
    # ids in reading order make truth files easy to browse
    objects.sort(key=lambda o: (o.bbox[1] // 200, o.bbox[0]))
    objects = [replace(o, id=f"o{k:02d}") for k, o in enumerate(objects)]
    scene = Scene(scene_id=scene_id, split=split, width=w, height=h, image=image_rel,
                  objects=tuple(objects))
    return img, scene


# ---------------------------------------------------------------------------------------------
# Benchmark items
# ---------------------------------------------------------------------------------------------


def _crop_box(bbox: Sequence[int], w: int, h: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = bbox
    mx = max(12, round(0.25 * (x1 - x0)))
    my = max(12, round(0.25 * (y1 - y0)))
    return max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)


def _benchmark_items(rng: np.random.Generator, scene: Scene) -> list[dict[str, Any]]:
    """8-12 valid questions spread over the six types, biased towards small evidence."""
    cands: dict[str, list[tuple[ToyObject, float]]] = {a: [] for a in QUESTION_TYPES}
    for o in scene.objects:
        if o.duplicate or o.large:
            continue
        for attr in o.attributes:
            ref = o.reference(attr)
            if match_reference(ref, scene.objects) == [o]:
                cands[attr].append((o, o.evidence_px[attr]))
    n_items = int(rng.integers(8, 13))
    attrs = [a for a in QUESTION_TYPES if cands[a]]
    items: list[dict[str, Any]] = []
    used: set[tuple[str, str]] = set()
    k = int(rng.integers(len(attrs))) if attrs else 0
    while len(items) < n_items and attrs:
        attr = attrs[k % len(attrs)]
        k += 1
        pool = [(o, ev) for o, ev in cands[attr] if (o.id, attr) not in used]
        if not pool:
            attrs.remove(attr)
            continue
        weights = np.array([1.0 / ev**1.5 for _, ev in pool])
        o, _ = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        used.add((o.id, attr))
        template = str(_choice(rng, QUESTION_TEMPLATES[attr]))
        question = template.format(ref=o.reference(attr))
        truth = o.answer(attr)
        item: dict[str, Any] = {
            "id": f"{scene.scene_id}_{len(items):02d}",
            "object_id": o.id,
            "attribute": attr,
            "question_type": QUESTION_TYPES[attr],
            "question": question,
            "truth": truth,
            "object_bbox": list(o.bbox),
            "bbox": list(_crop_box(o.bbox, scene.width, scene.height)),
        }
        if rng.random() < 0.75:
            options = [*plausible_values(attr, truth, rng, 3), truth]
            order = [int(i) for i in rng.permutation(4)]
            options = [options[i] for i in order]
            letters = "ABCD"
            item["options"] = options
            item["answer"] = letters[options.index(truth)]
            item["prompt"] = question + "\n" + "\n".join(
                f"{letters[i]}. {opt}" for i, opt in enumerate(options))
        else:
            item["options"] = []
            item["answer"] = truth
            item["prompt"] = question
        items.append(item)
    return items


def _png_bytes(img: Image.Image, compress_level: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("id", pa.string()),
        ("image", image_t),
        ("crop_image", image_t),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("bbox", pa.list_(pa.int64())),
        ("question_type", pa.string()),
    ])
    # Hugging Face `datasets` reads this metadata to decode the two columns as Image features.
    features = {
        "id": {"dtype": "string", "_type": "Value"},
        "image": {"_type": "Image"},
        "crop_image": {"_type": "Image"},
        "prompt": {"dtype": "string", "_type": "Value"},
        "answer": {"dtype": "string", "_type": "Value"},
        "bbox": {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "Sequence"},
        "question_type": {"dtype": "string", "_type": "Value"},
    }
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=16)
    tmp.replace(path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Delete scene files of an earlier, larger generation into the same folder (a stale image
    left in the pool would silently join the training pool). Only files named like ours."""
    for sub, pattern in (("pools/toy", "toy_*.png"), ("benchmark/images", "bench_*.png"),
                         ("truth", "*_*.json")):
        for p in (root / sub).glob(pattern):
            if str(p.relative_to(root)) not in keep:
                p.unlink()


def _write_pool_extras(pool: Path, seed: int) -> list[dict[str, str]]:
    """Files a real image folder also contains, so the manifest's filters have work to do:
    an image too small for stage 1, a truncated PNG and a file that is not an image."""
    rng = np.random.default_rng([int(seed), 2])
    small = Image.fromarray(rng.integers(0, 200, size=(768, 1024, 3), dtype=np.uint8))
    small_png = _png_bytes(small, 1)
    big = Image.fromarray(rng.integers(0, 200, size=(1300, 1400, 3), dtype=np.uint8))
    big_png = _png_bytes(big, 1)
    files = {
        "extra_small_1024x768.png": (small_png, "too_small"),
        "extra_truncated.png": (big_png[: len(big_png) // 2], "truncated"),
        "extra_notes.jpg": (b"not an image, just text with an image extension\n", "not_an_image"),
    }
    for name, (data, _) in files.items():
        _write_bytes(pool / name, data)
    return [{"file": f"pools/toy/{name}", "expected_drop": why} for name, (_, why) in files.items()]


def generate_world(
    out_dir: str | Path,
    seed: int = 0,
    n_scenes: int = 8,
    n_benchmark_scenes: int = 4,
    short_side: int = 2048,
    objects_per_scene: tuple[int, int] = (30, 45),
    compress_level: int = 3,
    build_vision_index: bool = True,
    pool_extras: bool = True,
) -> WorldIndex:
    """Generate the toy world into ``out_dir`` and return the index (also written as index.json).

    Deterministic: the same arguments give byte-identical files. Pool and benchmark scenes come
    from disjoint random streams, so benchmark scenes never appear in the pool.
    ``build_vision_index`` also writes the registration index the simulated models load.
    """
    if short_side < 1200:
        raise ValueError("short_side must be > 1200 (stage 1 drops smaller images)")
    if n_scenes < 0 or n_benchmark_scenes < 0:
        raise ValueError("scene counts must be >= 0")
    lo, hi = objects_per_scene
    if not 5 <= lo <= hi:
        raise ValueError("objects_per_scene must be (lo, hi) with 5 <= lo <= hi")
    root = Path(out_dir)
    for sub in ("pools/toy", "truth", "benchmark/images"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    scenes_meta: list[dict[str, Any]] = []
    bench_rows: list[dict[str, Any]] = []
    for split, count in (("pool", n_scenes), ("benchmark", n_benchmark_scenes)):
        for k in range(count):
            rng = np.random.default_rng([int(seed), 0 if split == "pool" else 1, k])
            scene_id = f"toy_{k:04d}" if split == "pool" else f"bench_{k:04d}"
            rel = (f"pools/toy/{scene_id}.png" if split == "pool"
                   else f"benchmark/images/{scene_id}.png")
            img, scene = _make_scene(rng, scene_id, split, short_side, (lo, hi), rel)
            png = _png_bytes(img, compress_level)
            _write_bytes(root / rel, png)
            if split == "benchmark":
                items = _benchmark_items(rng, scene)
                scene = replace(scene, questions=tuple(items))
                for it in items:
                    crop = img.crop(tuple(it["bbox"]))
                    bench_rows.append({
                        "id": it["id"],
                        "image": {"bytes": png, "path": f"{scene_id}.png"},
                        "crop_image": {"bytes": _png_bytes(crop, compress_level),
                                       "path": f"{it['id']}_crop.png"},
                        "prompt": it["prompt"],
                        "answer": it["answer"],
                        "bbox": it["bbox"],
                        "question_type": it["question_type"],
                    })
            truth_rel = f"truth/{scene_id}.json"
            _write_json(root / truth_rel, scene.to_dict())
            scenes_meta.append({
                "scene_id": scene_id, "split": split, "image": rel, "truth": truth_rel,
                "width": scene.width, "height": scene.height, "n_objects": len(scene.objects),
                "n_questions": len(scene.questions),
            })
    _remove_stale(root, {m["image"] for m in scenes_meta} | {m["truth"] for m in scenes_meta})
    extras = _write_pool_extras(root / "pools" / "toy", seed) if pool_extras else []
    parquet_rel = "benchmark/zoombench_toy.parquet"
    _write_parquet(root / parquet_rel, bench_rows)
    type_counts: dict[str, int] = {}
    for row in bench_rows:
        type_counts[row["question_type"]] = type_counts.get(row["question_type"], 0) + 1
    index: WorldIndex = {
        "version": WORLD_VERSION,
        "generator": "r2i.toy.world (toy world: test double / offline demo)",
        "seed": int(seed),
        "short_side": int(short_side),
        "objects_per_scene": [lo, hi],
        "scenes": scenes_meta,
        "pool_extras": extras,
        "benchmark": {"parquet": parquet_rel, "n_items": len(bench_rows),
                      "question_types": dict(sorted(type_counts.items())),
                      "scenes": [m["scene_id"] for m in scenes_meta if m["split"] == "benchmark"]},
    }
    _write_json(root / "index.json", index)
    if build_vision_index:
        from .vision import SceneRegistry

        SceneRegistry.build(root)
    return index
