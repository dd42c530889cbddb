"""Training the flow: offline fit from expert data, online refinement from accepted samples."""

from flowfield.training.data import Sample, load_jsonl, token_budget_batches
from flowfield.training.fit import FitConfig, FitResult, fit_flow
from flowfield.training.online import OnlineRefiner

__all__ = [
    "FitConfig",
    "FitResult",
    "OnlineRefiner",
    "Sample",
    "fit_flow",
    "load_jsonl",
    "token_budget_batches",
]
