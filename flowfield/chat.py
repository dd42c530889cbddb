"""Chat models: the prompt a chat template makes, the end-of-turn token, chat records.

A chat model's policy sees its prompt through the chat template (with the assistant header
that `add_generation_prompt=True` appends, e.g. "<|im_start|>assistant\\n") and ends each
turn with an end-of-turn token (e.g. "<|im_end|>"). The flow is fitted on the latents of
responses that follow such a prompt and do not include that token, so a bare question as
the prompt, or a response with the end-of-turn token left on, reads latents the flow never
saw (on SmolLM2-135M-Instruct: mean deviation 74.5 for the bare question, 289 with
"<|im_end|>" appended, against 6.1 for the templated prompt). `ChatFormat` finds, from the
tokenizer alone:

- `header_ids`: the assistant header, the text the template adds for
  add_generation_prompt=True (None when the tokenizer has no chat template or the template
  adds nothing);
- `end_ids`: the tokens that end a turn: the tokenizer's EOS, the model's generation EOS
  ids, and the special token the template writes after an assistant message.

Everything that takes samples uses it the same way: a trailing end-of-turn/EOS token is
stripped from a response (`strip_end`; never the whole response) and said so, and a prompt
without the assistant header at its end is warned about (`lacks_header`). `chat_record`
turns a `{"messages": [...]}` record into a (prompt, response) text pair.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_PROBE = "\u2063probe\u2063"  # an invisible separator: no template writes it by itself


@dataclass(frozen=True)
class ChatFormat:
    header: str | None = None  # the assistant header text (add_generation_prompt=True)
    header_ids: tuple[int, ...] = ()
    end_ids: frozenset[int] = frozenset()
    names: dict[int, str] = field(default_factory=dict)  # end id -> its token text

    @property
    def templated(self) -> bool:
        """Whether prompts of this model should end with an assistant header."""
        return bool(self.header_ids)

    def lacks_header(self, prompt_ids: Sequence[int]) -> bool:
        """A chat model's prompt that does not end with the template's assistant header."""
        n = len(self.header_ids)
        return self.templated and (len(prompt_ids) < n or tuple(prompt_ids[-n:]) != self.header_ids)

    def strip_end(self, response_ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """(kept, stripped): the response without its trailing end-of-turn/EOS token, and
        without what follows it when that is only end tokens or whitespace (the template's
        newline after "<|im_end|>"). Nothing is stripped that would leave the response empty."""
        ids = list(response_ids)
        blank = self._whitespace | self.end_ids
        run = len(ids)  # start of the trailing run of end tokens and whitespace
        while run > 0 and ids[run - 1] in blank:
            run -= 1
        cut = next((k for k in range(run, len(ids)) if ids[k] in self.end_ids), None)
        if cut is None or cut == 0:
            return ids, []
        return ids[:cut], ids[cut:]

    @property
    def _whitespace(self) -> frozenset[int]:
        return frozenset(i for i, t in self.names.items() if not t.strip())

    def end_warning(self, stripped: Sequence[int]) -> str:
        names = ", ".join(repr(self.names.get(i, f"<{i}>")) for i in stripped)
        return (
            f"the response ended in the end-of-turn/EOS token {names}: it was not scored (the "
            "flow is fitted on responses without it); its reward is 0"
        )

    def header_warning(self) -> str:
        return (
            "the prompt does not end with the chat template's assistant header "
            f"{self.header!r}: a chat model's prompt is the chat template applied with "
            "add_generation_prompt=True (or send its token ids); scores of an untemplated "
            "prompt are not comparable"
        )


def _render(tokenizer: Any, messages: list[dict], generation: bool) -> str | None:
    try:
        out = tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation, tokenize=False
        )
    except Exception:  # templates raise their own errors (roles, missing system, ...)
        return None
    return out if isinstance(out, str) else None


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if isinstance(v, int)]


def chat_format(tokenizer: Any, generation_eos: Iterable[int] = ()) -> ChatFormat:
    """The chat format of a tokenizer (None: a model without one has no end ids to strip)."""
    if tokenizer is None:
        return ChatFormat()
    ends = set(_as_ids(getattr(tokenizer, "eos_token_id", None))) | set(generation_eos)
    header, header_ids = None, ()
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": _PROBE}]
        bare, gen = _render(tokenizer, user, False), _render(tokenizer, user, True)
        if bare is not None and gen is not None and gen.startswith(bare) and len(gen) > len(bare):
            header = gen[len(bare) :]
            header_ids = tuple(tokenizer(header, add_special_tokens=False)["input_ids"])
        turn = _render(tokenizer, [*user, {"role": "assistant", "content": _PROBE}], False)
        if turn is not None and _PROBE in turn:
            tail = turn[turn.rindex(_PROBE) + len(_PROBE) :]
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            special |= {
                i
                for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()
                if getattr(t, "special", False)
            }
            tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
            if tail_ids and tail_ids[0] in special:
                ends.add(int(tail_ids[0]))
    names = {}
    for i in ends | set(header_ids):
        try:
            names[i] = tokenizer.decode([i])
        except Exception:  # an id the tokenizer cannot decode
            names[i] = f"<{i}>"
    # whitespace tokens that may follow an end token (the template's newline)
    for text in ("\n", " \n", "\n\n"):
        for i in tokenizer(text, add_special_tokens=False)["input_ids"]:
            names.setdefault(int(i), tokenizer.decode([i]))
    return ChatFormat(header, header_ids, frozenset(ends), names)


def encoder_chat_format(encoder: Any) -> ChatFormat:
    """The chat format of a LatentEncoder (or anything with a `tokenizer`; its model's
    generation config adds EOS ids), computed once per encoder."""
    cached = getattr(encoder, "_chat_format", None)
    if cached is not None:
        return cached
    model = getattr(encoder, "model", None)
    gen_eos = _as_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    fmt = chat_format(getattr(encoder, "tokenizer", None), gen_eos)
    with contextlib.suppress(AttributeError):  # an object that takes no attributes
        encoder._chat_format = fmt
    return fmt


def chat_record(messages: Any, tokenizer: Any) -> tuple[str, str]:
    """(prompt text, response text) of a chat record: the last message is the assistant's
    response; the messages before it go through the chat template with
    add_generation_prompt=True. ValueError says what is wrong with the record."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError("every message needs a role and a content")
        if not isinstance(m.get("content"), str):
            raise ValueError("every message's content must be text")
    if messages[-1]["role"] != "assistant":
        raise ValueError(
            f"the last message must be the assistant's (the response), not {messages[-1]['role']!r}"
        )
    if tokenizer is None:
        raise ValueError("chat records need the policy's tokenizer (send prompt_ids/response_ids)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the policy's tokenizer has no chat template: send prompt/response text")
    prompt = _render(tokenizer, messages[:-1], True)
    if prompt is None and len(messages) == 1:
        prompt = ""  # a template that cannot render an empty conversation
    if prompt is None:
        raise ValueError("the chat template does not render these messages")
    return prompt, messages[-1]["content"]


