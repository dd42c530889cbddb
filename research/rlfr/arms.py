"""The arms of the RLFR toy experiment: what each one adds to the binary outcome reward.

Every arm runs the same loop with the same budget and hyperparameters (trainer.py): sample
G rollouts per prompt, verify, score them through the service, one policy-gradient step,
sync the policy to the service every K steps. The arms differ only in

- `signal`: where the dense token rewards come from. "none" (RLVR: the group-normalised
  outcome only), "flow" (the service's token advantages: outcome plus the reward-to-go of
  the flow token rewards), or a logit-space signal the trainer computes from its own logits,
  "entropy" or "nll", shaped by `flowfield.rewards` exactly like flow deviations (same
  normalisation, threshold, top-k, beta; a high value is a penalty, as a large deviation
  is), so that the only difference to the flow arm is the signal;
- `update`: whether verifier-accepted rollouts are pushed to /v1/update (online refinement).

Two controls (issue 24) go through the same token-reward shape (beta, threshold, top-k,
reward-to-go): `oracle` (positive control) places the penalty at the known first wrong token
of every incorrect rollout (`flowfield.demo.task.first_error`), which no flow can beat at
localising errors; `shuffled` (negative control) takes the flow's own token rewards and
permutes them within each rollout (seeded), keeping their sizes and dropping their positions.
If the oracle cannot beat RLVR, no flow can on this toy; if `rlfr` does no better than
`shuffled`, the flow's localisation is not what helps.

Every arm scores its rollouts through the service, whatever its signal: the flow return of
the training rollouts is a reward-hacking diagnostic for all arms (a control arm shows how
the flow return moves when nothing optimises it), and the compute per step stays comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SIGNALS = ("none", "flow", "entropy", "nll", "oracle", "oracle-local", "shuffled")


@dataclass(frozen=True)
class Arm:
    name: str
    signal: str
    update: bool
    description: str
    normalization: str | None = None  # overrides the run's normalisation for this arm

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("rlvr", "none", False, "binary outcome only (group-normalised, GRPO)"),
        Arm("rlfr", "flow", True, "outcome + flow token rewards (service), online refinement"),
        Arm("rlfr-frozen", "flow", False, "outcome + flow token rewards, flow never refined"),
        Arm(
            "rlfr-expert",
            "flow",
            True,
            "as rlfr, flow rewards normalised against expert statistics (sign kept)",
            normalization="expert",
        ),
        Arm(
            "rlfr-unilateral",
            "flow",
            True,
            "as rlfr, per-sequence min-max to [0, 1], penalty only (the authors' scripts)",
            normalization="unilateral",
        ),
        Arm("oracle", "oracle", False,
            "positive control: outcome + penalty at the known first wrong token"),
        Arm("oracle-local", "oracle-local", False,
            "as oracle, the penalty on the wrong token alone (no reward-to-go)"),
        Arm("shuffled", "shuffled", True,
            "negative control: as rlfr, flow token rewards permuted within each rollout"),
        Arm("entropy", "entropy", False, "outcome + policy-entropy token shaping (trainer logits)"),
        Arm("nll", "nll", False, "outcome + token-NLL (likelihood) shaping (trainer logits)"),
    )
}
DEFAULT_ARMS = ("rlvr", "rlfr", "rlfr-frozen", "entropy", "nll")


def parse_arms(text: str) -> list[Arm]:
    """Comma-separated arm names ("all" = every arm) -> arms, in the order given."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        names = list(ARMS)
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names:
        raise ValueError(f"unknown arm(s) {unknown or text!r}; choose from {', '.join(ARMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"arm listed twice in {text!r}")
    return [ARMS[n] for n in names]


def with_update(arm: Arm, mode: str) -> Arm:
    """The arm with refinement forced on or off ("on"/"off"), or as defined ("auto")."""
    if mode == "auto":
        return arm
    if mode not in ("on", "off"):
        raise ValueError(f"update must be auto, on or off, got {mode!r}")
    return Arm(arm.name, arm.signal, mode == "on", arm.description, arm.normalization)
