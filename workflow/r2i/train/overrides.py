"""Build verl ``main_ppo`` Hydra overrides from the ``train`` config section.

Key names are verl 0.9's (``verl/trainer/config/ppo_trainer.yaml`` and its defaults list;
``_generated_ppo_trainer.yaml`` shows the flattened tree). Notes on the less obvious ones:

* Reward: verl 0.9 reads ``reward.custom_reward_function.{path,name}`` and
  ``reward.reward_manager.name``. The old top-level ``custom_reward_function.*`` keys still exist
  in the tree (``legacy_reward_impl.yaml``) but ``main_ppo`` never migrates them, so they are
  silently ignored; we never set them. ``reward_kwargs`` is not in verl's tree, hence ``+``.
* KL off (the method: no reference model): ``algorithm.use_kl_in_reward=False`` and
  ``actor_rollout_ref.actor.use_kl_loss=False``; with both off verl builds no reference worker.
* Image pixels: verl passes ``data.mm_processor_kwargs`` to the HF processor call (RLHFDataset
  and the agent loop); the dict is empty in verl's tree, hence ``++`` (add or replace).
* Validation sampling needs ``val_kwargs.do_sample=True`` (verl's default is greedy).
* ``trainer.resume_mode=auto`` with a fixed ``trainer.default_local_dir`` makes a rerun of the
  same job continue from ``latest_checkpointed_iteration.txt``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Paper values (spec "Training (GRPO)"): (rollout batch, actor global batch) per geometry.
SINGLE_NODE_BATCH = (384, 96)
MULTI_NODE_BATCH = (512, 128)

_PLAIN = re.compile(r"^[A-Za-z0-9_./:~-]+$")


def hydra_value(value: Any) -> str:
    """Render a Python value as a Hydra override value (quoted where the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in {"null", "true", "false", "none"}:
        return text
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def batch_sizes(train_cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(train_batch_size, ppo_mini_batch_size): configured values or the paper's per geometry."""
    default = SINGLE_NODE_BATCH if int(train_cfg.get("nodes", 1)) == 1 else MULTI_NODE_BATCH
    train_bs = train_cfg.get("train_batch_size") or default[0]
    mini_bs = train_cfg.get("ppo_mini_batch_size") or default[1]
    if mini_bs > train_bs:
        raise ValueError(f"train.ppo_mini_batch_size ({mini_bs}) > train.train_batch_size ({train_bs})")
    return int(train_bs), int(mini_bs)


def build_overrides(
    train_cfg: Mapping[str, Any],
    train_files: str | Path,
    val_files: str | Path,
    reward_path: str | Path,
    out_dir: str | Path,
    experiment_name: str | None = None,
) -> list[str]:
    """verl ``main_ppo`` overrides (``key=value`` strings) for one training run.

    ``train_cfg`` is the validated ``train`` section (defaults filled). ``out_dir`` is the
    checkpoint directory (``trainer.default_local_dir``): keep it fixed so that
    ``resume_mode=auto`` resumes. ``experiment_name`` is used when the config leaves it null.
    ``train.extra_overrides`` are appended last, so they win.
    """
    c = train_cfg
    reward = c.get("reward", {})
    train_bs, mini_bs = batch_sizes(c)
    exp = c.get("experiment_name") or experiment_name or c["name"]
    arr = "actor_rollout_ref"
    if c.get("min_pixels") is None or c.get("max_pixels") is None:
        raise ValueError("train.min_pixels/max_pixels must be resolved first "
                         "(r2i.train.budget.effective_train_config)")
    kv: list[tuple[str, Any]] = [
        # data (verl RLHFDataset layout written by the dataset stage)
        ("data.train_files", str(train_files)),
        ("data.val_files", str(val_files)),
        ("data.prompt_key", "prompt"),
        ("data.image_key", "images"),
        ("data.train_batch_size", train_bs),
        ("data.max_response_length", c["max_response_length"]),
        ("data.filter_overlong_prompts", c["filter_overlong_prompts"]),
        # data.max_prompt_length: below (configured) or appended by the train rule from the
        # dataset (null: derived from the largest item, r2i.train.budget)
        ("data.truncation", "error"),
        ("++data.mm_processor_kwargs.min_pixels", c["min_pixels"]),
        ("++data.mm_processor_kwargs.max_pixels", c["max_pixels"]),
        # algorithm: GRPO, no KL in the reward
        ("algorithm.adv_estimator", c["adv_estimator"]),
        ("algorithm.use_kl_in_reward", False),
        # model and actor
        (f"{arr}.model.path", c["base_model"]),
        (f"{arr}.model.use_remove_padding", True),
        (f"{arr}.model.enable_gradient_checkpointing", True),
        (f"{arr}.actor.optim.lr", c["lr"]),
        (f"{arr}.actor.optim.weight_decay", c["weight_decay"]),
        (f"{arr}.actor.ppo_mini_batch_size", mini_bs),
        (f"{arr}.actor.ppo_micro_batch_size_per_gpu", c["micro_batch_size_per_gpu"]),
        (f"{arr}.actor.clip_ratio_low", c["clip_ratio_low"]),
        (f"{arr}.actor.clip_ratio_high", c["clip_ratio_high"]),
        (f"{arr}.actor.use_kl_loss", bool(c["kl"])),
        (f"{arr}.actor.entropy_coeff", 0),
        # rollout
        (f"{arr}.rollout.name", c["rollout_engine"]),
        (f"{arr}.rollout.n", c["rollout_n"]),
        (f"{arr}.rollout.temperature", c["temperature"]),
        (f"{arr}.rollout.top_p", c["top_p"]),
        (f"{arr}.rollout.tensor_model_parallel_size", c["tensor_parallel_size"]),
        (f"{arr}.rollout.gpu_memory_utilization", c["gpu_memory_utilization"]),
        (f"{arr}.rollout.log_prob_micro_batch_size_per_gpu", c["micro_batch_size_per_gpu"]),
        (f"{arr}.rollout.val_kwargs.do_sample", True),
        (f"{arr}.rollout.val_kwargs.temperature", c["val_temperature"]),
        (f"{arr}.rollout.val_kwargs.top_p", c["val_top_p"]),
        (f"{arr}.rollout.val_kwargs.n", c["val_n"]),
        # reward: our custom function (verl 0.9 keys)
        ("reward.reward_manager.name", reward.get("reward_manager", "naive")),
        ("reward.custom_reward_function.path", str(reward_path)),
        ("reward.custom_reward_function.name", reward.get("function", "compute_score")),
        ("+reward.custom_reward_function.reward_kwargs.format_weight", float(reward.get("format_weight", 0.0))),
    ]
    if reward.get("judge_base_url"):
        kw = "+reward.custom_reward_function.reward_kwargs"
        kv += [
            (f"{kw}.judge_base_url", reward["judge_base_url"]),
            (f"{kw}.judge_model", reward.get("judge_model", "judge")),
            (f"{kw}.judge_max_concurrency", reward.get("judge_max_concurrency", 64)),
            (f"{kw}.judge_max_tokens", reward.get("judge_max_tokens", 2048)),
        ]
        if reward.get("judge_api_key_env"):
            kv.append((f"{kw}.judge_api_key_env", reward["judge_api_key_env"]))
    kv += [
        # trainer
        ("trainer.project_name", c["project_name"]),
        ("trainer.experiment_name", exp),
        ("trainer.logger", list(c["logger"])),
        ("trainer.nnodes", c["nodes"]),
        ("trainer.n_gpus_per_node", c["gpus_per_node"]),
        ("trainer.total_epochs", c["epochs"]),
        ("trainer.save_freq", c["save_freq"]),
        ("trainer.test_freq", c["test_freq"]),
        ("trainer.val_before_train", c["val_before_train"]),
        ("trainer.resume_mode", c["resume_mode"]),
        ("trainer.default_local_dir", str(out_dir)),
    ]
    if c.get("max_prompt_length") is not None:
        kv.append(("data.max_prompt_length", c["max_prompt_length"]))
    return [f"{k}={hydra_value(v)}" for k, v in kv] + [str(o) for o in c.get("extra_overrides", [])]


def prompt_length_override(train_cfg: Mapping[str, Any], parquets: Sequence[str | Path]) -> list[str]:
    """The ``data.max_prompt_length`` override the train rule adds at run time: derived from the
    dataset when ``train.max_prompt_length`` is null; otherwise none (it is in
    :func:`build_overrides`), after checking that every item fits (ValueError otherwise)."""
    from r2i.train.budget import check_prompt_budget, derive_max_prompt_length

    lo, hi = int(train_cfg["min_pixels"]), int(train_cfg["max_pixels"])
    if train_cfg.get("max_prompt_length") is None:
        return [f"data.max_prompt_length={derive_max_prompt_length(parquets, lo, hi)}"]
    check_prompt_budget(parquets, int(train_cfg["max_prompt_length"]), lo, hi)
    return []
