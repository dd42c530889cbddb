"""Is a fitted flow any good? A report on expert samples the fit never saw.

Three measurements on the held-out expert samples:
- the flow-matching loss next to that of the untrained field v = 0 (a flow that learned
  nothing scores a ratio of 1);
- the mean per-token deviation of the clean samples against the same samples with about 5%
  of their response tokens replaced by tokens drawn from the expert data's own token
  frequencies (the demo's check corrupts digits the same way): a flow that learned the
  expert latents finds the corrupted ones harder to explain, in most pairs;
- the distribution of log deviations of the clean tokens, recorded in the checkpoint as the
  calibration that the "expert" reward normalisation standardises against.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from flowfield import defaults
from flowfield.encoder import LatentEncoder
from flowfield.flownet import FlowMetadata, FlowNet
from flowfield.objective import flow_matching_loss, rows_for_training
from flowfield.path import logit_normal
from flowfield.rewards import Calibration
from flowfield.scorer import FlowScorer
from flowfield.training.data import Sample

# the service's default rewarding timesteps (docs/method.md#normalisation)
CALIBRATION_TIMESTEPS = defaults.TIMESTEPS
CORRUPT_FRACTION = 0.05
# below these the report warns that the flow is not to be trusted
WARN_LOSS_RATIO = 0.9
WARN_PAIRS = 0.8
MIN_SAMPLES_FOR_HOLDOUT = 50


@dataclass
class FitReport:
    samples: int  # held-out expert samples
    loss: float  # flow-matching loss of the fitted flow on them
    zero_loss: float  # the same for the untrained field v = 0
    clean_deviation: float  # mean per-token deviation, clean samples
    corrupted_deviation: float  # the same samples with ~5% of tokens replaced
    pairs_corrupted_higher: float  # fraction of samples whose corrupted copy scores higher
    calibration: Calibration
    warnings: list[str] = field(default_factory=list)

    @property
    def loss_ratio(self) -> float:
        return self.loss / self.zero_loss if self.zero_loss else float("nan")

    @property
    def deviation_ratio(self) -> float:
        return self.corrupted_deviation / self.clean_deviation if self.clean_deviation else 0.0

    def to_dict(self) -> dict:
        return {
            "heldout_samples": self.samples,
            "loss": self.loss,
            "zero_field_loss": self.zero_loss,
            "loss_ratio": self.loss_ratio,
            "clean_deviation": self.clean_deviation,
            "corrupted_deviation": self.corrupted_deviation,
            "deviation_ratio": self.deviation_ratio,
            "pairs_corrupted_higher": self.pairs_corrupted_higher,
            "calibration": self.calibration.to_dict(),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FitReport:
        """The inverse of to_dict (a checkpoint's `extra.report`)."""
        return cls(
            samples=d["heldout_samples"],
            loss=d["loss"],
            zero_loss=d["zero_field_loss"],
            clean_deviation=d["clean_deviation"],
            corrupted_deviation=d["corrupted_deviation"],
            pairs_corrupted_higher=d["pairs_corrupted_higher"],
            calibration=Calibration.from_dict(d["calibration"]),
            warnings=list(d.get("warnings", [])),
        )

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        return [
            f"held-out report ({self.samples} expert samples the fit never saw):",
            f"  flow-matching loss   {self.loss:.4f}  (untrained field v = 0: {self.zero_loss:.4f},"
            f" ratio {self.loss_ratio:.3f})",
            f"  mean deviation       clean {self.clean_deviation:.4g}, with {CORRUPT_FRACTION:.0%}"
            f" of tokens corrupted {self.corrupted_deviation:.4g} (x{self.deviation_ratio:.2f})",
            f"  corrupted > clean    in {self.pairs_corrupted_higher:.1%} of pairs",
            *(f"  WARNING: {w}" for w in self.warnings),
        ]


def split_holdout(samples: Sequence[Sample], holdout: int) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): up to `holdout` samples but at most 10%, none below 50 samples.

    The split is a fixed function of the data (seeded shuffle), so a resumed fit and a
    refit see the same held-out samples.
    """
    n = len(samples)
    k = min(holdout, n // 10) if n >= MIN_SAMPLES_FOR_HOLDOUT else 0
    held = set(random.Random(1234).sample(range(n), k)) if k else set()
    train = [s for i, s in enumerate(samples) if i not in held]
    return train, [samples[i] for i in sorted(held)]


def corrupt(
    response: Sequence[int], vocab: Sequence[int], rng: random.Random, fraction: float
) -> list[int]:
    """Replace max(1, round(fraction * n)) tokens by different tokens drawn from vocab."""
    out = list(response)
    k = max(1, round(fraction * len(out)))
    for i in rng.sample(range(len(out)), min(k, len(out))):
        for _ in range(100):  # a different token (unless the data has a single one)
            tok = rng.choice(vocab)
            if tok != out[i]:
                break
        out[i] = tok
    return out


@torch.no_grad()
def fit_report(
    encoder: LatentEncoder,
    net: FlowNet,
    meta: FlowMetadata,
    held: Sequence[Sample],
    train: Sequence[Sample],
    seed: int = 0,
    chunk: int = 128,
) -> FitReport:
    """Measure a fitted flow on held-out expert samples (see the module doc)."""
    prompts = [list(s.prompt_ids) for s in held]
    responses = [list(s.response_ids) for s in held]

    # flow-matching loss against the untrained field, on the same (t, eps) rows
    g = torch.Generator().manual_seed(seed + 7)
    loss_sum = zero_sum = 0.0
    rows = 0
    for start in range(0, len(held), chunk):
        enc = encoder.encode(prompts[start : start + chunk], responses[start : start + chunk])
        h = enc.h.clone().float()
        ctx = enc.context(net.config.context).clone().float()
        h, ctx = net.prepare(h, ctx)
        x1, c, lf, t, eps = rows_for_training(h, ctx, encoder.layer_fractions, 2, logit_normal, g)
        m = x1.shape[0]
        loss_sum += flow_matching_loss(net, x1, c, lf, t, eps).item() * m
        zero_sum += (x1 - eps).float().pow(2).mean().item() * m
        rows += m

    # deviations of clean and corrupted samples at the calibration timesteps
    vocab = [tok for s in train for tok in s.response_ids]
    rng = random.Random(seed)
    bad = [corrupt(r, vocab, rng, CORRUPT_FRACTION) for r in responses]
    scorer = FlowScorer(encoder, net, meta)
    clean_devs, bad_devs = [], []
    for start in range(0, len(held), chunk):
        part = slice(start, start + chunk)
        clean_devs += scorer.deviations(prompts[part], responses[part], CALIBRATION_TIMESTEPS)
        bad_devs += scorer.deviations(prompts[part], bad[part], CALIBRATION_TIMESTEPS)
    clean_mean = torch.stack([e.mean() for e in clean_devs])
    bad_mean = torch.stack([e.mean() for e in bad_devs])
    report = FitReport(
        samples=len(held),
        loss=loss_sum / rows,
        zero_loss=zero_sum / rows,
        clean_deviation=float(clean_mean.mean()),
        corrupted_deviation=float(bad_mean.mean()),
        pairs_corrupted_higher=float((bad_mean > clean_mean).float().mean()),
        calibration=Calibration.from_deviations(torch.cat(clean_devs), CALIBRATION_TIMESTEPS),
    )
    if report.loss_ratio > WARN_LOSS_RATIO:
        report.warnings.append(
            f"the flow's held-out loss is {report.loss_ratio:.0%} of an untrained field's: it "
            "has learned little; fit longer (more steps) or with a higher learning rate"
        )
    if report.pairs_corrupted_higher < WARN_PAIRS:
        report.warnings.append(
            f"corrupted expert samples score higher than clean ones in only "
            f"{report.pairs_corrupted_higher:.0%} of pairs: its rewards are unlikely to carry "
            "signal; fit longer, or check that the data is expert data from this policy"
        )
    return report
