"""FlowNet: the velocity field v(x_t, t, c, l) over policy latents (docs/method.md#flow-network).

One network is shared by all hooked layers. The conditioning vector is

    y = Linear(c) + MLP(sin(t)) + MLP(sin(layer_fraction))

where c is the latent of the neighbouring token in the same layer. The trunk is N residual
blocks of RMSNorm -> adaLN shift/scale -> Linear-SiLU-Linear -> gated residual, then a final
RMSNorm + adaLN + Linear(W -> d). adaLN and output layers start at zero, so an untrained
field is exactly v = 0. The network knows nothing of the objective or of rewards.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from flowfield import defaults

CONTEXT_DIRECTIONS = ("next", "prev", "none")
MAX_EMBEDDING_CACHE = 64  # distinct (t, layer) pairs embedded one by one and cached


@dataclass(frozen=True)
class FlowConfig:
    hidden_size: int  # d, the policy's hidden size
    width: int  # W; RLFR uses W = d
    depth: int = 4  # N residual blocks (4 for ~1.5-3B policies, 6 for 7-8B)
    layer_fractions: tuple[float, ...] = defaults.LAYER_FRACTIONS
    context: str = defaults.CONTEXT  # which neighbour's latent conditions the field
    freq_dim: int = 256  # sinusoidal embedding size for t and the layer fraction
    # standardise latents per hooked layer and dimension before the flow sees them (the
    # statistics travel with the weights as buffers; see FlowNet.standardize)
    standardize: bool = False

    def __post_init__(self) -> None:
        if self.context not in CONTEXT_DIRECTIONS:
            raise ValueError(f"context must be one of {CONTEXT_DIRECTIONS}, got {self.context!r}")
        if self.hidden_size <= 0 or self.width <= 0 or self.depth <= 0:
            raise ValueError("hidden_size, width and depth must be positive")
        object.__setattr__(self, "layer_fractions", tuple(float(p) for p in self.layer_fractions))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_fractions"] = list(self.layer_fractions)
        return d


def sinusoidal(x: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """[N] values in [0, 1] -> [N, dim] sin/cos features (DiT-style, scaled to 0..1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
    args = scale * x.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ScalarEmbedding(nn.Module):
    """MLP(sinusoidal(s)) for a scalar s in [0, 1] (the time or the layer fraction)."""

    def __init__(self, width: int, freq_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(s, self.freq_dim).to(self.mlp[0].weight.dtype))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        # adaLN: Linear(SiLU(y)) -> shift, scale, gate. FlowNet computes every block's
        # projection in one GEMM (FlowNet.modulation); forward takes this block's slice.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, h: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """h: [N, W]; mod: [N, 3W], this block's adaLN projection of y."""
        shift, scale, gate = mod.chunk(3, dim=-1)
        return h + gate * self.mlp(modulate(self.norm(h), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim)

    def forward(self, h: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """h: [N, W]; mod: [N, 2W], the final layer's adaLN projection of y."""
        shift, scale = mod.chunk(2, dim=-1)
        return self.out(modulate(self.norm(h), shift, scale))


class FlowNet(nn.Module):
    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        d, w = config.hidden_size, config.width
        self.x_in = nn.Linear(d, w)
        self.c_in = nn.Linear(d, w)
        self.t_embed = ScalarEmbedding(w, config.freq_dim)
        self.l_embed = ScalarEmbedding(w, config.freq_dim)
        self.blocks = nn.ModuleList(ResidualBlock(w) for _ in range(config.depth))
        self.final = FinalLayer(w, d)
        self._mod_sizes = [3 * w] * config.depth + [2 * w]
        # inference caches (not state): the stacked adaLN weight, per-value embeddings
        self._fused: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fused_key: tuple | None = None
        self._embeddings: dict[tuple[float, float], torch.Tensor] = {}
        self._embedding_key: tuple | None = None
        if config.standardize:
            # per hooked layer and dimension, taken from the fit data (set_latent_stats)
            L = len(config.layer_fractions)
            self.register_buffer("latent_mean", torch.zeros(L, d))
            self.register_buffer("latent_std", torch.ones(L, d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.t_embed, self.l_embed):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN-zero: every block starts as the identity and the output as v = 0
        for block in self.blocks:
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        nn.init.zeros_(self.final.ada[1].weight)
        nn.init.zeros_(self.final.ada[1].bias)
        nn.init.zeros_(self.final.out.weight)
        nn.init.zeros_(self.final.out.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, layer_fraction: torch.Tensor
    ) -> torch.Tensor:
        """x, c: [N, d]; t, layer_fraction: [N] -> velocity [N, d]."""
        y = self.c_in(c) + self.scalar_embeddings(t, layer_fraction)  # [N, W]
        mods = self.modulation(y).split(self._mod_sizes, dim=-1)  # depth x [N, 3W], [N, 2W]
        h = self.x_in(x)  # [N, W]
        for block, mod in zip(self.blocks, mods):
            h = block(h, mod)
        return self.final(h, mods[-1])

    def modulation(self, y: torch.Tensor) -> torch.Tensor:
        """Every block's and the final layer's adaLN projection of y in one GEMM:
        [N, W] -> [N, (3 * depth + 2) * W].

        The projections all read SiLU(y), so one wide matrix product replaces depth + 1
        narrow ones (half of the flow's FLOPs; a wide GEMM runs nearer the machine's peak).
        The stacked weight is rebuilt on every call while gradients are on (training) and
        cached otherwise, keyed by the parameters' identity and in-place version counters.
        """
        layers = [b.ada[1] for b in self.blocks] + [self.final.ada[1]]
        if torch.is_grad_enabled():
            weight = torch.cat([m.weight for m in layers])
            bias = torch.cat([m.bias for m in layers])
        else:
            key = _version_key(layers)
            if key is None or self._fused_key != key:
                self._fused = (
                    torch.cat([m.weight for m in layers]),
                    torch.cat([m.bias for m in layers]),
                )
                self._fused_key = key
            weight, bias = self._fused
        return F.linear(F.silu(y), weight, bias)

    def scalar_embeddings(self, t: torch.Tensor, layer_fraction: torch.Tensor) -> torch.Tensor:
        """MLP(sin(t)) + MLP(sin(layer_fraction)): [N] x 2 -> [N, W].

        Scoring sends a handful of distinct (t, layer) pairs (timesteps x hooked layers) over
        thousands of rows: without gradients each distinct pair is embedded once, on its own
        (a one-row input, so its bits do not depend on the other rows: batch invariance),
        cached, and gathered. Training (continuous t) embeds every row.
        """
        if torch.is_grad_enabled():
            return self.t_embed(t) + self.l_embed(layer_fraction)
        pairs = torch.stack([t.float(), layer_fraction.float()], dim=1)  # [N, 2]
        distinct, index = torch.unique(pairs, dim=0, return_inverse=True)
        if len(distinct) > MAX_EMBEDDING_CACHE:  # e.g. a held-out loss at random t
            return self.t_embed(t) + self.l_embed(layer_fraction)
        key = _version_key([self.t_embed, self.l_embed])
        if key is None or self._embedding_key != key or len(self._embeddings) > MAX_EMBEDDING_CACHE:
            self._embeddings, self._embedding_key = {}, key
        rows = []
        for tv, lv in distinct.tolist():
            e = self._embeddings.get((tv, lv))
            if e is None:
                one = distinct.new_tensor
                e = (self.t_embed(one([tv])) + self.l_embed(one([lv])))[0]
                self._embeddings[(tv, lv)] = e
            rows.append(e)
        return torch.stack(rows)[index]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Record the per-layer, per-dimension latent statistics ([L, d] each)."""
        if not self.config.standardize:
            raise ValueError("this flow was built without standardize=True")
        check_latent_stats(mean, std, len(self.config.layer_fractions), self.config.hidden_size)
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def standardize(self, h: torch.Tensor) -> torch.Tensor:
        """Latents [L, N, d] in the space the flow models: (h - mean) / std per layer and dim.

        The identity for a flow without statistics. The path, the loss and the deviation are
        all taken in this space, so fit, scoring and online refinement must all go through
        here (context latents too: they are latents of the same layers).
        """
        if not self.config.standardize:
            return h
        mean = self.latent_mean[:, None].to(h.dtype)
        std = self.latent_std[:, None].to(h.dtype)
        return (h - mean) / std

    def prepare(self, h: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and context latents [L, N, d] as the flow models them (standardised).

        A "none" context is all zeros and stays so.
        """
        if self.config.context == "none":
            return self.standardize(h), ctx
        return self.standardize(h), self.standardize(ctx)


def _version_key(modules: list[nn.Module]) -> tuple | None:
    """Identity of the modules' parameters, in-place changes included (optimizer steps,
    load_state_dict, copy_): a cache derived from them is valid while this is unchanged.
    None when a parameter has no version counter (made in inference mode): do not cache."""
    params = [p for m in modules for p in m.parameters()]
    if any(p.is_inference() for p in params):
        return None
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)


def check_latent_stats(mean: torch.Tensor, std: torch.Tensor, layers: int, dim: int) -> None:
    """Raise ValueError unless mean and std are finite [layers, dim] tensors with std > 0."""
    for name, t in (("mean", mean), ("std", std)):
        if tuple(t.shape) != (layers, dim):
            raise ValueError(
                f"latent {name} has shape {list(t.shape)}, expected [{layers}, {dim}] "
                "(hooked layers x hidden size)"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"latent {name} has non-finite values")
    if not bool((std > 0).all()):
        raise ValueError("latent std must be > 0 everywhere")


@dataclass
class FlowMetadata:
    """Everything needed to check that a flow fits the encoder it is used with."""

    config: FlowConfig
    encoder: dict  # EncoderIdentity fields: name, revision, model_type, hidden_size, ...
    version: int = 0
    samples_trained: int = 0
    tokens_trained: int = 0
    created_at: float = 0.0
    extra: dict = field(default_factory=dict)
    # deviation statistics on held-out expert data, for the "expert" normalisation:
    # {"timesteps": [...], "noise_draws": k, "log_mean": m, "log_std": s, "tokens": n}
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "encoder": dict(self.encoder),
            "version": self.version,
            "samples_trained": self.samples_trained,
            "tokens_trained": self.tokens_trained,
            "created_at": self.created_at,
            "extra": self.extra,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FlowMetadata:
        cfg = dict(d["config"])
        cfg["layer_fractions"] = tuple(cfg["layer_fractions"])
        return cls(
            config=FlowConfig(**cfg),
            encoder=dict(d["encoder"]),
            version=int(d.get("version", 0)),
            samples_trained=int(d.get("samples_trained", 0)),
            tokens_trained=int(d.get("tokens_trained", 0)),
            created_at=float(d.get("created_at", 0.0)),
            extra=dict(d.get("extra", {})),
            calibration=d.get("calibration"),
        )


def flow_for_encoder(
    encoder_hidden_size: int,
    layer_fractions: tuple[float, ...],
    width: int | None = None,
    depth: int = 4,
    context: str = "next",
) -> FlowConfig:
    """The RLFR default shape for an encoder: W = d unless a width is given."""
    return FlowConfig(
        hidden_size=encoder_hidden_size,
        width=width or encoder_hidden_size,
        depth=depth,
        layer_fractions=tuple(layer_fractions),
        context=context,
    )
