"""verl 0.9.x recipe: flowfield's flow rewards through verl's reward loop.

The reward manager comes from the client package; this file holds the demo task's verifier,
loaded as verl's custom reward function:

    python -m verl.trainer.main_ppo ... \\
        reward.reward_manager.source=importlib \\
        reward.reward_manager.name=FlowfieldRewardManager \\
        reward.reward_manager.module.path=pkg://flowfield_client.adapters.verl \\
        reward.custom_reward_function.path=examples/trainers/verl_flowfield_reward.py \\
        reward.custom_reward_function.name=compute_score \\
        +reward.reward_kwargs.flowfield_url=http://flowfield:8000

Each response's reward is the verifier's plus the flow return (what GRPO, RLOO and the other
outcome estimators use); the training responses the verifier accepts are pushed to /v1/update,
the validation ones (prompts of data.val_files) are not. For RLFR's dense token advantages add
`+reward.reward_kwargs.dense=true algorithm.adv_estimator=flowfield_grpo trainer.use_v1=false`
(docs/clients.md explains why the legacy trainer).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["compute_score"]


def compute_score(
    data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kw: Any
) -> float:
    """The demo task's verifier: 1.0 when the final answer ("A:<digits>.") is the truth."""
    m = re.search(r"A:(\d+)\.", solution_str)
    return 1.0 if m is not None and int(m.group(1)) == int(str(ground_truth)) else 0.0
