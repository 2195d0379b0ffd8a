"""The book as a website (minillm.website, `python -m minillm book ...`), built once and read in a real browser.

The site is built once for this file by the real command (`python -m minillm book build`, which fails on a
broken link, cross-reference or missing image), served by `python -m minillm book serve` on a free port,
and Debian's chromium, through selenium, opens every page: each loads with HTTP 200, no console error and
nothing fetched from another host (the folder works offline); every internal link and image resolves (a
link's #fragment included); the math is typeset by the bundled MathJax (no raw `$$`, `\\(` or `\\[` left in
the text); the search page finds "RoPE" in chapter 03; the API page of `minillm.model` shows `GPT`'s
docstring. Screenshots of the index, chapter 03 and that API page land in /tmp/site_*.png.

Needs chromium and its driver: `apt-get install -y chromium chromium-driver` (the test fails without them).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import httpx
import pytest

from browser import chromium
from minillm.cli import main
from minillm.website import (SiteError, api_modules, api_page, book_pages, build_site, jupyter_math,
                             repository_root, rest_tables_to_markdown)

# Sphinx 9 deprecations inside the theme and MyST (not ours to fix); they would only crowd the summary.
pytestmark = pytest.mark.filterwarnings("ignore:.*Check CHANGES for Sphinx API modifications")

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30  # seconds to wait for a page

# Resolves when the page is ready: loaded, and MathJax (where the page loads it) done typesetting.
READY = """
const done = arguments[arguments.length - 1];
const typeset = () => (window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise : null;
const start = Date.now();
(function poll() {
  if (document.readyState === "complete" && (!document.querySelector(".math") || typeset())) {
    Promise.resolve(typeset()).then(() => done(true), (e) => done(String(e)));
  } else if (Date.now() - start > 20000) { done("timeout"); } else { setTimeout(poll, 50); }
})();
"""

# What a page shows and links to, read in the browser after it is ready.
INSPECT = """
const body = document.body.cloneNode(true);
body.querySelectorAll("pre, code, script, style, mjx-assistive-mml, .highlight").forEach((e) => e.remove());
return {
  text: body.textContent,
  math: document.querySelectorAll(".math").length,
  typeset: document.querySelectorAll("mjx-container").length,
  links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
  images: [...document.querySelectorAll("img")].map((i) => [i.src, i.complete && i.naturalWidth > 0]),
  ids: [...document.querySelectorAll("[id]")].map((e) => e.id),
  resources: performance.getEntriesByType("resource").map((r) => r.name),
  copy: document.querySelectorAll("button.copybtn").length,
  code: document.querySelectorAll("div.highlight pre").length,
  next: !!document.querySelector(".prev-next-area a.right-next"),
  prev: !!document.querySelector(".prev-next-area a.left-prev"),
};
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once by `python -m minillm book build` into a temporary folder."""
    out = tmp_path_factory.mktemp("website") / "site"
    result = subprocess.run([sys.executable, "-m", "minillm", "book", "build", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "built " in result.stdout and (out / "index.html").is_file(), result.stdout
    return out


@pytest.fixture(scope="module")
def url(site):
    """The base URL of `python -m minillm book serve` serving the built site on a free port."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "minillm", "book", "serve", "--dir", str(site), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base, timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "book serve did not start"
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def driver():
    with chromium("the website test", "1280,900") as browser:
        browser.set_script_timeout(TIMEOUT)
        yield browser


def pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if not p.name.startswith("_")
                  and not p.relative_to(site).as_posix().startswith("_"))  # fmt: skip


def visit(driver, url: str) -> dict:
    """Open `url`, wait until it is ready (MathJax done), and return what `INSPECT` reads plus console errors."""
    driver.get_log("browser")  # drop what the previous page left
    driver.get(url)
    ready = driver.execute_async_script(READY)
    assert ready is True, f"{url}: {ready}"
    seen = driver.execute_script(INSPECT)
    seen["errors"] = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return seen


# ---------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------


