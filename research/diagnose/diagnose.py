"""Why is the demo flow near chance? Fast refits on cached latents, compared on the dev split.

    python -m research diagnose --configs base,std --json runs/diagnose.json

The demo policy is frozen, so the latents of its expert data and of its dev-split rollouts
never change: they are encoded once (all four blocks) and cached under --cache. Each
configuration then fits a flow on the cached expert latents (uniformly sampled tokens, a
fixed number of steps) and measures, on 500 dev rollouts at temperature 1, the AUROC of
mean and max deviation for "incorrect" and how often the max-deviation token lies in
[f-1, f+2] of the first error f. Only the dev split is used: the held-out evaluation set
is never looked at here. The policy's own error profile (how likely it found its first
wrong token) is printed first.

Every configuration changes the recipe of `base` (the fit budget of the outside study in
the flow-signal issue: 2,500 steps of 672 tokens at lr 1e-3, blocks 1-3, next-token context,
no standardisation) in the ways its name says.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import typer

from flowfield.demo import DEMO_POLICY
from flowfield.demo.task import expert_solution
from flowfield.encoder import LatentEncoder, weights_revision
from flowfield.evaluation.logits import token_logit_stats
from flowfield.evaluation.metrics import auroc
from flowfield.evaluation.problems import eval_problems, expert_problems
from flowfield.flownet import FlowNet, flow_for_encoder
from flowfield.objective import NoiseBank, flow_matching_loss, token_deviations
from flowfield.path import logit_normal
from flowfield.training.loop import TrainLoop
from research.cli import run_command

ALL_FRACTIONS = (0.0, 0.25, 0.5, 0.75)  # blocks 0-3 of the 4-block demo policy

BASE = dict(
    layers=(1, 2, 3), std=False, batch=672, steps=2500, lr=1e-3, width=128, depth=4,
    ctx="next", seed=0,
)
CONFIGS: dict[str, dict] = {
    "base": {},
    "std": {"std": True},
    "blocks012": {"layers": (0, 1, 2)},
    "blocks012-std": {"layers": (0, 1, 2), "std": True},
    "std-prev": {"std": True, "ctx": "prev"},
    "short": {"steps": 300},  # the fit budget matters?
    "std-short": {"std": True, "steps": 300},
    "std-long": {"std": True, "steps": 5000},
    "std-wide": {"std": True, "width": 256},
    # levers for the GPT-2 demo policy (raw latents)
    "blocks23": {"layers": (2, 3)},
    "blocks3": {"layers": (3,)},
    "prev": {"ctx": "prev"},
    "no-ctx": {"ctx": "none"},
    "wide": {"width": 256},
    "deep": {"depth": 6},
    "long": {"steps": 5000},
    "seed1": {"seed": 1},
    "prev-wide": {"ctx": "prev", "width": 256},
    "prev-long": {"ctx": "prev", "steps": 5000},
    "prev-blocks23": {"ctx": "prev", "layers": (2, 3)},
    "prev-seed1": {"ctx": "prev", "seed": 1},
    # the previous token's latent at the deepest hooked block conditions every layer: the
    # state the policy predicted this token from
    "prev-deep": {"ctx": "prev-deep"},
    "prev-deep-wide": {"ctx": "prev-deep", "width": 256},
    "prev-deep-blocks012": {"ctx": "prev-deep", "layers": (0, 1, 2)},
}


def _cache(path: Path, policy: Path, dev: int) -> dict:
    if path.is_file():
        return torch.load(path, weights_only=False)
    from transformers import AutoModelForCausalLM

    from flowfield.evaluation.run import demo_rollouts

    enc = LatentEncoder(policy, layer_fractions=ALL_FRACTIONS)
    tok = enc.tokenizer
    ex = expert_problems(0)
    e = enc.encode(
        [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in ex],
        [tok(expert_solution(p), add_special_tokens=False)["input_ids"] for p in ex],
    )
    lm = AutoModelForCausalLM.from_pretrained(policy).eval()
    ro = demo_rollouts(lm, tok, eval_problems(dev, "dev"), 1.0, 0, False)
    r = enc.encode([x.prompt_ids for x in ro], [x.response_ids for x in ro])
    stats = token_logit_stats(lm, [x.prompt_ids for x in ro], [x.response_ids for x in ro])
    data = dict(
        Eh=e.h, En=e.next, Ep=e.prev, Rh=r.h, Rn=r.next, Rp=r.prev, Roff=r.offsets,
        reward=[x.reward for x in ro], fe=[x.first_error for x in ro],
        nll=[s[0] for s in stats],
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def error_profile(c: dict) -> dict:
    """How likely the policy found the first wrong token of its incorrect rollouts."""
    ps = []
    for i, (r, fe) in enumerate(zip(c["reward"], c["fe"])):
        n = c["Roff"][i + 1] - c["Roff"][i]
        if r < 1 and fe is not None and fe < n:
            ps.append(float(torch.exp(-c["nll"][i][fe])))
    p = np.array(ps)
    return {
        "incorrect": len(ps),
        "p_first_wrong_quantiles_10_25_50_75_90": np.round(
            np.quantile(p, [0.1, 0.25, 0.5, 0.75, 0.9]), 3
        ).tolist(),
        "share_p_below_0.05": round(float((p < 0.05).mean()), 3),
        "share_p_at_least_0.2": round(float((p >= 0.2).mean()), 3),
    }


def _latents(c: dict, cfg: dict) -> tuple[torch.Tensor, ...]:
    """Expert and rollout latents and context latents [L, N, d] for a config (raw or std)."""
    layers = list(cfg["layers"])
    ctx_key = {"next": ("En", "Rn"), "prev": ("Ep", "Rp"), "prev-deep": ("Ep", "Rp")}.get(
        cfg["ctx"]
    )
    # "prev-deep": every layer's context is the deepest hooked block's
    ctx_layers = [max(layers)] * len(layers) if cfg["ctx"] == "prev-deep" else layers
    eh, rh = c["Eh"][layers].float(), c["Rh"][layers].float()
    ec = c[ctx_key[0]][ctx_layers].float() if ctx_key else torch.zeros_like(eh)
    rc = c[ctx_key[1]][ctx_layers].float() if ctx_key else torch.zeros_like(rh)
    if cfg["std"]:  # per layer and dimension, from the expert latents
        mu, sd = eh.mean(1, keepdim=True), eh.std(1, keepdim=True) + 1e-6
        eh, ec, rh, rc = ((x - mu) / sd for x in (eh, ec, rh, rc))
    return eh, ec, rh, rc


def fit_flow_on_cache(
    c: dict, cfg: dict, name: str, progress: bool = True
) -> tuple[FlowNet, list[float], float]:
    """The config's flow fitted on the cached expert latents: (net in eval mode, its depth
    fractions, the last step's loss)."""
    fracs = [ALL_FRACTIONS[i] for i in cfg["layers"]]
    eh, ec, _, _ = _latents(c, cfg)
    d = eh.shape[-1]
    torch.manual_seed(cfg["seed"])
    ctx_dir = "prev" if cfg["ctx"] == "prev-deep" else cfg["ctx"]
    net = FlowNet(flow_for_encoder(d, fracs, cfg["width"], cfg["depth"], ctx_dir))
    steps, batch = cfg["steps"], cfg["batch"]
    # `flowfield fit`'s loop and schedule (AdamW, 10% warm-up, cosine); the data differ
    loop = TrainLoop(
        net.parameters(), lr=cfg["lr"], total_steps=steps, warmup_steps=int(0.1 * steps),
        weight_decay=0.01, progress=progress, desc=name,
    )
    g = torch.Generator().manual_seed(cfg["seed"])
    lf = torch.tensor(fracs)
    n_tok = eh.shape[1]
    for _ in range(steps):
        idx = torch.randint(0, n_tok, (batch,), generator=g)
        x1 = eh[:, idx].reshape(-1, d).repeat(2, 1)
        cc = ec[:, idx].reshape(-1, d).repeat(2, 1)
        ll = lf[:, None].expand(len(fracs), batch).reshape(-1).repeat(2)
        t = logit_normal(x1.shape[0], g)
        eps = torch.randn(x1.shape, generator=g)
        loop.step(flow_matching_loss(net, x1, cc, ll, t, eps))
    loop.close()
    return net.eval(), fracs, loop.last_loss


