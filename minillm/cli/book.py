"""`book build` and `book serve`: the book as a static website, commands of `python -m minillm` (issue 21).

    python -m minillm book build                    # writes site/ (about a minute), then open site/index.html
    python -m minillm book build --out /tmp/site
    python -m minillm book serve --port 8080        # http://127.0.0.1:8080/ (Ctrl-C stops)

The notebooks are rendered with their committed outputs, never re-executed;
`minillm.website` has the details. A broken link or missing image fails the
build (exit status 2, each one listed).
"""

from __future__ import annotations

import argparse

from minillm.cli.common import add_command, integer


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `book` (with its actions `build` and `serve`) to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "book",
        help="the book as a website: build it from the notebooks (offline), or serve a built one",
        description="Build the book (chapters, appendix, exercise solutions) and the package's API reference "
        "into a static website that opens from disk or any static host (`book build`), or serve a built one "
        "on this machine (`book serve`). `book ACTION --help` shows an action's options.",
    )  # fmt: skip
    actions = p.add_subparsers(dest="book_action", metavar="ACTION", required=True)
    build = add_command(
        actions, "build",
        help="render the committed notebooks and the API reference into a static site",
        description="Render every notebook with its committed outputs (nothing is re-executed) and a page per "
        "minillm module into --out; a broken link or missing image fails the build.",
    )  # fmt: skip
    build.add_argument("--out", default="site", help="folder to write (replaced if it holds an earlier build)")
    build.add_argument("--root", default=None, help="the repository's root (default: the clone minillm is "
                       "installed from)")  # fmt: skip
    build.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    build.set_defaults(func=run_build)
    serve = add_command(
        actions, "serve",
        help="serve a built site over HTTP on this machine",
        description="Serve the folder written by `book build` with Python's http.server until Ctrl-C.",
    )  # fmt: skip
    serve.add_argument("--dir", default="site", help="the built site (--out of book build)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=integer(0, 65535, "0: a free port"), default=8000, help="port (default 8000)")
    serve.set_defaults(func=run_serve)


def run_build(args: argparse.Namespace) -> int:
    """`book build`: build the site and say where it is."""
    from minillm.website import build_site

    print(f"building the website into {args.out} (the notebooks are not re-executed) ...", flush=True)
    result = build_site(args.out, root=args.root, verbose=args.verbose)
    for line in result.warnings:
        print(f"warning: {line}")
    print(f"built {len(result.pages)} pages in {result.seconds:.0f} s: open {result.index} "
          f"or run `python -m minillm book serve --dir {args.out}`")  # fmt: skip
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """`book serve`: serve a built site until Ctrl-C."""
    from minillm.website import site_server

    with site_server(args.dir, args.host, args.port) as server:
        print(f"serving {args.dir} on http://{args.host}:{server.server_port}/ (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("\nstopped")
    return 0
