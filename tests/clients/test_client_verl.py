"""verl 0.9.x, for real: verl's own `RewardLoopWorker` loads `FlowfieldRewardManager` the way
`reward.reward_manager.source=importlib` does and scores real `DataProto`s against the running
service; verl's own `AgentLoopWorker` runs validation and training batches built from verl
`RLHFDataset`s the way the legacy trainer builds them, and only the training rollouts reach
/v1/update; verl's `compute_advantage` (legacy trainer) runs the registered `flowfield_grpo`
estimator on a batch assembled the way verl assembles it, and its token advantages are the ones
the service computes itself (`return_advantages`).

verl is an optional extra: without it the test is skipped locally and fails in CI (CI=true),
where scripts/test.sh installs it (`pip install --no-deps verl==0.9.1` and its import deps:
verl pins an older transformers than the rest of the suite uses).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from client_server import DEMO_POLICY, REPO, wrong_answer
from flowfield_client import FlowfieldClient, Sample
from flowfield_client.adapters.verl import flowfield_grpo_advantage

from flowfield.demo.task import Problem, expert_solution, parse_prompt

if not os.environ.get("CI"):
    pytest.importorskip("verl")

from omegaconf import OmegaConf, open_dict  # noqa: E402 - verl's config library
from tensordict import TensorDict  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.agent_loop.agent_loop import (  # noqa: E402
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    AgentLoopWorker,
    register,
)
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import ray_trainer  # noqa: E402 - fit() calls ray_trainer.compute_advantage
from verl.trainer.ppo.utils import create_rl_dataset  # noqa: E402
from verl.utils.dataset.rl_dataset import collate_fn  # noqa: E402

# slow lane: verl's own reward loop and agent-loop workers against a live server
pytestmark = pytest.mark.slow

VERIFIER = str(REPO / "examples" / "trainers" / "verl_flowfield_reward.py")


def problem(i: int) -> Problem:
    return Problem(5000 + 37 * i, 2000 + 53 * i)


def verl_config(url: str, **reward_kwargs):
    """verl's full default PPO config (the generated one main_ppo composes), with the reward
    settings the docs give: the manager from the package, the demo verifier from its file."""
    import verl

    cfg = OmegaConf.load(Path(verl.__file__).parent / "trainer/config/_generated_ppo_trainer.yaml")
    with open_dict(cfg):
        cfg.actor_rollout_ref.model.path = DEMO_POLICY
        cfg.reward.reward_manager.source = "importlib"
        cfg.reward.reward_manager.name = "FlowfieldRewardManager"
        cfg.reward.reward_manager.module.path = "pkg://flowfield_client.adapters.verl"
        cfg.reward.custom_reward_function.path = VERIFIER
        cfg.reward.custom_reward_function.name = "compute_score"
        cfg.reward.reward_kwargs = {"flowfield_url": url, **reward_kwargs}
    return cfg


def rollouts(tok, n_groups: int = 2, n: int = 4):
    """(prompt ids, response ids ending in EOS, answer, uid) per rollout; in every group the
    odd members are wrong, so the verifier accepts half."""
    out = []
    for g in range(n_groups):
        p = problem(g)
        for k in range(n):
            text = expert_solution(p) if k % 2 == 0 else wrong_answer(expert_solution(p))
            out.append((tok(p.prompt, add_special_tokens=False)["input_ids"],
                        tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
                        p.answer, f"q{g}"))
    return out


def agent_loop_item(prompt_ids, response_ids, answer) -> DataProto:
    """One sample as verl's agent loop hands it to a reward-loop worker (unpadded)."""
    prompts = torch.tensor([prompt_ids])
    responses = torch.tensor([response_ids])
    input_ids = torch.cat([prompts, responses], dim=1)
    batch = TensorDict({"prompts": prompts, "responses": responses, "input_ids": input_ids,
                        "attention_mask": torch.ones_like(input_ids)}, batch_size=1)
    non_tensor = {"data_source": np.array(["demo-arith"]),
                  "reward_model": np.array([{"ground_truth": str(answer)}]),
                  "extra_info": np.array([{"index": 0}])}
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def padded_batch(rows, p_len: int = 24, r_len: int = 64, pad: int = 0) -> DataProto:
    """The rollouts as one verl batch: prompts left-padded, responses right-padded."""
    b = len(rows)
    prompts = torch.full((b, p_len), pad)
    responses = torch.full((b, r_len), pad)
    mask = torch.zeros((b, p_len + r_len), dtype=torch.long)
    for i, (pi, ri, _, _) in enumerate(rows):
        prompts[i, p_len - len(pi):] = torch.tensor(pi)
        responses[i, : len(ri)] = torch.tensor(ri)
        mask[i, p_len - len(pi): p_len] = 1
        mask[i, p_len: p_len + len(ri)] = 1
    batch = TensorDict({"prompts": prompts, "responses": responses,
                        "input_ids": torch.cat([prompts, responses], 1), "attention_mask": mask,
                        "response_mask": mask[:, p_len:]}, batch_size=b)
    non_tensor = {"data_source": np.array(["demo-arith"] * b),
                  "reward_model": np.array([{"ground_truth": str(a)} for _, _, a, _ in rows]),
                  "extra_info": np.array([{"index": i} for i in range(b)]),
                  "uid": np.array([u for *_, u in rows], dtype=object)}
    return DataProto(batch=batch, non_tensor_batch=non_tensor)


