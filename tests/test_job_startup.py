"""What a synthesis job pays before its first model request and after its last (issue 14).

Each measure here is a behaviour, not a timing: which modules a job imports before it needs them,
whether pyarrow pulls pandas in, whether the segmenter is built off the request path, and whether
Snakemake's scheduler timer is cancelled at the end of a run. ``bench/bench_pipeline.py`` measures
what they are worth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from r2i.io import read_parquet
from r2i.segment import BackgroundSegmenter, make_segmenter
from r2i.smkexit import _is_scheduler_timer, cancel_scheduler_timers

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter with the checkout's library; its last stdout line is JSON."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_the_synthesis_job_defers_heavy_modules() -> None:
    """numpy, pyarrow and aiohttp are imported when first needed, not before the first request."""
    out = _python(
        "import json, sys\n"
        "import r2i.synthesis.entry\n"
        "print(json.dumps({m: m in sys.modules for m in "
        "('numpy', 'pyarrow', 'pandas', 'aiohttp', 'yaml')}))\n"
    )
    assert out == {"numpy": False, "pyarrow": False, "pandas": False, "aiohttp": False, "yaml": False}


def test_stage_tables_without_pandas(tmp_path: Path) -> None:
    """With skip_pandas_at_first_use a job writes and reads its stage tables, pandas never loads,
    and pandas still imports afterwards for code that wants it."""
    out = _python(
        "import json, sys\n"
        "from r2i.arrowlite import skip_pandas_at_first_use\n"
        "skip_pandas_at_first_use()\n"
        "from r2i.synthesis.records import kept, dropped, write_rows, read_rows\n"
        f"p = {str(tmp_path / 'objects.parquet')!r}\n"
        "write_rows(p, [kept('b', 'x', {'k': 1}, b'png'), dropped('a', None, 'low_score')])\n"
        "rows = read_rows(p)\n"
        "before = {m: m in sys.modules for m in ('pandas', 'pyarrow.dataset')}\n"
        "import pandas\n"
        "print(json.dumps({'ids': [r.item_id for r in rows], 'blob': rows[1].blob.decode(),\n"
        "                  'reason': rows[0].reason, 'before': before,\n"
        "                  'pandas_ok': pandas.DataFrame({'a': [1]}).shape[0] == 1}))\n"
    )
    assert out["ids"] == ["a", "b"] and out["blob"] == "png" and out["reason"] == "low_score"
    assert out["before"] == {"pandas": False, "pyarrow.dataset": False}
    assert out["pandas_ok"] is True


def test_without_the_request_pyarrow_behaves_as_usual(tmp_path: Path) -> None:
    """Only processes that ask are affected: a plain one still gets pyarrow's pandas conversion."""
    out = _python(
        "import json\n"
        "from r2i.synthesis.records import kept, write_rows\n"
        "import pyarrow.parquet as pq\n"
        f"p = {str(tmp_path / 't.parquet')!r}\n"
        "write_rows(p, [kept('a', None, {})])\n"
        "print(json.dumps({'rows': len(pq.read_table(p).to_pandas())}))\n"
    )
    assert out == {"rows": 1}


