"""Reliability (issue 12): orphan-proof launched servers, fail-fast base_url, pool-signature
walk with link loops, key redaction at every offset, one endpoint log per job, damaged cache
records. The simulator (``r2i-sim-server``) used here is a test double of a model server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from r2i.client import CallCache, EndpointConfig, EndpointStartError, ModelCallError, ModelClient
from r2i.client import endpoint as ep
from r2i.client.endpoint import free_port, open_endpoint
from r2i.client.errors import redact


@contextlib.asynccontextmanager
async def _local_server(method: str, path: str, handler: Any) -> AsyncIterator[str]:
    """A throw-away aiohttp server on loopback with one route; yields its base URL."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


BIN = Path(sys.executable).parent
KEY = "sk-live-" + "Q7wZ3kP9xR2mV8bN4cT6yH1jL5dF0gS"


def _procs_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment contains ``marker`` (Linux /proc)."""
    out = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state != b"Z":
            out.append(int(entry))
    return out


def _wait(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


JOB = textwrap.dedent("""
    import asyncio, sys, time
    from r2i.client import EndpointConfig
    from r2i.client.endpoint import open_endpoint

    async def main():
        cfg = EndpointConfig(name="sim", launch=sys.argv[1], startup_timeout_s=120)
        async with open_endpoint(cfg, log_path=sys.argv[2]) as url:
            print("READY", url, flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
""")


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique environment marker; every process still carrying it is killed afterwards."""
    m = f"R2I_ORPHAN_TEST={uuid.uuid4().hex}"
    yield m
    for pid in _procs_with_marker(m):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["job", "job-and-group"])
