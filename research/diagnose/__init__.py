"""Diagnosis of the demo flow's reward quality (docs/evaluation.md, "Diagnosis"):
diagnose.py (fast refits on cached latents: `python -m research diagnose`), levers.py (refit
with one lever changed: `python -m research levers`), token_calibration.py (per-token-id
calibration: `python -m research token-calibration`). Dev split only."""
