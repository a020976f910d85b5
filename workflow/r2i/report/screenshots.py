"""Screenshots of a rendered Snakemake 9 ``--report`` HTML file, with checks that plots appear.

The single-file report of Snakemake 9 is a React app: every result is embedded as a ``data:`` URI
in a ``var results = {...}`` script and nothing is drawn until JavaScript has run. A report can
therefore be valid HTML and still show broken images or an empty page (an undecodable PNG, an
HTML result that pulls its plotting library from a CDN, a JS error). Reading the file is not
enough; it has to be rendered. This module drives headless Chromium (the Debian package, via
Playwright's CDP client, so no browser download is needed), clicks through the report the way a
reader would, saves one PNG per page and reports what was actually drawn.

How the report is navigated (Snakemake 9.x, no URL routing: the view is React state only):

* left ``<nav>``: the menu is ``nav ul li > a`` links with the label in a ``<span>``; after the
  "General" items (Workflow, Statistics, About) comes one link per category, sorted, or a single
  "Results" link when the report has only one category;
* a category with several subcategories shows a list of subcategory links (again
  ``nav ul li > a``); one with a single subcategory shows the results table straight away;
* the results table is ``nav table tbody tr``; the first link in the last cell is the "eye"
  button: ``href="#"`` shows the result in the content pane, any other ``href`` is a download;
* the content pane (last child of ``#app > div``) then holds ``<img src="data:...">`` for PNG,
  JPEG and SVG results, or ``<iframe src="data:...">`` for HTML and PDF results;
* the first breadcrumb (``nav ol > li:first-child a``, the home icon) returns to the menu;
* the landing page shows the rule graph, a vega canvas in ``#rulegraph``.

Playwright is imported inside the functions so that importing this module (and the rest of
``r2i.report``) does not need it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHROMIUM_ENV",
    "CHROMIUM_NAMES",
    "ChromiumNotFoundError",
    "capture",
    "find_chromium",
    "main",
    "slugify",
]

CHROMIUM_ENV = "R2I_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# --no-sandbox: CI and containers run as root, where Chromium refuses its sandbox;
# --disable-dev-shm-usage: /dev/shm is tiny in containers; no GPU on report machines.
LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
)
VIEWABLE_MIME = {
    "image/png": "img",
    "image/jpeg": "img",
    "image/svg+xml": "img",
    "text/html": "iframe",
    "application/pdf": "iframe",
}

_CONTENT_JS = "document.querySelector('#app > div')?.lastElementChild"

# Counts what is drawn in one document. Images are decoded explicitly: ``img.decode()`` rejects
# for undecodable data (``naturalWidth`` alone is 0 both for broken images and for some SVGs
# without an intrinsic size). Canvases are sampled for painted pixels, because vega creates its
# canvas before it draws. ``contentPane`` limits the "rendered" counts to the content pane, so the
# report's own logo and icons do not count as plots; broken images are counted everywhere.
_METRICS_JS = r"""
async (contentPane) => {
  const pane = contentPane ? document.querySelector('#app > div')?.lastElementChild : null;
  const root = pane || document.body || document.documentElement;
  const vis = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const name = (src) => {
    const m = /filename=([^;,]+)/.exec(src || '');
    return m ? m[1] : (src || '').slice(0, 80);
  };
  const timeout = (ms) => new Promise((res) => setTimeout(() => res('timeout'), ms));
  let rendered = 0, svgImages = 0;
  const broken = [], pending = [];
  for (const img of Array.from(document.images)) {
    const state = await Promise.race([
      img.decode().then(() => 'ok', () => 'broken'), timeout(5000)]);
    const src = img.currentSrc || img.src;
    if (state === 'broken') { broken.push(name(src)); continue; }
    if (state === 'timeout') { pending.push(name(src)); continue; }
    if (!root.contains(img)) continue;
    if (img.naturalWidth > 0 || vis(img)) {
      rendered += 1;
      if (/^data:image\/svg|\.svg($|\?)/.test(src)) svgImages += 1;
    }
  }
  const svgs = Array.from(root.querySelectorAll('svg')).filter((s) => {
    if (s.parentElement && s.parentElement.closest('svg')) return false;
    const r = s.getBoundingClientRect(); return r.width > 24 && r.height > 24;
  }).length;
  let canvases = 0, painted = 0;
  for (const c of Array.from(root.querySelectorAll('canvas'))) {
    if (!(c.width > 0 && c.height > 0 && vis(c))) continue;
    canvases += 1;
    try {
      const probe = document.createElement('canvas'); probe.width = 64; probe.height = 64;
      const ctx = probe.getContext('2d'); ctx.drawImage(c, 0, 0, 64, 64);
      const px = ctx.getImageData(0, 0, 64, 64).data;
      for (let i = 3; i < px.length; i += 4) { if (px[i] > 0) { painted += 1; break; } }
    } catch (e) { painted += 1; }  // tainted canvas: cannot look, assume drawn
  }
  let state = null;
  try {
    if (typeof app !== 'undefined' && app && app.state) {
      state = {content: app.state.content ?? null, resultPath: app.state.resultPath ?? null};
    }
  } catch (e) { state = null; }
  return {
    images_rendered: rendered, images_broken: broken, images_pending: pending,
    svg: svgs + svgImages, canvas: canvases, canvas_painted: painted,
    iframes: root.querySelectorAll('iframe').length,
    text_chars: (root.innerText || '').trim().length, state,
  };
}
"""


class ChromiumNotFoundError(FileNotFoundError):
    """No Chromium/Chrome executable was found (or the one named does not exist)."""


def find_chromium(explicit: str | os.PathLike[str] | None = None) -> str:
    """Return the path of a Chromium executable.

    Order: ``explicit``, then ``$R2I_CHROMIUM``, then ``chromium``, ``chromium-browser``,
    ``google-chrome``, ``google-chrome-stable`` on ``PATH``. An explicit or environment value
    that does not resolve is an error rather than a silent fallback, so that a CI
    misconfiguration is reported as such.
    """
    for origin, value in (("chromium argument", explicit), (CHROMIUM_ENV, os.environ.get(CHROMIUM_ENV))):
        if value:
            found = shutil.which(str(value))
            if found is None:
                raise ChromiumNotFoundError(
                    f"Chromium executable {str(value)!r} (from {origin}) not found or not executable"
                )
            return found
    for candidate in CHROMIUM_NAMES:
        found = shutil.which(candidate)
        if found:
            return found
    raise ChromiumNotFoundError(
        "No Chromium executable found: looked for "
        + ", ".join(repr(c) for c in CHROMIUM_NAMES)
        + f" on PATH and ${CHROMIUM_ENV}. Install one (Debian: apt-get install -y chromium) "
        f"or set {CHROMIUM_ENV}=/path/to/chromium."
    )


def slugify(text: str) -> str:
    """Lower-case ASCII slug for file names (``"Accuracy / Zoom"`` -> ``"accuracy-zoom"``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "page"


def _exact(label: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(label)}\s*$")


def _blank_png(path: Path) -> bool | None:
    """True when a screenshot is one flat colour (None when Pillow is unavailable)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    with Image.open(path) as im:
        extrema = im.convert("RGB").getextrema()
    return all(lo == hi for lo, hi in extrema)


def _select_categories(categories: dict[str, Any], pages: Sequence[str] | None) -> list[str]:
    """Categories in menu order, filtered by name or slug (case-insensitive)."""
    ordered = sorted(categories, key=str.casefold)
    if pages is None:
        return ordered
    wanted = [p for p in pages if slugify(p) != "overview"]
    chosen: list[str] = []
    unknown: list[str] = []
    for want in wanted:
        match = [c for c in ordered if c.casefold() == want.casefold() or slugify(c) == slugify(want)]
        if len(categories) == 1 and want.casefold() == "results":
            match = ordered
        if not match:
            unknown.append(want)
        chosen.extend(c for c in match if c not in chosen)
    if unknown:
        raise ValueError(
            f"unknown report page(s) {unknown}; categories in this report: {ordered or 'none'}"
        )
    return [c for c in ordered if c in chosen]


def capture(
    report_html: Path,
    out_dir: Path,
    pages: list[str] | None = None,
    width: int = 1400,
    height: int = 1000,
    chromium: str | None = None,
    *,
    items: int = 1,
    timeout_ms: int = 15_000,
    settle_ms: int = 400,
) -> dict[str, Any]:
    """Render ``report_html``, screenshot its pages into ``out_dir`` and check what was drawn.

    Pages: ``00-overview.png`` (landing page, the rule graph), then per category (and per
    subcategory when there are several) the results table with its first ``items`` viewable
    results opened in the content pane: ``01-<category>[--<subcategory>][--<k>].png``.
    ``pages`` selects categories by name or slug (``None``: all); the overview is always taken.

    Returns a JSON-serialisable summary: ``pages`` maps a page name (``"overview"``,
    ``"Category"``, ``"Category/Subcategory"``, ``"... #k"``) to its ``file``, counts
    (``images_rendered``, ``images_broken``, ``svg``, ``canvas``, ``iframes``), the result
    shown, whether a visual was expected, and ``problems``; ``problems`` lists them all and
    ``ok`` is true when there are none. Raises ``FileNotFoundError`` for a missing report,
    :class:`ChromiumNotFoundError` without a browser and ``ValueError`` for unknown pages.
    """
    report_html = Path(report_html).resolve()
    if not report_html.is_file():
        raise FileNotFoundError(f"report file not found: {report_html}")
    executable = find_chromium(chromium)
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "Python package 'playwright' is needed for report screenshots: pip install playwright "
            "(no 'playwright install' needed, the system Chromium is used)"
        ) from exc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "report": str(report_html),
        "out_dir": str(out_dir),
        "chromium": executable,
        "viewport": [width, height],
        "pages": {},
        "external_requests": [],
        "console_errors": [],
        "problems": [],
        "ok": False,
    }
    current: dict[str, Any] = {"problems": []}  # the page being captured, for event handlers

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable, headless=True, args=list(LAUNCH_ARGS)
        )
        try:
            summary["browser_version"] = browser.version
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_ms)

            def on_request(request: Any) -> None:
                if not request.url.startswith(("data:", "file:", "blob:", "about:")):
                    summary["external_requests"].append(request.url)

            def on_failed(request: Any) -> None:
                if not request.url.startswith("data:"):
                    current["problems"].append(
                        f"request failed: {request.url[:120]} ({request.failure})"
                    )

            page.on("request", on_request)
            page.on("requestfailed", on_failed)
            page.on("pageerror", lambda err: current["problems"].append(f"JS error: {err}"))
            page.on(
                "console",
                lambda msg: summary["console_errors"].append(msg.text[:300])
                if msg.type == "error"
                else None,
            )

            def settle(ms: int = settle_ms) -> None:
                # Tailwind's in-page compiler styles new nodes asynchronously and the navbar
                # animates its width; give both a moment before measuring or shooting.
                page.evaluate("() => new Promise(r => requestAnimationFrame(() => r(null)))")
                page.wait_for_timeout(ms)

            def go_home() -> None:
                home = page.locator("nav ol > li").first.locator("a")
                try:
                    home.click(timeout=3000)
                    page.locator("nav ul li > a").first.wait_for(timeout=timeout_ms)
                except PlaywrightError:
                    load()

            def load() -> None:
                page.goto(report_html.as_uri(), wait_until="load")
                page.locator("nav ul li > a").first.wait_for(timeout=timeout_ms)

            def measure(record: dict[str, Any]) -> None:
                metrics = page.evaluate(_METRICS_JS, True)
                broken = list(metrics["images_broken"])
                rendered = metrics["images_rendered"]
                svg, canvas, painted = metrics["svg"], metrics["canvas"], metrics["canvas_painted"]
                frame_info: dict[str, Any] | None = None
                if metrics["iframes"]:
                    frame_info = measure_iframe()
                    if frame_info:
                        broken += frame_info["images_broken"]
                        rendered += frame_info["images_rendered"]
                        svg += frame_info["svg"]
                        canvas += frame_info["canvas"]
                        painted += frame_info["canvas_painted"]
                record.update(
                    images_rendered=rendered,
                    images_broken=len(broken),
                    svg=svg,
                    canvas=canvas,
                    iframes=metrics["iframes"],
                )
                problems = record["problems"]
                problems.extend(f"broken image: {b}" for b in broken)
                problems.extend(
                    f"image still loading after 5 s: {p}" for p in metrics["images_pending"]
                )
                if canvas > painted:
                    problems.append(f"{canvas - painted} canvas(es) on the page are blank")
                if record["expects_visual"]:
                    kind = record.get("expects")
                    if kind == "img" and rendered == 0:
                        problems.append("no rendered image in the content pane")
                    elif kind == "iframe":
                        if frame_info is None:
                            problems.append("result iframe missing or did not load")
                        elif (
                            record.get("mime_type") == "text/html"
                            and frame_info["text_chars"] == 0
                            and frame_info["images_rendered"] + frame_info["svg"]
                            + frame_info["canvas"] == 0
                        ):
                            problems.append("HTML result renders empty")
                    elif kind == "plot" and rendered + svg + painted == 0:
                        problems.append("no plot (image, svg or painted canvas) on the page")
                state = metrics.get("state") or {}
                if record.get("result") is None and state.get("resultPath"):
                    record["result"] = state["resultPath"]

            def measure_iframe() -> dict[str, Any] | None:
                handle = page.locator("#app > div > :last-child iframe").last.element_handle()
                frame = handle.content_frame() if handle else None
                if frame is None:
                    return None
                try:
                    frame.wait_for_load_state("load", timeout=timeout_ms)
                    page.wait_for_timeout(settle_ms)  # scripted plots draw after load
                    if frame.url.startswith("data:application/pdf"):
                        # Chromium's PDF viewer is an extension frame; only "it loaded" is known.
                        return {"images_broken": [], "images_rendered": 0, "svg": 0,
                                "canvas": 0, "canvas_painted": 0, "text_chars": 1}
                    return frame.evaluate(_METRICS_JS, False)
                except PlaywrightError as exc:
                    current["problems"].append(f"could not inspect result iframe: {exc}")
                    return None

            def shoot(name: str, filename: str, record: dict[str, Any]) -> None:
                path = out_dir / filename
                page.screenshot(path=str(path), animations="disabled")
                record["file"] = str(path)
                if _blank_png(path):
                    record["problems"].append("screenshot is blank (one colour)")
                summary["pages"][name] = record

            def new_record(**fields: Any) -> dict[str, Any]:
                record: dict[str, Any] = {
                    "file": None, "category": None, "subcategory": None, "result": None,
                    "mime_type": None, "expects_visual": False, "problems": [], **fields,
                }
                current["problems"] = record["problems"]
                return record

            # -- landing page ---------------------------------------------------------------
            index = 0
            record = new_record()
            load()
            categories: dict[str, dict[str, list[str]]] = page.evaluate(
                "() => typeof categories === 'object' ? categories : null"
            ) or {}
            results: dict[str, dict[str, Any]] = page.evaluate(
                "() => typeof results === 'object' ? results : {}"
            ) or {}
            selected = _select_categories(categories, pages)  # fail before any screenshot
            if not page.locator("#rulegraph").count():
                record["problems"].append("landing page has no #rulegraph (metadata view?)")
            else:
                record.update(expects_visual=True, expects="plot")
                # a missing graph is reported by measure() as "no plot"
                with contextlib.suppress(PlaywrightError):
                    page.wait_for_function(
                        "() => document.querySelector('#rulegraph canvas, #rulegraph svg')",
                        timeout=timeout_ms,
                    )
            settle()
            measure(record)
            shoot("overview", f"{index:02d}-overview.png", record)

            # -- categories -------------------------------------------------------------------
            single = len(categories) == 1
            for category in selected:
                subcategories = sorted(categories[category], key=str.casefold)
                for subcategory in subcategories:
                    base = category if len(subcategories) == 1 else f"{category}/{subcategory}"
                    stem = slugify(category)
                    if len(subcategories) > 1:
                        stem += f"--{slugify(subcategory)}"
                    record = new_record(category=category, subcategory=subcategory)
                    go_home()
                    try:
                        menu_label = "Results" if single else category
                        page.locator("nav ul li > a").filter(has_text=_exact(menu_label)).last.click()
                        if len(subcategories) > 1:
                            page.locator("nav ul li > a").filter(
                                has_text=_exact(subcategory)
                            ).first.click()
                        rows = page.locator("nav table tbody tr")
                        rows.first.wait_for(timeout=timeout_ms)
                    except PlaywrightError as exc:
                        record["problems"].append(f"could not open {base}: {exc}")
                        index += 1
                        settle()
                        shoot(base, f"{index:02d}-{stem}.png", record)
                        continue
                    viewable = []
                    for i in range(rows.count()):
                        eye = rows.nth(i).locator("td:last-child a").first
                        if eye.count() and eye.get_attribute("href") == "#":
                            viewable.append(eye)
                    if not viewable:
                        record["note"] = "no result here can be shown in the page (downloads only)"
                        index += 1
                        settle()
                        measure(record)
                        shoot(base, f"{index:02d}-{stem}.png", record)
                        continue
                    for k, eye in enumerate(viewable[:max(1, items)], start=1):
                        if k > 1:
                            record = new_record(category=category, subcategory=subcategory)
                        name = base if k == 1 else f"{base} #{k}"
                        eye.click()
                        try:
                            page.wait_for_function(
                                f"() => {{ const r = {_CONTENT_JS};"
                                " return r && r.querySelector('img, iframe'); }",
                                timeout=timeout_ms,
                            )
                        except PlaywrightError:
                            record["problems"].append("clicking the result showed nothing")
                        state = page.evaluate(
                            "() => { try { return app.state.resultPath || null }"
                            " catch (e) { return null } }"
                        )
                        mime = (results.get(state) or {}).get("mime_type") if state else None
                        expects = VIEWABLE_MIME.get(mime or "", "img_or_iframe")
                        record.update(
                            result=state, mime_type=mime, expects_visual=True, expects=expects
                        )
                        settle()
                        measure(record)
                        index += 1
                        suffix = "" if k == 1 else f"--{k}"
                        shoot(name, f"{index:02d}-{stem}{suffix}.png", record)
        finally:
            browser.close()

    for name, record in summary["pages"].items():
        record.pop("expects", None)
        summary["problems"].extend(f"{name}: {p}" for p in record["problems"])
    summary["ok"] = not summary["problems"]
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: screenshot a report, print the summary as JSON; exit 1 on problems, 2 on setup errors."""
    parser = argparse.ArgumentParser(
        prog="python -m r2i.report.screenshots",
        description="Render a Snakemake --report HTML file in headless Chromium, save "
        "screenshots of its pages and check that its images and plots render.",
    )
    parser.add_argument("report", type=Path, help="the report HTML file (snakemake --report X.html)")
    parser.add_argument("--out", type=Path, default=Path("docs/report"),
                        help="folder for the PNG screenshots (default: docs/report)")
    parser.add_argument("--pages", nargs="*", default=None, metavar="CATEGORY",
                        help="categories to capture, by name or slug (default: all)")
    parser.add_argument("--items", type=int, default=1,
                        help="results to open per (sub)category (default: 1)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--chromium", default=None,
                        help=f"Chromium executable (default: ${CHROMIUM_ENV}, then PATH)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per wait (default 15)")
    args = parser.parse_args(argv)
    try:
        summary = capture(
            args.report, args.out, pages=args.pages or None, width=args.width,
            height=args.height, chromium=args.chromium, items=args.items,
            timeout_ms=int(args.timeout * 1000),
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
