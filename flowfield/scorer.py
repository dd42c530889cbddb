"""FlowScorer: the library call behind /score. Token ids in, deviations and rewards out.

encoder latents at hooked layers (response tokens only, forward stopped early)
  -> one batched flow evaluation over (timestep, draw, layer, token)
  -> per-sample normalise / filter / shape -> optional group advantages
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from flowfield.checkpoint import check_compatible
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet
from flowfield.objective import NoiseBank, token_deviations
from flowfield.rewards import Calibration, RewardOptions, group_advantages, token_rewards


@dataclass(frozen=True)
class ScoreOptions:
    reward: RewardOptions = field(default_factory=RewardOptions)
    timesteps: tuple[float, ...] = (0.8,)
    noise_draws: int = 1

    def __post_init__(self) -> None:
        if not self.timesteps:
            raise ValueError("timesteps must not be empty")
        for t in self.timesteps:
            if not 0.0 < t < 1.0:
                raise ValueError(f"timesteps must lie strictly between 0 and 1, got {t}")
        if self.noise_draws < 1:
            raise ValueError("noise_draws must be >= 1")


@dataclass
class SampleScore:
    deviations: torch.Tensor  # [n] raw deviation per response token (float32)
    token_rewards: torch.Tensor  # [n] shaped dense reward (float64)
    flow_return: float  # sum of token rewards
    advantages: torch.Tensor | None = None  # [n] when outcome rewards were given


class FlowScorer:
    def __init__(
        self,
        encoder: LatentEncoder,
        flow: FlowNet,
        meta: FlowMetadata,
        noise_seed: int = 0,
        noise: NoiseBank | None = None,
    ) -> None:
        """noise: share a bank between scorers (e.g. across flow versions) to reuse its cache."""
        check_compatible(meta, encoder.identity, encoder.layer_fractions)
        self.encoder = encoder
        p = next(flow.parameters())
        if p.dtype != encoder.dtype or p.device != encoder.device:
            # nn.Module.to works in place: cast a copy so the caller's flow is untouched
            flow = copy.deepcopy(flow).to(device=encoder.device, dtype=encoder.dtype)
        self.flow = flow.eval()
        self.meta = meta
        self.noise = noise if noise is not None else NoiseBank(encoder.hidden_size, noise_seed)
        self.calibration = Calibration.from_dict(meta.calibration) if meta.calibration else None

    @property
    def version(self) -> int:
        return self.meta.version

    @torch.inference_mode()
    def deviations(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        timesteps: Sequence[float] = (0.8,),
        noise_draws: int = 1,
    ) -> list[torch.Tensor]:
        """Raw per-token deviations for each sample (input order)."""
        batch = self.encoder.encode(prompts, responses)
        counts = torch.tensor([len(r) for r in responses], dtype=torch.long)
        if int(counts.sum()) == 0:
            return [torch.zeros(0) for _ in responses]
        starts = torch.tensor(batch.offsets[:-1], dtype=torch.long)
        # response index of every packed token, without a per-token Python loop
        positions = torch.arange(int(counts.sum())) - starts.repeat_interleave(counts)
        # the flow models standardised latents when it was fitted with statistics
        h, ctx = self.flow.prepare(batch.h, batch.context(self.meta.config.context))
        e = token_deviations(
            self.flow,
            h,
            ctx,
            positions,
            self.meta.config.layer_fractions,
            timesteps,
            self.noise,
            noise_draws,
        ).cpu()
        return list(torch.split(e, counts.tolist()))

    def resolve_normalization(
        self, requested: str | None, default: str, timesteps: Sequence[float]
    ) -> str:
        """The normalisation a request gets: the one it asked for, else `default`, except that
        a default of "expert" falls back to "bilateral" where this flow cannot serve it (no
        calibration, e.g. an older checkpoint, or other timesteps than the calibrated ones).
        An explicit "expert" is never replaced: check_options refuses it instead."""
        if requested:
            return requested
        if default == "expert":
            try:
                self.check_options(ScoreOptions(RewardOptions("expert"), tuple(timesteps)))
            except ValueError:
                return "bilateral"
        return default

    def check_options(self, options: ScoreOptions) -> None:
        """Raise ValueError if this flow cannot shape rewards with these options."""
        if options.reward.normalization == "expert":
            if self.calibration is None:
                raise ValueError(
                    "normalization 'expert' needs a flow fitted with a calibration "
                    f"(flow version {self.version} has none); use bilateral or unilateral"
                )
            self.calibration.check(options.timesteps)

    def shape(
        self,
        deviations: Sequence[torch.Tensor],
        options: ScoreOptions,
        outcome_rewards: Sequence[float] | None = None,
        group_ids: Sequence[str] | None = None,
    ) -> list[SampleScore]:
        """Raw deviations -> token rewards, flow returns and (with outcome rewards) advantages.

        group_ids: samples with the same id share an outcome baseline; None = each sample
        is its own group.
        """
        self.check_options(options)
        rewards = [token_rewards(e, options.reward, self.calibration) for e in deviations]
        advs: list[torch.Tensor | None] = [None] * len(deviations)
        if outcome_rewards is not None:
            n = len(deviations)
            gids = list(group_ids) if group_ids is not None else [str(i) for i in range(n)]
            advs = list(group_advantages(rewards, outcome_rewards, gids))
        return [SampleScore(e, r, float(r.sum()), a) for e, r, a in zip(deviations, rewards, advs)]

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        options: ScoreOptions | None = None,
        outcome_rewards: Sequence[float] | None = None,
        group_ids: Sequence[str] | None = None,
    ) -> list[SampleScore]:
        options = options or ScoreOptions()
        self.check_options(options)
        devs = self.deviations(prompts, responses, options.timesteps, options.noise_draws)
        return self.shape(devs, options, outcome_rewards, group_ids)
