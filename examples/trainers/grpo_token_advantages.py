"""GRPO with flowfield's token-level advantages (the RLFR way), in plain PyTorch.

TRL, OpenRLHF and verl reduce rewards to one scalar per completion in GRPO, so the dense flow
rewards only count through their sum. A trainer that takes per-token advantages can use the
service's instead: with `return_advantages=True` (and the verifier reward and group of every
sample), /v1/score returns for each response token

    A_t = (R - mean_group(R)) / (std_group(R) + 1e-9)  +  sum_{t' >= t} r_t'

the group-normalised outcome plus the reward-to-go of the flow token rewards r_t (RLFR).

Each step: sample `--group-size` rollouts for each of `--groups` demo problems from the policy,
verify them, score them with advantages, take one policy-gradient step on
    loss = -sum_t A_t * log pi(y_t | x, y_<t) / (number of response tokens)
(on-policy, so the PPO ratio is 1 and needs no clipping), and push the accepted rollouts to
/v1/update. `--sync-policy-every N` saves the policy and has the service reload it
(/v1/policy): RLFR's latents are the current policy's hidden states. The policy and the
service must share a filesystem for that.

    flowfield serve &
    python examples/trainers/grpo_token_advantages.py --url http://127.0.0.1:8000 --steps 50
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from flowfield_client import FlowfieldClient, Sample
from transformers import AutoModelForCausalLM, AutoTokenizer

from flowfield.demo.policy import Rollout, sample_rollouts
from flowfield.demo.task import sample_problems

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "flowfield" / "demo" / "assets" / "policy"


def policy_gradient_loss(
    model: torch.nn.Module, rollouts: list[Rollout], advantages: list[list[float]], pad_id: int
) -> torch.Tensor:
    """-mean over response tokens of A_t * log pi(y_t | prefix), on a right-padded batch."""
    seqs = [r.prompt_ids + r.response_ids for r in rollouts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    adv = torch.zeros((len(seqs), width))  # advantage of the token at each position
    is_resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (r, s, a) in enumerate(zip(rollouts, seqs, advantages)):
        p = len(r.prompt_ids)
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        adv[i, p : p + len(a)] = torch.tensor(a)
        is_resp[i, p : len(s)] = True
    # logits at position j predict the token at j + 1
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    adv, is_resp = adv[:, 1:], is_resp[:, 1:]
    return -(adv * logp)[is_resp].sum() / is_resp.sum().clamp(min=1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="flowfield service URL(s)")
    ap.add_argument("--model", default=str(DEMO_POLICY), help="policy directory")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--groups", type=int, default=4, help="problems per step")
    ap.add_argument("--group-size", type=int, default=8, help="rollouts per problem")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--sync-policy-every", type=int, default=0,
                    help="save the policy and reload it in the service every N steps (0: never)")
    ap.add_argument("--output-dir", default="runs/grpo-token-advantages")
    ap.add_argument("--report", default=None, help="write a JSON report here")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    run = uuid.uuid4().hex[:8]
    history: list[dict[str, Any]] = []

    with FlowfieldClient(args.url) as ff:
        for step in range(1, args.steps + 1):
            t0 = time.monotonic()
            problems = sample_problems(args.groups, seed=args.seed * 100_003 + step)
            batch = [p for p in problems for _ in range(args.group_size)]
            rollouts = sample_rollouts(model, tok, batch, temperature=args.temperature,
                                       seed=args.seed * 100_003 + step)
            samples = [
                Sample(id=f"{step}-{i}", group_id=f"{step}-{i // args.group_size}",
                       prompt_ids=r.prompt_ids, response_ids=r.response_ids, reward=r.reward)
                for i, r in enumerate(rollouts)
            ]
            scored = ff.score(samples, return_advantages=True)
            keep = [i for i, res in enumerate(scored) if res.ok]  # empty responses are errors

            model.train()
            loss = policy_gradient_loss(
                model, [rollouts[i] for i in keep], [scored[i].advantages or [] for i in keep],
                tok.pad_token_id,
            )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.eval()

            accepted = [s for s in samples if s.reward is not None and s.reward >= 1.0]
            up = ff.update(accepted, update_id=f"grpo-{run}-{step}") if accepted else None
            if args.sync_policy_every and step % args.sync_policy_every == 0:
                out = Path(args.output_dir) / f"step-{step}"
                model.save_pretrained(out)
                tok.save_pretrained(out)
                ff.reload_policy(str(out.resolve()), revision=f"{run}-step-{step}")
            rec = {
                "step": step,
                "accuracy": sum(r.reward for r in rollouts) / len(rollouts),
                "mean_flow_return": sum(scored[i].flow_return or 0.0 for i in keep)
                / max(1, len(keep)),
                "loss": loss.item(),
                "flow_version": scored.flow_version,
                "pushed": len(accepted),
                "accepted": up.accepted if up else 0,
                "seconds": round(time.monotonic() - t0, 2),
            }
            history.append(rec)
            print(json.dumps(rec))
        final = ff.flow_info()
    report = {"history": history, "final_flow_version": final.flow_version,
              "encoder": final.encoder}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
