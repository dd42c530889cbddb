"""Trainer adapters. Each imports its framework (torch, trl, verl) lazily, inside functions,
so importing an adapter module never pulls torch."""
