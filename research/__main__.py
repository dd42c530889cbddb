"""`python -m research NAME [ARGS ...]`: see research/__init__.py and research/README.md."""

from research import main

raise SystemExit(main())
