"""The bundled demo: an addition task, a small policy trained on it, and its flow."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"  # committed weights (demo/build.py)
DEMO_POLICY = ASSETS / "policy"
DEMO_FLOW = ASSETS / "flow"
