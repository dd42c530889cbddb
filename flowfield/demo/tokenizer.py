"""A character-level Hugging Face tokenizer for the demo task.

Built with the `tokenizers` library and saved as a normal `PreTrainedTokenizerFast`, so the
service loads it with `AutoTokenizer.from_pretrained` exactly like any other model's.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from flowfield.demo.task import ALPHABET

SPECIALS = ["<pad>", "<eos>", "<unk>"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # one token per character, whitespace included; decoding concatenates them back
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )

