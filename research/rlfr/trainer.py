"""One arm, one seed: GRPO on the demo task against a live flowfield service over HTTP.

The trainer is a client of the service exactly as a user's trainer would be
(`flowfield-client`, nothing in-process). Each step:

1. sample G rollouts for each of the step's prompts from the current policy and verify them;
2. POST them to /v1/score (all arms: the flow return is a diagnostic everywhere; the flow
   arms also ask for the token advantages);
3. flow arms with refinement: POST the verifier-accepted rollouts to /v1/update, so the
   service's learner refines the flow while the trainer takes its step;
4. one policy-gradient step with the arm's token advantages (shaping.py);
5. wait until the learner has published the step's samples, so the next step is scored by a
   flow that includes them. This makes a run reproducible (the flow version a step sees does
   not depend on timing), and the flow is never more than one step behind the rollouts;
6. every K steps: save the policy (save_pretrained) and POST its path and a new revision to
   /v1/policy, so rewards come from the current policy's latents;
7. every N steps: held-out greedy accuracy and T=1 pass@1 (evaluate.py).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import fmean
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from flowfield import defaults
from flowfield.demo.policy import Rollout, sample_rollouts
from flowfield.rewards import RewardOptions
from research.harness.common import Timings
from research.harness.service_process import ServiceProcess
from research.rlfr.arms import Arm
from research.rlfr.config import ExperimentConfig
from research.rlfr.evaluate import (
    GREEDY_TEMPERATURE,
    accuracy,
    heldout,
    pass_at_k,
    prompt_schedule,
    rollout_seed,
)
from research.rlfr.policy_gradient import (
    PolicyForward,
    ended,
    policy_forward,
    policy_gradient_loss,
)
from research.rlfr.shaping import (
    Shaped,
    logit_calibration,
    shape_arm,
    shuffle_seed,
)

log = logging.getLogger("research.experiments")

# the verifier reward of a correct answer = the service's accept threshold
ACCEPT = defaults.ACCEPT_THRESHOLD
LEARNER_BLOCK_MS = 100  # the learner trains as soon as a step's samples are in


def _mean(xs: list[float]) -> float | None:
    return fmean(xs) if xs else None


class LearnerTimeout(RuntimeError):
    pass


def wait_for_learner(client: Any, expected_trained: int, timeout_s: float) -> tuple[Any, float]:
    """Poll /v1/flow until the flow the service scores with has trained on
    `expected_trained` samples in total; returns (flow info, seconds waited)."""
    t0 = time.monotonic()
    delay = 0.02
    while True:
        info = client.flow_info()
        if info.samples_trained >= expected_trained:
            return info, time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise LearnerTimeout(
                f"the service's flow trained on {info.samples_trained} samples after "
                f"{timeout_s:.0f}s; expected {expected_trained} (pending {info.pending})"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class ArmSeedRun:
    """One arm and seed: the policy, its optimiser and its problems; `run()` does the rest.

    policy_dir / flow_dir: the start policy and flow (default: the config's); the runner
    passes private copies. `workdir` holds the service's checkpoints and log and the synced
    policies; it is created here and may be removed after the run.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        arm: Arm,
        seed: int,
        workdir: Path,
        policy_dir: Path | None = None,
        flow_dir: Path | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg, self.arm, self.seed = cfg, arm, seed
        self.policy_dir = Path(policy_dir or cfg.policy)
        self.flow_dir = Path(flow_dir or cfg.flow)
        self.workdir = Path(workdir)
        self.on_step = on_step
        self.name = f"{arm.name}-s{seed}"
        self.uid = f"{self.name}-{uuid.uuid4().hex[:8]}"  # update ids: unique per run
        torch.set_num_threads(cfg.threads)
        hf_logging.disable_progress_bar()  # a bar per save_pretrained would drown the log
        self.tok = AutoTokenizer.from_pretrained(self.policy_dir)
        self.model = AutoModelForCausalLM.from_pretrained(self.policy_dir).float()
        self.model.eval()  # no dropout in this model; eval() makes that explicit
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.schedule = prompt_schedule(seed, cfg.steps, cfg.prompts_per_step)
        self.seen = [p for step in self.schedule for p in step][: cfg.seen_size]
        self.held = heldout(cfg.split, cfg.eval_size)
        self.score_options = {
            "normalization": arm.normalization or cfg.normalization,
            "beta": cfg.beta,
            "threshold": cfg.threshold,
            "top_k": cfg.top_k,
        }
        # the trainer-side shaping options (logit arms, oracle: its own normalisation)
        self.logit_options = RewardOptions(
            arm.normalization or cfg.normalization, cfg.beta, cfg.threshold, cfg.top_k
        )
        self.calibration = (
            logit_calibration(self.model, self.tok, arm.signal)
            if arm.signal in ("entropy", "nll") and self.logit_options.normalization == "expert"
            else None
        )
        self.timings = Timings(
            ("sample", "score", "update", "policy_step", "learner_wait", "sync", "eval")
        )
        self.train: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.expected_trained = 0  # samples the service's flow has trained on, once caught up
        self._synced_dir: Path | None = None
        self._encoder_name = ""

    def service_settings(self) -> dict[str, object]:
        return {
            # one learner step per trainer step: the step's accepted samples fill one batch,
            # and the learner does not sit out its default 1 s wait for a fuller one
            "learner_batch": self.cfg.rollouts_per_step,
            "learner_block_ms": LEARNER_BLOCK_MS,
            "learner_lr": self.cfg.learner_lr,
        }

    # ---- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from flowfield_client import FlowfieldClient

        t_run = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        eval_steps = set(self.cfg.eval_steps())
        with (
            ServiceProcess(self.workdir / "service", self.policy_dir, self.flow_dir,
                           self.service_settings(), threads=self.cfg.service_threads) as svc,
            FlowfieldClient(svc.url) as ff,
        ):
            info0 = ff.flow_info()
            self._encoder_name = info0.encoder.split("@")[0]
            self.expected_trained = info0.samples_trained
            log.info("[%s] service %s ready in %.1fs: flow v%d, encoder %s", self.name,
                     svc.url, svc.start_seconds, info0.flow_version, info0.encoder)
            self.evals.append(self.evaluate(0))
            for step in range(1, self.cfg.steps + 1):
                rec = self.step(ff, step)
                self.train.append(rec)
                if self.on_step is not None:
                    self.on_step(rec)
                log.debug("[%s] step %d: %s", self.name, step, rec)
                if step in eval_steps:
                    self.evals.append(self.evaluate(step))
                    self._log_progress(step)
            info_end = ff.flow_info()
        return {
            "arm": self.arm.name,
            "signal": self.arm.signal,
            "update": self.arm.update,
            "seed": self.seed,
            "beta": self.cfg.beta,
            "normalization": self.score_options["normalization"],
            "shape_uniform_only": self.cfg.shape_uniform_only,
            "pass1_curve": [[e["step"], e["pass1"]] for e in self.evals],
            "train": self.train,
            "eval": self.evals,
            "service": {
                "start_seconds": round(svc.start_seconds, 3),
                "flow_version_start": info0.flow_version,
                "flow_version_end": info_end.flow_version,
                "samples_trained_start": info0.samples_trained,
                "samples_trained_end": info_end.samples_trained,
                "encoder_start": info0.encoder,
                "encoder_end": info_end.encoder,
                "log": str(svc.log_path),
            },
            "timings": self.timings.rounded(),
            "seconds": round(time.monotonic() - t_run, 3),
        }

    def step(self, ff: Any, step: int) -> dict[str, Any]:
        """Steps 1-6 of the module doc; returns the step's record."""
        from flowfield_client import Sample

        cfg = self.cfg
        t_step = time.monotonic()
        batch = [p for p in self.schedule[step - 1] for _ in range(cfg.group_size)]
        with self.timings.timed("sample"):
            rollouts: list[Rollout] = sample_rollouts(
                self.model, self.tok, batch, temperature=cfg.temperature,
                seed=rollout_seed(self.seed, step),
            )
        rewards = [r.reward for r in rollouts]
        group_ids = [f"{step}-{i // cfg.group_size}" for i in range(len(rollouts))]
        samples = [
            Sample(id=f"{step}-{i}", group_id=g, prompt_ids=r.prompt_ids,
                   response_ids=r.response_ids, reward=r.reward)
            for i, (r, g) in enumerate(zip(rollouts, group_ids))
        ]
        with self.timings.timed("score"):
            scored = ff.score(samples, return_advantages=self.arm.signal == "flow",
                              **self.score_options)
        pushed = accepted = 0
        if self.arm.update:  # before the policy step: the learner trains meanwhile
            with self.timings.timed("update"):
                pushed, accepted = self._push_accepted(ff, step, samples)

        with self.timings.timed("policy_step"):
            fwd = policy_forward(self.model, rollouts, self.tok.eos_token_id,
                                 self.tok.pad_token_id)
            shaped = self._shape(fwd, scored, rollouts, group_ids, step)
            loss = policy_gradient_loss(fwd.logp, shaped.advantages)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            )
            self.opt.step()

        waited = 0.0
        flow_version = scored.flow_version
        if accepted:
            with self.timings.timed("learner_wait"):
                info, waited = wait_for_learner(ff, self.expected_trained,
                                                cfg.learner_timeout_s)
            flow_version = info.flow_version
        synced = None
        if cfg.sync_every and step % cfg.sync_every == 0:
            with self.timings.timed("sync"):
                synced = self._sync_policy(ff, step)

        lengths = [len(r.response_ids) for r in rollouts]
        returns = [(s.flow_return, x >= ACCEPT) for s, x in zip(scored, rewards)
                   if s.ok and s.flow_return is not None]
        groups = [rewards[i : i + cfg.group_size] for i in range(0, len(rewards), cfg.group_size)]
        return {
            "step": step,
            "reward": fmean(rewards),  # training accuracy at the sampling temperature
            "mixed_groups": sum(0 < sum(g) < len(g) for g in groups) / len(groups),
            "response_length": fmean(lengths),
            "ended": fmean(float(ended(r)) for r in rollouts),
            "flow_return": _mean([f for f, _ in returns]),
            "flow_return_correct": _mean([f for f, ok in returns if ok]),
            "flow_return_incorrect": _mean([f for f, ok in returns if not ok]),
            "dense_return": fmean(shaped.dense_return),  # of the arm's own shaping
            "score_errors": len(scored.errors),
            "loss": float(loss.detach()),
            "grad_norm": grad_norm,
            "scored_flow_version": scored.flow_version,
            "encoder": scored.encoder,
            "flow_version": flow_version,
            "pushed": pushed,
            "accepted": accepted,
            "learner_wait_s": round(waited, 3),
            "synced_encoder": synced,
            "seconds": round(time.monotonic() - t_step, 3),
        }

    def _push_accepted(self, ff: Any, step: int, samples: list[Any]) -> tuple[int, int]:
        """POST the verifier-accepted rollouts to /v1/update; (pushed, accepted)."""
        good = [s for s in samples if (s.reward or 0.0) >= ACCEPT]
        if not good:
            return 0, 0
        up = ff.update(good, update_id=f"{self.uid}-step{step}")
        accepted = 0 if up.duplicate else up.accepted
        self.expected_trained += accepted
        return len(good), accepted

    def _shape(self, fwd: PolicyForward, scored: Any, rollouts: list[Rollout],
               group_ids: list[str], step: int) -> Shaped:
        flow = self.arm.signal == "flow"
        return shape_arm(
            self.arm.signal, self.logit_options, rollouts, group_ids, fwd=fwd,
            flow_token_rewards=[r.token_rewards if r.ok else None for r in scored],
            flow_advantages=[r.advantages for r in scored] if flow else None,
            flow_returns=[r.flow_return for r in scored],
            calibration=self.calibration, shuffle=shuffle_seed(self.seed, step),
            uniform=self.cfg.shape_uniform_only,
        )

    def _sync_policy(self, ff: Any, step: int) -> str:
        """save_pretrained, then POST /v1/policy; returns the service's new encoder label."""
        out = self.workdir / "policy" / f"step-{step:05d}"
        self.model.save_pretrained(out)
        self.tok.save_pretrained(out)
        res = ff.reload_policy(str(out.resolve()), revision=f"{self.name}-step{step}",
                               name=self._encoder_name)
        if self._synced_dir is not None:  # the service holds those weights in memory now
            shutil.rmtree(self._synced_dir, ignore_errors=True)
        self._synced_dir = out
        return res.encoder

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out greedy accuracy and T=1 pass@1, and greedy accuracy on seen prompts."""
        with self.timings.timed("eval"):
            t0 = time.monotonic()
            greedy = accuracy(self.model, self.tok, self.held, GREEDY_TEMPERATURE)
            pass1 = accuracy(self.model, self.tok, self.held, 1.0)
            seen = (accuracy(self.model, self.tok, self.seen, GREEDY_TEMPERATURE)
                    if self.seen else None)
            k = self.cfg.pass_k
            passk = (pass_at_k(self.model, self.tok, self.held, k)
                     if k and step in (0, self.cfg.steps) else None)
            rec = {
                "step": step,
                "greedy": greedy.accuracy,
                "pass1": pass1.accuracy,
                "greedy_length": greedy.mean_length,
                "pass1_length": pass1.mean_length,
                # the first `seen_size` training prompts of this seed, greedy: all trained on
                # once step * prompts_per_step >= seen_size; the step-0 gap is the baseline
                "seen_greedy": seen.accuracy if seen else None,
                "gap": (seen.accuracy - greedy.accuracy) if seen else None,
                "pass_k": passk,  # pass@k (k = settings' pass_k) at the start and end only
                "seconds": round(time.monotonic() - t0, 3),
            }
        log.info("[%s] eval step %d/%d: greedy %.3f pass@1 %.3f (%s split, n=%d)", self.name,
                 step, self.cfg.steps, rec["greedy"], rec["pass1"], self.cfg.split,
                 len(self.held))
        return rec

    def _log_progress(self, step: int) -> None:
        recent = self.train[-self.cfg.eval_every :]
        flow = _mean([r["flow_return"] for r in recent if r["flow_return"] is not None])
        log.info(
            "[%s] step %d/%d: train reward %.3f, flow return %s, flow v%d, %.2fs/step",
            self.name, step, self.cfg.steps, fmean(r["reward"] for r in recent),
            "n/a" if flow is None else f"{flow:+.4f}", recent[-1]["flow_version"],
            fmean(r["seconds"] for r in recent),
        )