def test_every_notebook_and_module_has_a_page_in_reading_order(site):
    built = set(pages(site))
    sections = book_pages(ROOT)
    assert [caption for caption, _ in sections][:2] == ["Chapters", "Appendix"]
    notebooks = [n for _, ns in sections for n in ns]
    assert notebooks[0].as_posix() == "chapters/00_introduction.ipynb"
    for notebook in notebooks:
        assert notebook.with_suffix(".html").as_posix() in built, notebook
    for module in api_modules():
        assert f"api/{module}.html" in built, module
    assert {"index.html", "search.html", "api/index.html"} <= built
    index = (site / "index.html").read_text(encoding="utf-8")
    positions = [index.index(f'href="{n.with_suffix(".html").as_posix()}"') for n in notebooks]
    assert positions == sorted(positions), "the index lists the notebooks out of reading order"
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert not (ROOT / "site").exists() or (ROOT / "site" / ".buildinfo").exists()


def test_no_page_loads_anything_from_another_host(site):
    for page in pages(site):
        html = (site / page).read_text(encoding="utf-8")
        remote = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\s(?:src|href)="((?:https?:)?//[^"]*)"', html)
        assert not remote, f"{page} loads {remote}: the site must work offline"


def test_a_broken_link_or_missing_image_fails_the_build(tmp_path):
    root = tmp_path / "repo"
    (root / "chapters").mkdir(parents=True)
    cells = [{"cell_type": "markdown", "id": "planted", "metadata": {}, "source": [
        "# 00 · A chapter\n\n![a diagram](figures/missing.svg)\n\nSee [chapter 9](09_nowhere.ipynb).\n"]}]
    notebook = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "chapters" / "00_chapter.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    with pytest.raises(SiteError) as error:
        build_site(tmp_path / "out", root=root, api=False)
    message = str(error.value)
    assert "broken reference(s) or image(s)" in message
    assert "missing.svg" in message and "09_nowhere" in message, message
    # a folder that is not an earlier build is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["book", "build", "--out", str(tmp_path / "mine"), "--root", str(root)]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_the_api_page_reads_docstrings_as_markdown():
    page = api_page("minillm.model")
    assert page.startswith("# `minillm.model`")
    assert "\n::::{py:class} GPT(" in page and "\n:::{py:method} forward(" in page
    assert repository_root() == ROOT


def test_display_math_is_read_as_jupyter_reads_it():
    text = "Return\n$$a\n+ b$$\nthe rest\n```\n$$x\n- y$$\n```\n"
    assert jupyter_math(text) == "Return\n$$a + b$$\nthe rest\n```\n$$x\n- y$$\n```\n"  # not a list; code kept


def test_a_rest_table_in_a_docstring_becomes_a_markdown_table():
    table = ("Modules:\n\n=====  ========  ===\nname   what      ch\n=====  ========  ===\n"
             "``a``  a cell ``running_past`` 01\n``b``  short     02\n=====  ========  ===\n")
    assert rest_tables_to_markdown(table) == ("Modules:\n\n| name | what | ch |\n|---|---|---|\n"
                                              "| ``a`` | a cell ``running_past`` | 01 |\n| ``b`` | short | 02 |\n")


def test_serve_needs_a_built_site(tmp_path, capsys):
    assert main(["book", "serve", "--dir", str(tmp_path)]) == 2
    assert "no built site" in capsys.readouterr().err
    assert main(["book", "serve", "--port", "70000"]) == 2


# ---------------------------------------------------------------------------
# In a browser
# ---------------------------------------------------------------------------


