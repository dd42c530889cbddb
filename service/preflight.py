"""`flowfield serve`'s start-up check: the model and flow it was given exist and fit each
other, said in one line before anything loads (no traceback from inside the app's start-up).

Reads only the model's config.json and the flow's metadata (no weights): the same
architecture checks as loading the flow against the encoder (flowfield.checkpoint
.check_compatible), with the layer fractions the service hooks.
"""

from __future__ import annotations

from pathlib import Path

from flowfield.checkpoint import WEIGHTS, FlowMismatchError, check_compatible, read_metadata
from flowfield.encoder import EncoderIdentity, layer_indices


def _is_demo_flow(path: Path) -> bool:
    from flowfield.demo import ASSETS

    try:
        return path.resolve() == (ASSETS / "flow").resolve()
    except OSError:  # pragma: no cover - an unreadable path
        return False


def startup_problem(
    model: Path, flow: Path, layer_fractions: tuple[float, ...], flow_given: bool = True
) -> str | None:
    """Why the service cannot start on this model and flow (one line), or None."""
    model, flow = Path(model), Path(flow)
    hint = (
        f"pass --flow DIR (or FLOWFIELD_FLOW_PATH) with a flow fitted on this model: "
        f"flowfield fit --model {model} --data expert.jsonl --out DIR"
    )
    if not (model / "config.json").is_file():
        return f"{model} is not a Hugging Face model directory (no config.json)"
    if not (flow / WEIGHTS).is_file():
        return f"no flow checkpoint at {flow} (missing {WEIGHTS}); {hint}"
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
        num_layers = int(config.num_hidden_layers)
        identity = EncoderIdentity(
            name=model.name,
            revision="",
            model_type=str(config.model_type),
            hidden_size=int(config.hidden_size),
            num_layers=num_layers,
            vocab_size=int(config.vocab_size),
            layers=tuple(layer_indices(layer_fractions, num_layers)),
        )
        check_compatible(read_metadata(flow), identity, tuple(layer_fractions))
    except FlowMismatchError as e:
        if _is_demo_flow(flow) and not flow_given:
            return (
                f"no --flow given, and the default (the bundled demo flow) does not fit the "
                f"model at {model} ({str(e).split(': ', 1)[-1]}); {hint}"
            )
        return f"the flow at {flow} does not fit the model at {model}: {e}"
    except (OSError, ValueError, AttributeError, TypeError) as e:
        return f"cannot read the model at {model} or the flow at {flow}: {e}"
    return None
