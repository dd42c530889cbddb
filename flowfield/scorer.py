"""FlowScorer: the library call behind /score. Token ids in, deviations and rewards out.

encoder latents at hooked layers (response tokens only, forward stopped early)
  -> one batched flow evaluation over (timestep, draw, layer, token)
  -> per-sample normalise / filter / shape -> optional group advantages
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from flowfield import defaults
from flowfield.checkpoint import check_compatible
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet
from flowfield.objective import NoiseBank, deviation_sum
from flowfield.rewards import (
    Calibration,
    RewardOptions,
    group_advantages,
    resolve_normalization,
    token_rewards,
)

# Batch invariance (FlowScorer.batch_invariant): the deviations of a sample are computed
# with shapes that only that sample decides (encoder: each prompt and response alone, no
# padding; flow: chunks of exactly `flow_chunk_rows` rows), so scoring it alone or in any
# batch gives the same bits on the same machine, dtype and thread settings. Chunk rows per
# device: small on CPU (little padding waste, GEMMs of 256 rows are already efficient; at
# least 32 rows per torch thread, as a BLAS that splits a chunk's rows over threads may give
# a row different bits in a very small per-thread block), large on GPUs (kernel launches
# dominate small chunks).
DEFAULT_CHUNK_ROWS = {"cpu": 256, "cuda": 4096}


class ScoringInterrupted(Exception):
    """Raised by a `check` callback to abandon a scoring call (e.g. at a shutdown deadline)."""


@dataclass(frozen=True)
class ScoreOptions:
    """Every option of one scoring call (defaults: flowfield.defaults). The service builds
    one per request (service/options.py), resolved by `FlowScorer.resolve`, and that object
    travels unchanged through the scheduler to `shape`."""

    reward: RewardOptions = field(default_factory=RewardOptions)
    timesteps: tuple[float, ...] = defaults.TIMESTEPS
    noise_draws: int = defaults.NOISE_DRAWS

    def __post_init__(self) -> None:
        check_timesteps(self.timesteps)
        if self.noise_draws < 1:
            raise OptionError("noise_draws must be >= 1", "noise_draws")


class OptionError(ValueError):
    """A scoring option out of its range; `field` names it (e.g. "timesteps[1]")."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def check_timesteps(timesteps: Sequence[float]) -> None:
    """The one rule for rewarding timesteps: at least one, each strictly inside (0, 1)."""
    if not timesteps:
        raise OptionError("timesteps must not be empty", "timesteps")
    for i, t in enumerate(timesteps):
        if not 0.0 < t < 1.0:
            raise OptionError(
                f"timesteps must lie strictly between 0 and 1, got {t}", f"timesteps[{i}]"
            )


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
        batch_invariant: bool = True,
        flow_chunk_rows: int | None = None,
    ) -> None:
        """noise: share a bank between scorers (e.g. across flow versions) to reuse its cache.

        batch_invariant: a sample's deviations are bit-identical whatever other samples are
        scored in the same call (see BATCH_INVARIANCE). flow_chunk_rows: the fixed number of
        rows per flow-network call in that mode (default: DEFAULT_CHUNK_ROWS by device).
        """
        check_compatible(meta, encoder.identity, encoder.layer_fractions)
        self.encoder = encoder
        self.batch_invariant = batch_invariant
        if flow_chunk_rows is None:
            flow_chunk_rows = DEFAULT_CHUNK_ROWS.get(encoder.device.type, 4096)
            if encoder.device.type == "cpu":  # >= 32 rows for each thread a GEMM is split over
                flow_chunk_rows = max(flow_chunk_rows, 32 * torch.get_num_threads())
        if flow_chunk_rows < 1:
            raise ValueError("flow_chunk_rows must be >= 1")
        self.flow_chunk_rows = flow_chunk_rows
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
        timesteps: Sequence[float] = defaults.TIMESTEPS,
        noise_draws: int = defaults.NOISE_DRAWS,
        check: Callable[[], None] | None = None,
        batch_invariant: bool | None = None,
        share_prefix: bool = False,
    ) -> list[torch.Tensor]:
        """Raw per-token deviations for each sample (input order).

        With batch_invariant (the default) a sample's numbers do not depend on the other
        samples of the call: the encoder runs each prompt and response with its own shapes
        and the flow runs in fixed-size row chunks. check, if given, is called between
        forwards and flow chunks and may raise (e.g. ScoringInterrupted) to abandon the call.
        batch_invariant: overrides the scorer's setting for this call.

        The same as `latents`, then `deviation_sums` over all (timestep, draw) pairs, then
        `finish_deviations`; in batch-invariant mode bit-identical to doing the sums in parts.
        """
        lat = self.latents(
            prompts, responses, check=check, batch_invariant=batch_invariant,
            share_prefix=share_prefix,
        )
        sums = self.deviation_sums(
            lat, timesteps, noise_draws, check=check, batch_invariant=batch_invariant
        )
        return self.finish_deviations(sums, timesteps, noise_draws)

    @torch.inference_mode()
    def latents(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        check: Callable[[], None] | None = None,
        batch_invariant: bool | None = None,
        share_prefix: bool = False,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each sample's response latents and context latents as the flow models them
        (standardised): (h, ctx), each [L, R, d], on the encoder's device. share_prefix
        (without batch invariance: the fit's report): see LatentEncoder.encode."""
        invariant = self.batch_invariant if batch_invariant is None else batch_invariant
        # remember: the learner may get these samples next (encoder.memo, when it has one)
        batch = self.encoder.encode(
            prompts,
            responses,
            fixed_shapes=invariant,
            check=check,
            remember=True,
            share_prefix=share_prefix and not invariant,
        )
        # the flow models standardised latents when it was fitted with statistics
        h, ctx = self.flow.prepare(batch.h, batch.context(self.meta.config.context))
        o = batch.offsets
        return [(h[:, o[i] : o[i + 1]], ctx[:, o[i] : o[i + 1]]) for i in range(len(responses))]

    @torch.inference_mode()
    def deviation_sums(
        self,
        latents: Sequence[tuple[torch.Tensor, torch.Tensor]],
        timesteps: Sequence[float],
        noise_draws: int,
        pairs: tuple[int, int] | None = None,
        carries: Sequence[torch.Tensor] | None = None,
        check: Callable[[], None] | None = None,
        batch_invariant: bool | None = None,
    ) -> list[torch.Tensor]:
        """Per sample [R] (CPU float32): its running sum of weighted flow errors over the
        (timestep, draw) pairs [lo, hi) (None = all), added to its carry (the sum of the pairs
        before lo; None = none). See `flowfield.objective.deviation_sum`."""
        invariant = self.batch_invariant if batch_invariant is None else batch_invariant
        counts = [int(h.shape[1]) for h, _ in latents]
        if sum(counts) == 0:
            return [torch.zeros(0) for _ in latents]
        h = torch.cat([h for h, _ in latents], dim=1)
        ctx = torch.cat([c for _, c in latents], dim=1)
        # response index of every packed token
        positions = torch.cat([torch.arange(n) for n in counts])
        carry = torch.cat(list(carries)) if carries is not None else None
        e = deviation_sum(
            self.flow,
            h,
            ctx,
            positions,
            self.meta.config.layer_fractions,
            timesteps,
            self.noise,
            noise_draws,
            pairs=pairs,
            carry=carry,
            fixed_rows=self.flow_chunk_rows if invariant else 0,
            check=check,
        ).cpu()
        return list(torch.split(e, counts))

    def finish_deviations(
        self, sums: Sequence[torch.Tensor], timesteps: Sequence[float], noise_draws: int
    ) -> list[torch.Tensor]:
        """Sums over all (timestep, draw) pairs -> deviations (their mean with the layers)."""
        n = len(timesteps) * noise_draws * len(self.meta.config.layer_fractions)
        return [s / n for s in sums]

    def resolve(
        self,
        options: ScoreOptions | None = None,
        default_normalization: str = defaults.NORMALIZATION,
    ) -> ScoreOptions:
        """The options as this flow applies them: a normalisation left unset (None) becomes
        `default_normalization`, or its fallback where this flow cannot serve it (the rule:
        `flowfield.rewards.resolve_normalization`). Raises ValueError if the flow cannot
        serve the options (an explicit "expert" without a matching calibration)."""
        options = options or ScoreOptions()
        norm = resolve_normalization(
            options.reward.normalization,
            self.calibration,
            options.timesteps,
            default_normalization,
        )
        if norm != options.reward.normalization:
            options = replace(options, reward=replace(options.reward, normalization=norm))
        self.check_options(options)
        return options

    def check_options(self, options: ScoreOptions) -> None:
        """Raise ValueError if this flow cannot shape rewards with these options (an unset
        normalisation always can: its default falls back, see `resolve`)."""
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

        group_ids: samples with the same id share an outcome baseline (see `outcome_groups`
        for the rule `score` and the service use); None = each sample is its own group.
        """
        options = self.resolve(options)
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
        """The library call behind /score: deviations, then `shape`. With outcome rewards,
        samples are grouped by `outcome_groups(prompts, group_ids)`."""
        options = self.resolve(options)
        devs = self.deviations(prompts, responses, options.timesteps, options.noise_draws)
        groups = outcome_groups(prompts, group_ids) if outcome_rewards is not None else None
        return self.shape(devs, options, outcome_rewards, groups)


def outcome_groups(
    prompts: Sequence[Sequence[int]], group_ids: Sequence[str | None] | None = None
) -> list[str]:
    """The group of each sample for outcome advantages: its group id where it has one, else
    the group of every sample with the same prompt (GRPO's group: G rollouts of one prompt)."""
    ids = list(group_ids) if group_ids is not None else [None] * len(prompts)
    return [g if g else f"prompt:{list(p)}" for g, p in zip(ids, prompts)]
