"""The research lab: experiments, diagnosis harnesses, lever sweeps, demo builders and one-off
studies. Not part of the `flowfield` wheel (pyproject.toml packages only flowfield* and
service*); nothing in flowfield/ or service/ imports it. Run from the repository root:

    python -m research NAME [ARGS ...]       # python -m research --help lists the names

Every NAME maps (COMMANDS below) to a module and a `main(argv: list[str]) -> int | None`
function, imported only when that NAME runs. See research/README.md for what each needs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# NAME -> (module[:function], one line of help); the function defaults to `main`. Modules are
# tried in order (for a workspace whose entry point may live in either place).
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "rlfr": (("research.rlfr.cli",),
             "RLFR toy experiment: GRPO on the demo task through a live service, every arm"),
    "rlfr-report": (("research.rlfr.cli:report_main",),
                    "rebuild the RLFR tables (and plot) from a results JSON"),
    "rewardflow": (("research.rewardflow.cli",),
                   "RewardFlow toy experiment: graph rewards for an MLP policy in grid rooms"),
    "rewardflow-report": (("research.rewardflow.cli:report_main",),
                          "rebuild the RewardFlow tables (and plot) from a results JSON"),
    "diagnose": (("research.diagnose.diagnose",),
                 "fast flow refits on cached demo latents, compared on the dev split"),
    "levers": (("research.diagnose.levers",),
               "refit the demo flow with one lever changed (then `flowfield eval --split dev`)"),
    "token-calibration": (("research.diagnose.token_calibration",),
                          "does per-token-id calibration of deviations lift the dev AUROC?"),
    "build-demo": (("research.demo_build.build",),
                   "rebuild the bundled demo: policy, expert data, flow, sanity check"),
    "train-policy": (("research.demo_build.train_policy",),
                     "train a demo policy on expert addition solutions (CPU, reproducible)"),
    "check-demo": (("research.demo_build.check",),
                   "a demo flow: held-out expert solutions vs. the same with digits corrupted"),
    "expert-data": (("research.demo_build.data",),
                    "write the demo's expert solutions (the flow split) as JSONL"),
    "bench-flow": (("research.studies.bench_flow",),
                   "the flow network's cost, change by change (adaLN fused, embeddings)"),
    "batch-invariance": (("research.studies.batch_invariance",),
                         "what batch-invariant scoring costs, and whether it holds"),
    "dtype-quality": (("research.studies.dtype_quality",),
                      "does bf16 move reward quality? the same rollouts in fp32 and bf16"),
    "real": (("research.real.cli", "research.real"),
             "the real-model workspace (research/real/)"),
}

USAGE = "usage: python -m research NAME [ARGS ...]   (python -m research NAME --help)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [USAGE, "", "names:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[list[str]], int | None]:
    """The `main(argv)` of NAME, imported now. LookupError when NAME is unknown or none of its
    modules can be imported."""
    if name not in COMMANDS:
        raise LookupError(f"unknown name {name!r}")
    missing = []
    for target in COMMANDS[name][0]:
        module_name, _, function = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # only a missing module of NAME itself; a missing dependency inside it propagates
            if e.name is None or not module_name.startswith(e.name):
                raise
            missing.append(module_name)
            continue
        main = getattr(module, function or "main", None)
        if callable(main):
            return main
        missing.append(f"{module_name}:{function or 'main'}")
    raise LookupError(f"{name}: none of {', '.join(missing)} is here")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    try:
        command = resolve(name)
    except LookupError as e:
        print(f"error: {e} (python -m research --help lists the names)", file=sys.stderr)
        return 2
    # the command sees its own arguments in sys.argv[1:] (benchmarks record them), and the
    # command line that ran it in sys.argv[0] (experiments write it to their results)
    saved, sys.argv = sys.argv, [f"python -m research {name}", *rest]
    try:
        code = command(rest)
    finally:
        sys.argv = saved
    return int(code or 0)
