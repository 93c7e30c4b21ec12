"""`python -m runner.bench ...` is `python -m runner bench ...`."""

from runner.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
