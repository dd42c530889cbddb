import sys
from pathlib import Path

# Let `pytest tests/graph` import flowfield from a checkout that is not pip-installed.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
