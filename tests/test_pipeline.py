"""The streaming synthesis job of one shard (r2i.synthesis.entry.run_shard), without Snakemake.

The toy world and the simulated server are test doubles; the job body, the client and the cache
are the production code.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from r2i.synthesis.entry import StageError, run_shard
from r2i.synthesis.pipeline import STAGES
from r2i.synthesis.records import read_rows
from r2i.toy.world import generate_world

from .e2e import REPO, SENTINEL, SimServer, cache_entries


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "toy"
    generate_world(out, seed=0, n_scenes=2, n_benchmark_scenes=1, short_side=2000)
    return out


def _images(world: Path) -> list[dict[str, Any]]:
    imgs = []
    for p in sorted((world / "pools" / "toy").glob("toy_*.png")):
        imgs.append({"hash": hashlib.sha256(p.read_bytes()).hexdigest(), "path": str(p),
                     "pool": "toy", "rel_path": p.name})
    return imgs


def _setup(tmp: Path, world: Path, url: str, **endpoint: Any) -> tuple[dict, dict, str, dict]:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    from r2i.config import validate_config

    cfg["cache_dir"] = str(tmp / "cache")
    cfg["results_dir"] = str(tmp / "results")
    cfg["segmenter"]["sim"]["world"] = str(world)
    cfg["endpoints"]["sim"] = {"base_url": url, "api_key_env": "R2I_TEST_API_KEY",
                               "max_concurrency": 8, **endpoint}
    validate_config(cfg)
    prompts = {k: str(REPO / v) if not Path(v).is_absolute() and (REPO / v).exists() else v
               for k, v in cfg["prompts"].items()}
    roles = {"objects": ["teacher"], "crops": [], "questions": ["teacher"],
             "answers": ["teacher", "teacher_b", "consensus"], "mcq": ["teacher"],
             "difficulty": ["student", "judge"]}
    params = {
        "stages": {s: {"settings": cfg["synthesis"][s],
                       "models": {r: {"model": cfg["models"][r]["model"],
                                      "max_image_pixels": cfg["models"][r]["max_image_pixels"]}
                                  for r in roles[s]},
                       "prompts": prompts} for s in STAGES},
        "segmenter": cfg["segmenter"],
    }
    shard = tmp / "shard-000.json"
    shard.write_text(json.dumps({"images": _images(world)}))
    outputs = {s: (str(tmp / "out" / f"{s}.parquet"), str(tmp / "out" / f"{s}.stats.json"))
               for s in STAGES}
    return cfg, params, str(shard), outputs


def _run(cfg: dict, params: dict, shard: str, outputs: dict, log: Path) -> None:
    run_shard(shard_list=shard, outputs=outputs, params=params, config=cfg, log_file=str(log))


def test_stream_overlaps_stages_and_writes_every_table(world: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2I_TEST_API_KEY", SENTINEL)
    import r2i.synthesis.entry as entry

    prewarms: list[int] = []
    real_prewarm = entry.prewarm_in_background
    monkeypatch.setattr(entry, "prewarm_in_background",
                        lambda: (prewarms.append(1), real_prewarm())[-1])
    server = SimServer(world, tmp_path / "sim.log", latency=0.05)
    try:
        cfg, params, shard, outputs = _setup(tmp_path, world, server.url, max_concurrency=4)
        _run(cfg, params, shard, outputs, tmp_path / "job.log")
        n = server.requests()
    finally:
        server.close()
    assert prewarms == [1]  # pyarrow imported once, in the background, when the first image was done
    stats = {s: json.loads(Path(outputs[s][1]).read_text()) for s in STAGES}
    for s in STAGES:
        rows = read_rows(outputs[s][0])
        assert [r.item_id for r in rows] == sorted(r.item_id for r in rows)
        assert stats[s]["rows"] == len(rows) and stats[s]["from_memo"] is False
    assert stats["difficulty"]["items_in"] > 0
    sent = sum(stats[s]["calls"]["requests_sent"] for s in STAGES)
    assert sent == n == cache_entries(tmp_path / "cache")  # per-stage figures add up
    # Streaming: every later stage started before the one before it had finished (4 request
    # slots, dozens of items: the stages overlap instead of running one after the other).
    assert "endpoints started: sim" in (tmp_path / "job.log").read_text()
    for before, after in itertools.pairwise(STAGES[1:]):
        assert stats[after]["started_s"] < stats[before]["ended_s"], (before, after, stats)


def test_persistent_failures_fail_the_job_and_the_rerun_sends_only_them(
        world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("R2I_TEST_API_KEY", SENTINEL)
    # 8% of requests fail with HTTP 500 and no retries are allowed: some items fail for good.
    server = SimServer(world, tmp_path / "sim.log", latency=0.0, extra=("--fault-500", "0.08"))
    try:
        cfg, params, shard, outputs = _setup(tmp_path, world, server.url, max_retries=0)
        with pytest.raises(StageError, match=r"items failed after retries .*rerun the job"):
            _run(cfg, params, shard, outputs, tmp_path / "job.log")
        assert not any(Path(t).exists() or Path(s).exists() for t, s in outputs.values())
        first = server.stats()
        cached = cache_entries(tmp_path / "cache")
        assert first["faults"]["500"] > 0 and cached == first["completed"]
    finally:
        server.close()
    clean = SimServer(world, tmp_path / "sim2.log", latency=0.0)
    try:
        cfg2 = copy.deepcopy(cfg)
        cfg2["endpoints"]["sim"]["base_url"] = clean.url
        _run(cfg2, params, shard, outputs, tmp_path / "job2.log")
        resent = clean.requests()
    finally:
        clean.close()
    total = cache_entries(tmp_path / "cache")
    # Only what had not completed was sent again: no completed call was repeated.
    assert resent == total - cached > 0
    assert all(Path(t).exists() for t, _ in outputs.values())
