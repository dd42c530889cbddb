"""Trainer adapters: TRL 1.16 (`trl`), OpenRLHF 0.11 (`openrlhf`), verl 0.9 (`verl`). Each
imports its framework (torch, trl, verl) lazily, inside functions (verl's manager class is
built on first access), so importing an adapter module never pulls torch."""
