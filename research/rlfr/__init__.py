"""The RLFR toy experiment: train a policy against a live flowfield service (issue 11: RLFR
at toy scale). `python -m research rlfr` runs GRPO on the demo addition task in several arms
(RLVR, RLFR with and without online refinement and with three normalisations, entropy and
NLL shaping, and two controls: an oracle that knows the first wrong token, and the flow's
rewards shuffled within each rollout) over seeds, and
writes a results JSON, learning curves (PNG) and markdown tables.

Files, one idea each: arms.py (what differs between arms), config.py (settings, presets),
evaluate.py (train / held-out
problems, accuracy), policy_gradient.py (the policy forward and loss), shaping.py (token
advantages per arm), trainer.py (one arm and seed), runner.py (all runs, versions, JSON),
report.py (summaries, paired differences against RLVR with bootstrap intervals, markdown),
probe.py (the gradient pre-check: how far an arm's shaping turns RLVR's gradient), plot.py
(PNG), cli.py (the commands). Shared with the
RewardFlow experiment (research/rewardflow/), in research/harness/: common.py (settings
overrides and checks, timings, the results file and versions), commands.py (the command
plumbing and the report commands) and service_process.py (a `flowfield serve` subprocess per
run).

Nothing is imported here, so `python -m research --help` starts without loading torch.
"""
