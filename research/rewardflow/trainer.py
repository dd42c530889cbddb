"""One arm, environment and seed: GRPO-style group updates of a fresh MLP policy.

Each update:
1. draw `groups` training starts (never a held-out one) and roll each out G times with the
   current policy (one batch of groups x G episodes, stepped together);
2. per-step advantages of the arm (advantages.py): outcome and mc locally, rewardflow from
   POST /v1/score/graph of the live service (the trainer is its HTTP client);
3. one Adam step on -mean over steps of A_t * log pi(a_t | s_t), gradient clipped.

Every arm of a seed starts from the same weights and draws the same training starts, and
trains until it has taken its budget of environment steps (the same for every arm; an arm
that succeeds sooner gets more updates from it). Held-out metrics `evals` times per run,
evenly spaced in environment steps: one sampled episode per held-out start (a fixed sampling
stream per evaluation, shared by all runs) and one greedy episode.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from research.envs.grid_rooms import GRID_ACTIONS, GridRooms
from research.harness.common import Timings
from research.rewardflow.advantages import (
    discounted_step_advantages,
    graph_advantages,
    mc_advantages,
    outcome_advantages,
)
from research.rewardflow.agent import Policy, collect, policy_loss
from research.rewardflow.config import (
    ENVIRONMENTS,
    RewardFlowConfig,
    split_starts,
)

log = logging.getLogger("research.experiments")

EVAL_SEED = 9001
EXAMINE, TAKE = GRID_ACTIONS.index("examine"), GRID_ACTIONS.index("take")


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


class RunOne:
    def __init__(self, cfg: RewardFlowConfig, arm: str, env_name: str, seed: int,
                 client: Any = None) -> None:
        if arm.startswith("rewardflow") and client is None:
            raise ValueError("the rewardflow arm needs a flowfield-client of a live service")
        self.cfg, self.arm, self.env_name, self.seed, self.client = cfg, arm, env_name, seed, client
        self.name = f"{env_name}/{arm}/s{seed}"
        torch.set_num_threads(cfg.threads)
        setting = ENVIRONMENTS[env_name]
        layout = setting.layout()
        self.env = GridRooms(layout, setting.max_steps)
        self.train_starts, self.held = split_starts(setting, cfg.heldout_fraction,
                                                    cfg.eval_size)
        torch.manual_seed(seed)  # same initial weights for every arm of a seed
        self.policy = Policy(self.env.obs_dim, self.env.num_actions, cfg.hidden)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
        self.start_rng = random.Random(f"starts:{env_name}:{seed}")  # same starts per arm
        self.sample_rng = np.random.default_rng([seed, 1])
        self.timings = Timings(("rollout", "advantages", "graph_build", "graph_http",
                                "graph_parse", "update", "eval"))
        self.train: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.graph_calls = 0

    def evaluate(self, nominal: int, env_steps: int, k: int) -> dict[str, Any]:
        with self.timings.timed("eval"):
            rng = np.random.default_rng([EVAL_SEED, k])
            ro = collect(self.policy, self.env, self.held, rng)
            gr = collect(self.policy, self.env, self.held, rng, greedy=True)
        ok = ro.success
        rec = {
            "step": nominal,
            "env_steps": env_steps,
            "success": _r(ok.mean()),
            # mean actions to reach the goal, over the episodes that reached it
            "steps_to_goal": _r(ro.length[ok].mean(), 2) if ok.any() else None,
            # mean episode length, failures counted at their end (step limit or window)
            "length": _r(ro.length.mean(), 2),
            "greedy_success": _r(gr.success.mean()),
            "greedy_steps_to_goal": (_r(gr.length[gr.success].mean(), 2)
                                     if gr.success.any() else None),
        }
        log.info("[%s] eval at %d env steps: success %.3f (greedy %.3f), steps to goal %s",
                 self.name, env_steps, rec["success"], rec["greedy_success"],
                 rec["steps_to_goal"])
        return rec

    def update(self, it: int) -> dict[str, Any]:
        cfg, G = self.cfg, self.cfg.group_size
        t0 = time.perf_counter()
        picked = self.start_rng.sample(self.train_starts, cfg.groups)
        batch = [s for s in picked for _ in range(G)]
        with self.timings.timed("rollout"):
            ro = collect(self.policy, self.env, batch, self.sample_rng,
                         record_keys=self.arm.startswith("rewardflow"))
        rec: dict[str, Any] = {}
        with self.timings.timed("advantages"):
            base = outcome_advantages(ro, G)
            if self.arm == "outcome":
                adv = base
            elif self.arm == "mc":
                adv = mc_advantages(ro, G, cfg.mc_gamma)
            else:
                ans = graph_advantages(self.client, ro, G, cfg.gamma, cfg.step_weight,
                                       tag=f"{self.name}/u{it}")
                self.graph_calls += 1
                for k, v in ans.timings.items():
                    self.timings[f"graph_{k}"] += v
                adv = ans.advantages
                if self.arm == "rewardflow-gamma":
                    adv = discounted_step_advantages(ans, ro, G, cfg.gamma, cfg.step_weight)
                alive = ro.alive
                rec.update({
                    "graph_nodes": _r(np.mean(ans.num_nodes), 1),
                    "graph_edges": _r(np.mean(ans.num_edges), 1),
                    # the service's episode term is the outcome arm's advantage
                    "episode_adv_mismatch": _r(np.abs(ans.episode_advantages - (
                        ro.reward - np.repeat(ro.reward.reshape(-1, G).mean(1), G))).max(), 6),
                    "step_adv_nonzero": _r((np.abs(ans.step_advantages[alive]) > 1e-9).mean()),
                    "value_mean": _r(ans.values[alive].mean()),
                })
        alive = ro.alive
        with self.timings.timed("update"):
            loss = policy_loss(self.policy, ro, adv)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                             cfg.grad_clip))
            self.opt.step()
        g = ro.success.reshape(-1, G)
        rec = {
            "update": it,
            "env_steps": ro.env_steps,
            "success": _r(ro.success.mean()),
            "groups_with_success": _r(g.any(axis=1).mean()),
            "mixed_groups": _r((g.any(axis=1) & ~g.all(axis=1)).mean()),
            "length": _r(ro.length.mean(), 2),
            # what the policy does: no-op examines (self-loops) and takes (one right object,
            # the rest traps), as fractions of the steps taken
            "examine": _r((ro.actions[alive] == EXAMINE).mean()),
            "take": _r((ro.actions[alive] == TAKE).mean()),
            # mean |applied advantage - outcome-only advantage| over the steps taken
            "adv_vs_outcome": _r(np.abs(adv - base)[alive].mean()),
            "adv_abs": _r(np.abs(adv[alive]).mean()),
            "loss": _r(float(loss.detach()), 5),
            "grad_norm": _r(grad_norm),
            **rec,
            "seconds": _r(time.perf_counter() - t0),
        }
        return rec

    def run(self, on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        t_run = time.perf_counter()
        c_run = time.process_time()
        cps = self.cfg.checkpoints(self.env_name)
        budget = cps[-1]
        self.evals.append(self.evaluate(0, 0, 0))
        env_steps, it, k = 0, 0, 1
        while env_steps < budget:
            it += 1
            rec = self.update(it)
            env_steps += rec["env_steps"]
            rec["env_steps"] = env_steps
            self.train.append(rec)
            if on_update is not None:
                on_update(rec)
            if env_steps >= cps[k]:
                while k < len(cps) - 1 and env_steps >= cps[k + 1]:
                    k += 1  # an update past several checkpoints: skip to the last one crossed
                self.evals.append(self.evaluate(cps[k], env_steps, k))
                k += 1
        return {
            "env": self.env_name,
            "arm": self.arm,
            "seed": self.seed,
            "updates": it,
            "env_steps": env_steps,
            "graph_calls": self.graph_calls,
            "train": self.train,
            "eval": self.evals,
            "timings": self.timings.rounded(),
            "seconds": round(time.perf_counter() - t_run, 3),
            "cpu_seconds": round(time.process_time() - c_run, 3),  # the trainer's CPU time
        }
