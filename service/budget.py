"""The scoring time budget: a request is admitted only if its model time, estimated from a
unit cost measured once at start-up on the serving hardware, fits FLOWFIELD_MAX_REQUEST_SECONDS.

FLOWFIELD_MAX_REQUEST_COST bounds a request's arithmetic (tokens x hooked layers x timesteps x
noise draws) but not its duration: the same cost is seconds on one machine and minutes on
another. So at start-up the service times the two halves of scoring on its own model thread,
with its own policy, flow, dtype and threads (`calibrate`):

- the encoder: seconds per prompt + response token (one forward of a few samples), and
- the flow: seconds per flow row, one response token x hooked layer x (timestep, draw) pair.

A request's estimate is tokens x the first + response tokens x layers x pairs x the second
(`CostModel.seconds`); over the budget it is a 422 `request_too_costly` naming the option that
made it so. The calibration takes the fastest of a few runs and is logged at start-up
("flowfield ready", `calibration`); on a loaded machine it comes out slower, which only makes
the budget stricter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from flowfield.samples import SampleLimits
from flowfield.scorer import FlowScorer


@dataclass(frozen=True)
class CostModel:
    token_s: float  # encoder seconds per prompt + response token
    row_s: float  # flow seconds per response token x layer x (timestep, draw) pair

    def seconds(self, tokens: int, response_tokens: int, layers: int, pairs: int) -> float:
        return tokens * self.token_s + response_tokens * layers * pairs * self.row_s

    def as_dict(self) -> dict[str, float]:
        return {"encoder_us_per_token": self.token_s * 1e6, "flow_us_per_row": self.row_s * 1e6}


def calibrate(scorer: FlowScorer, batch_invariant: bool | None, repeats: int = 3) -> CostModel:
    """Blocking (run it on the model thread): time a small scoring job, both halves apart.

    4 samples of up to 32 prompt + 96 response tokens (less where the model's context is
    shorter), one timestep and 8 noise draws; the fastest of `repeats` runs."""
    ctx = SampleLimits.of(scorer.encoder).max_positions or 128
    prompt_n = max(1, min(32, ctx // 4))
    resp_n = max(1, min(96, ctx - prompt_n))
    vocab = max(1, scorer.encoder.vocab_size)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (prompt_n,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(0, vocab, (resp_n,), generator=g).tolist() for _ in range(4)]
    layers = len(scorer.encoder.layers)
    draws = 8
    enc_best = flow_best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        lat = scorer.latents(prompts, responses, batch_invariant=batch_invariant)
        t1 = time.perf_counter()
        scorer.deviation_sums(lat, (0.5,), draws, batch_invariant=batch_invariant)
        t2 = time.perf_counter()
        enc_best, flow_best = min(enc_best, t1 - t0), min(flow_best, t2 - t1)
    tokens = 4 * (prompt_n + resp_n)
    rows = 4 * resp_n * layers * draws
    return CostModel(enc_best / tokens, flow_best / rows)
