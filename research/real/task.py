"""The real-model task: chat-format three-term addition with few-shot worked examples.

A problem is "What is a + b + c?" with a, b, c drawn from [lo, hi] (default 2..12). The
worked solution, in the style the few-shot examples teach, is

    a + b = s. s + c = t. The answer is t.

SmolLM2-135M-Instruct solves about half of these at temperature 0.7: it mostly keeps the
format, and its mistakes are wrong sums, operands it did not read from the question, and
chains that use a number twice, each of which has a place in the response the locator below
can point at.

Splits are disjoint by the *multiset* of the three numbers (7 + 8 + 3 and 3 + 8 + 7 are the
same problem for this purpose, so no permutation of a dev or eval problem is trained on): the
multisets are shuffled with `split_seed`; the first `shots` go to the few-shot examples,
then `dev`, then `eval`, and every multiset left is `expert`. Dev and eval take one ordering
of each multiset (drawn with the same seed); expert takes every ordering.

Nothing here imports torch or transformers: the generator, the verifier and the locator are
plain Python, tested in tests/research/test_real_task.py.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SPLITS = ("dev", "eval", "expert")


@dataclass(frozen=True)
class TaskConfig:
    lo: int = 2
    hi: int = 12
    split_seed: int = 0
    shots: int = 6  # few-shot worked examples, the same in every prompt (3 gave 22% on dev)
    dev: int = 64  # multisets (problems) in dev
    eval: int = 64  # multisets (problems) in eval; the rest is expert

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, int, int]

    @property
    def id(self) -> str:
        return "+".join(map(str, self.numbers))

    @property
    def answer(self) -> int:
        return sum(self.numbers)

    def question(self) -> str:
        return "What is " + " + ".join(map(str, self.numbers)) + "?"

    def solution(self) -> str:
        """The templated worked solution (the few-shot style)."""
        steps, acc = [], self.numbers[0]
        for x in self.numbers[1:]:
            steps.append(f"{acc} + {x} = {acc + x}.")
            acc += x
        return " ".join(steps) + f" The answer is {acc}."


@dataclass(frozen=True)
class Splits:
    shots: tuple[Problem, ...]
    dev: tuple[Problem, ...]
    eval: tuple[Problem, ...]
    expert: tuple[Problem, ...]

    def __getitem__(self, name: str) -> tuple[Problem, ...]:
        if name not in SPLITS + ("shots",):
            raise KeyError(name)
        return getattr(self, name)


def make_splits(cfg: TaskConfig = TaskConfig()) -> Splits:
    """Deterministic, disjoint splits (see the module docstring)."""
    values = range(cfg.lo, cfg.hi + 1)
    keys = sorted(itertools.combinations_with_replacement(values, 3))
    rng = random.Random(f"real-task-{cfg.split_seed}")
    rng.shuffle(keys)
    need = cfg.shots + cfg.dev + cfg.eval
    if need >= len(keys):
        raise ValueError(
            f"{len(keys)} distinct problems in [{cfg.lo}, {cfg.hi}]: too few for "
            f"{cfg.shots} shots + {cfg.dev} dev + {cfg.eval} eval and an expert split"
        )

    def one_order(key: tuple[int, ...]) -> Problem:
        orders = sorted(set(itertools.permutations(key)))
        return Problem(rng.choice(orders))

    shots = tuple(one_order(k) for k in keys[: cfg.shots])
    dev = tuple(one_order(k) for k in keys[cfg.shots : cfg.shots + cfg.dev])
    ev = tuple(one_order(k) for k in keys[cfg.shots + cfg.dev : need])
    expert = tuple(Problem(p) for k in keys[need:] for p in sorted(set(itertools.permutations(k))))
    return Splits(shots, dev, ev, expert)


def chat_messages(problem: Problem, shots: Sequence[Problem]) -> list[dict[str, str]]:
    """The conversation sent to the model: each shot as a user/assistant turn, then the
    question. No system message: SmolLM2's chat template then adds its default one."""
    messages: list[dict[str, str]] = []
    for s in shots:
        messages.append({"role": "user", "content": s.question()})
        messages.append({"role": "assistant", "content": s.solution()})
    messages.append({"role": "user", "content": problem.question()})
    return messages


# ------------------------------------------------------------------------------ verifier

_ANSWER = re.compile(r"answer is\s*:?\s*(-?\d+)", re.IGNORECASE)
# an equation "x + y (+ z ...) = r"; operators other than + are parsed so they can be blamed
_EQUATION = re.compile(r"(?<![\d.])(\d+(?:\s*[-+*x×/]\s*\d+)+)\s*=\s*(-?\d+)")
_TERM = re.compile(r"\d+|[-+*x×/]")


def final_answer(response: str) -> int | None:
    """The number after the first "answer is" (case-insensitive), or None."""
    m = _ANSWER.search(response)
    return int(m.group(1)) if m else None


def verify(problem: Problem, response: str) -> float:
    """The verifier's reward: 1.0 when the final answer is the sum, else 0.0."""
    return 1.0 if final_answer(response) == problem.answer else 0.0


def _first_difference(given: str, truth: str) -> int:
    """Index of the first character where `given` stops agreeing with `truth` (len(truth)
    when `given` is longer and starts with all of it; len(given) when it is a proper
    prefix: the character after it is where the model should have gone on)."""
    for k, (a, b) in enumerate(zip(given, truth)):
        if a != b:
            return k
    return min(len(given), len(truth))


def first_step_error(problem: Problem, response: str) -> int | None:
    """Character index of the first wrong step of the worked solution, or None.

    Equations are read left to right. Each operand must be a number of the question not used
    yet (each is used once) or the result of an earlier correct equation; the operator must
    be +; the result must be the sum, and the first digit where it departs from the true sum
    is blamed (the character after it when the result is cut short).
    """
    remaining = Counter(problem.numbers)
    results: set[int] = set()
    for eq in _EQUATION.finditer(response):
        lhs_start = eq.start(1)
        total = 0
        for t in _TERM.finditer(eq.group(1)):
            tok, pos = t.group(), lhs_start + t.start()
            if not tok.isdigit():
                if tok != "+":
                    return pos
                continue
            x = int(tok)
            if remaining[x] > 0:
                remaining[x] -= 1
            elif x not in results:
                return pos
            total += x
        rhs = eq.group(2)
        if rhs != str(total):
            return eq.start(2) + _first_difference(rhs, str(total))
        results.add(total)
    return None


def first_error_char(problem: Problem, response: str) -> int | None:
    """Character index of the first wrong character of a wrong response, or None.

    The first wrong step (first_step_error) when there is one; else, when the final answer is
    given and wrong, its first digit that departs from the true sum; else None (no answer, or
    the answer is right). The index is clipped to the response.
    """
    if verify(problem, response) == 1.0 or not response:
        return None
    pos = first_step_error(problem, response)
    if pos is None:
        m = _ANSWER.search(response)
        if m is None:
            return None
        pos = m.start(1) + _first_difference(m.group(1), str(problem.answer))
    return min(pos, len(response) - 1)


def char_to_token(token_texts: Sequence[str], char_index: int) -> int | None:
    """The index of the token holding character `char_index` of "".join(token_texts)."""
    end = 0
    for i, t in enumerate(token_texts):
        end += len(t)
        if char_index < end:
            return i
    return None
