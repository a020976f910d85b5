"""GRPO training: config section, verl overrides (composed against verl's real config tree),
launch scripts, GPU check, rules and the training parquet layout.

verl is NOT installed (it pulls CUDA torch): the session fixture downloads the verl 0.9.1 wheel
without dependencies and extracts only ``verl/trainer/config`` (set ``R2I_VERL_WHEEL`` to a local
wheel to avoid the download); tests that need it skip with the reason if that fails.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from r2i.config import ConfigError, load_schema, validate_config
from r2i.synthesis.dataset import write_verl_parquet
from r2i.train.budget import effective_train_config
from r2i.train.launch import NoGPUError, check_gpus, multinode_script, single_node_command
from r2i.train.overrides import build_overrides, hydra_value

from .conftest import BIN, REPO

VERL_VERSION = "0.9.1"
TRAIN_FILES = "results/toy/dataset/train.parquet"
VAL_FILES = "results/toy/dataset/val.parquet"
REWARD = "/repo/workflow/r2i/reward.py"
CKPT = "results/toy/train/qwen2_5_vl_7b/checkpoints"


def train_cfg(**changes):
    cfg = {"train": changes}
    validate_config(cfg, {"type": "object", "properties": {"train": load_schema()["properties"]["train"]}})
    return effective_train_config(cfg)  # min/max_pixels null -> the dataset's (defaults here)


@pytest.fixture(scope="session")
def verl_config_dir(tmp_path_factory) -> Path:
    import os

    pytest.importorskip("hydra", reason="hydra-core not installed (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("verl")
    wheel = os.environ.get("R2I_VERL_WHEEL")
    if not wheel:
        res = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"verl=={VERL_VERSION}", "-d", str(tmp), "-q"],
            capture_output=True, text=True, timeout=120,
        )
        wheels = list(tmp.glob("verl-*.whl"))
        if res.returncode != 0 or not wheels:
            pytest.skip(f"cannot download the verl {VERL_VERSION} wheel (no network?): {res.stderr[-300:]}")
        wheel = str(wheels[0])
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith("verl/trainer/config/") and m.endswith(".yaml")]
        zf.extractall(tmp, members)
    return tmp / "verl" / "trainer" / "config"


def compose(config_dir: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def test_defaults_are_the_papers():
    c = train_cfg()
    assert (c["adv_estimator"], c["rollout_n"], c["temperature"], c["top_p"], c["kl"]) == ("grpo", 8, 1.0, 1.0, False)
    assert (c["lr"], c["weight_decay"], c["clip_ratio_low"], c["clip_ratio_high"]) == (1e-6, 1e-2, 0.2, 0.3)
    assert (c["max_response_length"], c["min_pixels"], c["max_pixels"], c["epochs"]) == (2048, 262144, 16777216, 3)
    assert (c["val_temperature"], c["val_top_p"], c["val_n"]) == (0.6, 0.95, 1)
    assert c["reward"]["format_weight"] == 0.0 and c["resume_mode"] == "auto"
    with pytest.raises(ConfigError, match=r"train\.rollout_nn"):
        train_cfg(rollout_nn=8)


def test_hydra_value_quoting():
    assert hydra_value(True) == "True" and hydra_value(None) == "null" and hydra_value(1e-6) == "1e-06"
    assert hydra_value(["console", "wandb"]) == "[console,wandb]"
    assert hydra_value("http://h:8000/v1") == "http://h:8000/v1"
    assert hydra_value("a b,c") == "'a b,c'" and hydra_value("null") == "'null'"


def test_batch_sizes_follow_geometry():
    one = build_overrides(train_cfg(), TRAIN_FILES, VAL_FILES, REWARD, CKPT)
    two = build_overrides(train_cfg(nodes=2), TRAIN_FILES, VAL_FILES, REWARD, CKPT)
    assert "data.train_batch_size=384" in one and "actor_rollout_ref.actor.ppo_mini_batch_size=96" in one
    assert "data.train_batch_size=512" in two and "actor_rollout_ref.actor.ppo_mini_batch_size=128" in two
    with pytest.raises(ValueError, match="ppo_mini_batch_size"):
        build_overrides(train_cfg(ppo_mini_batch_size=512), TRAIN_FILES, VAL_FILES, REWARD, CKPT)


def test_overrides_compose_against_verl(verl_config_dir):
    """Every override is a key verl 0.9 knows (Hydra raises otherwise); print the paper's values."""
    c = train_cfg(reward={"judge_base_url": "http://judge-host:8000/v1"})
    ov = build_overrides(c, TRAIN_FILES, VAL_FILES, REWARD, CKPT, experiment_name="toy-qwen2_5_vl_7b")
    assert not any(o.startswith("data.max_prompt_length=") for o in ov)  # derived at run time
    ov.append("data.max_prompt_length=16384")  # what the train rule appends from the dataset
    cfg = compose(verl_config_dir, ov)
    from omegaconf import OmegaConf

    keys = [
        "algorithm.adv_estimator", "algorithm.use_kl_in_reward",
        "actor_rollout_ref.actor.use_kl_loss", "actor_rollout_ref.actor.optim.lr",
        "actor_rollout_ref.actor.optim.weight_decay", "actor_rollout_ref.actor.optim.optimizer",
        "actor_rollout_ref.actor.clip_ratio_low", "actor_rollout_ref.actor.clip_ratio_high",
        "actor_rollout_ref.actor.ppo_mini_batch_size", "data.train_batch_size",
        "data.max_prompt_length", "data.max_response_length", "data.mm_processor_kwargs",
        "actor_rollout_ref.rollout.name", "actor_rollout_ref.rollout.n",
        "actor_rollout_ref.rollout.temperature", "actor_rollout_ref.rollout.top_p",
        "actor_rollout_ref.rollout.val_kwargs", "actor_rollout_ref.model.path",
        "reward.reward_manager.name", "reward.custom_reward_function",
        "custom_reward_function", "trainer.total_epochs", "trainer.resume_mode",
        "trainer.default_local_dir", "trainer.nnodes", "trainer.n_gpus_per_node",
    ]
    values = {k: OmegaConf.select(cfg, k) for k in keys}
    print(f"\ncomposed verl {VERL_VERSION} config (paper settings):")
    for k, v in values.items():
        v = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        print(f"  {k} = {v}")
    a = cfg.actor_rollout_ref
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.algorithm.use_kl_in_reward is False
    assert a.actor.use_kl_loss is False and a.actor.optim.lr == 1e-6 and a.actor.optim.weight_decay == 0.01
    assert (a.actor.clip_ratio_low, a.actor.clip_ratio_high) == (0.2, 0.3)
    assert (cfg.data.train_batch_size, a.actor.ppo_mini_batch_size) == (384, 96)
    assert (a.rollout.name, a.rollout.n, a.rollout.temperature, a.rollout.top_p) == ("vllm", 8, 1.0, 1.0)
    vk = a.rollout.val_kwargs
    assert (vk.temperature, vk.top_p, vk.n, vk.do_sample) == (0.6, 0.95, 1, True)
    assert dict(cfg.data.mm_processor_kwargs) == {"min_pixels": 262144, "max_pixels": 16777216}
    assert cfg.data.max_response_length == 2048 and cfg.trainer.total_epochs == 3
    assert cfg.trainer.resume_mode == "auto" and cfg.trainer.default_local_dir == CKPT
    # the reward keys verl 0.9's main_ppo reads are ours; the legacy top-level ones stay unset
    rf = cfg.reward.custom_reward_function
    assert (rf.path, rf.name) == (REWARD, "compute_score")
    assert rf.reward_kwargs.judge_base_url == "http://judge-host:8000/v1"
    assert rf.reward_kwargs.format_weight == 0.0 and cfg.reward.reward_manager.name == "naive"
    assert all(v is None for v in cfg.custom_reward_function.values())
    # the rollout derives its lengths from data.*
    assert a.rollout.response_length == 2048 and a.rollout.prompt_length == 16384
    assert rf.reward_kwargs.judge_max_tokens == 2048