def test_every_page_loads_and_every_link_image_and_formula_works(site, url, driver):
    seen: dict[str, dict] = {}
    for page in pages(site):
        response = httpx.get(urljoin(url, page), timeout=10)
        assert response.status_code == 200, page
        seen[page] = visit(driver, urljoin(url, page))
        info = seen[page]
        assert not info["errors"], f"{page}: console errors {info['errors']}"
        outside = [r for r in info["resources"] if urlparse(r).netloc != urlparse(url).netloc]
        assert not outside, f"{page} loads from another host: {outside}"
        broken_images = [src for src, loaded in info["images"] if not loaded]
        assert not broken_images, f"{page}: images that did not load: {broken_images}"
        text = info["text"]
        for raw in ("$$", "\\(", "\\["):
            assert raw not in text, f"{page}: raw math {raw!r} left in the text"
        if info["math"]:
            assert info["typeset"] >= info["math"], f"{page}: {info['math']} formulas, {info['typeset']} typeset"
        assert info["copy"] == info["code"], f"{page}: {info['code']} code blocks, {info['copy']} copy buttons"
    book = [n.with_suffix(".html").as_posix() for _, ns in book_pages(ROOT) for n in ns]
    assert seen[book[0]]["next"] and seen[book[-1]]["prev"], "no previous/next links"
    assert sum(seen[p]["typeset"] for p in book) > 100, "the chapters' math was not typeset"
    assert sum(len(seen[p]["images"]) for p in book) > 100, "the diagrams and plots are missing"
    # every internal link resolves: the file exists (HTTP 200) and its #fragment is an id on the page
    ids = {urljoin(url, page): set(info["ids"]) for page, info in seen.items()}
    checked: set[str] = set()
    for page, info in seen.items():
        for link in info["links"]:
            if urlparse(link).netloc != urlparse(url).netloc:
                continue
            target, fragment = urldefrag(link)
            if target.endswith("/"):
                target += "index.html"
            if target in ids:
                assert not fragment or fragment in ids[target], f"{page} links to a missing #{fragment} of {target}"
            elif target not in checked:
                assert httpx.get(target, timeout=10).status_code == 200, f"{page} links to {target}"
                checked.add(target)


def test_search_finds_rope_in_chapter_03(url, driver):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(urljoin(url, "search.html?q=RoPE"))
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return document.querySelectorAll('#search-results li a').length") > 0,
        message="the search found nothing for RoPE")  # fmt: skip
    hits = driver.execute_script("return [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
    assert any("chapters/03_attention.html" in hit for hit in hits), hits


def test_the_folder_works_opened_from_disk(site, driver):
    from selenium.webdriver.support.ui import WebDriverWait

    info = visit(driver, (site / "chapters" / "03_attention.html").as_uri())
    assert not info["errors"] and info["math"] and info["typeset"] >= info["math"]
    assert all(loaded for _, loaded in info["images"])
    driver.get_log("browser")
    driver.get((site / "search.html").as_uri() + "?q=RoPE")
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return document.querySelectorAll('#search-results li a').length") > 0,
        message="the search found nothing for RoPE from disk")  # fmt: skip
    time.sleep(0.5)  # an excerpt's fetch, if one were attempted, would log its error by now
    hits = driver.execute_script("return [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
    assert any(hit.endswith("chapters/03_attention.html") for hit in hits), hits
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_api_page_of_gpt_shows_its_docstring_and_screenshots(url, driver):
    from minillm.model import GPT

    for name, page in (("index", "index.html"), ("chapter03", "chapters/03_attention.html")):
        driver.get(urljoin(url, page))
        driver.execute_script("sessionStorage.clear(); localStorage.clear()")  # as a first-time reader sees it
        visit(driver, urljoin(url, page))
        driver.save_screenshot(f"/tmp/site_{name}.png")
    info = visit(driver, urljoin(url, "api/minillm.model.html"))
    assert "minillm.model.GPT" in info["ids"]
    shown = driver.execute_script("return document.getElementById('minillm.model.GPT').parentElement.innerText")
    first_line = GPT.__doc__.strip().split("\n")[0]
    assert "GPT(" in shown and first_line.replace("`", "") in shown, shown[:500]
    assert "forward(" in shown
    driver.execute_script("document.getElementById('minillm.model.GPT').scrollIntoView()")
    driver.save_screenshot("/tmp/site_api_model.png")
