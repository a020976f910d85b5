"""Config validation: unknown keys and wrong types fail before any job, naming the key."""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from r2i.config import ConfigError, load_config, validate_config

from .conftest import REPO, snakemake_cmd


def _default() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_method_defaults():
    cfg = load_config(REPO / "config" / "config.yaml")
    s = cfg["synthesis"]
    assert s["objects"]["min_score"] == 0.75 and s["objects"]["temperature"] == 0.7
    assert s["objects"]["min_objects"] == 3
    assert s["crops"]["max_area_fraction"] == 0.10 and s["crops"]["upscale"] == 2.0
    assert s["questions"]["per_crop"] == 3 and s["questions"]["n_examples"] == 15
    assert (s["questions"]["temperature"], s["questions"]["top_p"]) == (0.9, 0.8)
    assert s["questions"]["validate_temperature"] == 0.3
    assert s["answers"]["samples_per_teacher"] == 4 and s["answers"]["min_agreement"] == 0.75
    assert (s["answers"]["temperature"], s["answers"]["top_p"]) == (0.7, 0.9)
    assert s["mcq"]["box_expand"] == 0.05 and s["mcq"]["box_width"] == 5 and s["mcq"]["n_distractors"] == 3
    assert s["difficulty"]["samples"] == 4 and s["difficulty"]["temperature"] == 1.0
    assert s["difficulty"]["drop_if_correct_at_least"] == 2
    assert cfg["manifest"]["min_side"] == 1200


def test_unknown_key_is_named():
    cfg = _default()
    cfg["synthesis"] = {"answers": {"min_agreemnt": 0.5}}
    with pytest.raises(ConfigError, match=r"synthesis\.answers\.min_agreemnt': unknown key"):
        validate_config(cfg)


def test_wrong_type_is_named():
    cfg = _default()
    cfg["manifest"]["shards"] = "four"
    with pytest.raises(ConfigError, match=r"manifest\.shards'.*not of type 'integer'"):
        validate_config(cfg)


def test_undefined_endpoint_and_both_endpoint_modes():
    cfg = _default()
    cfg["models"]["judge"]["endpoint"] = "nowhere"
    with pytest.raises(ConfigError, match=r"models\.judge\.endpoint"):
        validate_config(copy.deepcopy(cfg))
    cfg = _default()
    cfg["endpoints"]["sim"]["base_url"] = "http://127.0.0.1:1"
    with pytest.raises(ConfigError, match=r"endpoints\.sim': set exactly one"):
        validate_config(cfg)


def test_api_key_env_must_be_a_name():
    cfg = _default()
    cfg["endpoints"]["sim"]["api_key_env"] = "sk-live-1234 5678"
    with pytest.raises(ConfigError, match=r"api_key_env"):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("bogus_key=1", "bogus_key"),
        ("manifest={'shards': 'four'}", "manifest.shards"),
    ],
)
def test_snakemake_fails_before_any_job(tmp_path, override, key, env_with_bin):
    res = subprocess.run(
        [*snakemake_cmd(), "-n", "--directory", str(REPO), "--config", override,
         f"results_dir={tmp_path / 'results'}"],
        capture_output=True, text=True, env=env_with_bin, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert res.returncode != 0
    assert f"config key '{key}'" in res.stdout + res.stderr
    assert not (tmp_path / "results").exists()
