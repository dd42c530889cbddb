"""Batch invariance: what it costs and whether it holds.

Scores the `flowfield bench` workload (random Qwen2 d=512, 8 layers; groups of 8 responses of
64-256 tokens sharing a ~128-token prompt) through the scheduler's batch function
(service.scheduler.run_batch) with FlowScorer.batch_invariant off ("batched", the previous
hot path) and on ("invariant"), taking turns round by round, and reports response tokens per
second for each (median over rounds) and the ratio. Two workloads per round: the whole round
as one scheduler batch (what concurrent requests become), and one call per group.

Then checks invariance: a few samples scored alone vs. inside the round's batch (with group
mates sharing their prompt, and with other groups), counting bit-identical results and the
largest relative difference, per mode.

    FLOWFIELD_THREADS=1 python -m research batch-invariance --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m research batch-invariance", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-rows", type=int, default=None, help="flow rows per call (invariant)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the built assets here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from flowfield.bench.workload import BenchConfig, build_flow, build_policy, flatten, make_round
    from flowfield.checkpoint import load_flow
    from flowfield.encoder import LatentEncoder
    from flowfield.objective import NoiseBank
    from flowfield.rewards import RewardOptions
    from flowfield.scorer import FlowScorer, ScoreOptions
    from service.scheduler import ScoreJob, run_batch

    cfg = BenchConfig(threads=args.threads, groups=args.groups)
    tmp = None
    wd = args.workdir
    if wd is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowfield-inv-")
        wd = Path(tmp.name)
    if not (wd / "flow" / "flow.json").is_file():
        build_policy(wd / "policy", cfg)
        build_flow(wd / "flow", LatentEncoder(wd / "policy"), cfg)
    encoder = LatentEncoder(wd / "policy", max_batch_tokens=cfg.batch_max_tokens)
    flow, meta = load_flow(wd / "flow", encoder.identity, encoder.layer_fractions)
    noise = NoiseBank(encoder.hidden_size, seed=0)
    scorers = {
        "batched": FlowScorer(encoder, flow, meta, noise=noise, batch_invariant=False),
        "invariant": FlowScorer(encoder, flow, meta, noise=noise, flow_chunk_rows=args.chunk_rows),
    }
    modes = list(scorers)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"chunk rows {scorers['invariant'].flow_chunk_rows}"
    )

    def job(prompts, responses):
        options = ScoreOptions(RewardOptions("bilateral"), tuple(cfg.timesteps), 1)
        return ScoreJob(prompts, responses, options)

    def one_batch(mode, groups):
        return run_batch(scorers[mode], [job(*flatten([g])) for g in groups])

    def per_group(mode, groups):
        return [run_batch(scorers[mode], [job(*flatten([g]))]) for g in groups]

    workloads = {"one batch per round": one_batch, "one call per group": per_group}
    rates = {(w, m): [] for w in workloads for m in modes}  # tokens per wall-clock second
    cpu_rates = {(w, m): [] for w in workloads for m in modes}  # tokens per CPU-second
    rounds = [make_round(cfg, 1, seed=999)] + [
        make_round(cfg, cfg.groups, seed=k + 1) for k in range(args.rounds)
    ]
    for k, groups in enumerate(rounds):
        tokens = sum(len(r) for g in groups for r in g.responses)
        order = modes if k % 2 == 0 else modes[::-1]
        for w, fn in workloads.items():
            for m in order:
                start, cpu = time.perf_counter(), time.process_time()
                fn(m, groups)
                dt, dc = time.perf_counter() - start, time.process_time() - cpu
                if k > 0:  # round 0 warms up
                    rates[(w, m)].append(tokens / dt)
                    cpu_rates[(w, m)].append(tokens / dc)
        if k > 0:
            print(
                f"round {k}: {tokens} tokens; "
                + "; ".join(f"{w} {m} {rates[(w, m)][-1]:.0f}" for w in workloads for m in modes)
            )
    print()
    print("| workload | measure | batched | invariant | invariant / batched |")
    print("| --- | --- | ---: | ---: | ---: |")
    for w in workloads:
        for label, r in (("tokens/s", rates), ("tokens per CPU-second", cpu_rates)):
            b = statistics.median(r[(w, "batched")])
            i = statistics.median(r[(w, "invariant")])
            ratio = statistics.median(
                [y / x for x, y in zip(r[(w, "batched")], r[(w, "invariant")])]
            )
            print(f"| {w} | {label} | {b:.0f} | {i:.0f} | {ratio:.3f} |")

    # invariance: sample alone vs. inside the whole round's batch
    groups = rounds[1]
    for m in modes:
        together = one_batch(m, groups)
        same, worst, n = 0, 0.0, 0
        for gi, g in enumerate(groups):
            for ri in (0, len(g.responses) - 1):
                alone = run_batch(scorers[m], [job([g.prompt], [g.responses[ri]])])[0]
                a = alone.scores[0].deviations
                b = together[gi].scores[ri].deviations
                n += 1
                same += int(torch.equal(a, b))
                worst = max(worst, float(((a - b).abs() / a.abs().clamp_min(1e-30)).max()))
        print(
            f"{m}: {same}/{n} samples bit-identical alone vs. in the batch; "
            f"max rel. diff {worst:.1e}"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