def packed_deviations(
    net: FlowNet, h: torch.Tensor, ctx: torch.Tensor, offsets: list[int], fracs: list[float]
) -> torch.Tensor:
    """Raw deviations [N] of packed samples (h, ctx [L, N, d]; offsets as EncodedBatch's), at
    the demo's scoring settings: t = 0.8, one noise draw of a seed-0 bank."""
    counts = torch.tensor([offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)])
    pos = torch.arange(int(counts.sum())) - torch.tensor(offsets[:-1]).repeat_interleave(counts)
    with torch.inference_mode():
        return token_deviations(net, h, ctx, pos, fracs, (0.8,), NoiseBank(h.shape[-1], 0), 1)


def default_cache(policy: Path) -> Path:
    """runs/diagnose/NAME-REVISION.pt: keyed by the weights too, so a retrained policy in the
    same directory never reads the latents of the one before it."""
    return Path("runs/diagnose") / f"{policy.name}-{weights_revision(policy)}.pt"


def run_config(c: dict, name: str, progress: bool = True, **changes) -> dict:
    cfg = {**BASE, **changes}
    t0 = time.time()
    net, fracs, final_loss = fit_flow_on_cache(c, cfg, name, progress)
    _, _, rh, rc = _latents(c, cfg)
    off = c["Roff"]
    counts = [off[i + 1] - off[i] for i in range(len(off) - 1)]
    devs = torch.split(packed_deviations(net, rh, rc, off, fracs), counts)
    bad = np.array(c["reward"]) < 1
    mean = np.array([float(x.mean()) for x in devs])
    mx = np.array([float(x.max()) for x in devs])
    near, at = [], []
    for dv, b, fe in zip(devs, bad, c["fe"]):
        if b and fe is not None and fe < len(dv):
            k = int(dv.argmax())
            near.append(fe - 1 <= k <= fe + 2)
            at.append(k == fe)
    return {
        "config": name,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "final_loss": round(final_loss, 3),
        "auroc_mean_deviation": round(auroc(mean, bad), 3),
        "auroc_max_deviation": round(auroc(mx, bad), 3),
        "max_deviation_in_f-1..f+2": round(float(np.mean(near)), 3),
        "max_deviation_at_f": round(float(np.mean(at)), 3),
        "seconds": round(time.time() - t0),
    }