def score_all(worker: RewardLoopWorker, data: DataProto) -> list[dict]:
    """verl's own batch entry point: one concurrent run_single per sample."""
    return worker.loop.run_until_complete(worker.compute_score_batch(data))


def reference(url: str, rows, verdicts=None, **options):
    with FlowfieldClient(url) as ff:
        return ff.score([Sample(prompt_ids=p, response_ids=r[:-1], group_id=u,
                                reward=None if verdicts is None else verdicts[i])
                         for i, (p, r, _, u) in enumerate(rows)], **options)


def test_reward_loop_worker_scores_like_the_service(ff_server, tok):
    ff_server.wait_quiet()
    worker = RewardLoopWorker(verl_config(ff_server.url, push_accepted=False))
    manager = worker.reward_manager  # verl resolved and built it from the config
    assert type(manager).__name__ == "FlowfieldRewardManager"
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
    assert isinstance(manager, RewardManagerBase)

    rows = rollouts(tok, n_groups=2, n=4)
    ref = reference(ff_server.url, rows)
    verdicts = [1.0 if k % 2 == 0 else 0.0 for _ in range(2) for k in range(4)]
    # the agent-loop path: each sample alone, unpadded, all at once
    singles = [agent_loop_item(p, r, a) for p, r, a, _ in rows]
    outs = worker.loop.run_until_complete(_gather(worker, singles))
    # the batch path: one padded DataProto, split by verl into one-sample slices
    batched = score_all(worker, padded_batch(rows))
    for out in (outs, batched):
        assert [o["reward_extra_info"]["flow_version"] for o in out] == [ref.flow_version] * 8
        assert [o["reward_extra_info"]["acc"] for o in out] == verdicts
        assert [o["reward_extra_info"]["flow_return"] for o in out] == pytest.approx(
            ref.flow_returns, abs=1e-6)  # EOS stripped: the service scored the same tokens
        assert [o["reward_score"] for o in out] == pytest.approx(
            [v + f for v, f in zip(verdicts, ref.flow_returns)], abs=1e-6)
        assert "flowfield_token_rewards" not in out[0]["reward_extra_info"]


def test_concurrent_samples_push_under_distinct_update_ids(ff_server, tok):
    ff_server.wait_quiet()
    trained0 = ff_server.flow()["samples_trained"]
    worker = RewardLoopWorker(verl_config(ff_server.url))
    rows = rollouts(tok, n_groups=4, n=4)
    outs = worker.loop.run_until_complete(
        _gather(worker, [agent_loop_item(p, r, a) for p, r, a, _ in rows]))
    for o in outs:
        info = o["reward_extra_info"]
        assert o["reward_score"] == pytest.approx(info["acc"] + info["flow_return"], abs=1e-9)
    # 16 concurrent run_single calls, 8 accepted: 8 updates, 8 ids, every sample queued once
    ups = worker.reward_manager.core.update_results
    assert len(ups) == 8 and len({u.update_id for u in ups}) == 8
    assert all(u.accepted == 1 and not u.duplicate for u in ups)
    assert ff_server.wait_quiet()["samples_trained"] == trained0 + 8


async def _gather(worker, items):
    import asyncio

    return await asyncio.gather(*(worker.compute_score(d) for d in items))


def test_flow_only_never_calls_the_verifier(ff_server, tok, tmp_path):
    bad = tmp_path / "raising_verifier.py"
    bad.write_text("def compute_score(**kw):\n    raise AssertionError('called')\n")
    cfg = verl_config(ff_server.url, add_verifier=False, push_accepted=False, flow_weight=10.0)
    with open_dict(cfg):
        cfg.reward.custom_reward_function.path = str(bad)
    worker = RewardLoopWorker(cfg)
    rows = rollouts(tok, n_groups=1, n=2)
    out = score_all(worker, padded_batch(rows))
    ref = reference(ff_server.url, rows)
    assert [o["reward_score"] for o in out] == pytest.approx(
        [10 * f for f in ref.flow_returns], abs=1e-5)


