"""Rule script `tiny_vlm`: a tiny randomly initialised Qwen-VL directory (test double)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.evaluation.attention import require_backend
from r2i.joblog import setup_logging
from r2i.toy.tiny_vlm import build_tiny_vlm

sm = snakemake  # noqa: F821
setup_logging(sm.log[0])
require_backend()
build_tiny_vlm(sm.wildcards["kind"], sm.output["model"], seed=int(sm.params["seed"]))
