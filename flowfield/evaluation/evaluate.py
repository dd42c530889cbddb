"""Reward-quality evaluation of a flow on verified rollouts.

Given rollouts with their verifier reward (and, for the demo task, the index of the first
wrong token), compute

- AUROC of sequence-level flow scores for telling incorrect from correct rollouts: mean
  deviation, max deviation, flow return (its negative: a low return predicts "incorrect")
  under the evaluation's normalisation (the service's default, expert, unless asked
  otherwise) and under each normalisation, every row named by its normalisation;
- the same for logit-space baselines under the policy: mean (and max) token NLL, mean token
  entropy;
- where the first error is known: how often the most-penalised token lies within a window
  of it, next to a uniformly random position (see metrics.py);
- mean reward and the share of positive / negative rewards per token class.

Flow scores come from FlowScorer, the same library call the service answers /score with.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from flowfield import defaults
from flowfield.chat import ChatChecks, chat_record
from flowfield.encoder import LatentEncoder
from flowfield.evaluation.logits import token_logit_stats
from flowfield.evaluation.metrics import (
    WINDOWS,
    bootstrap_auroc,
    localisation,
    most_extreme,
    most_penalised,
)
from flowfield.evaluation.tokens import class_table, demo_token_classes, string_token_classes
from flowfield.progress import progress_bar
from flowfield.rewards import NORMALIZATIONS
from flowfield.samples import SampleLimits, check_sample, jsonl_objects
from flowfield.scorer import FlowScorer, ScoreOptions

# sequence-level scores (each oriented: higher = more likely incorrect): key -> label.
# "flow_return" is the return under the evaluation's own normalisation (its label names it:
# `score_labels`), "flow_return_<mode>" the return under each normalisation.
SEQUENCE_SCORES: dict[str, str] = {
    "flow_mean_deviation": "flow: mean deviation",
    "flow_max_deviation": "flow: max deviation",
    "flow_return": "flow: flow return",
    **{f"flow_return_{mode}": f"flow: flow return, {mode}" for mode in NORMALIZATIONS},
    "nll_mean": "policy: mean token NLL",
    "entropy_mean": "policy: mean token entropy",
    "nll_max": "policy: max token NLL",
    "flow_plus_nll": "flow + policy: rank sum of mean deviation and mean NLL",
}


def score_labels(normalization: str, default: bool) -> dict[str, str]:
    """SEQUENCE_SCORES with the headline flow return named by its normalisation, e.g.
    "flow: flow return, expert (default)"; `default`: it is the service's default one."""
    labels = dict(SEQUENCE_SCORES)
    labels["flow_return"] = f"flow: flow return, {normalization}" + (
        " (default)" if default else ""
    )
    return labels


def normalization_legend() -> str:
    """What each normalisation named in the rows does (flowfield.defaults.NORMALIZATIONS)."""
    return "".join(f"\n  {mode}: {what}" for mode, what in defaults.NORMALIZATIONS.items())


# a "confident error": the policy gave the first wrong token at least this probability
CONFIDENT_P = 0.2
# token picked in an incorrect rollout for localisation: key -> label
PICKS: dict[str, str] = {
    "flow_min_reward": "flow: most-penalised token (min reward)",
    "flow_max_deviation": "flow: max raw deviation",
    "nll_max": "policy: max token NLL",
    "entropy_max": "policy: max token entropy",
}
_DEMO_PROMPT = re.compile(r"Q:\d+\+\d+\n")


@dataclass
class EvalRollout:
    """One verified rollout. first_error: token index of the first wrong token, if known."""

    prompt_ids: list[int]
    response_ids: list[int]
    reward: float
    prompt: str = ""
    response: str = ""
    first_error: int | None = None
    id: str = ""


@dataclass
class ScoredRollout:
    rollout: EvalRollout
    deviations: np.ndarray  # [n] raw flow deviation per response token
    rewards: np.ndarray  # [n] shaped token rewards
    flow_return: float
    nll: np.ndarray | None = None  # [n] under the policy
    entropy: np.ndarray | None = None  # [n]
    tokens: list[str] = field(default_factory=list)  # the text of each response token
    classes: list[str] = field(default_factory=list)
    returns: dict[str, float] = field(default_factory=dict)  # flow return per normalisation


