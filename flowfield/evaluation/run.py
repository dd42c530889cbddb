"""`flowfield eval` as a library call: load, get rollouts, score, (refine), measure.

Rollouts come from a JSONL file of verified rollouts, or from the demo task: held-out
problems, one rollout each sampled from the policy at a temperature, verified, with the
first wrong token known. With refinement, a separate round of problems is sampled, its
accepted rollouts refine the flow (refine.py), and both flows are measured on the same
fresh evaluation rollouts, which the refinement never saw.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from flowfield import defaults
from flowfield.checkpoint import load_flow, read_metadata
from flowfield.demo import ASSETS
from flowfield.demo.policy import sample_rollouts
from flowfield.demo.task import Problem
from flowfield.encoder import MODEL_LOAD_LOCK, LatentEncoder
from flowfield.evaluation.evaluate import (
    EvalRollout,
    ScoredRollout,
    load_rollouts,
    metrics_for,
    score_labels,
    score_rollouts,
)
from flowfield.evaluation.problems import eval_problems, refine_problems
from flowfield.evaluation.refine import RefineConfig, refine_round
from flowfield.progress import progress_bar
from flowfield.rewards import RewardOptions
from flowfield.scorer import FlowScorer, ScoreOptions

DEMO_POLICY = ASSETS / "policy"
DEMO_FLOW = ASSETS / "flow"


@dataclass
class EvalConfig:
    model: Path = DEMO_POLICY
    flow: Path = DEMO_FLOW
    data: Path | None = None  # JSONL of verified rollouts; None = the demo task
    demo: int = 200  # held-out demo problems (one rollout each) when data is None
    split: str = "eval"  # demo problems: "eval" (held-out) or "dev" (for comparing levers)
    temperature: float = 1.0
    seed: int = 0
    timesteps: tuple[float, ...] = defaults.TIMESTEPS
    noise_draws: int = defaults.NOISE_DRAWS
    # normalization None: the service's default (expert where the flow is calibrated)
    reward: RewardOptions = field(default_factory=RewardOptions)
    bootstrap: int = 1000
    # a rollout is correct when its reward is at least this (the service's accept threshold)
    correct_threshold: float = defaults.ACCEPT_THRESHOLD
    refine: RefineConfig | None = None
    logits: bool = True  # compute the policy's NLL / entropy baselines
    device: str = "cpu"
    # the encoder's and flow's dtype (float32, bfloat16, auto; None: bf16 on cuda, float32
    # elsewhere). The rollouts and the logit baselines do not depend on it: the policy that
    # samples them keeps the device's default dtype, so two dtypes score the same rollouts.
    dtype: str | None = None
    encoder_name: str | None = None  # None: flowfield.json "name" in the model dir, else folder


@dataclass
class EvalRun:
    report: dict  # everything printed and written as JSON
    scored: list[tuple[str, int, list[ScoredRollout]]]  # (label, flow version, rollouts)


def demo_rollouts(
    lm: torch.nn.Module,
    tokenizer,
    problems: list[Problem],
    temperature: float,
    seed: int,
    progress: bool = True,
    desc: str = "sample rollouts",
    chunk: int = 128,
) -> list[EvalRollout]:
    """One sampled, verified rollout per problem; chunk i is sampled with seed (seed, i)."""
    out: list[EvalRollout] = []
    bar = progress_bar(len(problems), desc, "rollout", progress)
    for i, start in enumerate(range(0, len(problems), chunk)):
        part = problems[start : start + chunk]
        for r in sample_rollouts(
            lm, tokenizer, part, temperature, seed=seed * 100_003 + i, batch_size=chunk
        ):
            # a character index; the demo tokenizer has one token per character
            fe = r.first_error if len(r.response) == len(r.response_ids) else None
            out.append(
                EvalRollout(
                    prompt_ids=list(r.prompt_ids),
                    response_ids=list(r.response_ids),
                    reward=r.reward,
                    prompt=r.problem.prompt,
                    response=r.response,
                    first_error=fe,
                    id=f"{r.problem.a:04d}+{r.problem.b:04d}",
                )
            )
        bar.update(len(part))
    bar.close()
    return [r for r in out if r.response_ids]  # an immediate end-of-sequence has no tokens


def _flow_info(scorer: FlowScorer, path: Path | None) -> dict:
    m = scorer.meta
    return {
        "path": None if path is None else str(path),
        "version": m.version,
        "context": m.config.context,
        "width": m.config.width,
        "depth": m.config.depth,
        "layer_fractions": list(m.config.layer_fractions),
        "hooked_layers": list(scorer.encoder.layers),
        "samples_trained": m.samples_trained,
        "tokens_trained": m.tokens_trained,
    }


def run_evaluation(cfg: EvalConfig, progress: bool = True) -> EvalRun:
    t0 = time.time()
    meta = read_metadata(cfg.flow)
    encoder = LatentEncoder(
        cfg.model,
        layer_fractions=meta.config.layer_fractions,
        device=cfg.device,
        dtype=cfg.dtype,
        name=cfg.encoder_name,
    )
    net, meta = load_flow(cfg.flow, encoder.identity, encoder.layer_fractions)
    scorer = FlowScorer(encoder, net, meta)
    lm = None
    if cfg.logits or cfg.data is None:
        lm_dtype = torch.bfloat16 if encoder.device.type == "cuda" else torch.float32
        if encoder.dtype == lm_dtype:  # the encoder's model is the whole LM: no second copy
            lm = encoder.model
        else:
            with MODEL_LOAD_LOCK:
                lm = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=lm_dtype)
            lm = lm.to(encoder.device).eval()
    # resolved once, as the service does: an unset normalisation is the default (expert where
    # the flow is calibrated at these timesteps, else bilateral)
    options = scorer.resolve(ScoreOptions(cfg.reward, tuple(cfg.timesteps), cfg.noise_draws))
    normalization = options.reward.normalization
    is_default = cfg.reward.normalization is None

    refine_result = None
    scorers = [("given flow", scorer)]
    if cfg.data is not None:
        rollouts = load_rollouts(cfg.data, encoder)
        source = {"kind": "file", "path": str(cfg.data)}
        if cfg.refine is not None:
            raise ValueError("refinement needs the demo task (fresh rollouts for each round)")
    else:
        problems = eval_problems(cfg.demo, cfg.split)
        rollouts = demo_rollouts(
            lm, encoder.tokenizer, problems, cfg.temperature, cfg.seed, progress
        )
        source = {
            "kind": "demo",
            "split": cfg.split,
            "problems": len(problems),
            "temperature": cfg.temperature,
            "seed": cfg.seed,
        }
        if cfg.refine is not None:
            rc = cfg.refine
            round_rollouts = demo_rollouts(
                lm,
                encoder.tokenizer,
                refine_problems(rc.rollouts),
                cfg.temperature,
                cfg.seed + 1,
                progress,
                desc="sample refinement round",
            )
            new_net, new_meta, refine_result = refine_round(
                encoder,
                net,
                meta,
                [r.prompt_ids for r in round_rollouts],
                [r.response_ids for r in round_rollouts],
                [r.reward for r in round_rollouts],
                rc,
                timesteps=cfg.timesteps,
                progress=progress,
            )
            scorers.append(
                ("refined flow", FlowScorer(encoder, new_net, new_meta, noise=scorer.noise))
            )

    evaluations, scored_sets = [], []
    for k, (label, sc) in enumerate(scorers):
        scored = score_rollouts(
            sc,
            rollouts,
            options,
            lm=lm if cfg.logits and k == 0 else None,
            progress=progress,
            desc=f"score (flow v{sc.version})",
        )
        if k > 0:  # the policy's NLL / entropy do not depend on the flow
            for s, first in zip(scored, scored_sets[0][2]):
                s.nll, s.entropy = first.nll, first.entropy
        m = metrics_for(scored, cfg.correct_threshold, cfg.bootstrap, cfg.seed)
        flow_path = cfg.flow if k == 0 else None
        evaluations.append({"label": label, "flow": _flow_info(sc, flow_path), **m})
        scored_sets.append((label, sc.version, scored))
    report = {
        "setup": {
            "model": str(cfg.model),
            "encoder": encoder.identity.label(),
            "layer_mapping": encoder.describe_layers(),
            "source": source,
            "timesteps": list(cfg.timesteps),
            "noise_draws": cfg.noise_draws,
            "reward": asdict(options.reward),
            # the headline flow return's normalisation, and whether it is the default one
            "normalization": {"name": normalization, "default": is_default},
            "bootstrap": cfg.bootstrap,
            "correct_threshold": cfg.correct_threshold,
            "threads": torch.get_num_threads(),
            "dtype": encoder.precision.name,
            "dtype_reason": encoder.precision.reason,
        },
        # the label of every sequence score, each flow return's naming its normalisation
        "labels": score_labels(normalization, is_default),
        "normalizations": dict(defaults.NORMALIZATIONS),
        "evaluations": evaluations,
        "refine": None if refine_result is None else refine_result.to_dict(),
        "seconds": round(time.time() - t0, 1),
    }
    return EvalRun(report, scored_sets)
