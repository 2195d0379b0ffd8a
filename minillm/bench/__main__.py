"""Dispatch `python -m minillm.bench NAME ...` to the benchmark module NAME."""

from __future__ import annotations

import importlib
import sys

from minillm.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        known = ", ".join(sorted(BENCHMARKS))
        print(f"usage: python -m minillm.bench NAME [options]   (NAME is one of: {known})")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown benchmark {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
