"""``python -m adainfer_lib``: the command line (``adainfer_lib.cli``), e.g. ``python -m adainfer_lib trace --task
sentiment --n 8``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m adainfer_lib"))
