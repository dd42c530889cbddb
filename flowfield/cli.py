"""`flowfield` command line: fit a flow (and, as they land, serve / learn / eval / bench)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="flowfield: flow rewards (RLFR) and graph rewards (RewardFlow) for RL",
)


def fail(message: str) -> typer.Exit:
    """Print a one-line error for the user and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.callback()
def main() -> None:
    """flowfield: flow rewards (RLFR) and graph rewards (RewardFlow) for RL trainers."""


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated fractions, got {text!r}") from None


@app.command()
def fit(
    model: Path = typer.Option(..., help="Hugging Face causal LM directory (the policy)"),
    data: Path = typer.Option(..., help="JSONL of expert samples: prompt/response text or ids"),
    out: Path = typer.Option(..., help="checkpoint directory to write"),
    epochs: float = typer.Option(2.0, help="passes over the data"),
    batch_tokens: int = typer.Option(4096, help="response tokens per optimiser step"),
    lr: float = typer.Option(1e-4, help="peak AdamW learning rate"),
    weight_decay: float = 0.01,
    warmup: float = typer.Option(0.1, help="warm-up fraction of all steps"),
    replicas: int = typer.Option(2, help="fresh (t, noise) draws per token per step"),
    width: int = typer.Option(0, help="flow width W (0 = the model's hidden size)"),
    depth: int = typer.Option(4, help="residual blocks N"),
    context: str = typer.Option("next", help="neighbour latent used as context: next|prev|none"),
    layers: str = typer.Option("0.25,0.5,0.75", help="hooked depth fractions"),
    seed: int = 0,
    checkpoint_every: int = typer.Option(0, help="write a checkpoint every N steps (0 = end only)"),
    resume: bool = typer.Option(False, help="continue the fit saved in --out"),
    max_steps: int = typer.Option(0, help="pause after this many steps (resumable; 0 = all)"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    threads: int = typer.Option(0, help="CPU threads for torch (0 = default)"),
) -> None:
    """Fit a flow offline on expert data (RLFR.md s4), with a progress bar."""
    import torch

    from flowfield.encoder import LatentEncoder
    from flowfield.training import FitConfig, fit_flow, load_jsonl

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    try:
        encoder = LatentEncoder(model, layer_fractions=_fractions(layers), device=device)
        samples = load_jsonl(data, encoder)
    except (OSError, ValueError) as e:
        raise fail(str(e)) from None
    cfg = FitConfig(
        epochs=epochs,
        batch_tokens=batch_tokens,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        replicas=replicas,
        seed=seed,
        checkpoint_every=checkpoint_every,
        width=width or None,
        depth=depth,
        context=context,
    )
    res = fit_flow(encoder, samples, out, cfg, resume=resume, stop_after=max_steps or None)
    typer.echo(
        f"fit: {res.steps} steps, {res.tokens} tokens, final loss {res.final_loss:.4f}, "
        f"{res.seconds:.1f}s -> {res.out}"
    )


if __name__ == "__main__":
    app()
