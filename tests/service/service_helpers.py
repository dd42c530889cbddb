"""Request builders shared by the service tests."""

from __future__ import annotations

from flowfield.demo.task import Problem, expert_solution


def demo_sample(i: int, a: int = 1234, b: int = 5678, wrong: bool = False, **extra) -> dict:
    p = Problem(a + i, b)
    text = expert_solution(p)
    if wrong:  # a wrong carry in the third column
        text = text.replace("+1=", "+0=", 1) if "+1=" in text else text.replace("+0=", "+1=", 1)
    return {"id": f"s-{i}", "prompt": p.prompt, "response": text, **extra}