class ChatChecks:
    """What a data loader does with each sample of a chat model, and the summary it logs:
    trailing end-of-turn tokens stripped from responses, prompts without the assistant
    header counted."""

    def __init__(self, encoder: Any) -> None:
        self.format = encoder_chat_format(encoder)
        self.samples = self.stripped = self.untemplated = 0
        self.stripped_ids: set[int] = set()

    def sample(
        self, prompt_ids: Sequence[int], response_ids: Sequence[int], has_prompt: bool = True
    ) -> list[int]:
        """The response to use (end token stripped); counts what it saw. has_prompt False: a
        whole document scored as a response (no prompt to check)."""
        self.samples += 1
        if has_prompt and self.format.lacks_header(prompt_ids):
            self.untemplated += 1
        kept, cut = self.format.strip_end(response_ids)
        if cut:
            self.stripped += 1
            self.stripped_ids.update(i for i in cut if i in self.format.end_ids)
        return kept

    def warnings(self, where: str) -> list[str]:
        out = []
        if self.stripped:
            names = ", ".join(
                repr(self.format.names.get(i, f"<{i}>")) for i in sorted(self.stripped_ids)
            )
            out.append(
                f"{where}: {self.stripped} of {self.samples} responses ended in the "
                f"end-of-turn/EOS token {names}; it was stripped (the flow is fitted and "
                "scored on responses without it)"
            )
        if self.untemplated:
            out.append(
                f"{where}: {self.untemplated} of {self.samples} prompts do not end with the "
                f"chat template's assistant header {self.format.header!r}: a chat model's "
                "prompt is the chat template applied with add_generation_prompt=True (or send "
                '{"messages": [...]} records); a flow fitted or measured on untemplated '
                "prompts does not match what the policy sees in RL"
            )
        return out
