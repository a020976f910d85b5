"""SAM3 text-prompted segmentation backend (production; needs a GPU and the ``sam3`` package).

Imported only when ``segmenter.backend: sam3`` is selected, so the CPU install never needs
``sam3`` or ``torch``. Weights and the BPE vocabulary come from local paths in the config
(``segmenter.sam3.checkpoint`` / ``bpe_path``); nothing is fetched from a hub at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from r2i.segment import Instance


def _to_list(x: Any) -> list:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu()
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)


class Sam3Segmenter:
    """Boxes (xyxy, original pixels) and scores for each phrase, one image at a time."""

    name = "sam3"

    def __init__(
        self,
        checkpoint: str | None,
        bpe_path: str | None = None,
        device: str = "cuda",
        batch_size: int = 8,
        confidence_threshold: float = 0.5,
    ) -> None:
        if not checkpoint or not Path(checkpoint).exists():
            raise FileNotFoundError(
                f"config key 'segmenter.sam3.checkpoint': SAM3 checkpoint {checkpoint!r} not found"
            )
        if bpe_path is not None and not Path(bpe_path).exists():
            raise FileNotFoundError(f"config key 'segmenter.sam3.bpe_path': {bpe_path!r} not found")
        try:
            from sam3.model.sam3_image_processor import Sam3Processor
            from sam3.model_builder import build_sam3_image_model
        except ImportError as err:  # pragma: no cover - depends on the GPU env
            raise ImportError(
                "segmenter.backend is 'sam3' but the sam3 package is not importable; use the "
                "gpu env (envs/gpu.yaml, --sdm conda) or its image (envs/gpu.def, --sdm apptainer)"
            ) from err
        kwargs: dict[str, Any] = {"checkpoint_path": checkpoint, "device": device, "load_from_HF": False}
        if bpe_path:
            kwargs["bpe_path"] = bpe_path
        model = build_sam3_image_model(**kwargs)
        self._processor = Sam3Processor(model, confidence_threshold=confidence_threshold)
        self.batch_size = batch_size

    def segment(self, image: Image.Image, phrases: Sequence[str]) -> list[list[Instance]]:
        state = self._processor.set_image(image.convert("RGB"))
        results: list[list[Instance]] = []
        for phrase in phrases:
            out = self._processor.set_text_prompt(state=state, prompt=phrase)
            boxes = _to_list(out["boxes"])
            scores = _to_list(out["scores"])
            insts = [
                Instance(box=tuple(float(v) for v in b[:4]), score=float(s))  # type: ignore[arg-type]
                for b, s in zip(boxes, scores, strict=False)
            ]
            results.append(sorted(insts, key=lambda i: -i.score))
        return results
