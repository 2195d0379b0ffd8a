"""The book as a website: every chapter, the appendix and the API reference, built offline (issue 21).

    python -m minillm book build --out site     # about a minute; then open site/index.html
    python -m minillm book serve --dir site     # http://127.0.0.1:8000/

`build_site(out)` renders the committed notebooks *as they are* (their outputs
were proven by nbval; nothing is re-executed) with Sphinx, MyST-NB and the
Sphinx Book Theme, into a static folder that opens from disk or any static host:

* the book in reading order (`book_pages`): chapters `chapters/NN_*.ipynb`,
  then the appendix `appendix/X_*.ipynb`, then the exercise solutions
  `appendix/solutions/*.ipynb` in a section of their own; a sidebar, previous /
  next links, copy buttons on code, a search page, and the drawn diagrams
  (`![alt](figures/X.svg)` in the notebooks) next to the plots of the outputs;
* a page per `minillm` module (`api_page`), written from its docstrings: the
  module's docstring, then each public class and function with its signature
  and docstring, read as Markdown (the package's docstrings are written that
  way: `code` in single backticks, indented examples, `*` lists), so that a
  docstring never fails the build;
* math by MathJax 3, served from the built folder itself (the files come with
  the `sphinx-mathjax-offline` package): no page loads anything from another
  host, so the folder works offline.

A broken cross-reference or a missing image is an error (`SiteError`, listing
every one); Sphinx's other warnings are returned in `SiteBuild.warnings` and
printed. `serve_site` serves a built folder on 127.0.0.1 with Python's own
`http.server`. Sphinx and its extensions are the `site` extra
(`pip install -e ".[site]"`; pinned in requirements.txt).
"""

from __future__ import annotations

import functools
import http.server
import importlib
import importlib.util
import inspect
import io
import json
import pkgutil
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from minillm.errors import ConfigError, MinillmError

#: The book's sections in reading order: (caption, folder under the repository, notebook file pattern).
BOOK_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("Chapters", "chapters", "[0-9][0-9]_*.ipynb"),
    ("Appendix", "appendix", "[A-Z]_*.ipynb"),
    ("Exercise solutions", "appendix/solutions", "*.ipynb"),
)
TITLE = "minillm: build a large language model from scratch"
#: Warnings that fail the build: a link, cross-reference, document or image that does not resolve.
BROKEN = re.compile(
    r"image file not readable|image file not found|could not find image|reference target not found"
    r"|undefined label|unknown document|nonexisting document|cross-reference target not found"
    r"|\[myst\.xref_missing\]|\[myst\.(?:image|reference)|Unknown target name|local id not found"
    r"|duplicate label|Duplicate explicit target name",
    re.IGNORECASE,
)
#: The tab's icon (without one the browser asks for /favicon.ico, a 404 on a static host).
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" '
           'fill="#1f4e79"/><text x="16" y="22" font-family="sans-serif" font-size="16" font-weight="bold" '
           'fill="#fff" text-anchor="middle">mL</text></svg>\n')  # fmt: skip
#: Opened from disk (file://) a browser refuses the fetches behind the search results' excerpts: list them without.
OFFLINE_JS = ("// minillm.website: opened from disk, the search lists its results without excerpts (a browser\n"
              "// refuses to fetch file:// pages); served over HTTP they have them.\n"
              "if (location.protocol === \"file:\" && typeof DOCUMENTATION_OPTIONS !== \"undefined\") {\n"
              "  DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false;\n}\n")  # fmt: skip
#: What the pages load from MathJax 3's distribution (the other combined bundles are left out).
MATHJAX_FILES = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "adaptors", "sre")


class SiteError(MinillmError):
    """The website could not be built: a broken link or image, missing notebooks, or Sphinx missing."""


@dataclass
class SiteBuild:
    """What `build_site` made: the folder, its pages (relative .html paths) and Sphinx's non-fatal warnings."""

    out: Path
    pages: list[str]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def index(self) -> Path:
        """The front page, `out/index.html` (open it in a browser)."""
        return self.out / "index.html"


