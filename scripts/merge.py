"""Rule `merge`: convert the last FSDP actor checkpoint to a Hugging Face model directory."""

import json
import subprocess
import sys
from pathlib import Path

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

marker = json.loads(Path(snakemake.input.done).read_text(encoding="utf-8"))
cmd = [
    sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
    "--local_dir", marker["actor_dir"], "--target_dir", str(snakemake.output.hf),
]
log = Path(snakemake.log[0])
log.parent.mkdir(parents=True, exist_ok=True)
with open(log, "a", encoding="utf-8") as fh:
    fh.write("running: " + " ".join(cmd) + "\n")
    fh.flush()
    subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