def test_multinode_overrides_compose(verl_config_dir):
    c = train_cfg(nodes=2, gpus_per_node=8, extra_overrides=["trainer.logger=[console,wandb]"])
    cfg = compose(verl_config_dir, build_overrides(c, TRAIN_FILES, VAL_FILES, REWARD, CKPT))
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 8)
    assert (cfg.data.train_batch_size, cfg.actor_rollout_ref.actor.ppo_mini_batch_size) == (512, 128)
    assert list(cfg.trainer.logger) == ["console", "wandb"]


@pytest.mark.parametrize(
    "bad",
    [
        "actor_rollout_ref.actor.clip_ratio_hihg=0.3",  # typo
        "reward_model.reward_managerr=naive",  # typo in a legacy section
        "actor_rollout_ref.rollout.val_kwargs.temprature=0.6",
    ],
)
def test_misspelled_key_fails(verl_config_dir, bad):
    from hydra.errors import ConfigCompositionException

    ov = [*build_overrides(train_cfg(), TRAIN_FILES, VAL_FILES, REWARD, CKPT), bad]
    with pytest.raises(ConfigCompositionException):
        compose(verl_config_dir, ov)


def test_single_node_command():
    assert single_node_command(["a=1", "b=2"], "py") == ["py", "-m", "verl.trainer.main_ppo", "a=1", "b=2"]


