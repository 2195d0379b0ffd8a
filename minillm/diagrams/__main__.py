"""python -m minillm.diagrams: redraw the book's diagrams (or --check that the committed ones are current)."""

from __future__ import annotations

import argparse
import sys

from minillm.diagrams import build, load_all, repo_root, stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minillm.diagrams", description=__doc__)
    parser.add_argument("names", nargs="*", help="diagrams to draw (default: all), e.g. 03_mha_shapes")
    parser.add_argument("--root", default=None, help="the checkout holding chapters/ (default: this package's)")
    parser.add_argument("--check", action="store_true", help="draw nothing; list stale figures, exit 1 if any")
    parser.add_argument("--png", metavar="DIR", default=None, help="also write PNG previews to DIR")
    parser.add_argument("--list", action="store_true", help="list the registered diagrams")
    args = parser.parse_args(argv)
    root = args.root or repo_root()
    if args.list:
        for name in sorted(load_all()):
            print(name)
        return 0
    if args.check:
        problems = stale(root)
        for line in problems:
            print(line)
        if problems:
            print(f"{len(problems)} stale figure(s): run `python -m minillm.diagrams` and commit the SVGs",
                  file=sys.stderr)
        return 1 if problems else 0
    unknown = sorted(set(args.names) - set(load_all()))
    if unknown:
        parser.error(f"unknown diagram(s): {', '.join(unknown)}")
    for path in build(root, args.names or None, png_dir=args.png):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
