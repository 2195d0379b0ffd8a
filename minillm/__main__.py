"""`python -m minillm ...`: the command-line interface (see `minillm.cli`)."""

from minillm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
