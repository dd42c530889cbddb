"""Test helpers: tiny Hugging Face causal LMs built from configs, saved to and loaded back
from disk through the same path the service uses; random token samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from flowfield.demo.tokenizer import build_tokenizer

VOCAB = 64
REPO = Path(__file__).resolve().parents[1]


def tiny_config(arch: str, layers: int = 8, hidden: int = 32, **extra):
    """A tiny config of `arch` (gpt2, llama, qwen2, mistral); `extra` adds or replaces config
    keywords (e.g. mistral's sliding_window)."""
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=256,
            bos_token_id=1,
            eos_token_id=1,
            **extra,
        )
    common = dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
    )
    common.update(extra)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "mistral":
        return MistralConfig(**common)
    raise ValueError(arch)


def save_tiny_model(
    path: Path, arch: str, layers: int = 8, hidden: int = 32, seed: int = 0, **extra
) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, layers, hidden, **extra))
    model.save_pretrained(str(path))
    build_tokenizer().save_pretrained(str(path))
    return path


def random_samples(n: int, seed: int = 0, prompt_range=(0, 12), response_range=(1, 20)):
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for _ in range(n):
        p = int(torch.randint(prompt_range[0], prompt_range[1] + 1, (1,), generator=g))
        r = int(torch.randint(response_range[0], response_range[1] + 1, (1,), generator=g))
        prompts.append(torch.randint(2, VOCAB, (p,), generator=g).tolist())
        responses.append(torch.randint(2, VOCAB, (r,), generator=g).tolist())
    return prompts, responses


def run_research(*args: str, timeout: float = 900) -> str:
    """`python -m research ARGS` from the repository root, as a user runs it; its stdout
    (the command must succeed)."""
    proc = subprocess.run([sys.executable, "-m", "research", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def check_experiment_outputs(out: Path, results: dict, markdown_table, arms) -> str:
    """`python -m research rlfr | rewardflow ... --out OUT` wrote OUT/table.md (the results'
    table, a row per arm) and a real PNG plot; returns the table."""
    table = (out / "table.md").read_text()
    assert table == markdown_table(results)
    for arm in arms:
        assert f"| {arm} |" in table
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    return table


CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_tokenizer():
    """A character-level tokenizer with ChatML special tokens and template (SmolLM2's shape:
    "<|im_end|>" is the EOS and the end of a turn), 100 tokens."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_end|>", "<unk>", "<|im_start|>"]
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<|im_end|>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML
    return tok


def save_tiny_chat_model(path: Path, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny Llama whose tokenizer has a ChatML chat template (chat_tokenizer)."""
    tok = chat_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config("llama", layers, hidden, vocab_size=len(tok), eos_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
