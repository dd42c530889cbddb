"""RewardFlow at toy scale (issue 14): do graph-propagated state rewards beat outcome-only RL?

`python -m research rewardflow` trains a small MLP policy on the grid rooms environment
(research/envs/grid_rooms.py: `GridRooms`) with a GRPO-style group update, in three arms that
differ only in the per-step advantages: outcome-only (the group-centred episode return),
RewardFlow (values, step rewards and advantages from POST /v1/score/graph of a live
`flowfield serve` process) and a Monte-Carlo discounted return-to-go baseline computed
locally. Metrics are taken on held-out starts, against environment steps.

Files: config.py (settings, environments, presets), agent.py (policy, batched rollouts),
advantages.py (the three arms' advantages; the /v1/score/graph request and its answer),
trainer.py (one arm, setting and seed), runner.py (every run, one service, results JSON),
report.py (summaries, markdown, plot), cli.py (the typer commands).

Nothing is imported here, so `python -m research --help` starts without loading torch.
"""
