"""How Qwen-VL processors size an image, and how many visual tokens it becomes.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL resize every image so that both sides are multiples of
``factor = patch_size * merge_size`` (28 for Qwen2/2.5-VL: patch 14; 32 for Qwen3-VL: patch 16)
and its area lies within ``[min_pixels, max_pixels]``; each ``factor x factor`` cell becomes one
language-model token (``<|image_pad|>``), plus ``<|vision_start|>``/``<|vision_end|>``.

:func:`smart_resize` follows that rule (the processors' and ``qwen_vl_utils``' documented
behaviour: round each side to the nearest multiple, then scale down/up with floor/ceil when the
area leaves the range). It is used

* by attention coverage (:mod:`r2i.evaluation.attention`), which resizes the image to exactly
  these sides *before* the processor, as the paper's reference script does, so the processor does
  not resize again and the token grid maps onto the image without rounding drift;
* by the training-set budget (:mod:`r2i.train.budget`), which needs the number of visual tokens
  verl will produce for a stored image.
"""

from __future__ import annotations

import math

__all__ = [
    "QWEN_FACTORS",
    "QWEN_VL_UTILS_MAX_TOKENS",
    "image_tokens",
    "smart_resize",
    "verl_image_tokens",
]

#: ``patch * merge`` of the Qwen-VL families (Qwen2/2.5-VL: 14 * 2, Qwen3-VL: 16 * 2).
QWEN_FACTORS = (28, 32)
#: ``qwen_vl_utils`` caps an image at this many visual tokens before the processor sees it
#: (its ``max_pixels`` default is this many ``factor x factor`` cells, 16384 * 28 * 28 for
#: Qwen2.5-VL), unless the image dict carries its own ``max_pixels``.
QWEN_VL_UTILS_MAX_TOKENS = 16384
#: ``qwen_vl_utils``' default lower bound, in cells.
_UTILS_MIN_TOKENS = 4


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """``(height, width)`` a Qwen-VL processor resizes an image to.

    Both sides become multiples of ``factor``, the aspect ratio is kept as well as rounding
    allows, and the area ends within ``[min_pixels, max_pixels]``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds 200 (Qwen-VL refuses it)")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_tokens(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> int:
    """Visual tokens (``<|image_pad|>``) of an image the processor resizes with these bounds."""
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return (h // factor) * (w // factor)


def verl_image_tokens(height: int, width: int, min_pixels: int, max_pixels: int,
                      factors: tuple[int, ...] = QWEN_FACTORS) -> int:
    """Visual tokens verl's ``RLHFDataset`` produces for a stored image, the most over ``factors``.

    verl (0.9) first passes the image through ``qwen_vl_utils.fetch_image`` (its own bounds:
    4 .. 16384 cells), then calls the processor with ``data.mm_processor_kwargs``
    (``min_pixels``/``max_pixels``), which resizes once more. Both steps are applied here; the
    student's family decides the factor, so the largest count of the known families is returned
    (an upper bound whichever Qwen-VL is trained).
    """
    most = 0
    for f in factors:
        h1, w1 = smart_resize(height, width, f, _UTILS_MIN_TOKENS * f * f,
                              QWEN_VL_UTILS_MAX_TOKENS * f * f)
        most = max(most, image_tokens(h1, w1, f, min_pixels, max_pixels))
    return most
