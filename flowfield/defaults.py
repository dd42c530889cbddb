"""The defaults of every scoring, refinement and graph setting, written once.

The library (rewards, scorer, flow network, encoder, graph scoring), the service's settings
and request schemas (service/settings.py, service/schemas.py), the `flowfield` command line
and the README's settings table all read their defaults from here; nothing else writes
these numbers. docs/method.md#settings maps each one to the papers' symbols.

Flow rewards (RLFR: Zhang et al. 2025, arXiv 2510.10201; docs/method.md#flow-rewards):

NORMALIZATION = "expert"
    How a sample's raw deviations e become scores s in [-1, 1] (see NORMALIZATIONS). The
    log deviation as a z-score against the expert calibration stored with the flow keeps
    the sequence-level sign: a rollout the flow explains worse gets a lower return. Both
    per-sequence min-max modes make the return run the wrong way (the demo's held-out
    AUROC of the return for "incorrect": expert 0.78, bilateral 0.22; docs/evaluation.md).
FALLBACK_NORMALIZATION = "bilateral"
    Where the default cannot be served, see `flowfield.rewards.default_normalization`: the
    flow has no calibration (an older checkpoint, or a fit with too few samples to hold
    out), or the deviations are taken at other timesteps than the calibrated ones. An
    explicit "expert" is never replaced: it is an error there.
BETA = 0.01
    r = -beta * s: the paper's reward scale. A token reward is at most 0.01, about 1% of
    a unit outcome advantage.
THRESHOLD = 0.6
    eta: tokens with |s| <= eta get no reward (the paper's robust filter).
TOP_K = 15
    K: at most K tokens of a sample keep a reward (the paper's); 0 keeps every survivor.
TIMESTEPS = (0.8,)
    The flow time t at which deviations are measured (the paper's), weighted by t/(1-t).
    The fit's calibration is recorded at these timesteps, so "expert" needs them.
NOISE_DRAWS = 1
    Noise draws per token and timestep. The noise is a fixed seeded bank (the same
    request gets the same rewards); more draws lower the variance at a proportional cost.
LAYER_FRACTIONS = (0.25, 0.5, 0.75)
    Hooked depth fractions: block round(p * num_layers), 0-based (the paper's three).
CONTEXT = "next"
    The neighbour token whose latent conditions the flow (the paper's offline choice);
    recorded in the checkpoint and enforced when loading.

Online refinement (docs/method.md#online-refinement):

ACCEPT_THRESHOLD = 1.0
    A rollout refines the flow when its verifier reward is at least this: a correct answer
    under a 0/1 verifier (the paper's).
ONLINE_LR = 1e-4, ONLINE_MIN_LR = 1e-5, ONLINE_BETAS = (0.9, 0.95)
    The paper's online Adam recipe: peak learning rate, cosine floor, betas.
ONLINE_HORIZON = 1000
    Steps of the online cosine schedule. The paper steps with the actor for a fixed run; a
    service has no fixed length, so the schedule ends at this floor and stays there.

Graph rewards (RewardFlow, arXiv 2603.18859; docs/method.md#graph-rewards):

GAMMA = 0.9
    Discount of the backward value propagation (the paper's for ALFWorld, WebShop and
    Sokoban; 0.95 for search QA).
STEP_WEIGHT = 1.0
    w in A = A_episode + w * A_step (the paper's).
"""

from __future__ import annotations

# how deviations become scores: the values (kept for compatibility) and what each does
NORMALIZATIONS: dict[str, str] = {
    "bilateral": "per-sequence min-max to [-1, 1]",
    "unilateral": "per-sequence min-max to [0, 1], penalty only: the authors' released "
    "scripts' setting",
    "expert": "z-score of log deviation against the expert calibration stored with the flow",
}
NORMALIZATION = "expert"
FALLBACK_NORMALIZATION = "bilateral"
BETA = 0.01
THRESHOLD = 0.6
TOP_K = 15
TIMESTEPS: tuple[float, ...] = (0.8,)
NOISE_DRAWS = 1
LAYER_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75)
CONTEXT = "next"

ACCEPT_THRESHOLD = 1.0
ONLINE_LR = 1e-4
ONLINE_MIN_LR = 1e-5
ONLINE_BETAS: tuple[float, float] = (0.9, 0.95)
ONLINE_HORIZON = 1000

GAMMA = 0.9
STEP_WEIGHT = 1.0


def normalization_help(default: str = f"default {NORMALIZATION}") -> str:
    """One line naming every normalisation by what it does, then `default` and the fallback
    rule: the text of help options and schema descriptions."""
    modes = "; ".join(f"{name}: {what}" for name, what in NORMALIZATIONS.items())
    return (
        f"{modes}. {default[:1].upper()}{default[1:]}; a default of expert falls back to "
        f"{FALLBACK_NORMALIZATION} where the flow has no calibration at these timesteps"
    )
