"""TRL's GRPOTrainer on the demo task, with flowfield flow rewards as a reward function.

The policy (flowfield/demo/assets/policy, the model the service encodes with) learns 4-digit
addition. Two reward functions, summed by TRL: the verifier (1 for the right answer) and the
flowfield adapter, which scores every completion on /v1/score (its flow return) and pushes
the completions the verifier accepted to /v1/update, so the service refines its flow during
the run.

    flowfield serve &                                   # demo policy and flow on :8000
    pip install "./clients/flowfield-client[trl]"
    python examples/trainers/trl_grpo_demo.py --url http://127.0.0.1:8000 --max-steps 20

CPU is fine: the policy has 0.8M parameters. `--report out.json` writes what happened
(reward-function stats, flow version per step, TRL's log history).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from flowfield_client import FlowfieldClient
from flowfield_client.adapters.trl import flowfield_reward_func
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from flowfield.demo.task import parse_answer, sample_problems

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "flowfield" / "demo" / "assets" / "policy"


def accuracy(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """The verifier: 1.0 when the completion's final answer is the sum in the prompt."""
    out = []
    for prompt, completion in zip(prompts, completions):
        a, b = prompt.strip().removeprefix("Q:").split("+")
        out.append(1.0 if parse_answer(completion) == int(a) + int(b) else 0.0)
    return out


class FlowVersionCallback(TrainerCallback):
    """Records the service's flow version after every optimiser step."""

    def __init__(self, client: FlowfieldClient) -> None:
        self.client = client
        self.versions: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.versions.append(self.client.flow_info().flow_version)


def wait_for_version(client: FlowfieldClient, above: int, timeout: float) -> int:
    """The flow version once it exceeds `above` (the learner trains asynchronously)."""
    deadline = time.monotonic() + timeout
    v = client.flow_info().flow_version
    while v <= above and time.monotonic() < deadline:
        time.sleep(0.5)
        v = client.flow_info().flow_version
    return v


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="flowfield service URL(s)")
    ap.add_argument("--model", default=str(DEMO_POLICY), help="policy directory")
    ap.add_argument("--max-steps", type=int, default=20)
    ap.add_argument("--num-generations", type=int, default=4, help="completions per prompt")
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--flow-weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default="runs/trl-grpo-demo")
    ap.add_argument("--report", default=None, help="write a JSON report here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for this tiny model on shared cores)")
    ap.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait after training for the learner's next version")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.padding_side = "left"  # GRPOTrainer generates from left-padded prompts
    model = AutoModelForCausalLM.from_pretrained(args.model)
    n_prompts = args.max_steps * args.prompts_per_step
    problems = sample_problems(n_prompts, seed=10_000 + args.seed)
    dataset = Dataset.from_list([{"prompt": p.prompt} for p in problems])  # standard format

    client = FlowfieldClient(args.url)
    start_version = client.flow_info().flow_version
    flow = flowfield_reward_func(
        args.url,
        verifier=accuracy,  # decides what is pushed to /update
        flow_weight=args.flow_weight,
    )
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.num_generations * args.prompts_per_step,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        learning_rate=args.lr,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    versions = FlowVersionCallback(client)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[accuracy, flow],  # TRL sums them (GRPOConfig.reward_weights to weigh)
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[versions],
    )
    # send the prompt ids the trainer generated from and strip its EOS ids (chat template,
    # template kwargs, tools and EOS ids come from the trainer)
    flow.adapter.bind(trainer)  # type: ignore[attr-defined]
    t0 = time.monotonic()
    trainer.train()
    train_s = time.monotonic() - t0
    end_version = wait_for_version(client, start_version, args.wait)
    stats = flow.adapter.stats  # type: ignore[attr-defined]
    report = {
        "flow_version_start": start_version,
        "flow_version_end": end_version,
        "flow_version_per_step": versions.versions,
        "train_seconds": round(train_s, 2),
        "eos_token_id": tokenizer.eos_token_id,
        "reward_function": {
            "calls": stats.calls,
            "scored": stats.scored,
            "pushed": stats.pushed,
            "accepted": stats.accepted,
            "updates": stats.updates,
            "update_failures": stats.update_failures,
            "flow_versions_seen": stats.flow_versions,
            "sends_prompt_ids": flow.adapter.tokenizer is not None,  # type: ignore[attr-defined]
            "eos_token_ids": sorted(flow.adapter.eos_token_ids),  # type: ignore[attr-defined]
        },
        "log_history": trainer.state.log_history,
    }
    client.close()
    print(json.dumps({k: v for k, v in report.items() if k != "log_history"}, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
