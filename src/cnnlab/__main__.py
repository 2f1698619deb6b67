"""python -m cnnlab: the same as the `cnnlab` command."""

from cnnlab.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
