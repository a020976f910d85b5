"""Tiny, randomly initialised Qwen2.5-VL / Qwen3-VL model directories (TEST DOUBLES).

No weights can be downloaded here, so the attention-coverage code is exercised end to end on
models built locally from a config: a byte-level BPE tokenizer trained on a few sentences plus the
chat template's special tokens, the Qwen2-VL image processor with a small pixel budget, a 2-layer
language model and a 2-block vision tower. The directory has the same files as a real checkpoint
(``config.json``, safetensors, tokenizer, ``preprocessor_config.json``, chat template), so
:func:`r2i.evaluation.attention.load_model` loads it through the real code path.

A random model attends almost uniformly, so its coverage is close to the box's share of the token
grid: a sanity check of the box-to-grid mapping, not a measurement of anything.

CLI: ``python -m r2i.toy.tiny_vlm qwen2_5_vl OUT_DIR [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "KINDS", "SPECIAL_TOKENS", "build_tiny_vlm", "main"]

KINDS = ("qwen2_5_vl", "qwen3_vl")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = ["What color is the car?", "How many apples are on the table?",
           "Read the text on the sign.", "What material is the cup made of?",
           "system user assistant"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _image_processor(patch: int):
    try:  # transformers >= 5: the PIL backend needs no torchvision
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil as Processor,
        )
    except ImportError:  # transformers 4.x
        from transformers import Qwen2VLImageProcessor as Processor
    unit = patch * 2
    return Processor(min_pixels=unit * unit * 4, max_pixels=unit * unit * 64, patch_size=patch,
                     merge_size=2)


def build_tiny_vlm(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``kind`` (``qwen2_5_vl`` or ``qwen3_vl``) model directory.

    Deterministic for a seed. Raises ``ValueError`` for an unknown kind and ``RuntimeError`` when
    the installed transformers lacks the architecture.
    """
    if kind not in KINDS:
        raise ValueError(f"tiny model kind must be one of {KINDS}, not {kind!r}")
    import torch
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = _tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    patch = 14 if kind == "qwen2_5_vl" else 16
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    if kind == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": [2, 3, 3]}
        cfg = transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config=dict(vision, fullatt_block_indexes=[1],
                                                 window_size=56), **tokens)
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        if not hasattr(transformers, "Qwen3VLForConditionalGeneration"):
            raise RuntimeError(f"transformers {transformers.__version__} has no Qwen3-VL")
        text["head_dim"] = 16
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                                   "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        cfg = transformers.Qwen3VLConfig(
            text_config=text, vision_config=dict(vision, num_position_embeddings=64,
                                                 deepstack_visual_indexes=[0]), **tokens)
        model = transformers.Qwen3VLForConditionalGeneration(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _image_processor(patch).save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    (out / "R2I_TINY_RANDOM_MODEL.json").write_text(json.dumps(
        {"kind": kind, "seed": seed, "note": "randomly initialised test double, not a trained "
                                             "model (r2i.toy.tiny_vlm)"}, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m r2i.toy.tiny_vlm", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_vlm(args.kind, args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
