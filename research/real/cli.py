"""Command line of the real-model workspace: `python -m research real prepare ...`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

USAGE = "python -m research real {prepare,measure} [options]   (or python -m research.real ...)"


def _parser() -> argparse.ArgumentParser:
    from research.real.prepare import PrepareConfig
    from research.real.task import TaskConfig

    d, t = PrepareConfig(), TaskConfig()
    p = argparse.ArgumentParser(prog="python -m research real", description=USAGE)
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser(
        "prepare",
        help="install the pins, convert the GGUF, build the task, sample rollouts and expert data",
        description="Idempotent: the conversion is cached by the GGUF's sha256 and each "
        "sampling stage by its settings (manifest.json); --force resamples.",
    )
    pr.add_argument("--out", type=Path, default=d.out, help="output folder (default runs/real)")
    pr.add_argument("--lo", type=int, default=t.lo, help="smallest number in a problem")
    pr.add_argument("--hi", type=int, default=t.hi, help="largest number in a problem")
    pr.add_argument("--split-seed", type=int, default=t.split_seed)
    pr.add_argument("--shots", type=int, default=t.shots, help="few-shot worked examples")
    pr.add_argument("--dev", type=int, default=t.dev, help="dev problems")
    pr.add_argument("--eval", type=int, default=t.eval, help="held-out eval problems")
    pr.add_argument("--dev-samples", type=int, default=d.dev_samples, help="rollouts per problem")
    pr.add_argument("--eval-samples", type=int, default=d.eval_samples)
    pr.add_argument("--expert-problems", type=int, default=d.expert_problems,
                    help="expert problems to rejection-sample (0: templated expert data only)")
    pr.add_argument("--expert-samples", type=int, default=d.expert_samples)
    pr.add_argument("--expert-seed", type=int, default=d.expert_seed)
    pr.add_argument("--temperature", type=float, default=d.temperature)
    pr.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    pr.add_argument("--batch-size", type=int, default=d.batch_size, help="rows per generate")
    pr.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    pr.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    pr.add_argument("--no-install", action="store_true", help="do not pip install the pins")
    pr.add_argument("--force", action="store_true", help="resample even when cached")

    me = sub.add_parser(
        "measure",
        help="time flowfield fit / eval (dev) / serve on the prepared model and data",
        description="Runs the product's own commands under /usr/bin/time -v; writes "
        "<out>/measure/measurements.json (and the logs) next to them.",
    )
    me.add_argument("--out", type=Path, default=d.out, help="the prepare output folder")
    me.add_argument("--data", type=Path, default=None,
                    help="expert JSONL to fit (default <out>/expert/templated.jsonl)")
    me.add_argument("--name", default="templated256", help="fit name: <out>/fits/<name>")
    me.add_argument("--limit", type=int, default=256,
                    help="fit on the first N expert samples (0 = all; encoding is the cost)")
    me.add_argument("--epochs", type=float, default=25.0)
    me.add_argument("--batch-tokens", type=int, default=512)
    me.add_argument("--threads", type=int, default=1)
    me.add_argument("--bootstrap", type=int, default=200, help="eval AUROC bootstrap resamples")
    me.add_argument("--steps", default="fit,eval,serve", help="comma-separated subset")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "prepare":
        from research.real.prepare import PrepareConfig, Preparer
        from research.real.task import TaskConfig

        cfg = PrepareConfig(
            out=args.out,
            task=TaskConfig(args.lo, args.hi, args.split_seed, args.shots, args.dev, args.eval),
            dev_samples=args.dev_samples,
            eval_samples=args.eval_samples,
            expert_problems=args.expert_problems,
            expert_samples=args.expert_samples,
            expert_seed=args.expert_seed,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            threads=args.threads,
            install=not args.no_install,
            force=args.force,
        )
        manifest = Preparer(cfg).run()
        print(json.dumps({"splits": manifest["splits"], "timings": manifest["timings"]}, indent=2))
        return 0
    if args.command == "measure":
        from research.real.measure import MeasureConfig, run_measure

        cfg = MeasureConfig(
            out=args.out, data=args.data, name=args.name, limit=args.limit, epochs=args.epochs,
            batch_tokens=args.batch_tokens, threads=args.threads, bootstrap=args.bootstrap,
            steps=tuple(s for s in args.steps.split(",") if s),
        )
        results = run_measure(cfg)
        short = {
            step: {k: v for k, v in r.items() if k not in ("requests", "localisation")}
            for step, r in results[cfg.name].items()
        }
        print(json.dumps(short, indent=2))
        return 0
    return 2
