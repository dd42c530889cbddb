"""Token classes, for the table of which kinds of tokens get rewarded and penalised.

For the demo task every response character has a role in the scratchpad grammar
("4+8+0=12,3+7+1=11,...,A:6912."): an operand digit copied from the prompt, the incoming
carry, the two digits of the column sum, the answer digits and the punctuation between them.
For any other tokenizer the class of a token is its own string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OPERAND = "operand digit"
CARRY = "carry digit"
SUM_TENS = "column sum, tens digit"
SUM_ONES = "column sum, ones digit"
ANSWER = "answer digit"
PUNCT = {
    "+": "'+' (plus)",
    "=": "'=' (equals)",
    ",": "',' (step separator)",
    "A": "'A' (answer marker)",
    ":": "':' (after A)",
    ".": "'.' (end)",
}
OTHER = "other"


def demo_token_classes(response: str) -> list[str]:
    """The role of each character of a demo scratchpad response (robust to malformed text).

    Within a step "a+b+c=ss," the fields are counted by the '+' and '=' seen since the last
    ',': field 0 and 1 are operands, field 2 the carry, after '=' the column sum (its first
    digit the tens, the rest the ones). After "A:" every digit is an answer digit.
    """
    out = []
    plus = 0  # '+' seen in the current step
    after_eq = -1  # digits seen after '=' in the current step, -1 before '='
    in_answer = False
    for ch in response:
        if ch.isdigit():
            if in_answer:
                out.append(ANSWER)
            elif after_eq >= 0:
                out.append(SUM_TENS if after_eq == 0 else SUM_ONES)
                after_eq += 1
            else:
                out.append(OPERAND if plus < 2 else CARRY)
            continue
        out.append(PUNCT.get(ch, OTHER))
        if ch == "+":
            plus += 1
        elif ch == "=":
            after_eq = 0
        elif ch == ",":
            plus, after_eq = 0, -1
        elif ch == ":" and response[: len(out) - 1].endswith("A"):
            in_answer = True
        elif ch == ".":
            in_answer = False
    return out


def string_token_classes(tokens: Sequence[str]) -> list[str]:
    """Fallback classes: the token's own text (quoted, so spaces and newlines show)."""
    return [repr(t) for t in tokens]


@dataclass
class ClassStats:
    name: str
    count: int
    mean_reward: float
    positive: float  # share of this class's tokens with a reward > 0
    negative: float  # share with a reward < 0
    mean_deviation: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def class_table(
    classes: Sequence[Sequence[str]],
    rewards: Sequence[Sequence[float]],
    deviations: Sequence[Sequence[float]],
    min_count: int = 1,
) -> list[ClassStats]:
    """Per class over all given tokens, sorted from the most positive mean reward down."""
    by_class: dict[str, tuple[list[float], list[float]]] = {}
    for cs, rs, ds in zip(classes, rewards, deviations):
        if not (len(cs) == len(rs) == len(ds)):
            raise ValueError("classes, rewards and deviations of a rollout differ in length")
        for c, r, d in zip(cs, rs, ds):
            rl, dl = by_class.setdefault(c, ([], []))
            rl.append(float(r))
            dl.append(float(d))
    table = []
    for name, (rl, dl) in by_class.items():
        if len(rl) < min_count:
            continue
        r = np.asarray(rl)
        table.append(
            ClassStats(
                name=name,
                count=len(rl),
                mean_reward=float(r.mean()),
                positive=float((r > 0).mean()),
                negative=float((r < 0).mean()),
                mean_deviation=float(np.mean(dl)),
            )
        )
    table.sort(key=lambda s: (-s.mean_reward, s.name))
    return table
