"""``ToyBrain``: every model role of the pipeline, SIMULATED on the toy world.

TEST DOUBLE / OFFLINE DEMO, not a model. It lets the whole R2I pipeline (synthesis, filtering,
evaluation) run without GPUs or weights, with behaviour that is realistic where the method
depends on it:

* It receives exactly what a real model receives (OpenAI chat messages with base64 data-URL
  images and the prompt text) and finds out from the pixels which toy scene and region it is
  looking at (:mod:`r2i.toy.vision`); it never gets ids or paths from the pipeline.
* The task is recognised from markers of the default prompt templates (docs/interfaces.md);
  the role's personality (error rate, pixel budget, phrasing) comes from the model name.
* Teachers know the ground truth but err at a configurable rate, and their mistakes are of the
  kinds that the pipeline's filters are there to catch (duplicate or made-up object names,
  ambiguous or unanswerable questions, wrong answers, a wrong verdict).
* The student's perception is resolution-limited: it first shrinks the image to its pixel
  budget (like a VLM's ``max_pixels``) and answers right only if the decisive detail is still at
  least ``student_min_evidence_px`` pixels large; otherwise it guesses. That makes full-image
  accuracy clearly lower than crop accuracy, the "zooming gap" R2I is about.

Sample ``i`` of a request depends only on ``seed + i`` and the request content (Brain protocol),
through a ``random.Random`` seeded from a hash of (seed + i, model, task, text, image identity).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from r2i.toy.vision import Registration, SceneRegistry, load_registry
from r2i.toy.world import (
    ALL_SHAPES,
    COLORS,
    IDENTITIES,
    MATERIALS,
    QUESTION_TEMPLATES,
    SIGN_SHAPES,
    Scene,
    ToyObject,
    attribute_from_question,
    describe,
    match_reference,
    parse_question,
    plausible_values,
)

from . import zoomtool_brain
from .brains import SIM_MODELS

__all__ = ["TASK_MARKERS", "Persona", "ToyBrain", "canonical_answer"]

#: (task, marker) in priority order: the first marker found in the prompt text decides the task.
#: The judge and consensus prompts embed other models' answers, so they are checked first.
TASK_MARKERS: tuple[tuple[str, str], ...] = (
    ("judge", "Reference answer:"),
    ("consensus", "majority_answer"),
    ("distractors", '"distractors"'),
    ("list_objects", "appear exactly once"),
    ("validate", "VALID:"),
    ("write_questions", "JSON list"),
    ("student_answer", "<answer>"),
    ("teacher_answer", "inside \\boxed{}"),
)


@dataclass(frozen=True)
class Persona:
    """How one simulated model behaves: error rate, perception budget, phrasing style."""

    error_rate: float
    max_pixels: int
    min_evidence_px: float
    style: str = "a"


@dataclass(frozen=True)
class _View:
    """One received image as the simulated model perceives it."""

    reg: Registration | None
    scene: Scene | None
    width: int
    height: int

    @property
    def region(self) -> tuple[float, float, float, float]:
        assert self.reg is not None
        return self.reg.region


@dataclass
class _Request:
    model: str
    persona: Persona
    task: str
    text: str  # user text
    views: list[_View]
    params: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Answer normalisation (used by the simulated consensus LLM and judge)
# ---------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20",
}
_SYNONYMS = {
    "grey": "gray", "stripes": "striped", "stripe": "striped", "striping": "striped",
    "checkerboard": "checkered", "checked": "checkered", "checkers": "checkered",
    "chequered": "checkered", "dots": "dotted", "polka": "dotted", "spotted": "dotted",
    "waves": "wavy", "wave": "wavy", "bricks": "brick", "brickwork": "brick",
    "circular": "circle", "round": "circle", "triangular": "triangle", "hexagonal": "hexagon",
    "pentagonal": "pentagon", "rectangular": "rectangle", "oval-shaped": "oval",
    "solid": "plain", "smooth": "plain", "keys": "key", "cups": "cup", "fishes": "fish",
}
_FILLER = {
    "a", "an", "the", "color", "colour", "colored", "coloured", "shape", "shaped", "pattern",
    "patterned", "texture", "textured", "it", "is", "its", "of", "answer",
}
_COUNT_NOUNS = {"dot", "dots", "mark", "marks", "items"}


def canonical_answer(text: str) -> str:
    """Normal form for comparing short answers: case, articles, number words, synonyms."""
    s = str(text).strip()
    m = re.search(r"\\boxed\{([^{}]*)\}", s)
    if m:
        s = m.group(1)
    m = re.search(r"<answer>(.*?)</answer>", s, re.S)
    if m:
        s = m.group(1)
    s = s.lower().replace("-", " ")
    words = [_NUMBER_WORDS.get(w, w) for w in re.findall(r"[a-z0-9]+", s)]
    if len(words) >= 2 and words[0].isdigit() and all(w in _COUNT_NOUNS for w in words[1:]):
        return words[0]  # "5 dots" -> "5" (before "dots" could be read as the material)
    out = []
    for w in words:
        w = _SYNONYMS.get(w, w)
        if w not in _FILLER:
            out.append(w)
    return " ".join(out)


def _option_lines(text: str) -> dict[str, str]:
    """Options ``A. foo`` / ``B) bar`` found one per line in ``text``."""
    opts: dict[str, str] = {}
    for m in re.finditer(r"^\s*\(?([A-H])[.)]\s*(.+?)\s*$", text, re.M):
        opts.setdefault(m.group(1), m.group(2))
    return opts


def _letter(answer: str) -> str | None:
    m = re.match(r"^\s*\(?([A-H])\)?(?:[.):]|\s|$)", answer.strip())
    return m.group(1) if m else None


def _strip_answer(text: str) -> str:
    m = re.search(r"<answer>(.*?)</answer>", text, re.S)
    if m:
        return m.group(1).strip()
    m = re.search(r"\\boxed\{([^{}]*)\}", text)
    return m.group(1).strip() if m else text.strip()


# ---------------------------------------------------------------------------------------------
# The brain
# ---------------------------------------------------------------------------------------------


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _wrap_json(payload: str, rng: random.Random, stray: str) -> str:
    """Plain JSON most of the time, else in a ```json fence or with stray text around it, so the
    pipeline's tolerant parsers are exercised the way real models exercise them."""
    r = rng.random()
    if r < 0.6:
        return payload
    if r < 0.85:
        return f"```json\n{payload}\n```"
    return f"{stray}\n{payload}\nI hope this helps."


def _style_case(value: str, like: str) -> str:
    """Give ``value`` the capitalisation style of ``like`` (codes stay upper-case)."""
    if like.isupper() and len(like) > 1:
        return value.upper()
    if like[:1].isupper():
        return value[:1].upper() + value[1:]
    return value


class ToyBrain:
    """All simulated model roles on a toy world (see module docstring). TEST DOUBLE.

    ``ToyBrain(world_dir, **options)``; options tune the personas:

    * ``teacher_error_rate`` (sim-teacher-a) and ``teacher_b_error_rate`` (sim-teacher-b, default
      1.5x the former, capped at 1): probability that one sample makes a mistake.
    * ``list_error_rate``: per listed object (default: the teacher's rate).
    * ``student_max_pixels`` / ``student_min_evidence_px`` / ``student_error_rate``: the
      student's perception budget, the smallest resolvable detail, and its slip rate when it can
      see the detail.
    * ``teacher_max_pixels`` / ``teacher_min_evidence_px``: same for teachers (generous).
    * ``judge_error_rate``, ``llm_error_rate``: default 0 (deterministic comparisons).
    * ``personas``: extra or overriding personas by model name, e.g. a simulated trained
      student ``{"sim-student-r2i": {"max_pixels": 4_000_000, "min_evidence_px": 6.0}}``.
    """

    run_in_thread = True

    def __init__(
        self,
        world_dir: str | Path,
        teacher_error_rate: float = 0.1,
        teacher_b_error_rate: float | None = None,
        student_max_pixels: int = 1_000_000,
        student_min_evidence_px: float = 8.0,
        student_error_rate: float = 0.03,
        teacher_max_pixels: int = 16_777_216,
        teacher_min_evidence_px: float = 4.0,
        list_error_rate: float | None = None,
        judge_error_rate: float = 0.0,
        llm_error_rate: float = 0.0,
        personas: dict[str, dict[str, Any] | Persona] | None = None,
        seed: int = 0,
        cache_size: int = 256,
    ) -> None:
        rates = {"teacher_error_rate": teacher_error_rate, "teacher_b_error_rate": teacher_b_error_rate,
                 "student_error_rate": student_error_rate, "list_error_rate": list_error_rate,
                 "judge_error_rate": judge_error_rate, "llm_error_rate": llm_error_rate}
        for name, p in rates.items():
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.world_dir = Path(world_dir)
        self.registry: SceneRegistry = load_registry(self.world_dir)
        b_rate = min(1.0, 1.5 * teacher_error_rate) if teacher_b_error_rate is None else teacher_b_error_rate
        teacher = Persona(teacher_error_rate, teacher_max_pixels, teacher_min_evidence_px, "a")
        self.personas: dict[str, Persona] = {
            "sim-teacher-a": teacher,
            "sim-teacher-b": replace(teacher, error_rate=b_rate, style="b"),
            "sim-llm": Persona(llm_error_rate, teacher_max_pixels, teacher_min_evidence_px, "a"),
            "sim-student": Persona(student_error_rate, student_max_pixels, student_min_evidence_px, "a"),
            "sim-judge": Persona(judge_error_rate, teacher_max_pixels, teacher_min_evidence_px, "a"),
        }
        for name, spec in (personas or {}).items():
            if isinstance(spec, Persona):
                self.personas[name] = spec
            else:
                base = self._persona(name)
                self.personas[name] = replace(base, **spec)
        self.list_error_rate = teacher_error_rate if list_error_rate is None else list_error_rate
        self.models = tuple(dict.fromkeys([*SIM_MODELS, *self.personas]))
        self.seed = int(seed)
        self._cache: OrderedDict[str, _View] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # One handler per task. A zoom-tool role (requests carrying ``tools``) would be one more
        # entry returning a tool call; the Brain protocol returns text only today.
        self._handlers: dict[str, Callable[[_Request, random.Random], str]] = {
            "judge": self._judge,
            "consensus": self._consensus,
            "distractors": self._distractors,
            "list_objects": self._list_objects,
            "validate": self._validate,
            "write_questions": self._write_questions,
            "student_answer": self._student_answer,
            "teacher_answer": self._teacher_answer,
        }

    # -- protocol ------------------------------------------------------------------------------

    def complete(
        self, model: str, messages: list[dict[str, Any]], n: int, seed: int | None,
        params: dict[str, Any],
    ) -> list[str]:
        """``n`` completions; sample ``i`` depends on ``seed + i`` and the request content."""
        if zoomtool_brain.has_zoom_tool(params, messages):  # evaluation's zoom-tool baseline
            return zoomtool_brain.zoom_tool_complete(self, model, messages, n, seed, params)
        texts, system, urls = self._parse_messages(messages)
        marker_text = system + "\n" + texts
        task = next((t for t, marker in TASK_MARKERS if marker in marker_text), "unknown")
        views = [self._view(u) for u in urls]
        req = _Request(model, self._persona(model), task, texts, views, dict(params or {}))
        base = 0 if seed is None else int(seed)
        temperature = req.params.get("temperature")
        greedy = temperature is not None and float(temperature) == 0.0
        image_key = "|".join(self._view_key(v) for v in views)
        out = []
        for i in range(max(1, int(n))):
            s = base if greedy else base + i
            h = hashlib.sha256(
                f"{self.seed}\x1f{s}\x1f{model}\x1f{task}\x1f{texts}\x1f{image_key}".encode()
            ).digest()
            rng = random.Random(int.from_bytes(h[:8], "big"))
            handler = self._handlers.get(task)
            out.append(handler(req, rng) if handler else self._unknown(req, rng))
        return out

    def _persona(self, model: str) -> Persona:
        if model in self.personas:
            return self.personas[model]
        for prefix in ("sim-student", "sim-judge", "sim-llm", "sim-teacher-b"):
            if model.startswith(prefix):
                return self.personas[prefix]
        return self.personas["sim-teacher-a"]

    # -- inputs --------------------------------------------------------------------------------

    @staticmethod
    def _parse_messages(messages: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
        """(user text, system text, image URLs in order)."""
        user: list[str] = []
        system: list[str] = []
        urls: list[str] = []
        for msg in messages:
            role = msg.get("role")
            content = msg.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
            for part in parts:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text":
                    (system if role == "system" else user).append(str(part.get("text", "")))
                elif part.get("type") == "image_url" and role == "user":
                    iu = part.get("image_url")
                    url = iu.get("url") if isinstance(iu, dict) else iu
                    if isinstance(url, str):
                        urls.append(url)
        return "\n".join(user), "\n".join(system), urls

    def _view(self, url: str) -> _View:
        key = hashlib.sha1(url.encode("ascii", "replace")).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        view = self._perceive(url)
        with self._lock:
            self._cache[key] = view
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return view

    def _perceive(self, url: str) -> _View:
        img = _decode_image(url)
        if img is None:
            return _View(None, None, 0, 0)
        reg = self.registry.register(img)
        scene = self.registry.scene(reg.scene_id) if reg is not None else None
        return _View(reg, scene, img.width, img.height)

    @staticmethod
    def _view_key(v: _View) -> str:
        if v.reg is None:
            return f"none:{v.width}x{v.height}"
        r = v.reg
        red = "" if r.red_box is None else ",".join(f"{c:.0f}" for c in r.red_box)
        return f"{r.scene_id}:{','.join(f'{c:.0f}' for c in r.region)}:{v.width}x{v.height}:{red}"

    # -- perception ----------------------------------------------------------------------------

    @staticmethod
    def effective_evidence(obj: ToyObject, attr: str, view: _View, persona: Persona) -> float:
        """Size in pixels of the decisive detail after the model shrinks the image to its budget."""
        ev = obj.evidence_px.get(attr)
        if ev is None or view.reg is None:
            return 0.0
        budget = min(1.0, math.sqrt(persona.max_pixels / max(1, view.width * view.height)))
        return ev * view.reg.scale * budget

    def _can_see(self, obj: ToyObject, attr: str, view: _View, persona: Persona) -> bool:
        return self.effective_evidence(obj, attr, view, persona) >= persona.min_evidence_px

    @staticmethod
    def _visible(view: _View) -> list[ToyObject]:
        if view.scene is None or view.reg is None:
            return []
        return view.scene.objects_in(view.reg.region, min_inside=0.7)

    @staticmethod
    def _main_object(view: _View) -> ToyObject | None:
        objs = ToyBrain._visible(view)
        if not objs or view.reg is None:
            return None
        region = view.reg.region
        return max(objs, key=lambda o: (_iou(o.bbox, region), o.area))

    # -- teacher: list objects -----------------------------------------------------------------

    def _list_objects(self, req: _Request, rng: random.Random) -> str:
        view = req.views[-1] if req.views else _View(None, None, 0, 0)
        m = re.search(r"at most (\d+) objects", req.text)
        max_objects = int(m.group(1)) if m else 10
        objs = [o for o in self._visible(view) if not o.duplicate]
        if view.scene is None or not objs:
            return "I cannot make out distinct objects in this image.\n\\boxed{}"
        rng.shuffle(objs)
        names = [o.name for o in objs[:max_objects]]
        dups = sorted({o.name for o in view.scene.objects if o.duplicate})
        for k in range(len(names)):
            if rng.random() < self.list_error_rate:
                names[k] = self._wrong_name(view.scene, dups, rng)
        names = list(dict.fromkeys(names))
        body = "\n".join(f"{k + 1}. {name}" for k, name in enumerate(names))
        if req.persona.style == "b":
            return f"Here are the objects I can identify:\n\\boxed{{{body}}}"
        return f"\\boxed{{{body}}}"

    @staticmethod
    def _wrong_name(scene: Scene, dups: list[str], rng: random.Random) -> str:
        """A mistake a teacher makes when listing: an object that is there twice, or one that
        is not there at all."""
        if dups and rng.random() < 0.5:
            return rng.choice(dups)
        return _made_up_reference(scene, rng, None)

    # -- teacher: write questions --------------------------------------------------------------

    def _write_questions(self, req: _Request, rng: random.Random) -> str:
        view = req.views[-1] if req.views else _View(None, None, 0, 0)
        obj = self._main_object(view)
        if obj is None or view.scene is None:
            return "[]"
        m = re.search(r"Write (\d+) questions", req.text)
        n = int(m.group(1)) if m else 3
        attrs = [a for a in obj.attributes if self._can_see(obj, a, view, req.persona)]
        rng.shuffle(attrs)
        questions = []
        for attr in attrs[:n]:
            if rng.random() < req.persona.error_rate:
                questions.append(_bad_question(view.scene, obj, rng))
            else:
                template = rng.choice(QUESTION_TEMPLATES[attr])
                questions.append(template.format(ref=obj.reference(attr)))
        payload = json.dumps([{"question": q} for q in questions])
        return _wrap_json(payload, rng, f"Here are {len(questions)} questions about the crop:")

    # -- teacher: validate ---------------------------------------------------------------------

    def _validate(self, req: _Request, rng: random.Random) -> str:
        question = _field(req.text, "Question") or req.text
        crop = req.views[-1] if req.views else _View(None, None, 0, 0)
        full = req.views[0] if req.views else crop
        valid, reason = self._judge_question(question, full, crop, req.persona)
        if rng.random() < req.persona.error_rate:
            valid = not valid
            reason = ("The question looks answerable from the crop." if valid
                      else "The target is hard to make out in the crop.")
        if req.persona.style == "b":
            reason = "In short: " + reason[:1].lower() + reason[1:]
        return f"VALID: {'Yes' if valid else 'No'}\nREASON: {reason}"

    def _judge_question(self, question: str, full: _View, crop: _View, persona: Persona
                        ) -> tuple[bool, str]:
        scene = crop.scene or full.scene
        if scene is None or crop.reg is None:
            return False, "I cannot relate the crop to the photo."
        if full.scene is not None and crop.scene is not None and full.scene is not crop.scene:
            return False, "The crop does not come from this photo."
        parsed = parse_question(question)
        if parsed is None:
            return False, "It is not a clear question about a visible detail."
        attr, ref = parsed
        targets = match_reference(ref, scene.objects)
        if not targets:
            return False, f"There is no {ref} in the photo."
        if len(targets) > 1:
            return False, f"More than one object in the photo fits '{ref}', so the target is ambiguous."
        obj = targets[0]
        if obj not in self._visible(crop):
            return False, f"The {ref} is not inside the crop."
        if attr not in obj.attributes:
            return False, f"The question asks about a {attr} the {ref} does not have."
        if not self._can_see(obj, attr, crop, persona):
            return False, "The detail is too small to read even in the crop."
        return True, f"The {ref} is unique in the photo and its {attr} is clear in the crop."

    # -- teachers: answer on the crop ----------------------------------------------------------

    def _teacher_answer(self, req: _Request, rng: random.Random) -> str:
        question = _field(req.text, "Question") or req.text
        view = req.views[-1] if req.views else _View(None, None, 0, 0)
        attr, ref, obj = self._find_target(question, view, rng, use_red_box=False)
        known = obj is not None and attr is not None and attr in obj.attributes
        truth = obj.answer(attr) if known and obj is not None and attr is not None else ""
        sees = known and obj is not None and self._can_see(obj, attr or "", view, req.persona)
        if sees and rng.random() >= req.persona.error_rate:
            value = truth
            seen = f"The {ref} is clearly visible in the image"
        else:  # a slip (never the truth) or a blind guess (right only by chance)
            value = _guess_value(attr, truth, rng, include_truth=not sees)
            seen = f"Looking at the {ref or 'image'}"
        if req.persona.style == "b":
            return f"{seen}. Checking the details carefully.\nThe answer is \\boxed{{{_style_case(value, 'X')}}}"
        what = {"count": "counting them one by one", "text": "reading the characters",
                "color": "its dominant color", "shape": "its outline", "material": "its surface",
                "identity": "what it depicts"}.get(attr or "", "the relevant detail")
        return f"{seen}. Step 1: locate it. Step 2: {what}. So the answer is {value}.\n\\boxed{{{value}}}"

    # -- llm: consensus ------------------------------------------------------------------------

    def _consensus(self, req: _Request, rng: random.Random) -> str:
        answers = _answers_block(req.text)
        groups: OrderedDict[str, list[str]] = OrderedDict()
        for a in answers:
            groups.setdefault(canonical_answer(a), []).append(a)
        groups.pop("", None)
        if not groups:
            payload = json.dumps({"majority_answer": "", "count": 0})
        else:
            key = max(groups, key=lambda k: len(groups[k]))  # first-seen wins ties
            count = len(groups[key])
            if rng.random() < req.persona.error_rate:
                count = max(1, count - 1)
            payload = json.dumps({"majority_answer": groups[key][0].strip(), "count": count})
        return _wrap_json(payload, rng, "Grouping equivalent answers:")

    # -- teacher: distractors ------------------------------------------------------------------

    def _distractors(self, req: _Request, rng: random.Random) -> str:
        question = _field(req.text, "Question") or ""
        truth = (_field(req.text, "Correct answer") or "").strip()
        m = re.search(r"Write (\d+) wrong", req.text)
        k = int(m.group(1)) if m else 3
        parsed = parse_question(question)
        attr = parsed[0] if parsed else attribute_from_question(question)
        attr = attr or _attribute_of_value(truth)
        values = plausible_values(attr or "", canonical_answer(truth) or truth, rng, k)
        filler = ["none of these", "cannot tell", "something else", "unclear"]
        while len(values) < k:
            values.append(filler[len(values) % len(filler)])
        values = [_style_case(v, truth) if truth else v for v in values]
        payload = json.dumps({"distractors": values})
        return _wrap_json(payload, rng, "Here are plausible but wrong options:")

    # -- student (and any model asked for <answer> tags) -----------------------------------------

    def _student_answer(self, req: _Request, rng: random.Random) -> str:
        view = req.views[-1] if req.views else _View(None, None, 0, 0)
        options = _option_lines(req.text)
        attr, ref, obj = self._find_target(req.text, view, rng, use_red_box=True)
        truth = obj.answer(attr) if obj is not None and attr in obj.attributes else None
        sees = truth is not None and obj is not None and self._can_see(obj, attr or "", view, req.persona)
        slip = rng.random() < req.persona.error_rate
        name = ref or "marked region"
        if sees and not slip:
            assert truth is not None
            think = f"I locate the {name}. Its {attr} is clearly visible: {truth}."
            if options:
                letters = [k for k, v in options.items() if canonical_answer(v) == canonical_answer(truth)]
                answer = letters[0] if letters else rng.choice(sorted(options))
            else:
                answer = truth
        else:
            think = f"The {name} is too small to make out at this resolution, so I make my best guess."
            if options:
                answer = rng.choice(sorted(options))
            else:
                answer = _guess_value(attr, truth or "", rng, include_truth=True)
        return f"<think>{think}</think> <answer>{answer}</answer>"

    def _find_target(self, text: str, view: _View, rng: random.Random, use_red_box: bool
                     ) -> tuple[str | None, str, ToyObject | None]:
        """(attribute asked, referring expression, target object) as the model perceives them.

        With a red box (and ``use_red_box``) the target is the object the box surrounds;
        otherwise the object the question names among those visible in the image.
        """
        parsed = parse_question(text)
        attr, ref = parsed if parsed else (attribute_from_question(text), "")
        if view.scene is None or view.reg is None:
            return attr, ref, None
        if use_red_box and view.reg.red_box is not None:
            scored = [(_iou(o.bbox, view.reg.red_box), o) for o in view.scene.objects]
            best = max(scored, key=lambda t: t[0], default=(0.0, None))
            if best[1] is not None and best[0] >= 0.3:
                return attr, ref or best[1].reference(attr or "color"), best[1]
        cands = match_reference(ref, self._visible(view)) if ref else []
        if not cands:
            return attr, ref, None
        return attr, ref, cands[0] if len(cands) == 1 else rng.choice(cands)

    # -- judge ---------------------------------------------------------------------------------

    def _judge(self, req: _Request, rng: random.Random) -> str:
        text = req.text
        m = re.search(r"Question:\s*(.*?)\n\s*Reference answer:\s*(.*?)\n\s*Model answer:\s*(.*?)"
                      r"(?:\n\s*If an answer is an option letter|\Z)", text, re.S)
        if not m:
            return "No"
        question, reference, answer = m.group(1), m.group(2).strip(), m.group(3).strip()
        options = _option_lines(question)

        def resolve(a: str) -> str:
            a = _strip_answer(a)
            letter = _letter(a)
            if letter and options and letter in options and (len(a) <= 3 or a[1:2] in ".):"):
                return options[letter]
            return a

        ref_c, ans_c = canonical_answer(resolve(reference)), canonical_answer(resolve(answer))
        same = bool(ref_c) and ref_c == ans_c
        if rng.random() < req.persona.error_rate:
            same = not same
        return "Yes" if same else "No"

    # -- fallback ------------------------------------------------------------------------------

    @staticmethod
    def _unknown(req: _Request, rng: random.Random) -> str:
        return "I am a simulated model (toy world test double) and did not recognise the task."


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _decode_image(url: str) -> Image.Image | None:
    """PIL image from a ``data:`` URL; None if it cannot be read (remote URLs included: the
    simulator has no network, and the pipeline always sends inline images)."""
    if not url.startswith("data:"):
        return None
    try:
        _, _, payload = url.partition(",")
        img = Image.open(io.BytesIO(base64.b64decode(payload, validate=False)))
        img.load()
        return img if img.mode == "RGB" else img.convert("RGB")  # convert() always copies
    except (OSError, ValueError, binascii.Error, UnidentifiedImageError):
        return None


def _field(text: str, name: str) -> str | None:
    """Value of a ``Name: value`` line (first occurrence)."""
    m = re.search(rf"^\s*{re.escape(name)}:\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def _answers_block(text: str) -> list[str]:
    """The answers listed between ``Answers:`` and the reply instruction of the consensus prompt."""
    m = re.search(r"Answers:\s*\n(.*?)(?:\n\s*Reply with JSON|\Z)", text, re.S)
    block = m.group(1).strip() if m else ""
    if block.startswith("["):
        try:
            data = json.loads(block)
            if isinstance(data, list):
                return [str(x) for x in data]
        except json.JSONDecodeError:
            pass
    out = []
    for line in block.splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*\u2022])\s*", "", line).strip()
        line = line.strip("\"'")
        if line:
            out.append(line)
    return out


def _attribute_of_value(value: str) -> str | None:
    v = canonical_answer(value)
    if v.isdigit():
        return "count"
    if v in COLORS:
        return "color"
    if v in ALL_SHAPES:
        return "shape"
    if v in MATERIALS:
        return "material"
    if v in IDENTITIES:
        return "identity"
    if re.fullmatch(r"[A-Za-z0-9]{2,6}", value.strip()):
        return "text"
    return None


def _guess_value(attr: str | None, truth: str, rng: random.Random, include_truth: bool) -> str:
    """A random plausible value; ``include_truth`` lets a blind guess be right by chance."""
    pool = plausible_values(attr or "", truth, rng, 5)
    if include_truth and truth:
        pool.append(truth)
    return rng.choice(pool) if pool else "unknown"


def _made_up_reference(scene: Scene, rng: random.Random, omit: str | None) -> str:
    """A referring expression that fits no object of ``scene`` (a hallucinated object)."""
    for _ in range(30):
        kind = rng.choice(("sign", "panel", "tile", "icon", "badge"))
        attrs: dict[str, Any] = {"color": rng.choice(list(COLORS))}
        if kind == "sign":
            attrs |= {"shape": rng.choice(SIGN_SHAPES),
                      "text": "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(3))}
        elif kind == "tile":
            attrs |= {"shape": rng.choice(ALL_SHAPES), "material": rng.choice(MATERIALS)}
        elif kind == "icon":
            attrs |= {"shape": rng.choice(("circle", "square", "hexagon")),
                      "identity": rng.choice(IDENTITIES)}
        else:
            attrs |= {"shape": rng.choice(ALL_SHAPES)}
        ref = describe(kind, attrs, omit)
        if not match_reference(ref, scene.objects):
            return ref
    return "purple striped pentagon tile with a golden frame"


def _bad_question(scene: Scene, obj: ToyObject, rng: random.Random) -> str:
    """A question a careful validator must reject: about an object that is not there, about an
    ambiguous target, or about an attribute the object does not have."""
    mode = rng.randrange(3)
    if mode == 1:
        kind_noun = {"sign": "sign", "panel": "dot panel", "tile": "tile", "icon": "icon",
                     "badge": "badge"}[obj.kind]
        same_kind = [o for o in scene.objects if o.kind == obj.kind]
        if len(same_kind) > 1:
            attr = rng.choice(sorted(obj.attributes))
            return rng.choice(QUESTION_TEMPLATES[attr]).format(ref=kind_noun)
    if mode == 2:
        missing = [a for a in QUESTION_TEMPLATES if a not in obj.attributes]
        if missing:
            attr = rng.choice(missing)
            return rng.choice(QUESTION_TEMPLATES[attr]).format(ref=obj.name)
    attr = rng.choice(sorted(QUESTION_TEMPLATES))
    return rng.choice(QUESTION_TEMPLATES[attr]).format(ref=_made_up_reference(scene, rng, attr))
