"""Flow checkpoints: safetensors weights with the metadata inside, plus a readable JSON copy.

A checkpoint is a directory:
    flow.safetensors   weights; the header's "flowfield" entry holds the metadata JSON
    flow.json          the same metadata, pretty-printed for people (never read back)
Each file is written to a temporary name and renamed into place, so a reader never sees a
half-written checkpoint. The metadata records the network's shape, the context direction,
the layer fractions and the encoder's identity; loading against an encoder the flow does not
fit is an error that names the mismatch (the authors silently trained with one context
direction and rewarded with the other: docs/method.md#differences-from-the-authors-code).

The metadata's `extra["policy_revision"]` is the label (`name@revision`) of the policy encoder
a flow version was trained against: an online-refined version records the learner's encoder
at training time. A checkpoint without it (fitted offline, or written by an older flowfield)
was trained against the encoder its `encoder` identity names; `policy_revision` falls back to
that.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flowfield.encoder import EncoderIdentity
from flowfield.flownet import FlowMetadata, FlowNet, check_latent_stats

WEIGHTS = "flow.safetensors"
META = "flow.json"
POLICY_REVISION = "policy_revision"


class FlowMismatchError(ValueError):
    """A flow checkpoint does not fit the encoder (or settings) it is being used with."""


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_flow(directory: str | Path, net: FlowNet, meta: FlowMetadata) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not meta.created_at:
        meta.created_at = time.time()
    meta_json = json.dumps(meta.to_dict(), sort_keys=True)
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()
    }
    _atomic_write(
        directory / WEIGHTS, lambda p: save_file(tensors, p, metadata={"flowfield": meta_json})
    )
    _atomic_write(
        directory / META, lambda p: Path(p).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    )
    return directory


def record_policy(meta: FlowMetadata, identity: EncoderIdentity) -> FlowMetadata:
    """Note in `meta` that the flow was trained against this policy encoder."""
    meta.extra = {**meta.extra, POLICY_REVISION: identity.label()}
    return meta


def policy_revision(meta: FlowMetadata) -> str | None:
    """The label of the policy encoder the flow was trained against (None if unknown)."""
    label = (meta.extra or {}).get(POLICY_REVISION)
    if label:
        return str(label)
    name, revision = meta.encoder.get("name"), meta.encoder.get("revision")
    return f"{name}@{revision}" if name and revision else None


def read_metadata(directory: str | Path) -> FlowMetadata:
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no flow checkpoint at {directory} (missing {WEIGHTS})")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "flowfield" not in header:
        raise FlowMismatchError(f"{path} has no flowfield metadata")
    return FlowMetadata.from_dict(json.loads(header["flowfield"]))


def check_compatible(
    meta: FlowMetadata, identity: EncoderIdentity, layer_fractions: tuple[float, ...] | None = None
) -> None:
    """Raise FlowMismatchError naming every field where the flow and the encoder disagree.

    The encoder's name and revision may differ (the policy moves during RL); its
    architecture and the hooked blocks may not.
    """
    enc = meta.encoder
    problems = []
    if meta.config.hidden_size != identity.hidden_size:
        problems.append(
            f"hidden size: flow {meta.config.hidden_size}, encoder {identity.hidden_size}"
        )
    for key in ("model_type", "num_layers", "vocab_size"):
        if key in enc and enc[key] != getattr(identity, key):
            problems.append(
                f"{key}: flow trained on {enc[key]}, encoder has {getattr(identity, key)}"
            )
    if "layers" in enc and tuple(enc["layers"]) != tuple(identity.layers):
        problems.append(
            f"hooked layers: flow {list(enc['layers'])}, encoder {list(identity.layers)}"
        )
    if layer_fractions is not None and tuple(layer_fractions) != meta.config.layer_fractions:
        problems.append(
            f"layer fractions: flow {list(meta.config.layer_fractions)}, "
            f"encoder {list(layer_fractions)}"
        )
    if problems:
        raise FlowMismatchError(
            f"flow checkpoint (encoder {enc.get('name')}) does not fit encoder "
            f"{identity.name}: " + "; ".join(problems)
        )


def load_flow(
    directory: str | Path,
    identity: EncoderIdentity | None = None,
    layer_fractions: tuple[float, ...] | None = None,
    context: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[FlowNet, FlowMetadata]:
    """Load a checkpoint; with an identity, check that it fits that encoder first."""
    meta = read_metadata(directory)
    if identity is not None:
        check_compatible(meta, identity, layer_fractions)
    if context is not None and context != meta.config.context:
        raise FlowMismatchError(
            f"context direction: flow trained with {meta.config.context!r}, asked for {context!r}"
        )
    net = FlowNet(meta.config)
    with safe_open(str(Path(directory) / WEIGHTS), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    if meta.config.standardize:
        # statistics that do not fit the encoder's hooked layers and hidden size
        try:
            check_latent_stats(
                state.get("latent_mean", torch.empty(0)),
                state.get("latent_std", torch.empty(0)),
                len(meta.config.layer_fractions),
                meta.config.hidden_size,
            )
        except ValueError as e:
            raise FlowMismatchError(f"flow checkpoint {directory}: {e}") from None
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong size
        raise FlowMismatchError(f"flow weights do not match the recorded shape: {e}") from None
    if missing or unexpected:
        raise FlowMismatchError(
            f"flow weights do not match the recorded shape: missing {missing}, "
            f"unexpected {unexpected}"
        )
    return net.to(device).eval(), meta
