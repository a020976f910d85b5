"""Keep pyarrow from importing pandas in jobs that never use pandas.

pyarrow imports pandas the first time it builds any array (``pa.array``, ``pa.table``, even from a
NumPy array), only to ask whether its input is a pandas object. With pandas installed (Hugging Face
``datasets`` and the SLURM executor plugin need it) that costs ~0.8 s of CPU per process on these
machines: in a synthesis job it lands after the last model response, when the stage tables are
written, so it sits on the critical path of every run, and the dataset job pays it again.
(Measured with py-spy on ``bench/bench_pipeline.py``: ``write_rows`` -> ``pandas/__init__``.)

:func:`skip_pandas` lets pyarrow's pandas probe run once while ``import pandas`` is blocked, so
pyarrow records "no pandas" for this process and never probes again. The block is lifted at once:
other code may still ``import pandas`` and use it directly. What no longer works in the process
is pyarrow's own pandas conversion (``Table.to_pandas``, ``pd.read_parquet``, a DataFrame passed
to ``pa.table``), so only job entry points that never convert call it (synthesis, dataset, manifest,
contamination index). It does nothing if pandas is already imported.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from typing import Any


class _NoPandas:
    """A meta-path finder that fails ``import pandas`` (used only around pyarrow's probe).

    A finder rather than ``sys.modules["pandas"] = None``: pyarrow's compiled import takes a
    ``None`` entry as the module instead of failing."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError(f"{name} is not imported in this job (r2i.arrowlite)", name=name)
        return None


_requested = False
_done = False


def skip_pandas_at_first_use() -> None:
    """Ask for :func:`skip_pandas` when this process first imports pyarrow through
    :func:`import_pyarrow`, not now: a synthesis job sends its first model requests before it
    needs pyarrow (and numpy, together ~0.2 s to import), so it should not import them first."""
    global _requested
    _requested = True


def import_pyarrow() -> Any:
    """``pyarrow``, with :func:`skip_pandas` applied first if the job asked for it."""
    import pyarrow as pa

    if _requested and not _done:
        skip_pandas()
    return pa


def skip_pandas() -> bool:
    """Make pyarrow treat pandas as absent in this process; True if it took effect."""
    global _done
    if "pandas" in sys.modules or _done:
        return False
    import pyarrow as pa

    _done = True

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([], type=pa.null())  # runs pyarrow's one pandas probe, which now finds none
    finally:
        sys.meta_path.remove(finder)
    return True