def test_dense_token_rewards_reach_grpo_advantages(ff_server, tok):
    worker = RewardLoopWorker(verl_config(ff_server.url, dense=True, push_accepted=False))
    rows = rollouts(tok, n_groups=2, n=4)
    data = padded_batch(rows)
    outs = score_all(worker, data)
    verdicts = [o["reward_extra_info"]["acc"] for o in outs]
    assert [o["reward_score"] for o in outs] == verdicts  # dense: the scalar is the verifier's

    # assemble the trainer's batch as verl does: rm_scores from the scalars (the manager's
    # classmethod), extra info stacked with numpy (ragged token lists would not stack)
    scores = [o["reward_score"] for o in outs]
    rm = type(worker.reward_manager).assemble_rm_scores(data, scores)
    infos = [o["reward_extra_info"] for o in outs]
    for key in infos[0]:
        data.non_tensor_batch[key] = np.array([info[key] for info in infos])
    data.batch["token_level_scores"] = rm
    data.batch["token_level_rewards"] = rm
    # what RayPPOTrainer.fit calls: the module's compute_advantage, which the adapter made pass
    # the batch to flowfield_grpo (verl's own passes it to GDPO only)
    out = ray_trainer.compute_advantage(data, adv_estimator="flowfield_grpo", config=AlgoConfig())
    adv = out.batch["advantages"]
    direct, _ = flowfield_grpo_advantage(
        token_level_rewards=rm, response_mask=data.batch["response_mask"],
        index=data.non_tensor_batch["uid"], config=AlgoConfig(),
        non_tensor_batch=data.non_tensor_batch)
    assert torch.equal(direct, adv)
    # verl's function as it ships calls the estimator without the batch: the estimator does not
    # look for it elsewhere (no peeking at its caller), it says what to do
    with pytest.raises(RuntimeError, match="non_tensor_batch"):
        ray_trainer.compute_advantage.__wrapped__(
            data, adv_estimator="flowfield_grpo", config=AlgoConfig())

    ref = reference(ff_server.url, rows, verdicts, return_advantages=True)
    mask = data.batch["response_mask"]
    for i, (res, (_, r, _, _)) in enumerate(zip(ref, rows)):
        n = len(r) - 1  # scored tokens; the EOS follows
        assert adv[i, :n].tolist() == pytest.approx(res.advantages, abs=2e-4)
        tokens = json.loads(data.non_tensor_batch["flowfield_token_rewards"][i])
        assert tokens == pytest.approx(res.token_rewards, abs=1e-6)
        assert adv[i, n].item() == pytest.approx(res.advantages[0] - sum(res.token_rewards),
                                                 abs=2e-4)  # the EOS: outcome part only
        assert not adv[i][mask[i] == 0].any()
    # the dense part is real: advantages vary along a response, GRPO's alone would not
    assert adv[0, : len(rows[0][1]) - 1].std() > 0

    # without the token rewards in the batch (verl's v1 trainer) it says what to do
    del data.non_tensor_batch["flowfield_token_rewards"]
    with pytest.raises(RuntimeError, match="use_v1=false"):
        ray_trainer.compute_advantage(data, adv_estimator="flowfield_grpo", config=AlgoConfig())
    # other estimators go to verl's compute_advantage untouched
    data.batch["advantages"] = torch.zeros_like(adv)
    out = ray_trainer.compute_advantage(data, adv_estimator="rloo", config=AlgoConfig())
    assert out.batch["advantages"].abs().sum() > 0


# ---- validation rollouts: verl's agent loop, from dataset files to the reward manager ----------


@register("flowfield_expert")
class ExpertAgentLoop(AgentLoopBase):
    """A verl agent loop without an LLM: it answers each demo prompt with the expert solution
    (and EOS), so the verifier accepts every rollout. verl instantiates it by name
    (`rollout.agent.default_agent_loop`) and does everything else itself."""

    async def run(self, sampling_params, **kwargs) -> AgentLoopOutput:
        text = kwargs["raw_prompt"][-1]["content"]
        prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        response_ids = self.tokenizer(expert_solution(parse_prompt(text)),
                                      add_special_tokens=False)["input_ids"]
        response_ids.append(self.tokenizer.eos_token_id)
        return AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids,
                               response_mask=[1] * len(response_ids), num_turns=2,
                               metrics=AgentLoopMetrics())


def write_dataset(path: Path, problems) -> str:
    """A verl dataset file as verl's data preprocessing writes one (chat prompt, ground truth,
    extra info); no `split` in the extra info: the manager must recognise validation rows by
    their prompt."""
    import datasets

    datasets.Dataset.from_list([
        {"data_source": "demo-arith", "prompt": [{"role": "user", "content": p.prompt}],
         "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(p.answer)},
         "extra_info": {"index": i}}
        for i, p in enumerate(problems)]).to_parquet(str(path))
    return str(path)