def command(
    configs: str = typer.Option("base,std", help=f"comma-separated, of {', '.join(CONFIGS)}"),
    json_out: Path = typer.Option(None, "--json", help="append one JSON line per config"),
    policy: Path = typer.Option(DEMO_POLICY, help="policy directory (a 4-block demo policy)"),
    cache: Path = typer.Option(
        None, help="latent cache file (default runs/diagnose/NAME-REVISION.pt)"
    ),
    dev: int = typer.Option(500, help="dev-split rollouts"),
    threads: int = typer.Option(1, help="torch CPU threads"),
) -> None:
    """Fast flow refits on cached demo latents, compared on the dev split."""
    torch.set_num_threads(threads)
    c = _cache(cache or default_cache(policy), policy, dev)
    bad = np.array(c["reward"]) < 1
    nll = np.array([float(x.mean()) for x in c["nll"]])
    head = {
        "policy": str(policy),
        "dev_rollouts": len(bad),
        "accuracy": round(1 - float(bad.mean()), 3),
        "auroc_mean_nll": round(auroc(nll, bad), 3),
        "latent_std_per_dim_median_by_block": [
            round(float(c["Eh"][i].float().std(0).median()), 2) for i in range(4)
        ],
        "error_profile": error_profile(c),
    }
    typer.echo(json.dumps(head))
    for name in configs.split(","):
        if name not in CONFIGS:
            raise typer.BadParameter(f"unknown config {name!r}")
        res = {"policy": policy.name, **run_config(c, name, **CONFIGS[name])}
        typer.echo(json.dumps(res))
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            with open(json_out, "a") as f:
                f.write(json.dumps(res) + "\n")


def main(argv: list[str]) -> int:
    return run_command(command, argv, "diagnose")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
