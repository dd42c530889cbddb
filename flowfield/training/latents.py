"""Expert latents cached for a fit: the frozen encoder runs once, not once per epoch.

The offline fit reads the same expert samples epoch after epoch through a frozen encoder, so
their latents never change. They are encoded once and batches are gathered from here: in
memory when they fit the fit's memory budget (`FitConfig.cache_gb`), else in a float32 file
on disk, memory-mapped (the page cache keeps what fits; `storage` names the file). Latents
are always cached as float32, whatever the encoder's dtype.

Layout: h [L, N, d] packs every sample's response-token latents; first_prev [L, S, d] holds
the latent just before each sample's first response token (the prompt's last token, zero
without a prompt). A token's "prev" context is its left neighbour (first_prev for the first
token) and its "next" context its right neighbour (zero after the last token), exactly as
LatentEncoder.encode builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from flowfield.encoder import LatentEncoder
from flowfield.progress import progress_bar
from flowfield.training.data import Sample


def cache_bytes(samples: Sequence[Sample], encoder: LatentEncoder) -> int:
    """Memory the cache of these samples takes (float32)."""
    tokens = sum(len(s.response_ids) + 1 for s in samples)
    return tokens * len(encoder.layers) * encoder.hidden_size * 4


class LatentCache:
    """storage: None keeps the latents in memory; a file path memory-maps them there (the
    file is created, sized and filled here; the caller removes it when done)."""

    def __init__(
        self,
        encoder: LatentEncoder,
        samples: Sequence[Sample],
        chunk: int = 256,
        progress: bool = True,
        storage: str | Path | None = None,
        desc: str = "encode expert data",
    ) -> None:
        self.counts = torch.tensor([len(s.response_ids) for s in samples], dtype=torch.long)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # [S]
        L, n, d = len(encoder.layers), int(self.counts.sum()), encoder.hidden_size
        self.storage = None if storage is None else Path(storage)
        if self.storage is None:
            self.h = torch.empty((L, n, d), dtype=torch.float32)  # [L, N, d]
        else:
            self.storage.parent.mkdir(parents=True, exist_ok=True)
            with open(self.storage, "wb") as f:
                f.truncate(L * n * d * 4)
            flat = torch.from_file(
                str(self.storage), shared=True, size=L * n * d, dtype=torch.float32
            )
            self.h = flat.view(L, n, d)
        firsts = []
        bar = progress_bar(len(samples), desc, "sample", progress)
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            enc = encoder.encode(
                [s.prompt_ids for s in part], [s.response_ids for s in part], share_prefix=True
            )
            a = int(self.starts[start]) if start < len(samples) else n
            self.h[:, a : a + enc.h.shape[1]] = enc.h.float().cpu()
            firsts.append(enc.prev[:, enc.offsets[:-1]].float().cpu().clone())
            bar.update(len(part))
        bar.close()
        self.first_prev = torch.cat(firsts, dim=1)  # [L, S, d]

    @property
    def nbytes(self) -> int:
        return self.h.numel() * 4

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h, prev, next [L, n, d] for the response tokens of these samples, in order."""
        idx = torch.tensor(list(indices), dtype=torch.long)
        counts = self.counts[idx]
        # packed token index of every token of the batch, without a per-token Python loop
        offsets = torch.cumsum(counts, 0) - counts
        local = torch.arange(int(counts.sum())) - offsets.repeat_interleave(counts)
        tok = self.starts[idx].repeat_interleave(counts) + local  # [n]
        first = local == 0
        last = local == counts.repeat_interleave(counts) - 1
        h = self.h[:, tok]
        prev = self.h[:, (tok - 1).clamp_min(0)]
        prev[:, first] = self.first_prev[:, idx.repeat_interleave(counts)[first]]
        nxt = self.h[:, (tok + 1).clamp_max(self.h.shape[1] - 1)]
        nxt[:, last] = 0
        return h, prev, nxt

    def context(self, indices: Sequence[int], direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """h and the context latents [L, n, d] of these samples for a context direction."""
        h, prev, nxt = self.batch(indices)
        if direction == "next":
            return h, nxt
        if direction == "prev":
            return h, prev
        if direction == "none":
            return h, torch.zeros_like(h)
        raise ValueError(f"unknown context direction {direction!r}")

    def layer_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per hooked layer and dimension mean and std of the cached latents: [L, d] each."""
        n = self.h.shape[1]
        s1 = torch.zeros(self.h.shape[0], self.h.shape[2], dtype=torch.float64)
        s2 = torch.zeros_like(s1)
        for a in range(0, n, 65536):  # in chunks: the cache may be a file larger than memory
            h = self.h[:, a : a + 65536].double()
            s1 += h.sum(dim=1)
            s2 += (h * h).sum(dim=1)
        mean = s1 / max(1, n)
        var = (s2 / max(1, n) - mean * mean).clamp_min(0) * n / max(1, n - 1)
        return mean.float(), var.sqrt().clamp_min(1e-6).float()