def trainer_batch(cfg, files: str, tok, validate: bool) -> DataProto:
    """The generation batch RayPPOTrainer builds: `_validate` (meta_info "validate") or `fit`
    (rollout.n repeats), from verl's dataset class and collate_fn."""
    ds = create_rl_dataset(files, cfg.data, tok, None)
    batch = DataProto.from_single_dict(collate_fn([ds[i] for i in range(len(ds))]))
    batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch))],
                                             dtype=object)
    gen = ray_trainer.RayPPOTrainer._get_gen_batch(None, batch)  # uses no trainer state
    if validate:
        gen.meta_info = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                         "recompute_log_prob": False, "do_sample": False, "validate": True,
                         "global_steps": 0}
        return gen
    gen.meta_info["global_steps"] = 1
    return gen.repeat(repeat_times=cfg.actor_rollout_ref.rollout.n, interleave=True)


def test_validation_rollouts_are_scored_but_not_pushed(ff_server, tok, tmp_path):
    train = write_dataset(tmp_path / "train.parquet", [problem(10 + i) for i in range(3)])
    val = write_dataset(tmp_path / "test.parquet", [problem(20 + i) for i in range(2)])

    def worlds(**reward_kwargs):
        cfg = verl_config(ff_server.url, **reward_kwargs)
        with open_dict(cfg):
            cfg.data.train_files, cfg.data.val_files = train, val
            cfg.actor_rollout_ref.rollout.name = "vllm"  # mandatory; no server is started
            cfg.actor_rollout_ref.rollout.n = 2
            cfg.actor_rollout_ref.rollout.agent.default_agent_loop = "flowfield_expert"
        reward_worker = RewardLoopWorker(cfg)
        handle = SimpleNamespace(compute_score=SimpleNamespace(remote=reward_worker.compute_score))
        # verl's agent-loop worker, streaming each rollout to the reward worker (a Ray actor
        # handle in verl: `compute_score.remote(data)`, awaited)
        agent = AgentLoopWorker(cfg, llm_client=None, reward_loop_worker_handles=[handle])
        return cfg, reward_worker, agent

    def generate(agent, reward_worker, batch):
        return reward_worker.loop.run_until_complete(agent.generate_sequences(batch))

    ff_server.wait_quiet()
    trained0 = ff_server.flow()["samples_trained"]
    cfg, reward_worker, agent = worlds()
    core = reward_worker.reward_manager.core
    assert len(core.validation_prompts) == 2  # read from data.val_files

    # _validate: two accepted rollouts, scored (reward = verifier + flow), nothing pushed
    out = generate(agent, reward_worker, trainer_batch(cfg, val, tok, validate=True))
    assert out.non_tensor_batch["acc"].tolist() == [1.0, 1.0]
    assert out.batch["rm_scores"].sum(-1).tolist() == pytest.approx(
        (1.0 + out.non_tensor_batch["flow_return"]).tolist(), abs=1e-5)
    assert core.update_results == [] and core.validation_not_pushed == 2
    assert ff_server.wait_quiet()["samples_trained"] == trained0

    # fit: six accepted rollouts, all pushed
    out = generate(agent, reward_worker, trainer_batch(cfg, train, tok, validate=False))
    assert out.non_tensor_batch["acc"].tolist() == [1.0] * 6
    assert len(core.update_results) == 6 and core.validation_not_pushed == 2
    assert ff_server.wait_quiet()["samples_trained"] == trained0 + 6

    # asked for: push_validation pushes the validation rollouts too
    cfg, reward_worker, agent = worlds(push_validation=True)
    generate(agent, reward_worker, trainer_batch(cfg, val, tok, validate=True))
    assert len(reward_worker.reward_manager.core.update_results) == 2
    assert ff_server.wait_quiet()["samples_trained"] == trained0 + 8


def test_validation_marks_other_than_the_prompt(ff_server, tok):
    """verl's validate flag in meta_info, and verl's preprocessing `extra_info["split"]`."""
    worker = RewardLoopWorker(verl_config(ff_server.url))  # data.val_files: verl's default path
    core = worker.reward_manager.core
    p, r, a, _ = rollouts(tok, n_groups=1, n=1)[0]
    item = agent_loop_item(p, r, a)
    assert not core.is_validation(item, item[0])
    item.meta_info["validate"] = True
    assert core.is_validation(item, item[0])
    for split, expected in (("test", True), ("validation", True), ("train", False)):
        item = agent_loop_item(p, r, a)
        item.non_tensor_batch["extra_info"] = np.array([{"index": 0, "split": split}])
        assert core.is_validation(item, item[0]) is expected
