"""Environments of the research experiments (the library's own rooms env, used by tests and
`flowfield bench graph`, is flowfield/envs/rooms.py)."""
