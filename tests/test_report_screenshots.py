"""r2i.report.screenshots on a real ``snakemake --report`` of a tiny throwaway workflow.

The workflow is written here (not part of the repo's Snakefile) so that the report holds every
kind of item the R2I report uses: a PNG, an SVG, an HTML file with an embedded base64 image and a
directory of PNGs, with categories, subcategories, labels and rst captions. Images are made with
Pillow. Needs the ``playwright`` package and a Chromium binary (Debian: ``apt-get install
chromium``); skipped without either.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from r2i.report import screenshots

from .conftest import snakemake_cmd

SNAKEFILE = """\
report: "report/workflow.rst"


rule plots:
    input:
        png="src/bars.png",
        svg="src/line.svg",
        html="src/table.html",
        gallery="src/gallery",
    output:
        png=report(
            "plots/bars.png",
            category="Plots",
            subcategory="Raster",
            caption="report/bars.rst",
            labels={"figure": "bars"},
        ),
        svg=report(
            "plots/line.svg", category="Plots", subcategory="Vector", caption="report/line.rst"
        ),
        html=report("tables/table.html", category="Tables", caption="report/table.rst"),
        gallery=report(
            directory("gallery"),
            patterns=["{name}.png"],
            category="Gallery",
            caption="report/gallery.rst",
        ),
    shell:
        "cp {input.png} {output.png} && cp {input.svg} {output.svg} && "
        "cp {input.html} {output.html} && cp -r {input.gallery} {output.gallery}"
"""

SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="200">'
    '<polyline points="10,190 80,120 160,150 240,40 310,60" fill="none" stroke="#1f77b4" '
    'stroke-width="4"/></svg>'
)


def _png(size: tuple[int, int], colour: str) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    for i, height in enumerate((0.3, 0.7, 0.5, 0.9)):
        x0 = 10 + i * (w - 20) // 4
        draw.rectangle([x0, int(h * (1 - height)), x0 + (w - 20) // 5, h - 5], fill=colour)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _write_workflow(root: Path) -> None:
    (root / "src" / "gallery").mkdir(parents=True)
    (root / "report").mkdir()
    (root / "Snakefile").write_text(SNAKEFILE)
    (root / "src" / "bars.png").write_bytes(_png((400, 300), "#d62728"))
    (root / "src" / "line.svg").write_text(SVG)
    thumb = base64.b64encode(_png((160, 120), "#2ca02c")).decode()
    (root / "src" / "table.html").write_text(
        "<!doctype html><html><body><h1>Accuracy</h1><table><tr><td>crop</td><td>0.81</td></tr>"
        f'</table><img alt="thumb" src="data:image/png;base64,{thumb}"></body></html>'
    )
    for name, colour in (("alpha", "#9467bd"), ("beta", "#ff7f0e")):
        (root / "src" / "gallery" / f"{name}.png").write_bytes(_png((200, 150), colour))
    captions = {
        "workflow.rst": "Throwaway workflow for **screenshot** tests.\n",
        "bars.rst": "Bar chart (*PNG*).\n",
        "line.rst": "Line chart (*SVG*).\n",
        "table.rst": "An HTML table with an embedded image.\n",
        "gallery.rst": "Gallery image {{ snakemake.wildcards.name }}.\n",
    }
    for name, text in captions.items():
        (root / "report" / name).write_text(text)


def _snakemake(root: Path, *args: str) -> None:
    res = subprocess.run(
        [*snakemake_cmd(), "-s", str(root / "Snakefile"), "-d", str(root), *args],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    try:
        return screenshots.find_chromium()
    except screenshots.ChromiumNotFoundError as exc:
        pytest.skip(f"no Chromium binary: {exc}")


@pytest.fixture(scope="module")
def report_html(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reportwf")
    _write_workflow(root)
    _snakemake(root, "--cores", "1")
    _snakemake(root, "--report", str(root / "report.html"))
    return root / "report.html"


def _not_blank(path: Path) -> bool:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return any(lo != hi for lo, hi in image.convert("RGB").getextrema())


def test_capture_all_pages(report_html: Path, chromium: str, tmp_path: Path):
    out = tmp_path / "shots"
    summary = screenshots.capture(report_html, out, chromium=chromium, width=1200, height=800)

    assert summary["ok"], json.dumps(summary, indent=2)
    pages = summary["pages"]
    assert list(pages) == ["overview", "Gallery", "Plots/Raster", "Plots/Vector", "Tables"]
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "00-overview.png", "01-gallery.png", "02-plots--raster.png", "03-plots--vector.png",
        "04-tables.png",
    ]
    for record in pages.values():
        path = Path(record["file"])
        assert path.is_file() and _not_blank(path), path
        with Image.open(path) as image:
            assert image.size == (1200, 800)
        assert record["images_broken"] == 0 and not record["problems"], record

    assert pages["overview"]["canvas"] >= 1  # the vega rule graph
    assert pages["Plots/Raster"]["result"] == "plots/bars.png"
    assert pages["Plots/Raster"]["images_rendered"] >= 1
    assert pages["Plots/Vector"]["mime_type"] == "image/svg+xml"
    assert pages["Plots/Vector"]["svg"] >= 1
    assert pages["Tables"]["iframes"] == 1 and pages["Tables"]["images_rendered"] >= 1
    assert pages["Gallery"]["result"] in {"gallery/alpha.png", "gallery/beta.png"}
    assert summary["external_requests"] == []


def test_broken_image_fails_cli(report_html: Path, chromium: str, tmp_path: Path, capsys):
    html = report_html.read_text()
    broken, n = re.subn(r"(filename=bars\.png;base64,)[^\"]+", r"\1aGVsbG8=", html)
    assert n == 1
    bad = tmp_path / "bad.html"
    bad.write_text(broken)

    rc = screenshots.main(
        [str(bad), "--out", str(tmp_path / "shots"), "--pages", "plots", "--chromium", chromium]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert list(summary["pages"]) == ["overview", "Plots/Raster", "Plots/Vector"]
    assert summary["pages"]["Plots/Raster"]["images_broken"] == 1
    assert "Plots/Raster: broken image: bars.png" in summary["problems"]
    assert summary["pages"]["Plots/Vector"]["problems"] == []


def test_unknown_page_is_an_error(report_html: Path, chromium: str, tmp_path: Path):
    with pytest.raises(ValueError, match="Gallery"):
        screenshots.capture(report_html, tmp_path, pages=["nope"], chromium=chromium)


def test_missing_chromium_names_the_file(tmp_path: Path, monkeypatch):
    missing = tmp_path / "no-such-chromium"
    monkeypatch.setenv(screenshots.CHROMIUM_ENV, str(missing))
    with pytest.raises(screenshots.ChromiumNotFoundError, match="no-such-chromium"):
        screenshots.find_chromium()
    monkeypatch.delenv(screenshots.CHROMIUM_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(screenshots.ChromiumNotFoundError, match="chromium-browser"):
        screenshots.find_chromium()


def test_slugify():
    assert screenshots.slugify("Accuracy / Zoom gap") == "accuracy-zoom-gap"
    assert screenshots.slugify("***") == "page"
