"""python -m research.real NAME ... (the same as python -m research real NAME ...)."""

from __future__ import annotations

import sys

from research.real.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
