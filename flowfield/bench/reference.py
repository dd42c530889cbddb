"""The reference computation the bench compares against: the authors' design, written plainly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from flowfield.bench.workload import Group
    from flowfield.flownet import FlowMetadata, FlowNet
    from flowfield.objective import NoiseBank


class Reference:
    """Full forward with all hidden states over a padded group batch, flow on every position.

    Uses its own copy of the model (not LatentEncoder) and the scorer's NoiseBank: the noise
    at response position k of a sample is the scorer's noise for k, so the two agree on
    response tokens (all but the last of each response, whose next-token context here is a
    padding position's latent or the border's zero, as in a padded batch).
    """

    def __init__(
        self,
        model_dir: Path,
        flow: FlowNet,
        meta: FlowMetadata,
        blocks: list[int],
        noise: NoiseBank,
        max_rows: int = 1 << 16,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        """device, dtype: where and in what the model and the flow run (as the library's)."""
        import copy

        import torch
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        self.model = self.model.to(self.device).eval()
        if max(blocks) >= self.model.config.num_hidden_layers - 1:
            # HF returns the last block's output after the final norm: not the raw stream
            raise ValueError(
                f"the reference reads output_hidden_states, which cannot give the raw output of "
                f"the last block; hooked blocks {blocks} need more than "
                f"{self.model.config.num_hidden_layers} layers"
            )
        self.flow = copy.deepcopy(flow).to(device=self.device, dtype=self.dtype).eval()
        self.fractions = meta.config.layer_fractions
        self.context = meta.config.context
        self.blocks = blocks
        self.noise = noise
        self.max_rows = max_rows

    def deviations(self, groups: list[Group], timesteps: tuple[float, ...]) -> list[torch.Tensor]:
        """Per-token deviations at each sample's response positions, one batch per group."""
        out = []
        for g in groups:
            out += self.group_deviations([g.prompt] * len(g.responses), g.responses, timesteps)
        return out

    def group_deviations(
        self, prompts: list[list[int]], responses: list[list[int]], timesteps: tuple[float, ...]
    ) -> list[torch.Tensor]:
        import torch

        with torch.inference_mode():
            seqs = [p + r for p, r in zip(prompts, responses)]
            B, T = len(seqs), max(len(s) for s in seqs)
            ids = torch.zeros((B, T), dtype=torch.long)
            mask = torch.zeros((B, T), dtype=torch.long)
            for b, s in enumerate(seqs):
                ids[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            out = self.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            )
            assert out.logits.shape == (B, T, self.model.config.vocab_size)  # LM head ran
            # hidden_states[i + 1] is the output of block i
            h = torch.stack([out.hidden_states[i + 1] for i in self.blocks])  # [L, B, T, d]
            ctx = torch.zeros_like(h)  # neighbour in the padded row; zero at the border
            if self.context == "next":
                ctx[:, :, :-1] = h[:, :, 1:]
            elif self.context == "prev":
                ctx[:, :, 1:] = h[:, :, :-1]
            # noise index of position j in row b: its response index j - p_b (mod T elsewhere)
            starts = torch.tensor([len(p) for p in prompts])
            index = (torch.arange(T)[None, :] - starts[:, None]) % T  # [B, T]
            e = self.every_position(h, ctx, index, timesteps).cpu()  # [B, T]
            return [
                e[b, len(p) : len(p) + len(r)] for b, (p, r) in enumerate(zip(prompts, responses))
            ]

    def every_position(
        self,
        h: torch.Tensor,
        ctx: torch.Tensor,
        index: torch.Tensor,
        timesteps: tuple[float, ...],
    ) -> torch.Tensor:
        """Mean over timesteps and layers of t/(1-t) (1/d)||v(x_t, t, c, l) - (h - eps)||^2."""
        import torch

        L, B, T, d = h.shape
        S = len(timesteps)
        dev = h.device
        # the path and target in float32, the network in its dtype (as the library does)
        eps = self.noise.take(S, L, T)[:, :, index.cpu()].to(dev)  # [S, L, B, T, d]
        t = torch.tensor(timesteps, device=dev)[:, None, None, None, None]  # [S, 1, 1, 1, 1]
        x1 = h[None].float()
        xt = (t * x1 + (1 - t) * eps).reshape(-1, d).to(self.dtype)
        u = (x1 - eps).reshape(-1, d)
        c = ctx[None].expand(S, L, B, T, d).reshape(-1, d)
        t_rows = t.expand(S, L, B, T, 1).reshape(-1)
        lf = torch.tensor(self.fractions, device=dev)[None, :, None, None]
        lf = lf.expand(S, L, B, T).reshape(-1)
        err = torch.empty(xt.shape[0], device=dev)
        for s in range(0, xt.shape[0], self.max_rows):
            rows = slice(s, s + self.max_rows)
            v = self.flow(xt[rows], t_rows[rows], c[rows], lf[rows])
            err[rows] = (v.float() - u[rows]).pow(2).mean(dim=-1)
        weight = t.reshape(S, 1, 1, 1) / (1 - t.reshape(S, 1, 1, 1))
        return (err.reshape(S, L, B, T) * weight).mean(dim=(0, 1))
