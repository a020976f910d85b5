"""End-to-end runs of the real workflow on a tiny toy world, with the simulated models.

The simulator and the toy world are test doubles; everything else (Snakemake rules, the model
client, caching, parquet) is the production code path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2i.toy.audit import audit_dataset

from .e2e import (
    SENTINEL,
    SimServer,
    cache_entries,
    copy_tree,
    dataset_rows,
    kill_tree,
    snakemake,
    start_snakemake,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.e2e
STAGES = ["objects", "crops", "questions", "answers", "mcq", "difficulty"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete default-style run (launched simulator, API key from the environment)."""
    wd = tmp_path_factory.mktemp("built")
    snakemake(wd, config=tiny_config(wd))
    return wd


def _stats(wd: Path, shard: str, stage: str) -> dict:
    return json.loads((wd / "results/toy/shards" / shard / f"{stage}.stats.json").read_text())


def test_dataset_builds_and_is_right(built: Path) -> None:
    ds_dir = built / "results/toy/dataset"
    import datasets

    ds = datasets.load_dataset(
        "parquet",
        data_files={"train": str(ds_dir / "train.parquet"), "validation": str(ds_dir / "val.parquet")},
    )
    n = ds["train"].num_rows + ds["validation"].num_rows
    assert n >= 5
    row = ds["train"][0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("<image>")
    assert row["reward_model"]["ground_truth"] in "ABCD"
    assert isinstance(row["images"][0]["bytes"], bytes)
    assert {"question", "dimension", "box", "image_hash"} <= set(row["extra_info"])

    audit = audit_dataset([ds_dir / "train.parquet", ds_dir / "val.parquet"], built / "resources/toy")
    assert audit.items == n and audit.accuracy >= 0.95, audit.to_dict()

    funnel = json.loads((ds_dir / "funnel.json").read_text())
    assert {"too_small", "truncated", "not_an_image"} <= set(funnel["manifest"]["by_reason"])
    reasons = {s["stage"]: s["reasons"] for s in funnel["stages"]}
    assert reasons["objects"].keys() & {"not_unique", "low_score", "not_found"}
    assert "too_large" in reasons["crops"]
    assert "invalid_question" in reasons["questions"]
    assert reasons["difficulty"].get("too_easy", 0) > 0
    assert (ds_dir / "README.md").read_text().count("SIMULATED") == 1
    contamination = json.loads((ds_dir / "contamination.json").read_text())
    assert contamination["checked_against"] == ["toy_zoombench"] and contamination["contaminated"] == []


def test_api_key_never_written(built: Path) -> None:
    leaked = []
    for path in built.rglob("*"):
        if path.is_file() and SENTINEL.encode() in path.read_bytes():
            leaked.append(str(path))
    assert not leaked
    # ...and the key was really used: the simulator requires it (--api-key-env).
    assert _stats(built, "000", "objects")["calls"]["requests_sent"] > 0


def test_attention_coverage_end_to_end(built: Path) -> None:
    """The attention rule on the tiny random Qwen2.5-VL (built by the tiny_vlm rule): per-item
    rows, per-dimension summary, heat maps; a random model's coverage sits at the box share."""
    pytest.importorskip("torch")
    d = built / "results/toy/attention/tiny-random-qwen2_5_vl/toy_zoombench"
    summary = json.loads((d / "summary.json").read_text())
    rows = [json.loads(line) for line in (d / "coverage.jsonl").read_text().splitlines()]
    assert summary["n"] == len(rows) > 0 and summary["tiny_random_model"] is True
    assert summary["layer_requested"] == 24 and summary["layer"] == summary["n_layers"] - 1
    assert set(summary["per_dimension"]) == {r["dimension"] for r in rows}
    assert all(0 <= r["coverage"] <= 1 and 0 < r["box_share"] <= 1 for r in rows)
    share = summary["mean_box_share"]
    assert abs(summary["mean_coverage"] - share) < 0.25 * share + 1e-3, summary
    maps = sorted((d / "heatmaps").glob("*.png"))
    assert 0 < len(maps) <= 6


def test_report_has_every_item_and_renders(built: Path, tmp_path: Path) -> None:
    """`snakemake --report` on the finished run: every report item is in it; rendered in
    headless Chromium, every page shows its plot or images and none is broken."""
    rep = built / "results/toy/report"
    items = ["synthesis/funnel.svg", "synthesis/gallery.html", "synthesis/cost.svg",
             "synthesis/cost.html", "evaluation/accuracy.svg", "evaluation/throughput.svg",
             "attention/coverage.svg", "run/run.html"]
    for name in items:
        assert (rep / name).stat().st_size > 1000, name
    gallery = (rep / "synthesis/gallery.html").read_text()
    assert gallery.count("class='card kept'") >= 3 and gallery.count("class='card dropped'") >= 3
    assert "dropped at difficulty: too_easy" in gallery and "Teacher votes" in gallery
    cost = json.loads((rep / "synthesis/cost.json").read_text())
    assert cost["totals"]["calls"] > 0 and cost["totals"]["prompt_tokens"] > 0
    assert cost["totals"]["kept_items"] == sum(
        json.loads((built / "results/toy/dataset/funnel.json").read_text())["splits"].values())
    run = (rep / "run/run.html").read_text()
    assert "snakemake" in run and "api_key_env" in run and SENTINEL not in run

    out = tmp_path / "report.html"
    snakemake(built, "--report", str(out), config=tiny_config(built))
    text = out.read_text(errors="replace")
    for name in items:
        assert Path(name).name in text, name
    assert "heatmaps" in text and SENTINEL not in text

    pytest.importorskip("playwright", reason="rendering the report needs playwright")
    from r2i.report.screenshots import ChromiumNotFoundError, capture, find_chromium

    try:
        find_chromium()
    except ChromiumNotFoundError as exc:
        pytest.skip(str(exc))
    summary = capture(out, tmp_path / "shots", items=4)
    assert summary["ok"], summary["problems"]
    pages = summary["pages"]
    results = {p["result"] for p in pages.values() if p.get("result")}
    assert {f"results/toy/report/{n}" for n in items} <= results, results
    for p in pages.values():
        if (p.get("result") or "").endswith((".svg", ".png")):
            assert p["images_rendered"] >= 1 and p["images_broken"] == 0, p
    gallery_page = next(p for p in pages.values() if (p.get("result") or "").endswith("gallery.html"))
    assert gallery_page["images_rendered"] >= 6, gallery_page


def test_noop_rerun_does_nothing(built: Path) -> None:
    res = snakemake(built, "-n", config=tiny_config(built))
    assert "Nothing to be done" in res.stdout + res.stderr


def test_downstream_change_sends_zero_requests(built: Path, tmp_path: Path) -> None:
    """A stricter consensus: the shards rerun, `answers` onwards is recomputed from the call
    cache and the stage memo reuses objects/crops/questions; the server sees no request."""
    wd = tmp_path / "wd"
    copy_tree(built, wd)
    server = SimServer(wd / "resources/toy", wd / "sim.log")
    try:
        # Moving the endpoint from `launch` to a standing server is not a param of the model
        # stages: no synthesis job reruns (the dataset card notes whether the models were simulated).
        cfg = tiny_config(wd, base_url=server.url)
        assert "synthesize" not in snakemake(wd, "-n", config=cfg).stdout
        cfg = tiny_config(wd, base_url=server.url, synthesis__answers={"min_agreement": 0.875})
        res = snakemake(wd, config=cfg)
        assert server.requests() == 0, server.stats()
    finally:
        server.close()
    assert "synthesize" in res.stdout + res.stderr
    for shard in ("000", "001"):
        for s in ("objects", "crops", "questions"):
            st = _stats(wd, shard, s)
            assert st["from_memo"] is True, (shard, s)
            assert (wd / f"results/toy/shards/{shard}/{s}.parquet").read_bytes() == (
                built / f"results/toy/shards/{shard}/{s}.parquet").read_bytes()
        for s in ("answers", "mcq", "difficulty"):
            st = _stats(wd, shard, s)
            assert st["from_memo"] is False and st["calls"]["requests_sent"] == 0
            assert st["calls"]["cache_hits"] == st["calls"]["calls"]
    kept = [_stats(wd, sh, "answers")["kept"] for sh in ("000", "001")]
    kept_before = [_stats(built, sh, "answers")["kept"] for sh in ("000", "001")]
    assert sum(kept) < sum(kept_before), "the stricter threshold drops items"
    log = (wd / "results/logs/toy/shards/000/synthesize.log").read_text()
    assert "endpoints started: none" in log


def test_one_image_change_reruns_one_shard(built: Path, tmp_path: Path) -> None:
    """An image keeps its shard when its bytes change (the shard comes from its path)."""
    from PIL import Image

    wd = tmp_path / "wd"
    copy_tree(built, wd)
    shards = {p.name: json.loads(p.read_text()) for p in (wd / "results/toy/manifest/shards").glob("*.json")}
    target = next(img for s in shards.values() for img in s["images"])
    path = wd / "resources/toy/pools/toy" / Path(target["path"]).name
    img = Image.open(path).convert("RGB")
    img.putpixel((0, 0), (1, 2, 3))
    img.save(path)
    dry = snakemake(wd, "-n", config=tiny_config(wd)).stdout
    assert "manifest" in dry
    snakemake(wd, config=tiny_config(wd))
    rerun = {
        shard for shard in ("000", "001")
        if (wd / f"results/toy/shards/{shard}/objects.parquet").stat().st_mtime_ns
        > (built / f"results/toy/shards/{shard}/objects.parquet").stat().st_mtime_ns
    }  # fmt: skip
    changed = {
        name.removeprefix("shard-").removesuffix(".json")
        for name, s in shards.items()
        if s != json.loads((wd / "results/toy/manifest/shards" / name).read_text())
    }
    assert len(changed) == 1 and rerun == changed


# ------------------------------------------------------------------------- kill and resume
@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """World generated and manifest built; no model-backed stage has run yet."""
    wd = tmp_path_factory.mktemp("prepared")
    snakemake(wd, "--until", "manifest", config=tiny_config(wd))
    return wd


@pytest.fixture(scope="module")
def clean_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    wd = tmp_path_factory.mktemp("clean") / "wd"
    copy_tree(prepared, wd)
    server = SimServer(wd / "resources/toy", wd / "sim.log")
    try:
        snakemake(wd, config=tiny_config(wd, base_url=server.url))
        n = server.requests()
    finally:
        server.close()
    assert n == cache_entries(wd / "cache"), "a clean run sends every distinct call exactly once"
    return wd, n


@pytest.mark.parametrize("kill_at", [0.1, 0.5, 0.9])
def test_kill_and_resume_loses_nothing_and_resends_nothing(
    prepared: Path, clean_run: tuple[Path, int], tmp_path: Path, kill_at: float
) -> None:
    """SIGKILL the whole run (Snakemake and its jobs) when a share of the calls is done."""
    clean_wd, n_calls = clean_run
    wd = tmp_path / "wd"
    copy_tree(prepared, wd)
    server = SimServer(wd / "resources/toy", wd / "sim.log", latency=0.01)
    try:
        cfg = tiny_config(wd, base_url=server.url)
        proc = start_snakemake(wd, cfg)
        hit = wait_for(lambda: cache_entries(wd / "cache") >= kill_at * n_calls, 600, proc)
        assert hit and proc.poll() is None, "the run ended before the kill point"
        kill_tree(proc)
        cached_at_kill = cache_entries(wd / "cache")
        sent_before = server.requests()
        assert 0 < cached_at_kill < n_calls
        snakemake(wd, "--unlock", config=cfg)
        snakemake(wd, config=cfg)
        resent = server.requests() - sent_before
    finally:
        server.close()
    # Every call completed before the kill came from the cache; only the rest was sent.
    assert resent == n_calls - cached_at_kill
    assert cache_entries(wd / "cache") == n_calls
    got, want = dataset_rows(wd), dataset_rows(clean_wd)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k]["reward_model"] == want[k]["reward_model"]
        assert got[k]["images"][0]["bytes"] == want[k]["images"][0]["bytes"]
        assert got[k]["extra_info"]["options"] == want[k]["extra_info"]["options"]
