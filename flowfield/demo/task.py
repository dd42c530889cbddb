"""The demo task: 4-digit addition with a column-by-column carry scratchpad.

A problem is two numbers a, b < 10**4. The expert solution walks the columns from the
right, writing each column's digits, the incoming carry and the two-digit column sum,
then the answer:

    prompt:   "Q:1234+5678\n"
    response: "4+8+0=12,3+7+1=11,2+6+1=09,1+5+0=06,A:6912."

Every response token is a single character. The solution is unique, so the first
character where a rollout differs from the expert solution is its first error; this is
what the evaluation uses to check where flow rewards localise mistakes. The verifier
only reads the final answer, as a real math verifier would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DIGITS = 4
# Every character a prompt or response can contain. "\n" ends the prompt, "." ends the answer.
ALPHABET = "0123456789+=,:.AQ\n"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"Q:{self.a:0{DIGITS}d}+{self.b:0{DIGITS}d}\n"

    @property
    def answer(self) -> int:
        return self.a + self.b


def parse_prompt(prompt: str) -> Problem | None:
    """The problem whose prompt is exactly `prompt` ("Q:1234+5678\n"), or None."""
    body = prompt[2:-1] if prompt.startswith("Q:") and prompt.endswith("\n") else ""
    a, plus, b = body.partition("+")
    if not (plus and a.isdigit() and b.isdigit() and a.isascii() and b.isascii()):
        return None
    problem = Problem(int(a), int(b))
    return problem if problem.prompt == prompt else None


def expert_solution(problem: Problem) -> str:
    """The step-by-step solution, ending with the answer and a full stop."""
    a = f"{problem.a:0{DIGITS}d}"
    b = f"{problem.b:0{DIGITS}d}"
    carry = 0
    steps = []
    for i in range(DIGITS - 1, -1, -1):
        s = int(a[i]) + int(b[i]) + carry
        steps.append(f"{a[i]}+{b[i]}+{carry}={s:02d}")
        carry = s // 10
    return ",".join(steps) + f",A:{problem.answer}."


def parse_answer(response: str) -> int | None:
    """The integer after "A:" and before the first ".", or None if there is none."""
    start = response.find("A:")
    if start < 0:
        return None
    end = response.find(".", start)
    body = response[start + 2 : end if end >= 0 else None]
    return int(body) if body.isdigit() and len(body) <= DIGITS + 1 else None


def verify(problem: Problem, response: str) -> float:
    """Verifier reward: 1.0 if the final answer is right, else 0.0."""
    return 1.0 if parse_answer(response) == problem.answer else 0.0


def first_error(problem: Problem, response: str) -> int | None:
    """Index of the first response character that differs from the expert solution.

    None if the response is the expert solution (or a prefix of it that was cut short is
    counted as an error at the cut).
    """
    expert = expert_solution(problem)
    for i, (x, y) in enumerate(zip(response, expert)):
        if x != y:
            return i
    if len(response) == len(expert):
        return None
    return min(len(response), len(expert))


def sample_problems(n: int, seed: int, exclude: set[Problem] | None = None) -> list[Problem]:
    """n distinct problems drawn uniformly, reproducibly, avoiding `exclude`."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    while len(out) < n:
        p = Problem(rng.randrange(10**DIGITS), rng.randrange(10**DIGITS))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def split_problems(seed: int = 0) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """Disjoint problem sets: policy training, expert data for the flow, held-out evaluation.

    Fixed sizes so every script that uses the demo sees the same split.
    """
    policy = sample_problems(20_000, seed)
    flow = sample_problems(4_000, seed + 1, exclude=set(policy))
    held_out = sample_problems(1_000, seed + 2, exclude=set(policy) | set(flow))
    return policy, flow, held_out


def corrupt_digits(text: str, n: int, rng: random.Random) -> str:
    """Replace n digits of text with different random digits (the format stays valid)."""
    chars = list(text)
    where = [i for i, ch in enumerate(chars) if ch.isdigit()]
    for i in rng.sample(where, min(n, len(where))):
        chars[i] = rng.choice([d for d in "0123456789" if d != chars[i]])
    return "".join(chars)