def test_launched_server_dies_with_its_job(tmp_path: Path, marker: str, how: str) -> None:
    """SIGKILL the job process (alone, or with its whole process group as when Snakemake's
    group is killed): the server it launched and the worker the server forked are gone within
    seconds (point 2)."""
    name, value = marker.split("=")
    env = dict(os.environ, **{name: value}, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    # The shell backgrounds a "worker" (sleep) in the server's group, like vLLM's engine cores.
    launch = "sleep 3600 & r2i-sim-server --host 127.0.0.1 --port {port}"
    job = subprocess.Popen([sys.executable, "-c", JOB, launch, str(tmp_path / "ep.log")],
                           stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        line = job.stdout.readline() if job.stdout else ""
        assert line.startswith("READY"), (tmp_path / "ep.log").read_text()
        server = [p for p in _procs_with_marker(marker) if p != job.pid]
        assert len(server) >= 3, "supervisor/shell, sleep worker and the server should be running"
        if how == "job":
            os.kill(job.pid, signal.SIGKILL)
        else:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=10)
        assert _wait(lambda: not _procs_with_marker(marker), 20), (
            f"left running after the job was killed: {_procs_with_marker(marker)}")
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def test_clean_stop_and_startup_failure_leave_nothing(tmp_path: Path, marker: str) -> None:
    name, value = marker.split("=")
    os.environ[name] = value
    try:
        async def run() -> None:
            cfg = EndpointConfig(name="sim", launch="sleep 3600 & r2i-sim-server --port {port}")
            async with open_endpoint(cfg, log_path=tmp_path / "ok.log"):
                assert _procs_with_marker(marker)
            bad = EndpointConfig(name="bad", launch="sleep 3600 & echo {port}; exit 3")
            with pytest.raises(EndpointStartError, match=r"exited with code 3"):
                async with open_endpoint(bad, log_path=tmp_path / "bad.log"):
                    pass

        asyncio.run(run())
        ours = [p for p in _procs_with_marker(marker) if p != os.getpid()]
        assert _wait(lambda: not [p for p in _procs_with_marker(marker) if p != os.getpid()], 20), ours
    finally:
        del os.environ[name]


# ------------------------------------------------------------------------- point 3: fail fast
def test_refused_base_url_fails_within_seconds() -> None:
    port = free_port()  # nothing listens there
    cfg = EndpointConfig(name="teacher", base_url=f"http://127.0.0.1:{port}/v1",
                         startup_timeout_s=900)

    async def run() -> None:
        async with open_endpoint(cfg):
            pass

    t0 = time.monotonic()
    with pytest.raises(EndpointStartError) as info:
        asyncio.run(asyncio.wait_for(run(), timeout=60))
    msg = str(info.value)
    assert "'teacher'" in msg and f"http://127.0.0.1:{port}" in msg and "base_url" in msg
    assert time.monotonic() - t0 < 60  # far below the 900 s startup timeout


def test_unknown_host_base_url_fails_fast() -> None:
    cfg = EndpointConfig(name="judge", base_url="http://no-such-host.invalid:8000")

    async def run() -> None:
        async with open_endpoint(cfg):
            pass

    with pytest.raises(EndpointStartError, match=r"no-such-host\.invalid"):
        asyncio.run(asyncio.wait_for(run(), timeout=60))


def test_base_url_that_answers_not_ready_still_waits() -> None:
    """A standing server that is up but loading (HTTP 503) is waited for, not failed at once."""
    state = {"n": 0}

    async def health(request: web.Request) -> web.Response:
        state["n"] += 1
        return web.Response(status=200 if state["n"] > 8 else 503)

    async def run() -> None:
        async with (_local_server("GET", "/health", health) as url,
                    open_endpoint(EndpointConfig(name="s", base_url=url)) as got):
            assert got == url

    asyncio.run(run())
    assert state["n"] > 8


# ------------------------------------------------------------------------- point 4: link loops
def test_pool_signature_walk_ends_on_link_loops(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    (pool / "a.png").write_bytes(b"x")
    (pool / "sub" / "b.png").write_bytes(b"y")
    os.symlink(".", pool / "loop1")
    os.symlink(".", pool / "loop2")
    os.symlink("..", pool / "sub" / "up")
    code = ("import json, sys; from r2i.poolsig import pool_signature; "
            "print(json.dumps(pool_signature({'p': sys.argv[1]})))")
    res = subprocess.run([sys.executable, "-c", code, str(pool)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    sig = json.loads(res.stdout)
    assert sig["files"] == 2
    assert sig["skipped_dirs"] == {"p": ["loop1", "loop2", "sub/up"]}

    from r2i import poolsig
    from r2i.manifest import iter_pool_files

    entries, _ = poolsig.walk_pool(pool)
    assert [e[0] for e in entries] == [rel for rel, _ in iter_pool_files(pool)]


def test_pool_signature_without_links_has_no_skipped_key(tmp_path: Path) -> None:
    from r2i.poolsig import pool_signature

    (tmp_path / "a.png").write_bytes(b"x")
    assert set(pool_signature({"p": str(tmp_path)})) == {"signature", "files", "missing"}


# ------------------------------------------------------------------------- point 5: redaction
def _leaks(text: str) -> list[str]:
    """Pieces of KEY (8+ characters) that appear in ``text``."""
    secret = KEY[len("sk-live-"):]
    return [secret[i:i + 8] for i in range(len(secret) - 7) if secret[i:i + 8] in text]


@pytest.mark.parametrize("status", [400, 500])
def test_echoed_key_never_leaks_at_any_offset(status: int, caplog: pytest.LogCaptureFixture) -> None:
    """A server echoing the key at every offset of its error body: no part of the key reaches
    the exception or the logs (client error bodies are cut to 200/300 characters)."""
    offsets = list(range(0, 360))
    state = {"i": 0}

    async def chat(request: web.Request) -> web.Response:
        off = offsets[state["i"] % len(offsets)]
        state["i"] += 1
        return web.Response(status=status, text="e" * off + KEY + " trailing text " * 20)

    async def run() -> list[str]:
        msgs = []
        async with _local_server("POST", "/v1/chat/completions", chat) as url:
            os.environ["R2I_REDACT_TEST_KEY"] = KEY
            try:
                cfg = EndpointConfig(name="hostile", base_url=url, api_key_env="R2I_REDACT_TEST_KEY",
                                     max_retries=0, backoff_base_s=0, backoff_max_s=0)
                client = ModelClient(cfg)
                try:
                    for i in offsets:
                        with pytest.raises(ModelCallError) as info:
                            await client.chat(model="m", seed=i,
                                              messages=[{"role": "user", "content": str(i)}])
                        msgs.append(str(info.value))
                finally:
                    await client.aclose()
            finally:
                del os.environ["R2I_REDACT_TEST_KEY"]
        return msgs

    with caplog.at_level(logging.DEBUG):
        msgs = asyncio.run(run())
    assert len(msgs) == len(offsets)
    leaked = {i: _leaks(m) for i, m in enumerate(msgs) if _leaks(m)}
    assert not leaked, f"key fragments in exceptions at offsets {sorted(leaked)[:10]}"
    assert not _leaks(caplog.text)


def test_log_tail_redacts_a_key_across_the_cut(tmp_path: Path) -> None:
    log = tmp_path / "ep.log"
    for off in range(0, 80, 3):
        # the key straddles the start of the tail window (max_bytes from the end)
        body = "x" * 500 + "\n" + "y" * off + KEY + "z" * (200 - off) + "\nlast line\n"
        log.write_text(body)
        window = 200 + len(KEY) - off + 12
        tail = ep._tail(log, KEY, max_bytes=window)
        assert not _leaks(tail), (off, tail)
    assert redact("a" * 495 + KEY, KEY).count("sk-live") == 0


# ------------------------------------------------------------------------- point 6: job logs
def test_one_endpoint_log_per_job(tmp_path: Path) -> None:
    """Two jobs launching the same endpoint (ModelSet given only the shared log folder, as the
    evaluation rule does) write two endpoint logs, next to each job's log and named after it,
    each named in that job's own log (and naming it back)."""
    from r2i.joblog import setup_logging
    from r2i.synthesis.runtime import ModelSet

    logs = tmp_path / "results" / "logs" / "toy"
    spec = {"teacher": {"model": "sim-teacher-a", "endpoint_config": {
        "name": "sim", "launch": f"{BIN}/r2i-sim-server --host 127.0.0.1 --port {{port}}"}}}
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        for shard in ("000", "001"):
            setup_logging(logs / "shards" / shard / "objects.log")

            async def run() -> None:
                async with ModelSet(spec, tmp_path / "cache", log_dir=logs / "endpoints"):
                    pass

            asyncio.run(run())
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved
    assert not (logs / "endpoints").exists() or not list((logs / "endpoints").iterdir())
    for shard in ("000", "001"):
        job_log = (logs / "shards" / shard / "objects.log").read_text()
        ep_log = logs / "shards" / shard / "objects.endpoint-sim.log"
        assert str(ep_log) in job_log
        assert f"shards/{shard}/objects.log" in ep_log.read_text()


def test_endpoint_log_path_names() -> None:
    d = Path("/r/logs/run/endpoints")
    assert ep.endpoint_log_path(d, "t", "/r/logs/run/eval/m/b/full.log") == Path(
        "/r/logs/run/eval/m/b/full.endpoint-t.log")
    assert ep.endpoint_log_path(d, "t", "/r/logs/run/shards/003/synthesize.log") == Path(
        "/r/logs/run/shards/003/synthesize.endpoint-t.log")


# ------------------------------------------------------------------------- point 8: cache
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "bitflip", "wrong_types",
                                    "other_key"])
def test_damaged_cache_entry_is_a_miss_and_rewritten(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged entry reads as absent (no crash, no wrong answer), is logged, and the fresh
    result of the re-sent call rewrites it."""
    sent = {"n": 0}

    async def chat(request: web.Request) -> web.Response:
        sent["n"] += 1
        return web.json_response({"choices": [{"index": 0, "message": {"content": "fresh"}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    async def run() -> list[str]:
        cache = CallCache(tmp_path / "cache")
        texts = []
        async with _local_server("POST", "/v1/chat/completions", chat) as url:
            cfg = EndpointConfig(name="e", base_url=url)
            for _ in range(2):
                client = ModelClient(cfg, cache=cache)
                try:
                    res = await client.chat(model="m", messages=[{"role": "user", "content": "q"}],
                                            seed=1)
                finally:
                    await client.aclose()
                texts.append(res.texts[0])
                if len(texts) == 1:
                    _damage(cache.path(res.key), damage)
        return texts

    with caplog.at_level(logging.WARNING, logger="r2i.client"):
        texts = asyncio.run(run())
    assert texts == ["fresh", "fresh"]
    assert sent["n"] == 2, "the damaged entry must be a miss (sent again)"
    assert "damaged cache record" in caplog.text
    rec = json.loads(next((tmp_path / "cache").glob("*/*.json")).read_text())
    assert rec["texts"] == ["fresh"] and "check" in rec  # rewritten, verifiable


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    rec = json.loads(raw)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif how == "bitflip":  # valid JSON, different answer: only the checksum can tell
        path.write_bytes(raw.replace(b'"fresh"', b'"frosh"'))
    elif how == "wrong_types":
        rec["usage"] = "lots"
        rec.pop("check")
        path.write_text(json.dumps(rec))
    elif how == "other_key":
        rec["key"] = "0" * 64
        path.write_text(json.dumps(rec))


def test_record_without_checksum_from_older_versions_is_accepted(tmp_path: Path) -> None:
    cache = CallCache(tmp_path)
    key = "ab" + "c" * 62
    path = cache.path(key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": key, "texts": ["old"], "usage": {"prompt_tokens": 1}}))
    rec = cache.get(key)
    assert rec is not None and rec["texts"] == ["old"] and cache.damaged == 0


# ------------------------------------------------------------------------- point 7: settings
def _default_config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("section,values,keys", [
    ("synthesis", {"objects": {"min_objects": 5, "max_objects": 4}},
     ["synthesis.objects.min_objects", "synthesis.objects.max_objects"]),
    ("synthesis", {"difficulty": {"samples": 4, "drop_if_correct_at_least": 5}},
     ["synthesis.difficulty.drop_if_correct_at_least", "synthesis.difficulty.samples"]),
    ("manifest", {"min_side": 2048}, ["manifest.min_side", "toy_world.short_side"]),
    ("train", {"train_batch_size": 64, "ppo_mini_batch_size": 128},
     ["train.ppo_mini_batch_size", "train.train_batch_size"]),
    ("train", {"min_pixels": 1000, "max_pixels": 999}, ["train.min_pixels", "train.max_pixels"]),
    ("train", {"tensor_parallel_size": 16}, ["train.tensor_parallel_size", "train.gpus_per_node"]),
])
def test_contradictory_settings_name_both_keys(section: str, values: dict[str, Any],
                                               keys: list[str]) -> None:
    from r2i.config import ConfigError, validate_config

    cfg = _default_config()
    node = cfg.setdefault(section, {})
    for k, v in values.items():
        if isinstance(v, dict):
            node.setdefault(k, {}).update(v)
        else:
            node[k] = v
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    for key in keys:
        assert f"'{key}'" in str(info.value)


def test_backoff_pair_and_val_fraction_one() -> None:
    from r2i.config import ConfigError, validate_config

    cfg = _default_config()
    cfg["endpoints"]["sim"].update(backoff_base_s=60, backoff_max_s=30)
    with pytest.raises(ConfigError, match=r"endpoints\.sim\.backoff_base_s.*endpoints\.sim\.backoff_max_s"):
        validate_config(cfg)
    cfg = _default_config()
    cfg["synthesis"] = {"dataset": {"val_fraction": 1}}
    with pytest.raises(ConfigError, match=r"synthesis\.dataset\.val_fraction"):
        validate_config(cfg)


def test_contradictory_settings_fail_before_any_job(tmp_path: Path) -> None:
    """Through Snakemake itself: the dry run fails at parse time, naming both keys."""
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(repo / "Snakefile"), "-d", str(tmp_path), "-n",
         "--config", "synthesis={objects: {min_objects: 9, max_objects: 2}}"],
        capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "synthesis.objects.min_objects" in out and "synthesis.objects.max_objects" in out
    assert not (tmp_path / "results").exists()


def _funnel(train: int) -> dict[str, Any]:
    return {"manifest": {"files": 10, "kept": 8, "by_reason": {"too_small": 2}},
            "stages": [{"stage": "objects", "rows": 8, "kept": 0, "dropped": 8,
                        "reasons": {"not_found": 8}}],
            "contamination": {"removed": 0}, "splits": {"train": train, "val": 0}}


def test_empty_training_set_fails_with_the_funnel(caplog: pytest.LogCaptureFixture) -> None:
    from r2i.synthesis import dataset

    with pytest.raises(dataset.EmptyDatasetError) as info:
        dataset.check_not_empty(_funnel(0), allow_empty=False)
    msg = str(info.value)
    assert "EMPTY" in msg and "objects: 8 rows, 0 kept" in msg and "not_found" in msg
    assert "synthesis.dataset.allow_empty" in msg
    with caplog.at_level(logging.WARNING):
        dataset.check_not_empty(_funnel(0), allow_empty=True)
    assert "EMPTY" in caplog.text
    dataset.check_not_empty(_funnel(3), allow_empty=False)


# ------------------------------------------------------------------------- issue 13.7
def test_outputs_without_provenance_are_marked_incomplete(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What a cluster job leaves after Snakemake was killed (output, no record, no incomplete
    mark) is marked incomplete in Snakemake's own format; recorded outputs are left alone."""
    import base64

    from r2i import provenance

    monkeypatch.chdir(tmp_path)
    state = Path(".snakemake")
    (state / "metadata").mkdir(parents=True)
    (state / "incomplete").mkdir()
    for shard in ("000", "001", "002"):
        Path(f"results/r/shards/{shard}").mkdir(parents=True)
        Path(f"results/r/shards/{shard}/a.parquet").write_bytes(b"x")
    Path("results/r/shards/000/side.txt").write_text("not an output")

    def key(subject: str, p: str) -> Path:
        return state / subject / base64.urlsafe_b64encode(p.encode()).decode()

    key("metadata", "results/r/shards/000/a.parquet").write_text("{}")
    key("incomplete", "results/r/shards/001/a.parquet").write_text("{}")
    roots = provenance.output_roots(["results/r/shards/{shard}/a.parquet", "results/r/x.json"])
    assert roots == ["results/r/shards", "results/r/x.json"]

    def is_out(p: str) -> bool:
        return p.endswith("/a.parquet")

    (state / "locks").mkdir()
    (state / "locks" / "0.input.lock").write_text("x")
    assert provenance.mark_unrecorded_outputs(roots, is_out, state) == []  # a Snakemake runs
    (state / "locks" / "0.input.lock").unlink()
    assert provenance.mark_unrecorded_outputs(roots, is_out, state) == ["results/r/shards/002/a.parquet"]
    assert json.loads(key("incomplete", "results/r/shards/002/a.parquet").read_text()) == {
        "external_jobid": None}
    assert provenance.mark_unrecorded_outputs(roots, is_out, state) == []

    # A record left by a failed attempt (Snakemake records failed jobs too, then deletes their
    # outputs) predates the file that a job Snakemake no longer watched wrote later: not trusted.
    Path("results/r/shards/003").mkdir(parents=True)
    late = Path("results/r/shards/003/a.parquet")
    late.write_bytes(b"y")
    stale = key("metadata", str(late))
    stale.write_text("{}")
    os.utime(stale, (time.time() - 60, time.time() - 60))  # written a minute before the file
    # a record written after its file (how Snakemake records a finished job) is trusted
    ok = Path("results/r/shards/000/a.parquet")
    os.utime(ok, (time.time() - 30, time.time() - 30))
    assert provenance.mark_unrecorded_outputs(roots, is_out, state) == [str(late)]


def test_record_path_matches_snakemakes_file_store(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from snakemake.persistence.file import FilePersistence

    from r2i.provenance import record_path

    subject = tmp_path / "metadata"
    subject.mkdir()
    fake = SimpleNamespace(_fetch_max_len=lambda s: os.pathconf(s, "PC_NAME_MAX"))
    for key in ("results/toy/shards/000/objects.parquet", "results/" + "deep/" * 80 + "x.json"):
        assert str(record_path(tmp_path, "metadata", key)) == FilePersistence._record_path(
            fake, str(subject), key)


def test_dataset_job_with_an_empty_training_set_fails(tmp_path: Path) -> None:
    """gather (the dataset rule's body): every item dropped -> an error with the funnel, and
    with allow_empty only a warning and empty splits."""
    from r2i.synthesis import dataset
    from r2i.synthesis.records import dropped, write_rows

    repo = Path(__file__).resolve().parents[1]
    for stage in ("objects", "difficulty"):
        rows = [dropped(f"img{i}", None, "not_found", {}) for i in range(3)] if stage == "objects" else []
        (tmp_path / "shards" / "000").mkdir(parents=True, exist_ok=True)
        write_rows(tmp_path / "shards" / "000" / f"{stage}.parquet", rows)
    (tmp_path / "summary.json").write_text(json.dumps({"files": 3, "kept": 3, "dropped": 0}))
    settings = {"val_fraction": 0.05, "seed": 42, "data_source": "r2i",
                "ability": "fine_grained_perception"}

    def run(**extra: Any) -> dict[str, Any]:
        out = tmp_path / "out"
        return dataset.gather(
            shard_root=tmp_path / "shards", shards=["000"], stages=["objects", "difficulty"],
            manifest_summary_path=tmp_path / "summary.json", benchmarks={},
            answer_format_path=repo / "workflow" / "r2i" / "data" / "prompts" / "answer_format.txt",
            settings={**settings, **extra}, run="t", models={}, simulated=True,
            out_train=out / "train.parquet", out_val=out / "val.parquet",
            out_card=out / "README.md", out_funnel=out / "funnel.json",
            out_contamination=out / "contamination.json")

    (tmp_path / "out").mkdir()
    with pytest.raises(dataset.EmptyDatasetError, match=r"objects: 3 rows, 0 kept.*not_found"):
        run()
    assert run(allow_empty=True)["splits"] == {"train": 0, "val": 0}