def load_rollouts(path: str | Path, encoder: LatentEncoder) -> list[EvalRollout]:
    """Verified rollouts from JSONL, one object per line:

        {"prompt": "...", "response": "...", "reward": 1.0}
        {"prompt_ids": [...], "response_ids": [...], "reward": 0.0, "first_error": 7}
        {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "reward": 1.0}

    reward (the verifier's) is required; ids win over text; first_error (a response token
    index) and id are optional. Text is tokenised as the service does (prompt and response
    separately, no special tokens). A chat record's last (assistant) message is the
    response and the messages before it go through the chat template with
    add_generation_prompt=True. A trailing end-of-turn/EOS token is stripped from responses
    and prompts of a chat model without the assistant header are counted; both are logged as
    warnings (flowfield.chat), as `flowfield fit` does.
    """
    out: list[EvalRollout] = []
    limits = SampleLimits.of(encoder)
    chat = ChatChecks(encoder)
    for n, row in jsonl_objects(path):
        if not isinstance(row.get("reward"), int | float) or isinstance(row["reward"], bool):
            raise ValueError(f"{path}:{n}: needs a numeric verifier reward")
        if "messages" in row and "response_ids" not in row and "response" not in row:
            try:
                row = {
                    **row,
                    **dict(
                        zip(
                            ("prompt", "response"),
                            chat_record(row["messages"], getattr(encoder, "tokenizer", None)),
                        )
                    ),
                }
            except ValueError as e:
                raise ValueError(f"{path}:{n}: {e}") from None
        prompt, response = str(row.get("prompt") or ""), str(row.get("response") or "")
        if "response_ids" not in row and "response" not in row:
            raise ValueError(f"{path}:{n}: needs response_ids, response or messages")
        # text is tokenised only where ids are missing (a policy may have no tokenizer)
        p_text = prompt if "prompt_ids" not in row else ""
        r_text = response if "response_ids" not in row else ""
        text = bool(p_text or r_text)
        p_tok, r_tok = encoder.tokenize(p_text, r_text) if limits.has_tokenizer else ([], [])
        p, r = row.get("prompt_ids", p_tok), row.get("response_ids", r_tok)
        if not isinstance(p, list) or not isinstance(r, list):
            raise ValueError(f"{path}:{n}: prompt_ids and response_ids must be lists")
        problem = check_sample(p, r, limits, needs_tokenizer=text)
        if problem:
            raise ValueError(f"{path}:{n}: {problem}")
        kept = chat.sample(p, r)
        if len(kept) < len(r):
            r, response = kept, ""  # the text is rebuilt from the kept tokens
        prompt = prompt or "".join(token_strings(encoder, p))
        response = response or "".join(token_strings(encoder, r))
        fe = row.get("first_error")
        if fe is not None and not isinstance(fe, int):
            raise ValueError(f"{path}:{n}: first_error must be a token index")
        out.append(
            EvalRollout(p, r, float(row["reward"]), prompt, response, fe, str(row.get("id", n)))
        )
    if not out:
        raise ValueError(f"{path}: no rollouts")
    for warning in chat.warnings(str(path)):
        logging.getLogger("flowfield.eval").warning("%s", warning)
    return out


def token_strings(encoder: LatentEncoder, ids: Sequence[int]) -> list[str]:
    """The text of each token on its own (what the HTML view and the class table show).

    A policy without a tokenizer shows ids as "<id>", and so does any id outside the model's
    vocabulary [0, vocab_size): the tokenizer cannot decode it (an id below 0 or from 2**32
    up raises OverflowError in tokenizers' decode), and it has no token text anyway.
    """
    tok = encoder.tokenizer
    vocab = getattr(encoder, "vocab_size", None)
    out = []
    for i in ids:
        if tok is None or i < 0 or (vocab is not None and i >= vocab):
            out.append(f"<{i}>")
            continue
        try:
            out.append(tok.decode([i]))
        except (OverflowError, ValueError, TypeError, IndexError, KeyError):
            out.append(f"<{i}>")  # an id the tokenizer files do not cover
    return out


def is_demo_like(rollouts: Sequence[ScoredRollout]) -> bool:
    """Demo prompts ("Q:1234+5678\\n") with one character per response token."""
    return all(
        _DEMO_PROMPT.fullmatch(s.rollout.prompt or "") and all(len(t) == 1 for t in s.tokens)
        for s in rollouts
    )


