"""A Qwen2.5-VL-compatible processor built locally, with the REAL Qwen tokenizer vocabulary.

No model hub is reachable here, but the Qwen BPE ranks ship inside PyPI packages: Qwen-Agent
(``qwen_agent/utils/qwen.tiktoken``) and DashScope (``dashscope/resources/qwen.tiktoken``) carry
the same file (151,643 byte-level BPE tokens, the regular vocabulary of Qwen, Qwen2, Qwen2.5 and
Qwen2.5-VL). ``tests/requirements-verl.txt`` installs ``qwen-agent`` without dependencies just for
that file (it is located, not imported). From it this module builds a ``tokenizers`` BPE tokenizer
(merges recovered from the ranks), adds Qwen2-VL's special tokens with their ids, and wraps it
with the Qwen2-VL image processor (patch 14, merge 2) and a Qwen2.5-VL-style chat template (ours)
into a ``Qwen2_5_VLProcessor``, so prompt lengths count like the real model's.
"""

from __future__ import annotations

import base64
import importlib.metadata
from functools import lru_cache
from pathlib import Path
from typing import Any

#: Qwen2's pre-tokenizer split pattern (its tokenizer.json).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
#: Special tokens of Qwen2-VL / Qwen2.5-VL, in id order from 151643.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
           "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
           "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' or 'image' in c %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vocab_file() -> Path | None:
    """The shipped ``qwen.tiktoken`` (None when qwen-agent is not installed)."""
    try:
        dist = importlib.metadata.distribution("qwen-agent")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("qwen_agent/utils/qwen.tiktoken")))
    return path if path.is_file() else None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges in rank order: for each multi-byte token, the two parts that BPE with only
    lower-ranked merges leaves (the standard tiktoken -> Hugging Face conversion)."""
    out: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while True:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            out.append((rank, parts[0], parts[1]))
    out.sort()
    return [(a, b) for _, a, b in out]


@lru_cache(maxsize=1)
def qwen_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` with Qwen2's vocabulary, merges, pre-tokenizer and special
    tokens (ids 151643..151656)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = vocab_file()
    if path is None:
        raise FileNotFoundError("qwen-agent is not installed (qwen_agent/utils/qwen.tiktoken)")
    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    b2u = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {text(t): r for t, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in _merges(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL[3:])
    for i, s in enumerate(SPECIAL):
        assert fast.convert_tokens_to_ids(s) == len(ranks) + i, s
    fast.chat_template = CHAT_TEMPLATE
    return fast


def qwen2_5_vl_processor(min_pixels: int, max_pixels: int) -> Any:
    """A Qwen2.5-VL processor: the real-vocabulary tokenizer, the Qwen2-VL image processor
    (patch 14, merge 2) with these pixel bounds, and the chat template above."""
    import transformers

    from r2i.evaluation.attention import image_only_processor

    cls = getattr(transformers, "Qwen2VLImageProcessor", None)
    ip = cls(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2,
             temporal_patch_size=2)
    return image_only_processor("", "qwen2_5_vl", tokenizer=qwen_tokenizer(), image_processor=ip,
                                chat_template=CHAT_TEMPLATE)