# ---------------------------------------------------------------------------
# What the site holds
# ---------------------------------------------------------------------------


def repository_root() -> Path:
    """The repository this package was installed from (editable install): the folder holding `chapters/`."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "chapters").is_dir():
        raise SiteError(f"no chapters/ folder next to the package ({root}): the website is built from a clone of "
                        "the repository; pass --root PATH of a clone")  # fmt: skip
    return root


def book_pages(root: Path) -> list[tuple[str, list[Path]]]:
    """[(section caption, [notebook paths relative to root, in reading order])], empty sections left out."""
    sections = []
    for caption, folder, pattern in BOOK_SECTIONS:
        notebooks = sorted(p.relative_to(root) for p in (root / folder).glob(pattern) if p.is_file())
        if notebooks:
            sections.append((caption, notebooks))
    if not sections or not sections[0][1]:
        raise SiteError(f"{root} has no chapter notebooks (chapters/NN_*.ipynb); is it the repository's root?")
    return sections


def api_modules() -> list[str]:
    """The dotted names of the package and its modules (subpackages by their `__init__`), without `__main__`."""
    package = importlib.import_module("minillm")
    names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    return ["minillm"] + [f"minillm.{name}" for name in sorted(names)]


def _summary(obj: object) -> str:
    """The first line of an object's docstring (empty without one)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n")[0].strip()


class _Annotation(str):
    """An annotation as written (`from __future__ import annotations` keeps them as text): shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def _signature(name: str, obj: object, bound: bool = False) -> str:
    """`name(args) -> ret` on one line, annotations as written, or `name` when Python cannot tell.

    `bound`: leave out the first parameter (`self`, `cls`) of a method; a
    class's signature is its constructor's, without `-> None`.
    """
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return name
    parameters = list(signature.parameters.values())
    if bound and parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    quoted = lambda a: _Annotation(a) if isinstance(a, str) else a  # noqa: E731
    parameters = [p.replace(annotation=quoted(p.annotation)) for p in parameters]
    returns = inspect.Signature.empty if inspect.isclass(obj) else quoted(signature.return_annotation)
    text = str(signature.replace(parameters=parameters, return_annotation=returns))
    return name + " ".join(text.split())


_TABLE_BORDER = re.compile(r"^=+(?: +=+)+ *$")


def rest_tables_to_markdown(text: str) -> str:
    """`text` with each reST simple table (rows between `====  ====` borders) rewritten as a Markdown table."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        border = lines[i]
        ends = [j for j in range(i + 2, len(lines)) if lines[j] == border] if _TABLE_BORDER.match(border) else []
        if len(ends) < 2 or ends[0] != i + 2:
            out.append(lines[i])
            i += 1
            continue
        spans = [m.span() for m in re.finditer(r"=+", border)]
        starts = [a for a, _ in spans] + [None]  # type: ignore[list-item]

        def cells(line: str) -> str:
            cuts = []  # a cell may run past its border: its column then ends at the next space
            for start in starts[1:-1]:
                while 0 < start < len(line) and line[start - 1] != " ":
                    start += 1
                cuts.append(start)
            bounds = [0, *cuts, None]
            parts = [line[bounds[k]:bounds[k + 1]].strip().replace("|", "\\|") for k in range(len(spans))]
            return "| " + " | ".join(parts) + " |"

        out += [cells(lines[i + 1]), "|" + "---|" * len(spans)]
        out += [cells(line) for line in lines[i + 3:ends[1]] if line.strip()]
        i = ends[1] + 1
    return "\n".join(out)


def _fence(kind: str, argument: str, body: str, depth: int) -> str:
    """A MyST colon-fenced directive (`depth` + 3 colons, so that directives nest) around `body`."""
    colons = ":" * (3 + depth)
    return f"{colons}{{{kind}}} {argument}\n\n{body.strip()}\n{colons}\n"