def score_rollouts(
    scorer: FlowScorer,
    rollouts: Sequence[EvalRollout],
    options: ScoreOptions,
    lm: torch.nn.Module | None = None,
    chunk: int = 64,
    progress: bool = True,
    desc: str = "flow scores",
) -> list[ScoredRollout]:
    """Flow deviations and rewards (FlowScorer), and the policy's NLL/entropy when lm is given."""
    out: list[ScoredRollout] = []
    bar = progress_bar(len(rollouts), desc, "rollout", progress)
    for start in range(0, len(rollouts), chunk):
        part = rollouts[start : start + chunk]
        scores = scorer.score([r.prompt_ids for r in part], [r.response_ids for r in part], options)
        for r, s in zip(part, scores):
            toks = token_strings(scorer.encoder, r.response_ids)
            returns = {}
            for mode in NORMALIZATIONS:  # the same deviations under every normalisation
                o = replace(options, reward=replace(options.reward, normalization=mode))
                try:
                    returns[mode] = scorer.shape([s.deviations], o)[0].flow_return
                except ValueError:  # "expert" without a calibration at these timesteps
                    continue
            out.append(
                ScoredRollout(
                    r,
                    s.deviations.double().numpy(),
                    s.token_rewards.numpy(),
                    s.flow_return,
                    tokens=toks,
                    returns=returns,
                )
            )
        bar.update(len(part))
    bar.close()
    if lm is not None:
        tok = scorer.encoder.tokenizer
        pad = tok.pad_token_id if tok is not None else None
        bar = progress_bar(len(rollouts), "policy NLL/entropy", "rollout", progress)
        for start in range(0, len(out), chunk):
            part = out[start : start + chunk]
            stats = token_logit_stats(
                lm,
                [s.rollout.prompt_ids for s in part],
                [s.rollout.response_ids for s in part],
                pad_id=0 if pad is None else int(pad),
            )
            for s, (nll, ent) in zip(part, stats):
                s.nll, s.entropy = nll.double().numpy(), ent.double().numpy()
            bar.update(len(part))
        bar.close()
    demo = is_demo_like(out)
    for s in out:
        s.classes = (
            demo_token_classes("".join(s.tokens)) if demo else string_token_classes(s.tokens)
        )
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _nanmax(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.max()) if x.size else float("nan")


def sequence_scores(s: ScoredRollout) -> dict[str, float]:
    """Every sequence-level score, oriented so that higher = more likely incorrect."""
    out = {
        "flow_mean_deviation": float(s.deviations.mean()),
        "flow_max_deviation": float(s.deviations.max()),
        "flow_return": -s.flow_return,
    }
    for mode, ret in s.returns.items():
        out[f"flow_return_{mode}"] = -ret
    if s.nll is not None and s.entropy is not None:
        out["nll_mean"] = _nanmean(s.nll)
        out["entropy_mean"] = _nanmean(s.entropy)
        out["nll_max"] = _nanmax(s.nll)
    return out


def picks(s: ScoredRollout) -> dict[str, int]:
    """The token each localisation rule picks in a rollout."""
    out = {
        "flow_min_reward": most_penalised(s.rewards, s.deviations),
        "flow_max_deviation": most_extreme(s.deviations),
    }
    if s.nll is not None and s.entropy is not None:
        out["nll_max"] = most_extreme(np.nan_to_num(s.nll, nan=-np.inf))
        out["entropy_max"] = most_extreme(np.nan_to_num(s.entropy, nan=-np.inf))
    return out