def test_multinode_script_exact_lines():
    script = multinode_script(["data.train_batch_size=512", "trainer.nnodes=1", "trainer.logger=[console]"], 2, 8, "python")
    assert script.splitlines() == [
        "#!/usr/bin/env bash",
        "set -euo pipefail",
        'mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'if [ "${#nodes[@]}" -lt 2 ]; then echo "need 2 nodes, allocation has ${#nodes[@]}" >&2; exit 1; fi',
        'head="${nodes[0]}"',
        '[ "$(hostname -s)" = "${head%%.*}" ] || echo "warning: expected to run on the first node $head" >&2',
        'head_ip="$(hostname --ip-address | awk \'{print $1}\')"',
        'address="$head_ip:6379"',
        "trap 'ray stop --force >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true' EXIT",
        'ray start --head --node-ip-address="$head_ip" --port=6379 --num-gpus=8 --disable-usage-stats',
        'for node in "${nodes[@]:1:1}"; do',
        '  srun --overlap --nodes=1 --ntasks=1 -w "$node" ray start --address "$address" --num-gpus=8 --block &',
        "done",
        'python -m r2i.train.launch --wait-gpus 16 --address "$address" --timeout 600',
        'export RAY_ADDRESS="$address"',
        "python -m verl.trainer.main_ppo data.train_batch_size=512 'trainer.logger=[console]' "
        "trainer.nnodes=2 trainer.n_gpus_per_node=8",
    ]
    with pytest.raises(ValueError):
        multinode_script([], 1, 8)
    assert shutil.which("bash") is None or subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_check_gpus_fails_at_once():
    has = lambda name: "/usr/bin/" + name  # noqa: E731
    with pytest.raises(NoGPUError, match="CUDA_VISIBLE_DEVICES"):
        check_gpus(8, env={"CUDA_VISIBLE_DEVICES": ""}, which=has, cuda_count=lambda: 8)
    with pytest.raises(NoGPUError, match="nvidia-smi"):
        check_gpus(8, env={}, which=lambda name: None, cuda_count=lambda: 8)
    with pytest.raises(NoGPUError, match="4 are visible"):
        check_gpus(8, env={}, which=has, cuda_count=lambda: 4)
    assert check_gpus(8, env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, which=has, cuda_count=lambda: 8) == 8
    # this machine (no GPU): the real check fails, whichever reason comes first
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(NoGPUError):
            check_gpus(1)


def test_dry_run_cli():
    res = subprocess.run(
        [sys.executable, "-m", "r2i.train.launch", "--dry-run", "--nodes", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "srun --overlap --nodes=1 --ntasks=1" in res.stdout and "trainer.nnodes=2" in res.stdout
    assert "reward.custom_reward_function.path=" in res.stdout


def test_rules_dry_run_and_lint(tmp_path):
    """A copy of the workflow with rules/train.smk included: dry run of the targets and lint."""
    for name in ("Snakefile", "rules", "config", "workflow", "scripts", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    sf = tmp_path / "Snakefile"
    text = sf.read_text()
    if 'include: "rules/train.smk"' not in text:
        sf.write_text(text.replace('include: "rules/synthesis.smk"', 'include: "rules/synthesis.smk"\ninclude: "rules/train.smk"'))
    target = "results/toy/train/qwen2_5_vl_7b/hf"
    res = subprocess.run([str(BIN / "snakemake"), "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "train " in out and "merge " in out
    res = subprocess.run([str(BIN / "snakemake"), "-n"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "rule train:" not in res.stdout, res.stdout + res.stderr
    res = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Congratulations" in res.stdout + res.stderr and "train.smk" not in res.stdout + res.stderr


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    return buf.getvalue()


def test_parquet_matches_rlhfdataset_expectations(tmp_path):
    """Rows written by the dataset stage's writer satisfy what verl's RLHFDataset needs."""
    row = {
        "data_source": "r2i",
        "prompt": [{"role": "user", "content": "<image>Which colour is the boxed cup? A. red B. blue"}],
        "images": [{"bytes": _png("red"), "path": "img0.png"}],
        "ability": "fine_grained_perception",
        "reward_model": {"style": "rule", "ground_truth": "A"},
        "extra_info": {"split": "train", "index": 0, "item_id": "x0", "options": ["red", "blue"]},
    }
    row2 = copy.deepcopy(row)
    row2["extra_info"]["index"] = 1
    path = tmp_path / "train.parquet"
    write_verl_parquet(path, [row, row2])
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 2
    for r in rows:
        assert isinstance(r["data_source"], str) and r["data_source"]
        assert isinstance(r["prompt"], list) and r["prompt"]
        assert all(set(m) == {"role", "content"} and m["role"] in {"system", "user", "assistant"} for m in r["prompt"])
        n_placeholders = sum(m["content"].count("<image>") for m in r["prompt"])
        assert n_placeholders == len(r["images"]) > 0
        for im in r["images"]:
            with Image.open(io.BytesIO(im["bytes"])) as pil:
                pil.load()
        assert r["reward_model"]["ground_truth"]
        assert isinstance(r["extra_info"]["index"], int)
    json.dumps(rows[0]["extra_info"])  # plain types only


def test_train_script_fails_at_once_without_gpus(tmp_path, monkeypatch):
    """scripts/train.py (the rule's script) stops before starting anything on a GPU-less machine."""
    import runpy
    from types import SimpleNamespace

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    fake = SimpleNamespace(
        params=SimpleNamespace(overrides=["a=1"], nodes=1, gpus_per_node=8, ckpt_dir=str(tmp_path / "ckpt")),
        log=[str(tmp_path / "train.log")],
        output=SimpleNamespace(done=str(tmp_path / "train.done.json")),
    )
    with pytest.raises(NoGPUError, match="CUDA_VISIBLE_DEVICES"):
        runpy.run_path(str(REPO / "scripts" / "train.py"), init_globals={"snakemake": fake})
    assert not (tmp_path / "train.done.json").exists()