def _public_members(module: object) -> list[tuple[str, object]]:
    """The classes and functions a module defines (its `__all__` when it has one), in source order."""
    names = getattr(module, "__all__", None)
    items = [(n, getattr(module, n)) for n in names if hasattr(module, n)] if names else list(vars(module).items())
    return [(n, v) for n, v in items if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
            and getattr(v, "__module__", None) == module.__name__]  # type: ignore[attr-defined]  # fmt: skip


def _class_members(cls: type) -> list[tuple[str, str, object]]:
    """(directive, name, object) of the public methods and properties a class itself defines."""
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            members.append(("py:property", name, value))
        elif isinstance(value, (classmethod, staticmethod)):
            members.append(("py:method", name, value))
        elif inspect.isfunction(value):
            members.append(("py:method", name, value))
    return members


def api_page(module_name: str) -> str:
    """The MyST Markdown page of one module: its docstring, then each public class (with its methods and
    properties) and function with its signature and docstring (docstrings read as Markdown)."""
    module = importlib.import_module(module_name)
    lines = [f"# `{module_name}`\n", _fence("py:module", module_name, "", 0)]
    lines.append(rest_tables_to_markdown(inspect.getdoc(module) or "(no docstring)") + "\n")
    members = _public_members(module)
    for heading, wanted in (("Classes", inspect.isclass), ("Functions", inspect.isfunction)):
        chosen = [(n, v) for n, v in members if wanted(v)]
        if not chosen:
            continue
        lines.append(f"## {heading}\n")
        for name, value in chosen:
            body = inspect.getdoc(value) or ""
            if inspect.isclass(value):
                parts = [body]
                for kind, member_name, member in _class_members(value):
                    function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    bound = not isinstance(member, staticmethod)
                    argument = member_name if kind == "py:property" else _signature(member_name, function, bound)
                    options = ":classmethod:\n" if isinstance(member, classmethod) else ""
                    options += ":staticmethod:\n" if isinstance(member, staticmethod) else ""
                    parts.append(_fence(kind, argument, options + "\n" + (inspect.getdoc(function) or ""), 0))
                lines.append(_fence("py:class", _signature(name, value), "\n\n".join(parts), 1))
            else:
                lines.append(_fence("py:function", _signature(name, value), body, 0))
    return "\n".join(lines)


def api_index(modules: list[str]) -> str:
    """The API reference's front page: a table of the modules, each with the first line of its docstring."""
    if not modules:
        return "# API reference\n\nLeft out of this build (`build_site(..., api=False)`).\n"
    rows = [f"| [`{name}`]({name}.md) | {_summary(importlib.import_module(name)).replace('|', '/')} |"
            for name in modules]  # fmt: skip
    toctree = "\n".join(f"{name}" for name in modules)
    return ("# API reference\n\nA page per module of the `minillm` package, written from its docstrings "
            "(shapes are given as `(B, T, C)`: batch, time, channels).\n\n| module | what it is for |\n|---|---|\n"
            + "\n".join(rows) + f"\n\n```{{toctree}}\n:hidden:\n:titlesonly:\n\n{toctree}\n```\n")  # fmt: skip


def index_page(sections: list[tuple[str, list[Path]]]) -> str:
    """The front page: what the book is, and a table of contents per section (the sidebar follows it)."""
    text = [f"# {TITLE}\n",
            "A notebook-first book that builds a GPT-style language model from scratch in PyTorch, step by "
            "step, on top of one small, tested, reusable package, `minillm`. Each chapter is a Jupyter notebook "
            "shown here with the outputs of its last checked run (every notebook is re-executed in CI); the "
            "[API reference](api/index.md) documents the package the notebooks import.\n",
            "To run the notebooks yourself: clone the repository, `pip install -r requirements.txt`, and open "
            "`chapters/` in JupyterLab.\n"]  # fmt: skip
    for caption, notebooks in sections:
        entries = "\n".join(p.with_suffix("").as_posix() for p in notebooks)
        text.append(f"```{{toctree}}\n:caption: {caption}\n:maxdepth: 1\n\n{entries}\n```\n")
    text.append("```{toctree}\n:caption: Reference\n:maxdepth: 1\n\napi/index\n```\n")
    return "\n".join(text)