def metrics_for(
    scored: Sequence[ScoredRollout],
    correct_threshold: float = 1.0,
    bootstrap: int = 1000,
    seed: int = 0,
    class_min_count: int = 5,
) -> dict:
    """All figures for one flow on one set of scored rollouts, as a JSON-ready dict."""
    incorrect = np.array([s.rollout.reward < correct_threshold for s in scored])
    n_bad = int(incorrect.sum())
    per = [sequence_scores(s) for s in scored]
    _add_rank_sum(per)
    auroc = _aurocs(per, incorrect, bootstrap, seed)

    # localisation: incorrect rollouts whose first error is a scored response token
    located = [
        s
        for s, bad in zip(scored, incorrect)
        if bad
        and s.rollout.first_error is not None
        and 0 <= s.rollout.first_error < len(s.rollout.response_ids)
    ]
    loc = None
    known = sum(1 for s in scored if s.rollout.first_error is not None)
    if known:
        chosen = [picks(s) for s in located]
        fe = [s.rollout.first_error for s in located]
        lengths = [len(s.rollout.response_ids) for s in located]
        loc = {
            "n": len(located),
            "excluded": n_bad - len(located),
            "windows": {k: list(v) for k, v in WINDOWS.items()},
            "rules": {
                key: localisation([c[key] for c in chosen], fe, lengths).to_dict()
                for key in PICKS
                if all(key in c for c in chosen)
            },
        }
        loc["random"] = localisation([0] * len(fe), fe, lengths).random

    confident = confident_errors(scored, incorrect, per, bootstrap, seed)

    table = class_table(
        [s.classes for s in scored],
        [s.rewards for s in scored],
        [s.deviations for s in scored],
        min_count=class_min_count,
    )
    return {
        "n": len(scored),
        "n_correct": len(scored) - n_bad,
        "n_incorrect": n_bad,
        "accuracy": (len(scored) - n_bad) / len(scored) if scored else float("nan"),
        "mean_deviation_correct": _mean_of(scored, ~incorrect),
        "mean_deviation_incorrect": _mean_of(scored, incorrect),
        "auroc": auroc,
        "localisation": loc,
        "confident_errors": confident,
        "token_classes": [c.to_dict() for c in table],
    }


def _aurocs(per: list[dict[str, float]], positive: np.ndarray, bootstrap: int, seed: int) -> dict:
    out = {}
    for key in SEQUENCE_SCORES:
        if per and all(key in p for p in per):
            values = np.array([p[key] for p in per])
            out[key] = bootstrap_auroc(values, positive, bootstrap, seed).to_dict()
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    return r


def _add_rank_sum(per: list[dict[str, float]]) -> None:
    """flow + NLL: the sum of each rollout's rank under mean deviation and under mean NLL."""
    if not per or not all("nll_mean" in p for p in per):
        return
    flow = _ranks(np.array([p["flow_mean_deviation"] for p in per]))
    nll = _ranks(np.nan_to_num(np.array([p["nll_mean"] for p in per]), nan=-np.inf))
    for p, a, b in zip(per, flow, nll):
        p["flow_plus_nll"] = float(a + b)


def confident_errors(
    scored: Sequence[ScoredRollout],
    incorrect: np.ndarray,
    per: list[dict[str, float]],
    bootstrap: int,
    seed: int,
) -> dict | None:
    """Incorrect rollouts whose first wrong token the policy found likely (p >= CONFIDENT_P).

    These are the errors likelihood cannot see by construction; a latent signal is worth
    most here. AUROC: these rollouts against every correct one; localisation: on them.
    """
    if not scored or scored[0].nll is None:
        return None
    keep = []
    for i, s in enumerate(scored):
        fe = s.rollout.first_error
        if not incorrect[i] or fe is None or not 0 <= fe < len(s.rollout.response_ids):
            continue
        nll = s.nll[fe]
        if not np.isnan(nll) and float(np.exp(-nll)) >= CONFIDENT_P:
            keep.append(i)
    if not keep:
        return {"n": 0, "min_p": CONFIDENT_P}
    sel = sorted(keep + [i for i in range(len(scored)) if not incorrect[i]])
    sub_per = [per[i] for i in sel]
    positive = np.array([bool(incorrect[i]) for i in sel])
    chosen = []
    for i in keep:
        c = picks(scored[i])
        if "nll_max" in c:  # flow + NLL: the token with the largest rank sum
            dev, nll = scored[i].deviations, np.nan_to_num(scored[i].nll, nan=-np.inf)
            c["flow_plus_nll"] = most_extreme(_ranks(dev) + _ranks(nll))
        chosen.append(c)
    fe = [scored[i].rollout.first_error for i in keep]
    lengths = [len(scored[i].rollout.response_ids) for i in keep]
    rules = {
        key: localisation([c[key] for c in chosen], fe, lengths).to_dict()
        for key in (*PICKS, "flow_plus_nll")
        if all(key in c for c in chosen)
    }
    return {
        "n": len(keep),
        "min_p": CONFIDENT_P,
        "auroc": _aurocs(sub_per, positive, bootstrap, seed),
        "localisation": {"rules": rules, "random": localisation([0] * len(fe), fe, lengths).random},
    }


def _mean_of(scored: Sequence[ScoredRollout], mask: np.ndarray) -> float:
    vals = [float(s.deviations.mean()) for s, m in zip(scored, mask) if m]
    return float(np.mean(vals)) if vals else float("nan")
