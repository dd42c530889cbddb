"""`python -m research NAME ...`: the names, their modules, help and a quick command."""

from __future__ import annotations

import json

import pytest
from helpers import run_research

import research
from flowfield.demo.task import expert_solution, split_problems


def test_help_lists_every_name():
    out = run_research("--help")
    for name, (_, summary) in research.COMMANDS.items():
        assert f"  {name} " in out and summary in out


@pytest.mark.parametrize("name", [n for n in research.COMMANDS if n != "real"])
def test_every_name_resolves_to_a_main(name):
    assert callable(research.resolve(name))


def test_unknown_name_and_missing_workspace_are_usage_errors(capsys):
    assert research.main(["no-such-name"]) == 2
    assert "unknown name 'no-such-name'" in capsys.readouterr().err
    with pytest.raises(LookupError):
        research.resolve("no-such-name")


def test_a_command_runs_with_its_own_arguments(tmp_path):
    out = tmp_path / "expert.jsonl"
    text = run_research("expert-data", "--out", str(out))
    assert "wrote 4000 expert solutions" in text
    first = json.loads(out.read_text().splitlines()[0])
    p = split_problems(0)[1][0]
    assert first == {"prompt": p.prompt, "response": expert_solution(p)}


def test_command_help_names_the_entry_point():
    out = run_research("rlfr", "--help")
    assert "python -m research rlfr" in out and "--smoke" in out and "--json" in out