CONF = '''\
# Generated by minillm.website; the site's Sphinx configuration.
project = {title!r}
author = "the minillm authors"
extensions = ["myst_nb", "sphinx_copybutton"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "sphinx_book_theme"
html_title = {title!r}
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_favicon = "favicon.svg"
html_static_path = ["_static"]
html_js_files = ["minillm-offline.js"]
html_context = {{"default_mode": "light"}}   # the figures are drawn on white; the reader may still switch
html_theme_options = {{
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "max_navbar_depth": 2,          # the sidebar lists pages; a page's sections are in its own contents
}}
nb_execution_mode = "off"          # the committed outputs, as nbval checked them
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_dmath_double_inline = True   # $$...$$ inside a paragraph, as Jupyter renders it
myst_heading_anchors = 3
mathjax_path = "mathjax/tex-chtml.js"   # copied into _static by minillm.website: no CDN
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
add_module_names = False
python_maximum_signature_line_length = 100


def setup(app):
    from minillm.website import sphinx_setup

    sphinx_setup(app)
'''


def mathjax_folder() -> Path:
    """MathJax 3's files as installed by the `sphinx-mathjax-offline` package."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "static" / "mathjax"
        if (folder / "tex-chtml.js").is_file():
            return folder
    raise SiteError("MathJax's files are missing: pip install sphinx-mathjax-offline (in requirements.txt)")


def sphinx_setup(app: object) -> None:
    """Sphinx hook (the generated conf.py calls it): copy MathJax into `_static/mathjax` once the pages are built."""

    def copy_mathjax(app: object, exception: BaseException | None) -> None:
        if exception is not None:
            return
        source, target = mathjax_folder(), Path(app.outdir) / "_static" / "mathjax"  # type: ignore[attr-defined]
        for name in MATHJAX_FILES:
            if (source / name).is_dir():
                shutil.copytree(source / name, target / name, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, target / name)

    app.connect("build-finished", copy_mathjax)  # type: ignore[attr-defined]


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_DISPLAY_MATH = re.compile(r"\$\$.+?\$\$", re.DOTALL)


def jupyter_math(markdown: str) -> str:
    """Markdown whose `$$...$$` spans each fit on one line, outside code fences.

    Jupyter takes the math out before it reads the Markdown; MyST reads the
    Markdown first, so a line inside a formula that starts with `+ ` or `- `
    would begin a list. Joining the formula's lines (whitespace to LaTeX)
    renders it as Jupyter does.
    """
    def one_line(text: str) -> str:
        return _DISPLAY_MATH.sub(lambda m: " ".join(m.group().split("\n")), text)

    pieces, start = [], 0
    for fence in _FENCE.finditer(markdown):
        pieces += [one_line(markdown[start:fence.start()]), fence.group()]
        start = fence.end()
    pieces.append(one_line(markdown[start:]))
    return "".join(pieces)


def copy_notebook(source: Path, target: Path) -> None:
    """Copy a notebook, with `jupyter_math` applied to its Markdown cells (the outputs are left as they are)."""
    notebook = json.loads(source.read_text(encoding="utf-8"))
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            cell["source"] = jupyter_math(text)
    target.write_text(json.dumps(notebook, ensure_ascii=False), encoding="utf-8")


def write_sources(root: Path, source: Path, api: bool = True) -> list[tuple[str, list[Path]]]:
    """Lay out Sphinx's source folder in `source`: the notebooks and their figures, the index, the API pages
    (without `api`: a page that says the reference was left out)."""
    sections = book_pages(root)
    for _, notebooks in sections:
        for notebook in notebooks:
            (source / notebook).parent.mkdir(parents=True, exist_ok=True)
            copy_notebook(root / notebook, source / notebook)
    for folder in {n.parent for _, notebooks in sections for n in notebooks}:
        if (root / folder / "figures").is_dir():
            shutil.copytree(root / folder / "figures", source / folder / "figures", dirs_exist_ok=True)
    (source / "index.md").write_text(index_page(sections), encoding="utf-8")
    (source / "conf.py").write_text(CONF.format(title=TITLE), encoding="utf-8")
    (source / "favicon.svg").write_text(FAVICON, encoding="utf-8")
    (source / "_static").mkdir()
    (source / "_static" / "minillm-offline.js").write_text(OFFLINE_JS, encoding="utf-8")
    modules = api_modules() if api else []
    (source / "api").mkdir()
    (source / "api" / "index.md").write_text(api_index(modules), encoding="utf-8")
    for name in modules:
        (source / "api" / f"{name}.md").write_text(api_page(name), encoding="utf-8")
    return sections


# ---------------------------------------------------------------------------
# Build and serve
# ---------------------------------------------------------------------------


def _clear(out: Path) -> None:
    """Empty `out` for a fresh build: only a folder that is empty or holds an earlier build of a site."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / ".buildinfo").is_file()):
        raise ConfigError(f"{out} exists and is not an earlier build of the site (no .buildinfo); "
                          "choose another --out, or remove it")  # fmt: skip
    shutil.rmtree(out)


