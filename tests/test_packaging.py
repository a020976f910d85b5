"""The library works from a wheel installed outside the checkout (no ``config/`` next to it): the
prompts, seed questions and config schema are package data (r2i.packagedata), so the GRPO reward
and the LLM judge load their prompt in a verl worker, a non-editable install or an Apptainer image
that copies ``workflow/`` only.

The wheel is built from a copy of the project's packaging files (pyproject.toml, README.md,
workflow/), installed with ``--no-deps`` into a fresh venv in a temporary folder; its third-party
dependencies are borrowed from this environment's site-packages through a ``.pth`` line (a path
added that way does not run the editable install's own ``.pth``, so ``r2i`` can only come from the
wheel). The judge is a real HTTP server on loopback that answers "Yes".
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = textwrap.dedent('''
    import asyncio, json, sys, threading
    from pathlib import Path
    from aiohttp import web

    import r2i
    from r2i import packagedata as resources
    from r2i.config import load_schema
    from r2i.judge import DEFAULT_JUDGE_PROMPT, LLMJudge
    from r2i.reward import compute_score

    checkout = Path(sys.argv[1])
    assert checkout not in Path(r2i.__file__).resolve().parents, r2i.__file__
    for name in resources.PROMPT_NAMES:
        assert resources.prompt_path(name).is_file(), name
    assert resources.seed_questions_path().is_file()
    assert "evaluation" in load_schema()["properties"]  # fragments merged from package data

    prompts = []
    async def chat(request):
        body = await request.json()
        prompts.append(body["messages"][-1]["content"])
        return web.json_response({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": "Yes"}}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}/v1"

    info = {"question": "What is written on the sign?", "options": []}
    out = compute_score("r2i", "<think>...</think><answer>Exit only</answer>", "EXIT", info,
                        judge_base_url=url, judge_model="judge", judge_max_retries=0)
    assert out["source"] == "judge" and out["acc"] == 1.0, out
    assert "Exit only" in prompts[0] and "EXIT" in prompts[0]  # the shipped judge prompt

    async def direct():
        async with LLMJudge({"name": "j", "base_url": url, "max_retries": 0}, "judge") as judge:
            return await judge.verdict("Color?", "red", "crimson")
    assert asyncio.run(direct()) == (True, "judge")
    print(json.dumps({"r2i": r2i.__file__, "prompt": str(DEFAULT_JUDGE_PROMPT), "reward": out}))
''')


@pytest.mark.e2e
def test_reward_and_judge_from_a_wheel_outside_the_checkout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "workflow", src / "workflow",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(dist), str(src)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(dist.glob("r2i_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "r2i/data/prompts/judge.txt" in names and "r2i/data/schema/config.schema.yaml" in names
    assert not any(n.startswith("config/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    fresh_site = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    # third-party dependencies from this environment (not its editable r2i: see the module doc)
    (fresh_site / "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    res = subprocess.run([str(py), "-c", SCRIPT, str(REPO)], cwd=work, capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert str(fresh_site) in res.stdout  # r2i and its prompt came from the installed wheel
