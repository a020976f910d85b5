"""Rule `train`: GRPO training with verl (single node, or Ray across a SLURM allocation).

Fails at once without GPUs. The checkpoint dir (params.ckpt_dir) is NOT a rule output, so
Snakemake never deletes it and a rerun resumes (trainer.resume_mode=auto). On success writes
the marker output (JSON: latest global step and its actor checkpoint dir).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # scripts/ (Snakemake appends it too)
from _checkout import use_checkout

use_checkout(__file__)  # the r2i library from this checkout, in any env or container

from r2i.io import atomic_path
from r2i.train.launch import check_gpus, multinode_script, single_node_command

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

params = snakemake.params
nodes, gpus = int(params.nodes), int(params.gpus_per_node)
overrides = list(params.overrides)
ckpt_dir = Path(params.ckpt_dir)
log = Path(snakemake.log[0])
log.parent.mkdir(parents=True, exist_ok=True)
ckpt_dir.mkdir(parents=True, exist_ok=True)

check_gpus(gpus)

with open(log, "a", encoding="utf-8") as fh:
    if nodes == 1:
        cmd = single_node_command(overrides, sys.executable)
    else:
        if not os.environ.get("SLURM_JOB_NODELIST"):
            raise SystemExit(f"train.nodes={nodes} needs a SLURM allocation (SLURM_JOB_NODELIST unset)")
        script = Path(tempfile.mkdtemp(prefix="r2i-train-")) / "multinode.sh"
        script.write_text(multinode_script(overrides, nodes, gpus, sys.executable), encoding="utf-8")
        cmd = ["bash", str(script)]
    fh.write("running: " + " ".join(cmd) + "\n")
    fh.flush()
    subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)

latest = ckpt_dir / "latest_checkpointed_iteration.txt"
if not latest.exists():
    raise SystemExit(f"verl finished but wrote no checkpoint ({latest} missing); set train.save_freq")
step = int(latest.read_text().strip())
marker = {"global_step": step, "actor_dir": str(ckpt_dir / f"global_step_{step}" / "actor")}
with atomic_path(snakemake.output.done) as tmp:
    Path(tmp).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
