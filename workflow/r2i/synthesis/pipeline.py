"""One synthesis job per shard: all model stages as one streaming pipeline.

Why: with one Snakemake job per stage and shard, a shard's ``answers`` could not start until its
whole ``questions`` stage had ended, so the model servers drained at every stage boundary, and
each of ~24 jobs paid its own start-up, image decoding and server launch. Here an item moves to
the next stage the moment it is done: the teacher can be writing questions for one crop while
another crop's answers are being voted on and a third item's student samples are being judged,
so the servers see a steady stream of requests from the first stage to the last.

How: every source image is one task that walks its items through the stages (``objects`` ->
``crops`` -> ``questions`` -> ``answers`` -> ``mcq`` -> ``difficulty``), fanning out as items
multiply; concurrency is bounded where it matters, by each endpoint's request limit in the model
client (and across jobs by :mod:`r2i.client.slots`). New images are admitted while the queued
requests are fewer than twice the endpoints' total concurrency (and at most
``max_images_in_flight`` images are open), so the servers never run dry and memory stays bounded.
Rows are collected per stage and written at the end as the same per-stage tables and stats files
as before (the funnel, the report and the dataset read them), sorted by item id, so the output
does not depend on the order in which items finished.

A stage whose results are already in the stage memo (:mod:`r2i.synthesis.memo`: same inputs,
settings, prompts, models and code) is not run again: its table is reused and the stream starts
at the first stage that changed, from the memo's rows of the stage before. Changing e.g.
``synthesis.answers.min_agreement`` therefore reruns ``answers`` onwards (from the call cache:
zero model requests) without decoding, segmenting or cropping anything again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from r2i.client import ClientStats
from r2i.client.stats import count_into
from r2i.synthesis import stages
from r2i.synthesis.records import Row
from r2i.synthesis.stages import SourceImage, StageContext

log = logging.getLogger("r2i.stage")

STAGES: tuple[str, ...] = ("objects", "crops", "questions", "answers", "mcq", "difficulty")


@dataclass
class StageTally:
    """What one stage did in this job: its rows, items in, time span and model calls."""

    stage: str
    rows: list[Row] = field(default_factory=list)
    items_in: int = 0
    active: int = 0
    first_start: float | None = None
    last_end: float | None = None
    calls: ClientStats = field(default_factory=ClientStats)

    def begin(self, n: int = 1) -> None:
        self.items_in += n
        self.active += 1
        if self.first_start is None:
            self.first_start = time.monotonic()

    def end(self, rows: list[Row]) -> None:
        self.rows.extend(rows)
        self.active -= 1
        self.last_end = time.monotonic()

    def span(self, t0: float) -> tuple[float | None, float | None]:
        """(first item in, last item out) in seconds after ``t0``."""
        if self.first_start is None or self.last_end is None:
            return None, None
        return round(self.first_start - t0, 3), round(self.last_end - t0, 3)

    @property
    def seconds(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.rows)

    def dropped(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rows if not r.kept).items()))


class ShardPipeline:
    """Run the stages ``STAGES[start:]`` over one shard (see the module docstring).

    ``start == 0`` takes manifest entries (``run(images=...)``); a later start takes the kept
    rows of the stage before it (``run(rows=...)``) plus, from ``answers`` on, nothing else:
    ``answers`` needs the crops' bytes (``crop_blobs``), ``mcq`` the source images (opened again
    from ``record['image_path']``).
    """

    def __init__(self, ctx: StageContext, *, start: int = 0,
                 crop_blobs: Mapping[str, bytes] | None = None,
                 max_images_in_flight: int = 32, progress_every_s: float = 10.0,
                 on_first_image_done: Callable[[], None] | None = None) -> None:
        """``on_first_image_done`` runs once, when the first image has left the last stage: from
        then on the job has less to do than at its start, a time for work it needs only at the
        end (the synthesis job imports pyarrow for its tables then)."""
        self.ctx = ctx
        self._on_first_done = on_first_image_done
        self.start = start
        self.crop_blobs = crop_blobs or {}
        self.max_images = max(1, max_images_in_flight)
        self.progress_every_s = progress_every_s
        self.tallies = {s: StageTally(s) for s in STAGES[start:]}
        self._images_open = 0
        self._images_done = 0
        self._images_total = 0

    # -- one stage step -----------------------------------------------------------------------
    async def _step(self, stage: str, work: Callable[[], Awaitable[list[Row]]]) -> list[Row]:
        tally = self.tallies[stage]
        tally.begin()
        rows: list[Row] = []
        try:
            with count_into(tally.calls):
                rows = await work()
        finally:
            tally.end(rows)
        return rows

    # -- the item flows, one per stage ----------------------------------------------------------
    async def _objects(self, entry: Mapping[str, Any], src: SourceImage) -> None:
        rows = await self._step("objects", lambda: stages.objects_one(self.ctx, entry, src))
        await asyncio.gather(*(self._crops(r, src) for r in rows if r.kept))

    async def _crops(self, r: Row, src: SourceImage) -> None:
        rows = await self._step("crops", lambda: stages.crops_one(self.ctx, r, src))
        await asyncio.gather(*(self._questions(c, src) for c in rows if c.kept))

    async def _questions(self, r: Row, src: SourceImage) -> None:
        rows = await self._step("questions", lambda: stages.questions_one(self.ctx, r, src))
        crop: bytes = r.blob  # type: ignore[assignment]
        await asyncio.gather(*(self._answers(q, src, crop) for q in rows if q.kept))

    async def _answers(self, r: Row, src: SourceImage, crop: bytes | None = None) -> None:
        if crop is None:
            crop = self.crop_blobs[r.parent_id or ""]
        rows = await self._step("answers", lambda: stages.answers_one(self.ctx, r, crop))
        await asyncio.gather(*(self._mcq(a, src) for a in rows if a.kept))

    async def _mcq(self, r: Row, src: SourceImage) -> None:
        rows = await self._step("mcq", lambda: stages.mcq_one(self.ctx, r, src))
        await asyncio.gather(*(self._difficulty(m) for m in rows if m.kept))

    async def _difficulty(self, r: Row, src: SourceImage | None = None) -> None:
        await self._step("difficulty", lambda: stages.difficulty_one(self.ctx, r))

    def _flow(self, stage: str) -> Callable[[Row, SourceImage], Awaitable[None]]:
        return {"crops": self._crops, "questions": self._questions, "answers": self._answers,
                "mcq": self._mcq, "difficulty": self._difficulty}[stage]

    # -- admission and progress -----------------------------------------------------------------
    async def _admit(self) -> None:
        """Wait until another image may start (bounded memory, servers kept busy)."""
        models = self.ctx.models
        while self._images_open >= self.max_images or (
            self._images_open > 0
            and models.pending_requests() >= 2 * max(1, models.total_concurrency())
        ):
            await asyncio.sleep(0.02)
        self._images_open += 1

    async def _progress(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(self.progress_every_s)
            parts = ", ".join(f"{s} {t.items_in - t.active}/{t.items_in}"
                              for s, t in self.tallies.items() if t.items_in)
            log.info("pipeline %.0f s: images %d/%d done (%d open); items done/started per stage: "
                     "%s; model calls waiting or in flight: %d", time.monotonic() - started,
                     self._images_done, self._images_total, self._images_open, parts or "none",
                     self.ctx.models.pending_requests())

    async def _run_groups(self, groups: Sequence[tuple[SourceImage, Callable[[], Awaitable[None]]]]) -> None:
        self._images_total = len(groups)
        progress = asyncio.ensure_future(self._progress())
        tasks: list[asyncio.Task[None]] = []

        def done(_: asyncio.Task[None]) -> None:
            self._images_open -= 1
            self._images_done += 1
            if self._images_done == 1 and self._on_first_done is not None:
                self._on_first_done()

        try:
            for _src, work in groups:
                await self._admit()
                task = asyncio.ensure_future(work())
                task.add_done_callback(done)
                tasks.append(task)
                # an unexpected error (a bug, an endpoint that cannot start) ends the job now
                failed = next((t for t in tasks if t.done() and not t.cancelled()
                               and t.exception() is not None), None)
                if failed is not None:
                    await failed
            await asyncio.gather(*tasks)
        finally:
            progress.cancel()
            for t in tasks:
                t.cancel()

    async def run(self, *, images: Sequence[Mapping[str, Any]] | None = None,
                  rows: Sequence[Row] | None = None) -> dict[str, StageTally]:
        """Process the shard; returns the tallies of the stages run (rows still unsorted)."""
        groups: list[tuple[SourceImage, Callable[[], Awaitable[None]]]] = []
        if self.start == 0:
            for entry in images or ():
                src = SourceImage(entry["hash"], entry["path"])
                groups.append((src, lambda e=entry, s=src: self._objects(e, s)))
        else:
            flow = self._flow(STAGES[self.start])
            by_image: dict[str, list[Row]] = defaultdict(list)
            for r in rows or ():
                by_image[r.record["image_hash"]].append(r)
            for image_hash, group in sorted(by_image.items()):
                src = SourceImage(image_hash, group[0].record["image_path"])

                async def work(g: list[Row] = group, s: SourceImage = src) -> None:
                    await asyncio.gather(*(flow(r, s) for r in g))

                groups.append((src, work))
        await self._run_groups(groups)
        return self.tallies


def model_errors(tallies: Mapping[str, StageTally]) -> list[tuple[str, Row]]:
    """(stage, row) of every item whose model call failed for good."""
    return [(s, r) for s, t in tallies.items() for r in t.rows if r.record.get("model_error")]
