"""An OpenRLHF reward-function file backed by flowfield (pass its path to --reward.remote_url).

    python -m openrlhf.cli.train_ppo_ray ... \
        --reward.remote_url examples/trainers/openrlhf_reward_func.py --data.label_key answer

OpenRLHF imports this file and calls `reward_func(queries, prompts, labels)`. The rewards are
the verifier's (here: the demo task's, the label being the expected sum) plus the flow return
of each response; the accepted responses are pushed to the service's /v1/update. Set
FLOWFIELD_URL (and FLOWFIELD_API_KEY, a key with the update scope, when keys are configured).
For flow rewards alone, no file is needed: --reward.remote_url http://<service>/get_reward.
"""

from __future__ import annotations

import re
from typing import Any

from flowfield_client.adapters.openrlhf import FlowfieldOpenRLHFReward


def verify(prompt: str, response: str, label: Any) -> float:
    """1.0 when the response's final answer ("A:<digits>.") equals the label (the dataset's
    value as OpenRLHF passes it: a number or a string)."""
    m = re.search(r"A:(\d+)\.", response)
    label = str(label).strip()
    return 1.0 if m is not None and label.isdigit() and int(m.group(1)) == int(label) else 0.0


# OpenRLHF calls this object like a function: reward_func(queries, prompts, labels)
reward_func = FlowfieldOpenRLHFReward(verifier=verify, strip=["<eos>"])