def build_site(out: str | Path = "site", root: str | Path | None = None, verbose: bool = False,
               api: bool = True) -> SiteBuild:
    """Build the website into `out` from the notebooks of the repository at `root` (default: this clone).

    Raises `SiteError` listing every broken cross-reference, link or missing
    image; other Sphinx warnings are returned (`SiteBuild.warnings`). `out` is
    replaced when it holds an earlier build. `verbose` shows Sphinx's progress;
    `api=False` leaves out the API reference's module pages (a quick build).
    """
    try:
        from sphinx.application import Sphinx
        from sphinx.util.docutils import docutils_namespace, patch_docutils
    except ImportError as err:
        raise SiteError(f"the website needs Sphinx ({err}): pip install -r requirements.txt, "
                        "or pip install -e '.[site]'") from err  # fmt: skip
    root = Path(root) if root is not None else repository_root()
    out = Path(out).resolve()
    started = time.perf_counter()
    _clear(out)
    with tempfile.TemporaryDirectory(prefix="minillm-site-") as tmp:
        source, doctrees = Path(tmp) / "source", Path(tmp) / "doctrees"
        source.mkdir()
        write_sources(root, source, api=api)
        warning = io.StringIO()
        with patch_docutils(source), docutils_namespace():
            app = Sphinx(str(source), str(source), str(out), str(doctrees), "html",
                         status=sys.stdout if verbose else None, warning=warning,
                         freshenv=True, keep_going=True, parallel=1)  # fmt: skip
            app.build()
    lines = [line.replace(str(source) + "/", "") for line in warning.getvalue().splitlines() if line.strip()]
    broken = [line for line in lines if BROKEN.search(line)]
    if broken:
        raise SiteError(f"the website has {len(broken)} broken reference(s) or image(s):\n" + "\n".join(broken))
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html") if not p.name.startswith("_"))
    pages = [p for p in pages if not p.startswith("_")]
    return SiteBuild(out=out, pages=pages, warnings=lines, seconds=time.perf_counter() - started)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; logs a line per request only for errors."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(code).isdigit() and int(code) >= 400:
            super().log_request(code, size)


def site_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving) for a built site; port 0 picks a free port (`server.server_port`)."""
    folder = Path(folder)
    if not (folder / "index.html").is_file():
        raise ConfigError(f"{folder} holds no built site (no index.html): run `python -m minillm book build "
                          f"--out {folder}` first")  # fmt: skip
    handler = functools.partial(_QuietHandler, directory=str(folder))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_site(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve a built site until Ctrl-C."""
    with site_server(folder, host, port) as server:
        server.serve_forever()


__all__ = ["BOOK_SECTIONS", "SiteBuild", "SiteError", "api_index", "api_modules", "api_page", "book_pages",
           "build_site", "index_page", "mathjax_folder", "repository_root", "serve_site", "site_server",
           "sphinx_setup", "write_sources"]  # fmt: skip
