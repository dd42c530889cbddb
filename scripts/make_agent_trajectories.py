"""Write a /v1/score/graph request body from rollouts of the rooms environment.

    python scripts/make_agent_trajectories.py --groups 2 --per-group 4 --seed 16 --max-steps 8 \
        --out examples/graph_request.json   # the committed example
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so it runs from a checkout without installing

from flowfield.envs.rooms import make_groups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=2, help="prompt groups (tasks)")
    ap.add_argument("--per-group", type=int, default=4, help="rollouts per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epsilon", type=float, default=0.3, help="chance of a random action")
    ap.add_argument("--max-steps", type=int, default=10, help="actions before truncation")
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    args = ap.parse_args()

    groups = make_groups(args.groups, args.per_group, args.seed, args.epsilon, args.max_steps)
    text = json.dumps({"gamma": args.gamma, "groups": groups}, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        n = sum(len(g["trajectories"]) for g in groups)
        print(f"wrote {len(groups)} groups, {n} trajectories to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