def test_read_parquet_matches_read_table(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    table = pa.table({"a": [1, 2], "b": ["x", None]}).replace_schema_metadata({"v": "3"})
    pq.write_table(table, path)
    got = read_parquet(path)
    assert got.equals(pq.read_table(path)) and got.schema.metadata == {b"v": b"3"}
    assert read_parquet(path, columns=["b"]).column_names == ["b"]
    with pytest.raises(OSError):
        read_parquet(tmp_path / "missing.parquet")


# -- the segmenter is built while the first requests are in flight --------------------------


def _sim_cfg(world: str) -> dict[str, object]:
    return {"backend": "sim", "sim": {"world": world}}


def test_background_segmenter_answers_like_the_segmenter(tmp_path_factory: pytest.TempPathFactory) -> None:
    from r2i.toy.world import World
    from tests.test_sim_segmenter import tiny_world

    root = tiny_world(tmp_path_factory)
    world = World.load(root)
    scene = world.scenes["toy_0000"]
    with Image.open(world.image_path(scene.scene_id)) as im:
        img = im.convert("RGB")
    phrases = [o.name for o in scene.objects[:3]] + ["purple striped pentagon tile with wings"]
    direct = make_segmenter(_sim_cfg(str(root)))
    bg = BackgroundSegmenter(_sim_cfg(str(root)))
    got = bg.segment(img, phrases)
    assert got == direct.segment(img, phrases)
    assert any(got[:-1]) and got[-1] == []
    assert bg.name == direct.name == "sim-segmenter"


def test_deferred_background_segmenter_builds_once_on_start_or_first_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import r2i.segment as segment

    builds: list[str] = []

    class Fake:
        name = "fake"

        def segment(self, image: Image.Image, phrases: list[str]) -> list[list[object]]:
            return [[] for _ in phrases]

    monkeypatch.setitem(segment._BACKENDS, "sim", lambda cfg: (builds.append("built"), Fake())[1])
    lazy = BackgroundSegmenter({"backend": "sim"}, start=False)
    assert builds == []  # not before start() or a first use
    assert lazy.segment(Image.new("RGB", (4, 4)), ["a", "b"]) == [[], []]
    assert builds == ["built"]
    builds.clear()
    eager = BackgroundSegmenter({"backend": "sim"}, start=False)
    eager.start()
    eager.start()
    assert eager.name == "fake" and builds == ["built"]


def test_background_segmenter_build_error_surfaces_at_first_use(tmp_path: Path) -> None:
    bg = BackgroundSegmenter({"backend": "sam3", "sam3": {"checkpoint": str(tmp_path / "none.pt")}})
    with pytest.raises(FileNotFoundError, match=r"segmenter\.sam3\.checkpoint"):
        bg.segment(Image.new("RGB", (8, 8)), ["x"])


def test_background_segmenter_wrong_backend_fails_at_once() -> None:
    with pytest.raises(ValueError, match=r"segmenter\.backend"):
        BackgroundSegmenter({"backend": "sam9"})


# -- Snakemake's re-evaluation timer does not hold the process open --------------------------


def _timer_from(filename: str, delay: float) -> threading.Timer:
    """A Timer whose callback's code lives in ``filename`` (as Snakemake's scheduler's does)."""
    fn = eval(compile("lambda: None", filename, "eval"))
    return threading.Timer(delay, fn)


def test_cancel_scheduler_timers_only_touches_snakemakes() -> None:
    ours = _timer_from("/x/site-packages/snakemake/scheduling/job_scheduler.py", 30)
    other = _timer_from("/x/site-packages/somelib/poll.py", 30)
    ours.start()
    other.start()
    try:
        assert _is_scheduler_timer(ours) and not _is_scheduler_timer(other)
        assert cancel_scheduler_timers() == 1
        ours.join(timeout=5)
        assert not ours.is_alive()  # cancelled: it ends now instead of in 30 s
        assert other.is_alive()
    finally:
        other.cancel()
        other.join(timeout=5)


def test_the_scheduler_still_defines_its_timer_where_we_look() -> None:
    """If Snakemake moves or renames the timer, the hook would silently stop helping: fail here."""
    import inspect

    from snakemake.scheduling import job_scheduler

    src = inspect.getsource(job_scheduler.JobScheduler._schedule_reevalutation)
    assert "threading.Timer(" in src
    assert Path(inspect.getsourcefile(job_scheduler) or "").as_posix().endswith(
        "snakemake/scheduling/job_scheduler.py")
    assert cancel_scheduler_timers() == 0  # none pending outside a run


def test_freeze_heap_moves_live_objects_out_of_collection() -> None:
    import gc

    from r2i.smkexit import freeze_heap

    try:
        freeze_heap()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()  # this test process goes on collecting as usual


def test_snakefile_freezes_after_parsing_and_cancels_timers_at_the_end() -> None:
    text = (REPO / "Snakefile").read_text()
    assert text.index("freeze_heap()") > text.index('include: "rules/report.smk"')
    assert "onsuccess:\n    cancel_scheduler_timers()" in text
    assert "onerror:\n    cancel_scheduler_timers()" in text


class _CountsRepr:
    """A result whose repr is counted (and would be slow for a shard's rows)."""

    calls = 0

    def __repr__(self) -> str:
        type(self).calls += 1
        return "<result>"


def test_the_result_of_a_job_coroutine_is_never_formatted() -> None:
    """``asyncio.run`` formats its main task's result when it restores the SIGINT handler (CPython
    3.11+: the failed ``signal.Handlers`` lookup builds ``"%r is not a valid Handlers"``): for a
    synthesis job that result is every row of the shard, images included. ``r2i.asyncrun.run``
    returns the same value without the task holding it."""
    from r2i import asyncrun
    from r2i.client import run_async

    async def job() -> _CountsRepr:
        return _CountsRepr()

    _CountsRepr.calls = 0
    assert isinstance(asyncrun.run(job()), _CountsRepr)
    assert isinstance(run_async(job()), _CountsRepr)  # through uvloop when installed
    assert _CountsRepr.calls == 0


def test_asyncio_run_still_formats_the_result_here() -> None:
    """The behaviour the test above guards against, on this interpreter: if a CPython release stops
    formatting the result, this fails and ``r2i.asyncrun`` can go."""
    import asyncio

    async def job() -> _CountsRepr:
        return _CountsRepr()

    _CountsRepr.calls = 0
    asyncio.run(job())
    assert _CountsRepr.calls > 0


def test_a_row_repr_leaves_out_its_image() -> None:
    from r2i.synthesis.records import Row

    text = repr(Row("img-1/obj-2", "img-1", "kept", blob=b"\x89PNG" + bytes(10_000)))
    assert "img-1/obj-2" in text and "PNG" not in text and len(text) < 200
