"""The training prompt budget: make the dataset and verl's ``data.max_prompt_length`` agree.

verl's ``RLHFDataset`` measures every prompt (chat template + visual tokens) and, with
``data.filter_overlong_prompts=True``, silently drops those longer than
``data.max_prompt_length`` (with the filter off it raises at the first one). A Qwen-VL image
costs one token per ``28 x 28`` (Qwen2.5-VL) or ``32 x 32`` (Qwen3-VL) pixels, so a 12 MP photo
needs ~15.5k tokens: with ``max_prompt_length=8192`` every image above ~6.4 MP would vanish from
training without a word. Hence:

* the dataset stage (:mod:`r2i.synthesis.dataset`) stores each boxed image resized to at most the
  training ``max_pixels`` (``synthesis.dataset.max_pixels``, also what ``train.max_pixels: null``
  means), records per item an upper bound of its prompt length (``extra_info.prompt_tokens``:
  :func:`prompt_token_bound`) and the image size, and drops an item whose bound exceeds
  ``synthesis.dataset.max_prompt_length`` (when set) with reason ``prompt_too_long`` in
  funnel.json;
* the training rule sets ``data.max_prompt_length`` from the largest item when
  ``train.max_prompt_length`` is null (:func:`derive_max_prompt_length`), and refuses to start
  when a configured value is smaller than an item needs (:func:`check_prompt_budget`), naming how
  many items verl would drop.

The bound: visual tokens exactly as verl 0.9 computes them (:func:`r2i.qwen_vision.verl_image_tokens`,
the larger of the two Qwen-VL families) plus the prompt text's UTF-8 byte count (a byte-level BPE
token covers at least one byte) plus :data:`CHAT_TEMPLATE_TOKENS` for the chat template's own
tokens. It is an upper bound of what verl counts (tests/test_train_budget.py checks it with verl's
own filter and a Qwen2.5-VL processor built from the real Qwen vocabulary).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from r2i.io import read_parquet
from r2i.qwen_vision import verl_image_tokens

__all__ = [
    "CHAT_TEMPLATE_TOKENS",
    "check_prompt_budget",
    "derive_max_prompt_length",
    "effective_train_config",
    "item_prompt_tokens",
    "prompt_token_bound",
    "text_token_bound",
]

#: Tokens a Qwen-VL chat template adds around one user turn with one image (default system
#: message, role markers, ``<|vision_start|>``/``<|vision_end|>``, generation prompt): about 25;
#: bounded generously.
CHAT_TEMPLATE_TOKENS = 64
#: ``data.max_prompt_length`` is rounded up to a multiple of this.
ROUND_TO = 128


def text_token_bound(text: str) -> int:
    """Upper bound of the tokens of ``text`` for a byte-level BPE tokenizer (Qwen's): its UTF-8
    byte count, since every token covers at least one byte."""
    return len((text or "").encode("utf-8"))


def prompt_token_bound(text: str, image_size: tuple[int, int] | None, min_pixels: int,
                       max_pixels: int) -> int:
    """Upper bound of verl's prompt length for one user turn of ``text`` and an image of
    ``image_size`` (width, height; None: no image) under ``min_pixels``/``max_pixels``."""
    n = text_token_bound(text) + CHAT_TEMPLATE_TOKENS
    if image_size is not None:
        w, h = image_size
        n += verl_image_tokens(h, w, min_pixels, max_pixels)
    return n


def item_prompt_tokens(extra_info: Mapping[str, Any], min_pixels: int, max_pixels: int) -> int:
    """The bound of one dataset row under these pixel bounds (from its stored ``image_size`` and
    ``prompt_text_tokens``)."""
    size = extra_info.get("image_size")
    text = int(extra_info.get("prompt_text_tokens") or 0)
    n = text + CHAT_TEMPLATE_TOKENS
    if size is not None and len(size) == 2:
        n += verl_image_tokens(int(size[1]), int(size[0]), min_pixels, max_pixels)
    return n


def _infos(parquets: Iterable[str | Path]) -> list[Mapping[str, Any]]:

    out: list[Mapping[str, Any]] = []
    for p in parquets:
        table = read_parquet(p, columns=["extra_info"])
        out.extend(table.column("extra_info").to_pylist())
    return out


def derive_max_prompt_length(parquets: Sequence[str | Path], min_pixels: int, max_pixels: int,
                             round_to: int = ROUND_TO) -> int:
    """``data.max_prompt_length`` that fits every row of ``parquets`` (the largest bound,
    rounded up to ``round_to``). Raises ValueError for a set without rows or without the
    budget columns (a dataset written before they existed: rerun the dataset rule)."""
    infos = _infos(parquets)
    if not infos:
        raise ValueError(f"no rows in {', '.join(map(str, parquets))}: nothing to train on")
    if any(i.get("image_size") is None for i in infos):
        raise ValueError("the dataset has no prompt-budget columns (extra_info.image_size); it "
                         "was written by an older workflow: rerun the dataset rule")
    need = max(item_prompt_tokens(i, min_pixels, max_pixels) for i in infos)
    return int(math.ceil(need / round_to) * round_to)


def check_prompt_budget(parquets: Sequence[str | Path], max_prompt_length: int,
                        min_pixels: int, max_pixels: int) -> None:
    """Fail (ValueError) when some row needs more than ``max_prompt_length`` tokens: verl would
    drop it silently (or raise, with its filter off)."""
    infos = _infos(parquets)
    over = [i for i in infos if item_prompt_tokens(i, min_pixels, max_pixels) > max_prompt_length]
    if over:
        need = max(item_prompt_tokens(i, min_pixels, max_pixels) for i in over)
        raise ValueError(
            f"train.max_prompt_length={max_prompt_length} is too small for {len(over)} of "
            f"{len(infos)} items (the largest needs up to {need} tokens at max_pixels "
            f"{max_pixels}); verl would drop them without a word. Set train.max_prompt_length: "
            "null (derived from the data), or bound the dataset with "
            "synthesis.dataset.max_prompt_length / max_pixels (dropped items are then counted in "
            "funnel.json)")


def effective_train_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train`` section with its dataset-derived nulls filled: ``min_pixels``/``max_pixels``
    null take ``synthesis.dataset``'s (what the stored images were sized for)."""
    train = dict(config["train"])
    ds = ((config.get("synthesis") or {}).get("dataset") or {})
    for key in ("min_pixels", "max_pixels"):
        if train.get(key) is None:
            train[key] = int(ds.get(key) or {"min_pixels": 262144, "max_pixels": 16777216}[key])
    return train
