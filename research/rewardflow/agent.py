"""The policy (a small MLP over observations, no pretrained weights) and batched rollouts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from research.envs.grid_rooms import GridRooms


class Policy(nn.Module):
    """obs -> hidden -> hidden -> action logits (tanh); invalid actions are masked out."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, num_actions),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)  # start uniform over the valid actions
        nn.init.zeros_(last.bias)

    def log_probs(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.net(obs).masked_fill(~mask, -1e9)
        return torch.log_softmax(logits, dim=-1)


@dataclass
class Rollouts:
    """A batch of episodes stepped together, time-major: index [t, episode]."""

    starts: list[tuple[int, int, int]]
    obs: np.ndarray  # [T, B, obs_dim] float32
    mask: np.ndarray  # [T, B, A] bool: valid actions
    actions: np.ndarray  # [T, B] int64
    alive: np.ndarray  # [T, B] bool: the episode acted at step t
    keys: list[list[str]] | None  # [T + 1][B] state strings (recorded on request)
    length: np.ndarray  # [B] actions taken
    success: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool
    reward: np.ndarray  # [B] the final reward (the only non-zero reward of the task)

    @property
    def env_steps(self) -> int:
        return int(self.length.sum())


@torch.no_grad()
def collect(
    policy: Policy,
    env: GridRooms,
    starts: list[tuple[int, int, int]],
    rng: np.random.Generator,
    greedy: bool = False,
    record_keys: bool = False,
) -> Rollouts:
    """Run every start to the end (success, window or step limit) with the current policy."""
    env.reset(starts)
    obs_l, mask_l, act_l, alive_l = [], [], [], []
    keys = [env.state_keys()] if record_keys else None
    reward = np.zeros(env.batch)
    while not env.done.all():
        obs, mask = env.observation(), env.mask()
        alive = ~env.done
        mask_t = torch.from_numpy(mask | ~alive[:, None])  # finished rows: any action, ignored
        logp = policy.log_probs(torch.from_numpy(obs), mask_t).numpy()
        if greedy:
            a = logp.argmax(axis=1)
        else:
            p = np.exp(logp.astype(np.float64))
            cdf = np.cumsum(p, axis=1)
            u = rng.random((env.batch, 1)) * cdf[:, -1:]
            a = np.minimum((u > cdf).sum(axis=1), env.num_actions - 1)
            a = np.where(mask[np.arange(env.batch), a] | ~alive, a, logp.argmax(axis=1))
        reward += env.step(a)
        obs_l.append(obs)
        mask_l.append(mask)
        act_l.append(a)
        alive_l.append(alive)
        if keys is not None:
            keys.append(env.state_keys())
    return Rollouts(
        starts=list(starts),
        obs=np.stack(obs_l),
        mask=np.stack(mask_l),
        actions=np.stack(act_l),
        alive=np.stack(alive_l),
        keys=keys,
        length=env.t.copy(),
        success=env.success.copy(),
        truncated=env.truncated.copy(),
        reward=reward,
    )


def policy_loss(policy: Policy, ro: Rollouts, advantages: np.ndarray) -> torch.Tensor:
    """-mean over every step taken of A_t * log pi(a_t | s_t) (advantages [T, B])."""
    alive = ro.alive
    obs = torch.from_numpy(ro.obs[alive])
    mask = torch.from_numpy(ro.mask[alive])
    act = torch.from_numpy(ro.actions[alive])
    adv = torch.from_numpy(advantages[alive].astype(np.float32))
    logp = policy.log_probs(obs, mask).gather(1, act[:, None]).squeeze(1)
    return -(adv * logp).mean()
