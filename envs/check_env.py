#!/usr/bin/env python3
"""Import check of a built environment (run by envs/*.def while building the image).

Imports every r2i module that a rule script imports (the scripts and the library given with
``--checkout``, a copy of the repository), then each module named on the command line (the
environment's own packages: vllm, sam3, verl, ...). A module that fails to import is reported with
its error and the exit status is 1, so an image that lacks what its rules need does not build.

r2i modules import their heavy dependencies (torch, transformers, sam3) inside the functions that
need them, so importing a script's r2i modules needs only the library's own requirements.

    python envs/check_env.py --checkout /opt/r2i/check vllm sam3.model_builder torch
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
import traceback
from pathlib import Path


def script_modules(scripts_dir: Path) -> list[str]:
    """r2i modules imported by the rule scripts in ``scripts_dir``."""
    mods: set[str] = set()
    for script in sorted(scripts_dir.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] == "r2i":
                    mods.add(node.module)
            elif isinstance(node, ast.Import):
                mods.update(a.name for a in node.names if a.name.split(".")[0] == "r2i")
    return sorted(mods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, required=True,
                        help="folder with the repository's scripts/ and workflow/")
    parser.add_argument("modules", nargs="*", help="further modules the environment must provide")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.checkout / "workflow"))
    wanted = script_modules(args.checkout / "scripts") + list(args.modules)
    failed = []
    for name in wanted:
        try:
            mod = importlib.import_module(name)
        except Exception as err:  # report every failure, not only the first
            failed.append(name)
            print(f"FAIL {name}: {type(err).__name__}: {err}", file=sys.stderr)
            traceback.print_exc(limit=3)
            continue
        version = getattr(mod, "__version__", "")
        print(f"ok   {name} {version}".rstrip())
    if failed:
        print(f"{len(failed)} of {len(wanted)} modules failed to import: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    print(f"all {len(wanted)} modules import with {sys.executable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
