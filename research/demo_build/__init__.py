"""Builders of the bundled demo (flowfield/demo/assets): train_policy.py (the policy),
data.py (expert solutions as JSONL), build.py (policy, data, flow and check in one go),
check.py (clean vs. corrupted expert solutions). The wheel ships only the assets and what
the service and `flowfield eval` run (flowfield/demo: task, tokenizer, sampling)."""
