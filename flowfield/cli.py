"""`flowfield` command line: fit a flow, evaluate its rewards (and serve / learn / bench)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from flowfield import defaults
from flowfield.cli_options import comma_separated, fail

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="flowfield: flow rewards (RLFR) and graph rewards (RewardFlow) for RL",
)


@app.callback()
def main() -> None:
    """flowfield: flow rewards (RLFR) and graph rewards (RewardFlow) for RL trainers."""


@app.command()
def fit(
    model: Path = typer.Option(..., help="Hugging Face causal LM directory (the policy)"),
    data: Path = typer.Option(..., help="JSONL of expert samples: prompt/response text or ids"),
    out: Path = typer.Option(..., help="checkpoint directory to write"),
    epochs: float = typer.Option(
        None,
        help="passes over the data (default: enough for --min-steps, at least 2, at most "
        "--max-epochs)",
    ),
    batch_tokens: int = typer.Option(
        None,
        help="RESPONSE tokens per optimiser step (not rows: each token becomes layers x "
        "replicas rows); default 4096, smaller on small data to reach --min-steps",
    ),
    min_steps: int = typer.Option(
        1000, help="unless --epochs and --batch-tokens are both set, take at least this many steps"
    ),
    max_epochs: float = typer.Option(
        20.0, help="without --epochs, at most this many passes over the data (0 = no cap)"
    ),
    early_stop: bool = typer.Option(
        True,
        "--early-stop/--no-early-stop",
        help="stop when the held-out flow-matching loss has not improved for --patience "
        "evaluations, keeping the best weights",
    ),
    eval_every: int = typer.Option(
        0, help="steps between held-out loss evaluations (0 = total/40, within 25..250)"
    ),
    patience: int = typer.Option(5, help="evaluations without improvement before stopping"),
    lr: float = typer.Option(None, help="peak AdamW learning rate (default: 1e-3 up to W=256)"),
    weight_decay: float = 0.01,
    warmup: float = typer.Option(0.1, help="warm-up fraction of all steps"),
    replicas: int = typer.Option(2, help="fresh (t, noise) draws per token per step"),
    width: int = typer.Option(0, help="flow width W (0 = min(hidden size, 256))"),
    depth: int = typer.Option(4, help="residual blocks N"),
    context: str = typer.Option(
        defaults.CONTEXT, help="neighbour latent used as context: next|prev|none"
    ),
    layers: str = typer.Option(
        ",".join(str(p) for p in defaults.LAYER_FRACTIONS),
        help="hooked depth fractions: p reads block round(p * num_layers), 0-based, i.e. "
        "hidden_states[round(p * L) + 1] (0.25 of 4 layers is block 1 = hidden_states[2])",
    ),
    standardize: bool = typer.Option(
        False, "--standardize/--no-standardize", help="standardise latents per layer and dim"
    ),
    holdout: int = typer.Option(500, help="expert samples held out for the report (<= 10%)"),
    seed: int = 0,
    checkpoint_every: int = typer.Option(0, help="write a checkpoint every N steps (0 = end only)"),
    resume: bool = typer.Option(False, help="continue the fit saved in --out"),
    max_steps: int = typer.Option(0, help="pause after this many steps (resumable; 0 = all)"),
    keep_trainer_state: bool = typer.Option(
        False,
        help="keep trainer_state.pt (optimiser state, only --resume reads it) once the fit "
        "is complete; by default the finished flow folder holds just what serving needs",
    ),
    cache_gb: float = typer.Option(
        2.0, help="latents up to this size (GiB) are cached in memory, larger ones on disk"
    ),
    cache_dir: Path = typer.Option(
        None, help="folder for the on-disk latent cache (default <out>/latent-cache, removed)"
    ),
    encoder_name: str = typer.Option(
        None,
        help="the encoder's name recorded in the flow (default: \"name\" in the model "
        "directory's flowfield.json, else the folder name)",
    ),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    threads: int = typer.Option(0, help="CPU threads for torch (0 = default)"),
) -> None:
    """Fit a flow offline on expert data (RLFR flow matching), then report on held-out samples."""
    import torch

    from flowfield.encoder import LatentEncoder
    from flowfield.training import FitConfig, fit_flow, load_jsonl

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    try:
        fractions = comma_separated(layers, float, "fractions")
        encoder = LatentEncoder(
            model, layer_fractions=fractions, device=device, name=encoder_name or None
        )
        samples = load_jsonl(data, encoder)
    except (OSError, ValueError) as e:
        raise fail(str(e)) from None
    typer.echo(f"hooked layers: {encoder.describe_layers()}")
    cfg = FitConfig(
        epochs=epochs,
        batch_tokens=batch_tokens,
        min_steps=min_steps,
        max_epochs=max_epochs or None,
        early_stop=early_stop,
        eval_every=eval_every,
        patience=patience,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        replicas=replicas,
        seed=seed,
        checkpoint_every=checkpoint_every,
        width=width or None,
        depth=depth,
        context=context,
        standardize=standardize,
        holdout=holdout,
        cache_gb=cache_gb,
        cache_dir=None if cache_dir is None else str(cache_dir),
        keep_trainer_state=keep_trainer_state,
    )
    try:
        res = fit_flow(encoder, samples, out, cfg, resume=resume, stop_after=max_steps or None)
    except ValueError as e:
        raise fail(str(e)) from None
    typer.echo(res.summary())
    if res.report is not None:
        typer.echo("\n".join(res.report.lines()))
    elif res.steps and not max_steps:
        typer.echo("no held-out report: fewer than 50 expert samples")


def _floats(text: str, what: str) -> tuple[float, ...]:
    values = comma_separated(text, float, what)
    if not values:
        raise typer.BadParameter(f"expected at least one of {what}")
    return values


@app.command("eval")
def eval_command(
    model: Path = typer.Option(None, help="policy directory (default: the bundled demo policy)"),
    flow: Path = typer.Option(None, help="flow checkpoint (default: the bundled demo flow)"),
    data: Path = typer.Option(
        None,
        help="JSONL of verified rollouts, one object per line: prompt/response text or "
        "prompt_ids/response_ids, and reward (the verifier's). Optional first_error: the "
        "index of the first wrong response token (0-based, in response_ids); without it the "
        "localisation and confident-error sections are left out",
    ),
    demo: int = typer.Option(200, help="without --data: held-out demo problems to roll out"),
    split: str = typer.Option("eval", help="demo problems: eval (held-out) or dev (levers)"),
    temperature: float = typer.Option(1.0, help="demo sampling temperature"),
    seed: int = typer.Option(0, help="seed of the demo sampling and the bootstrap"),
    timesteps: str = typer.Option(
        ",".join(str(t) for t in defaults.TIMESTEPS), help="rewarding timesteps, comma-separated"
    ),
    noise_draws: int = typer.Option(
        defaults.NOISE_DRAWS, help="noise draws per token and timestep"
    ),
    normalization: str = typer.Option(
        None,
        help="normalisation of the headline flow return and the token rewards: "
        + defaults.normalization_help("default: the service's, " + defaults.NORMALIZATION)
        + " (the returns under every normalisation are reported too)",
    ),
    bootstrap: int = typer.Option(1000, help="bootstrap resamples for the AUROC intervals"),
    refine: bool = typer.Option(False, help="also measure the flow after one refinement round"),
    refine_rollouts: int = typer.Option(500, help="problems in the refinement round"),
    refine_epochs: int = typer.Option(4, help="passes over the round's accepted rollouts"),
    refine_lr: float = typer.Option(3e-4, help="peak learning rate of the refinement"),
    refine_batch: int = typer.Option(32, help="accepted rollouts per refinement step"),
    logits: bool = typer.Option(
        True, "--logits/--no-logits", help="compute the policy NLL/entropy baselines"
    ),
    json_out: Path = typer.Option(None, "--json", help="write the report as JSON here"),
    html_out: Path = typer.Option(None, "--html", help="write the token-reward view here"),
    html_rollouts: int = typer.Option(40, help="rollouts per flow in the HTML view"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option(
        None,
        help="encoder and flow dtype: float32, bfloat16 or auto (default: bf16 on cuda, "
        "float32 on cpu); the rollouts and logit baselines are the same in every dtype",
    ),
    threads: int = typer.Option(0, help="CPU threads for torch (0 = default)"),
    encoder_name: str = typer.Option(
        None,
        help="the encoder's name in the report (default: \"name\" in the model directory's "
        "flowfield.json, else the folder name)",
    ),
) -> None:
    """Reward quality: AUROC of flow scores vs logit baselines, localisation, token classes."""
    import torch

    from flowfield.evaluation import (
        EvalConfig,
        RefineConfig,
        eval_html,
        format_report,
        run_evaluation,
    )
    from flowfield.evaluation.report import to_json
    from flowfield.evaluation.run import DEMO_FLOW, DEMO_POLICY
    from flowfield.rewards import RewardOptions

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if threads:
        torch.set_num_threads(threads)
    try:
        cfg = EvalConfig(
            model=model or DEMO_POLICY,
            flow=flow or DEMO_FLOW,
            data=data,
            demo=demo,
            split=split,
            temperature=temperature,
            seed=seed,
            timesteps=_floats(timesteps, "timesteps"),
            noise_draws=noise_draws,
            reward=RewardOptions(normalization=normalization),
            bootstrap=bootstrap,
            refine=RefineConfig(
                rollouts=refine_rollouts,
                epochs=refine_epochs,
                batch_size=refine_batch,
                lr=refine_lr,
                seed=seed,
            )
            if refine
            else None,
            logits=logits,
            device=device,
            dtype=dtype,
            encoder_name=encoder_name or None,
        )
        result = run_evaluation(cfg)
    except (OSError, ValueError) as e:
        raise fail(str(e)) from None
    typer.echo(f"hooked layers: {result.report['setup']['layer_mapping']}")
    typer.echo(format_report(result.report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(to_json(result.report))
        typer.echo(f"wrote {json_out}")
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(eval_html(result.report, result.scored, html_rollouts))
        typer.echo(f"wrote {html_out}")


if __name__ == "__main__":
    app()
