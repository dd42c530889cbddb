"""What the RLFR (research/rlfr/) and RewardFlow (research/rewardflow/) experiments share:
common.py (settings overrides and checks, timings, the results file and versions),
commands.py (the command plumbing and the report commands), service_process.py (a
`flowfield serve` subprocess per run)."""
