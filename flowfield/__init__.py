"""flowfield: dense per-token flow rewards (RLFR) and graph rewards (RewardFlow) for RL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowfield")  # pyproject.toml is the one place it is written
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
