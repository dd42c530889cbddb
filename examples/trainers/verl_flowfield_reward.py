"""verl recipe: flowfield's dense token rewards through a custom reward manager.

Load the manager by file path, with the verifier as verl's custom reward function
(option names of verl releases whose reward manager is a config group; older releases
register managers by name instead, see docs/clients.md):

    python -m verl.trainer.main_ppo ... \
        reward_model.reward_manager.source=importlib \
        reward_model.reward_manager.name=FlowfieldRewardManager \
        reward_model.reward_manager.module.path=examples/trainers/verl_flowfield_reward.py \
        custom_reward_function.path=examples/trainers/verl_flowfield_reward.py \
        custom_reward_function.name=compute_score \
        +reward_model.reward_kwargs.flowfield_url=http://flowfield:8000 \
        +reward_model.reward_kwargs.dense=true

With GRPO (algorithm.adv_estimator=grpo) verl sums the token rewards per response, so only
the flow return counts; PPO with GAE (adv_estimator=gae) and REINFORCE++ use them per token.
"""

from __future__ import annotations

import re
from typing import Any

from flowfield_client.adapters.verl import FlowfieldRewardManager

__all__ = ["FlowfieldRewardManager", "compute_score"]


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kw: Any
) -> float:
    """The demo task's verifier: 1.0 when the final answer ("A:<digits>.") is the truth."""
    m = re.search(r"A:(\d+)\.", solution_str)
    return 1.0 if m is not None and int(m.group(1)) == int(str(ground_truth)) else 0.0
