"""Small builders for hand-made trajectories."""

from flowfield.graph import Step, Trajectory


def traj(tid, states, final, final_reward=0.0, success=False, truncated=False, rewards=None):
    rewards = rewards or [0.0] * len(states)
    steps = [Step(s, f"a{t}", r) for t, (s, r) in enumerate(zip(states, rewards, strict=True))]
    return Trajectory(tid, steps, final, final_reward, success, truncated)


def win(tid, states, final="done", reward=10.0):
    return traj(tid, states, final, reward, success=True)


def lose(tid, states, final="done"):
    return traj(tid, states, final, 0.0, success=False)
