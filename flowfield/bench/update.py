"""The online update path of a live `flowfield serve`: how long until an /update is served, and
what training costs the scoring that goes on meanwhile (`flowfield bench update`).

One server, started with `flowfield.live_server.ServiceProcess` on the embedded defaults the
README's quick start uses (bundled demo policy and flow, in-process queue and learner, no
Redis), every inherited FLOWFIELD_* variable removed, and two settings:

  FLOWFIELD_LEARNER_BATCH = samples   one /update of `samples` accepted samples fills exactly
                                      one learner batch, so it becomes exactly one optimiser
                                      step and one new flow version, trained at once: the
                                      learner waits up to FLOWFIELD_LEARNER_BLOCK_MS (1 s)
                                      only for a batch that is not full (learner.py, _gather).
                                      64 is also the default.
  FLOWFIELD_LOG_LEVEL = WARNING       no access-log line for each of the many polls of
                                      GET /v1/flow (they would cost the server CPU time).

Workload (real demo-task data, token ids from the demo tokenizer):
  /update   expert solutions (the demo's scratchpad, `flowfield.demo.task.expert_solution`) of
            the refinement problems (`flowfield.evaluation.problems.refine_problems`), each
            with verifier reward 1.0 (accepted), `samples` per request, never repeated;
            with `scored_first` (the default) each was sent to /score once during set-up,
            as a trainer scores its rollouts before it sends the accepted ones, so the
            learner can take their latents from scoring's memo (flowfield/latent_memo.py).
  /score    rollouts the demo policy samples at temperature 1 (`flowfield.demo.policy`) for
            the dev problems: `score_groups` groups of `group_size` rollouts per request with
            their verifier rewards, group ids and return_advantages, i.e. the request the
            RLFR experiment (research/rlfr) sends each step (8 x 8 = 64 rollouts by default).

Phases:
  1. warm-up: one /score request, then `warmup_updates` updates (timed, reported apart: the
     first step of a fresh server is slower, from one-time costs such as Adam's state being
     created and the first backward);
  2. latency, no other load: `updates` times, POST /v1/update and poll GET /v1/flow every
     `poll_ms` until its `flow_version` (the version new /score batches use, set when the
     server has swapped the flow in) is above the one before; served_s = that moment minus
     the moment the POST was sent. Also split into: the 202 (post_s), the learner's publish
     (published_s, from /v1/flow's `last_update`, the unix time the learner published) and
     the rest (the swap, plus up to one poll interval);
  3. throughput: `score_clients` client threads each send the /score requests one after
     another (a closed loop: the model thread never waits for work). Three windows: the
     learner idle (`idle_seconds`), then `load_updates` updates posted back to back (each as
     soon as the previous one is served; the window runs from the first POST until the last
     version is served), then idle again, once requests sent after training have been
     answered. GET /v1/flow is polled at the same rate in all three, so polling costs the
     windows alike.

Throughput is response tokens scored per wall-clock second, counted by the client from the
/score requests that completed inside the window: the least-squares slope of their
cumulative tokens over their completion times (one demo request is ~0.5 s of work, so
tokens / window length would move by a whole request with where the window's edges fall).
The server's own counter (flowfield_tokens_scored_total read at the window's edges, divided
by its length) is reported next to it. The drop is 1 - training / idle rate, idle being both
idle windows pooled. The issue's goal is that training costs scoring at most one batch's time
per update:

  lost_s per update = training window seconds x drop / load_updates

i.e. how much scoring time each update took away, compared with `batch_s`: the idle windows'
seconds divided by the scheduler batches run in them (flowfield_batch_samples_count; in a
closed loop the model thread runs batch after batch), and with `request_s`: one /score
request of the stream sent alone (no other load; with the default unit size a 64-rollout
request is scored as two work units).

Standard library at import (httpx, torch and transformers load in `run_update_bench`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowfield.bench.report import machine_info
from flowfield.cli_options import opt
from flowfield.live_server import SOURCE_ROOT, ServiceProcess

if TYPE_CHECKING:
    import httpx

SECTION = "## Online update path"
GOAL_SERVED_P50_S = 2.0  # the goal: an /update of 64 samples served in < 2 s (p50)


@dataclass(frozen=True)
class UpdateBenchConfig:
    """Online update path: /update -> new version served, and scoring while the learner trains.

    Each field is an option of `flowfield bench update`."""

    updates: int = opt(10, "measured /update -> served round trips (phase 2)")
    samples: int = opt(64, "accepted samples per /update (= FLOWFIELD_LEARNER_BATCH)")
    warmup_updates: int = opt(1, "updates before the measured ones")
    load_updates: int = opt(10, "updates trained while /score is saturated (phase 3)")
    idle_seconds: float = opt(10.0, "each of the two idle scoring windows")
    score_groups: int = opt(8, "groups per /score request (the RLFR experiment's prompts/step)")
    group_size: int = opt(8, "rollouts per group (its G)")
    score_clients: int = opt(2, "/score requests in flight at once")
    score_pool: int = opt(4, "distinct /score requests, sent in turn")
    threads: int = opt(
        0, "torch threads of the server and this process (0: FLOWFIELD_THREADS, else 1)"
    )
    poll_ms: float = opt(20.0, "GET /v1/flow interval")
    seed: int = opt(0, "rollout sampling seed")
    timeout_s: float = opt(120.0, "longest wait for one update to be served")
    scored_first: bool = opt(
        True,
        "score every /update's samples with /score during set-up, as a trainer scores its "
        "rollouts before it sends the accepted ones (the learner then reuses their latents); "
        "--no-scored-first: updates of samples the server never scored",
    )

    def check(self) -> None:
        if min(self.updates, self.samples, self.load_updates, self.score_groups,
               self.group_size, self.score_clients, self.score_pool) < 1 or self.threads < 0:
            raise ValueError("counts and sizes must be >= 1, threads >= 0")
        if self.warmup_updates < 0 or self.idle_seconds <= 0 or self.poll_ms <= 0:
            raise ValueError("warmup_updates >= 0, idle_seconds > 0 and poll_ms > 0")


# ---- the workload ------------------------------------------------------------------------------


def update_bodies(cfg: UpdateBenchConfig, count: int, tokenizer: Any) -> list[dict[str, Any]]:
    """`count` /update bodies of `cfg.samples` accepted expert solutions each (token ids).

    Problems come from the demo's refinement set (2,000, disjoint from the policy's training,
    the flow's expert and the evaluation sets); a bench that needs more samples reuses them
    in order (each request still has its own update_id)."""
    from flowfield.demo.policy import expert_rollout
    from flowfield.evaluation.problems import refine_problems

    problems = refine_problems(min(2000, count * cfg.samples))
    run = uuid.uuid4().hex[:8]  # update ids unique per run: a restarted server forgets none
    bodies = []
    for k in range(count):
        samples = []
        for i in range(cfg.samples):
            r = expert_rollout(problems[(k * cfg.samples + i) % len(problems)], tokenizer)
            samples.append({"id": f"{k}-{i}", "reward": r.reward, "prompt_ids": r.prompt_ids,
                            "response_ids": r.response_ids})
        bodies.append({"update_id": f"bench-{run}-{k}", "samples": samples})
    return bodies


def score_bodies(cfg: UpdateBenchConfig, model: Any, tokenizer: Any) -> list[dict[str, Any]]:
    """`cfg.score_pool` /score bodies of `score_groups` x `group_size` rollouts sampled by the
    demo policy at temperature 1, with their verifier rewards (the RLFR experiment's call)."""
    from flowfield.demo.policy import sample_rollouts
    from flowfield.evaluation.problems import eval_problems

    n = cfg.score_pool * cfg.score_groups
    problems = eval_problems(n, "dev")  # never trained on by the policy or the flow
    bodies = []
    for k in range(cfg.score_pool):
        chunk = problems[k * cfg.score_groups : (k + 1) * cfg.score_groups]
        batch = [p for p in chunk for _ in range(cfg.group_size)]
        rollouts = sample_rollouts(model, tokenizer, batch, temperature=1.0,
                                   seed=cfg.seed * 1000 + k)
        samples = [
            {"id": f"{k}-{i}", "group_id": f"{k}-{i // cfg.group_size}",
             "prompt_ids": r.prompt_ids, "response_ids": r.response_ids, "reward": r.reward}
            for i, r in enumerate(rollouts)
        ]
        bodies.append({"samples": samples, "options": {"return_advantages": True}})
    return bodies


def response_tokens(body: dict[str, Any]) -> int:
    return sum(len(s["response_ids"]) for s in body["samples"])


# ---- measuring ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linear between order statistics (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def server_counters(client: httpx.Client) -> dict[str, float]:
    """The scheduler's counters from GET /metrics: response tokens scored, batches, samples."""
    text = client.get("/metrics").text
    names = {
        "tokens": "flowfield_tokens_scored_total",
        "batches": "flowfield_batch_samples_count",
        "batch_samples": "flowfield_batch_samples_sum",
        "latents_reused": "flowfield_learner_latents_reused_total",
    }
    out = {}
    for key, name in names.items():
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        out[key] = float(found.group(1)) if found else 0.0
    return out


@dataclass
class Completed:
    start: float  # perf_counter when the request was sent
    end: float  # ... and when its answer was read
    tokens: int  # response tokens scored
    flow_version: int


class ScoreStream:
    """`clients` threads, each sending /score requests one after another until stopped."""

    def __init__(self, url: str, bodies: list[dict[str, Any]], clients: int) -> None:
        self.url = url
        self.bodies = [json.dumps(b).encode() for b in bodies]  # the trainer's work, not timed
        self.tokens = [response_tokens(b) for b in bodies]
        self.clients = clients
        self.done: list[Completed] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for c in range(self.clients):
            t = threading.Thread(target=self._loop, args=(c,), name=f"score-{c}", daemon=True)
            t.start()
            self._threads.append(t)

    def _loop(self, c: int) -> None:
        import httpx

        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=300) as client:
            k = c  # clients start at different requests of the pool
            while not self._stop.is_set():
                i = k % len(self.bodies)
                k += 1
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/score", content=self.bodies[i], headers=headers)
                    t1 = time.perf_counter()
                    r.raise_for_status()
                    version = int(r.json()["flow_version"])
                except Exception as e:  # recorded and reported: a bench must not hang on it
                    with self._lock:
                        self.errors.append(f"{type(e).__name__}: {e}"[:300])
                    time.sleep(0.1)
                    continue
                with self._lock:
                    self.done.append(Completed(t0, t1, self.tokens[i], version))

    def completed(self, since: float = float("-inf")) -> int:
        """Requests answered so far that were sent at or after `since`."""
        with self._lock:
            return sum(1 for d in self.done if d.start >= since)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=300)

    def window(self, lo: float, hi: float) -> dict[str, Any]:
        """Requests completed in [lo, hi]: their tokens, throughput and latencies.

        tokens_per_s is the least-squares slope of cumulative response tokens over completion
        time. One demo request is ~0.5 s of work and completions come in bursts (a batch can
        finish a request of each client), so tokens / window length moves by a whole request
        with where the edges fall (±5% on a 10 s window); the slope does not. The plain ratio
        is reported as well (tokens_per_s_nominal)."""
        with self._lock:
            inside = sorted((d for d in self.done if lo <= d.end <= hi), key=lambda d: d.end)
        latencies = [d.end - d.start for d in inside]
        tokens = sum(d.tokens for d in inside)
        nominal = tokens / (hi - lo) if hi > lo else 0.0
        return {
            "seconds": hi - lo,
            "tokens": tokens,
            "requests": len(inside),
            "tokens_per_s": _slope([d.end for d in inside], [d.tokens for d in inside], nominal),
            "tokens_per_s_nominal": nominal,
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_max_s": max(latencies, default=float("nan")),
            "flow_versions": sorted({d.flow_version for d in inside}),
        }


def _slope(times: list[float], tokens: list[int], fallback: float) -> float:
    """Least-squares slope of cumulative tokens over time; `fallback` with too few points."""
    if len(times) < 3 or max(times) - min(times) <= 0:
        return fallback
    cum = [sum(tokens[: i + 1]) for i in range(len(tokens))]
    mt, mc = statistics.fmean(times), statistics.fmean(cum)
    var = sum((t - mt) ** 2 for t in times)
    return sum((t - mt) * (c - mc) for t, c in zip(times, cum)) / var


class FlowPoller:
    """GET /v1/flow at a fixed interval, in every phase alike."""

    def __init__(self, client: httpx.Client, poll_s: float) -> None:
        self.client = client
        self.poll_s = poll_s

    def info(self) -> dict[str, Any]:
        r = self.client.get("/v1/flow")
        r.raise_for_status()
        return r.json()

    def until_version(self, above: int, timeout_s: float) -> tuple[dict[str, Any], float]:
        """Poll until flow_version > above; (the info, perf_counter when it was seen)."""
        deadline = time.perf_counter() + timeout_s
        while True:
            info = self.info()
            now = time.perf_counter()
            if info["flow_version"] > above:
                return info, now
            if now > deadline:
                raise TimeoutError(
                    f"flow_version still {info['flow_version']} after {timeout_s:.0f}s "
                    f"(pending {info['pending']})"
                )
            time.sleep(self.poll_s)

    def idle(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.info()
            time.sleep(self.poll_s)


def timed_update(
    client: httpx.Client, poller: FlowPoller, body: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """POST one /update, wait until its version is served; the timings of the round trip."""
    before = poller.info()
    payload = json.dumps(body).encode()
    wall, t0 = time.time(), time.perf_counter()
    r = client.post("/v1/update", content=payload, headers={"content-type": "application/json"})
    t_post = time.perf_counter()
    r.raise_for_status()
    ack = r.json()
    if ack["accepted"] != len(body["samples"]):  # else no version would ever come: fail now
        raise RuntimeError(
            f"/update accepted {ack['accepted']} of {len(body['samples'])} samples: {ack}"
        )
    info, t_served = poller.until_version(before["flow_version"], timeout_s)
    published = info["last_update"] - wall if info.get("last_update") else float("nan")
    return {
        "accepted": ack["accepted"],
        "post_s": t_post - t0,
        "published_s": published,
        "served_s": t_served - t0,
        "sent_at": t0,
        "served_at": t_served,
        "version": info["flow_version"],
        "versions_advanced": info["flow_version"] - before["flow_version"],
        "samples_trained": info["samples_trained"] - before["samples_trained"],
    }


def latency_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    served = [r["served_s"] for r in records]
    published = [r["published_s"] for r in records]
    swap = [r["served_s"] - r["published_s"] for r in records]
    return {
        "updates": records,
        "served_p50_s": percentile(served, 0.5),
        "served_p95_s": percentile(served, 0.95),
        "served_max_s": max(served),
        "post_p50_s": percentile([r["post_s"] for r in records], 0.5),
        "published_p50_s": percentile(published, 0.5),
        "published_p95_s": percentile(published, 0.95),
        "after_publish_p50_s": percentile(swap, 0.5),
    }


# ---- the run -----------------------------------------------------------------------------------


def service_settings(cfg: UpdateBenchConfig) -> dict[str, object]:
    """The FLOWFIELD_* settings the bench sets (by name without the prefix); see the docstring."""
    return {"learner_batch": cfg.samples, "log_level": "WARNING"}


def _env_threads() -> int:
    """FLOWFIELD_THREADS when set to a positive integer, else 1."""
    try:
        return max(1, int(os.environ.get("FLOWFIELD_THREADS", "1")))
    except ValueError:
        return 1


def run_update_bench(
    cfg: UpdateBenchConfig, workdir: Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Start a demo server, run the three phases (module docstring), return the numbers."""
    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowfield.demo import DEMO_POLICY

    cfg.check()
    if cfg.threads == 0:  # the service's own variable, so FLOWFIELD_THREADS=1 ... says it all
        cfg = dataclasses.replace(cfg, threads=_env_threads())
    torch.set_num_threads(cfg.threads)
    load_before = os.getloadavg()[0]
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowfield-bench-update-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        log("building the workload (demo tokenizer, expert solutions, policy rollouts)")
        tokenizer = AutoTokenizer.from_pretrained(DEMO_POLICY)
        model = AutoModelForCausalLM.from_pretrained(DEMO_POLICY).float().eval()
        n_updates = cfg.warmup_updates + cfg.updates + cfg.load_updates
        updates = update_bodies(cfg, n_updates, tokenizer)
        scores = score_bodies(cfg, model, tokenizer)
        del model
        rollouts = [s for b in scores for s in b["samples"]]
        workload = {
            "update_response_tokens_mean": statistics.fmean(
                len(s["response_ids"]) for b in updates for s in b["samples"]
            ),
            "prompt_tokens": len(updates[0]["samples"][0]["prompt_ids"]),
            "score_request_samples": cfg.score_groups * cfg.group_size,
            "score_request_response_tokens": [response_tokens(b) for b in scores],
            "score_rollouts_correct": statistics.fmean(s["reward"] for s in rollouts),
        }

        # the embedded defaults, whatever this shell exports (FLOWFIELD_THREADS is set anew)
        inherited = tuple(k for k in os.environ if k.startswith("FLOWFIELD_"))
        server = ServiceProcess(
            workdir,
            settings=service_settings(cfg),
            threads=cfg.threads,
            log_path=workdir / "server.log",
            unset=inherited,
            cwd=SOURCE_ROOT,
            ready_timeout=300,
            stop_timeout=60,
        )
        log("starting `flowfield serve` (demo policy and flow, in-process queue)")
        with server, httpx.Client(base_url=server.url, timeout=300) as client:
            poller = FlowPoller(client, cfg.poll_ms / 1000)
            start_info = poller.info()
            res = _measure(cfg, server.url, client, poller, updates, scores, log)
            end_info = poller.info()
            reused = server_counters(client)["latents_reused"]
            log_tail = server.log_tail(20)
        res.update(
            config=dataclasses.asdict(cfg),
            machine={**machine_info(), "load_before": load_before,
                     "load_after": os.getloadavg()[0]},
            settings={f"FLOWFIELD_{k.upper()}": v for k, v in service_settings(cfg).items()}
            | {"FLOWFIELD_THREADS": cfg.threads},
            unset=list(inherited),
            workload=workload,
            server={"start_s": server.start_seconds, "log_tail": log_tail},
            versions={
                "start": start_info["flow_version"],
                "end": end_info["flow_version"],
                "expected_end": start_info["flow_version"] + n_updates,
                "samples_trained": end_info["samples_trained"] - start_info["samples_trained"],
            },
            latents_reused=int(reused),
        )
        return res
    finally:
        if tmp is not None:
            tmp.cleanup()


def _measure(
    cfg: UpdateBenchConfig,
    url: str,
    client: httpx.Client,
    poller: FlowPoller,
    updates: list[dict[str, Any]],
    scores: list[dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    def one_update(body: dict[str, Any], what: str) -> dict[str, Any]:
        rec = timed_update(client, poller, body, cfg.timeout_s)
        log(f"{what}: served in {rec['served_s']:.3f}s (published {rec['published_s']:.3f}s) "
            f"-> v{rec['version']}")
        return rec

    if cfg.scored_first:  # the trainer's earlier /score calls, outside every timed phase
        for body in updates:
            ids = [{k: x[k] for k in ("id", "prompt_ids", "response_ids")} for x in body["samples"]]
            client.post("/v1/score", json={"samples": ids}).raise_for_status()
        log(f"scored the {len(updates)} updates' samples first")
    todo = iter(updates)
    # 1. warm-up: the first /score and the first optimiser step are not representative
    client.post("/v1/score", json=scores[0]).raise_for_status()
    warmup = [one_update(next(todo), "warm-up update") for _ in range(cfg.warmup_updates)]

    # one /score request of the stream alone: the unit "one scoring batch" is compared with
    request_s = []
    for body in scores[: min(3, len(scores))]:
        t0 = time.perf_counter()
        client.post("/v1/score", json=body).raise_for_status()
        request_s.append(time.perf_counter() - t0)

    # 2. latency, nothing else running
    latency = [one_update(next(todo), f"update {k + 1}/{cfg.updates}") for k in
               range(cfg.updates)]

    # 3. throughput: idle, training, idle
    stream = ScoreStream(url, scores, cfg.score_clients)
    stream.start()
    try:
        while stream.completed() < cfg.score_clients:  # every client has been answered once
            poller.idle(cfg.poll_ms / 1000)
        windows: dict[str, dict[str, Any]] = {}
        counters: dict[str, dict[str, float]] = {}

        def window(name: str, body: Callable[[], Any]) -> Any:
            c0, t0 = server_counters(client), time.perf_counter()
            out = body()
            t1, c1 = time.perf_counter(), server_counters(client)
            counters[name] = {k: c1[k] - c0[k] for k in c0} | {"seconds": t1 - t0}
            windows[name] = stream.window(t0, t1)
            return out

        log(f"scoring stream: {cfg.score_clients} clients; idle window {cfg.idle_seconds}s")
        window("idle_before", lambda: poller.idle(cfg.idle_seconds))
        under_load = window(
            "training",
            lambda: [one_update(next(todo), f"update under load {k + 1}/{cfg.load_updates}")
                     for k in range(cfg.load_updates)],
        )
        # requests sent during training still finish after it: the second idle window starts
        # once as many requests as there are clients were sent and answered after training
        settled = time.perf_counter()
        while stream.completed(since=settled) < cfg.score_clients:
            poller.idle(cfg.poll_ms / 1000)
        log(f"idle window {cfg.idle_seconds}s")
        window("idle_after", lambda: poller.idle(cfg.idle_seconds))
    finally:
        stream.stop()
    throughput = _throughput(cfg, windows, counters, under_load, stream)
    return {
        "warmup": warmup,
        "request_s": request_s,
        "latency": latency_summary(latency)
        | {"goal_p50_s": GOAL_SERVED_P50_S,
           "meets_goal": percentile([r["served_s"] for r in latency], 0.5) < GOAL_SERVED_P50_S},
        "throughput": throughput,
    }


def _throughput(
    cfg: UpdateBenchConfig,
    windows: dict[str, dict[str, Any]],
    counters: dict[str, dict[str, float]],
    under_load: list[dict[str, Any]],
    stream: ScoreStream,
) -> dict[str, Any]:
    for name, w in windows.items():
        c = counters[name]
        w["server_tokens_per_s"] = c["tokens"] / c["seconds"]
        w["batches"] = int(c["batches"])
        w["samples_per_batch"] = c["batch_samples"] / c["batches"] if c["batches"] else 0.0
    idle = [windows["idle_before"], windows["idle_after"]]
    # both idle windows pooled, each by its length
    idle_rate = sum(w["tokens_per_s"] * w["seconds"] for w in idle) / sum(
        w["seconds"] for w in idle
    )
    if idle_rate <= 0:
        raise RuntimeError(f"no /score request completed in the idle windows: {stream.errors[:3]}")
    train = windows["training"]
    train_rate = train["tokens_per_s"]
    idle_counters = [counters["idle_before"], counters["idle_after"]]
    batches = sum(c["batches"] for c in idle_counters)
    batch_s = sum(c["seconds"] for c in idle_counters) / batches if batches else float("nan")
    # scoring time the training window lost against the idle rate, per update trained in it
    lost_s = train["seconds"] * (1.0 - train_rate / idle_rate) / cfg.load_updates
    return {
        "windows": windows,
        "idle_tokens_per_s": idle_rate,
        "training_tokens_per_s": train_rate,
        "drop": 1.0 - train_rate / idle_rate,
        "lost_s_per_update": lost_s,
        "batch_s": batch_s,
        "lost_per_update_in_batches": lost_s / batch_s,
        "meets_goal": lost_s <= batch_s,
        "updates": latency_summary(under_load),
        "errors": stream.errors[:10],
        "error_count": len(stream.errors),
    }


# ---- the BENCHMARKS.md section -------------------------------------------------------------------


def markdown_section(res: dict[str, Any], command: str) -> str:
    """The `## Online update path` section of BENCHMARKS.md for a result of run_update_bench."""
    c, m, w, lat, thr = (res["config"], res["machine"], res["workload"], res["latency"],
                         res["throughput"])
    win = thr["windows"]
    request_s = statistics.median(res["request_s"])
    shared = (
        f"shared with other work (load average {m['load_before']:.1f} before the run, "
        f"{m['load_after']:.1f} after it)"
        if m["load_before"] >= 0.5
        else f"otherwise idle (load average {m['load_before']:.1f} before the run, "
        f"{m['load_after']:.1f} after it)"
    )
    settings = ", ".join(f"{k}={v}" for k, v in res["settings"].items())
    tokens = res["workload"]["score_request_response_tokens"]
    lines = [
        SECTION,
        "",
        f"- Command: `{command}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores {shared}, Python {m['python']}, torch "
        f"{m['torch']}; server and bench client on the same machine",
        f"- Server: `flowfield serve` on its embedded defaults (bundled demo policy and flow, "
        f"in-process queue and learner, no Redis; every inherited FLOWFIELD_* variable "
        f"removed), started by `flowfield.live_server.ServiceProcess`, with {settings}. "
        f"FLOWFIELD_LEARNER_BATCH = the samples per /update, so one /update is exactly one "
        f"optimiser step and one version, trained at once (a learner batch that is not full "
        f"waits FLOWFIELD_LEARNER_BLOCK_MS, 1 s, for more); WARNING keeps the many "
        f"GET /v1/flow polls out of the access log",
        f"- /update workload: {c['samples']} accepted samples per request, expert solutions "
        f"of the demo's refinement problems ({w['prompt_tokens']}-token prompt, "
        f"{w['update_response_tokens_mean']:.0f} response tokens each, token ids from the "
        f"demo tokenizer), never repeated; {c['warmup_updates']} warm-up update(s) first; "
        + (
            "every update's samples were scored with /score during set-up, as a trainer's "
            f"rollouts are before it sends the accepted ones: the learner took "
            f"{res['latents_reused']} of {res['versions']['samples_trained']} samples' latents "
            "from what scoring remembered (FLOWFIELD_LATENT_MEMO_MB) instead of encoding them"
            if c.get("scored_first")
            else f"the samples were never scored before ({res['latents_reused']} latents reused)"
        ),
        "",
        f"| update served: POST /v1/update of {c['samples']} samples until GET /v1/flow "
        "reports the new flow_version | p50 | p95 | max |",
        "| --- | ---: | ---: | ---: |",
        f"| no other load ({c['updates']} updates) | {lat['served_p50_s']:.2f} s | "
        f"{lat['served_p95_s']:.2f} s | {lat['served_max_s']:.2f} s |",
        f"| ... of which until the learner published | {lat['published_p50_s']:.2f} s | "
        f"{lat['published_p95_s']:.2f} s | |",
        f"| while /score is saturated ({c['load_updates']} updates) | "
        f"{thr['updates']['served_p50_s']:.2f} s | {thr['updates']['served_p95_s']:.2f} s | "
        f"{thr['updates']['served_max_s']:.2f} s |",
        "",
        f"- Goal p50 < {GOAL_SERVED_P50_S:.0f} s: **{'met' if lat['meets_goal'] else 'missed'}"
        f"** ({lat['served_p50_s']:.2f} s). The 202 takes {1000 * lat['post_p50_s']:.0f} ms "
        f"(p50); after the learner's publish the swap and the poll ({c['poll_ms']:.0f} ms "
        f"interval) add {1000 * lat['after_publish_p50_s']:.0f} ms (p50); the rest is the "
        "learner: queue read, optimiser step (the policy encodes the samples scoring has "
        "not, the flow runs forward and backward), checkpoint write, publish. Warm-up "
        "update(s): "
        + ", ".join(f"{r['served_s']:.2f} s" for r in res["warmup"]),
        f"- Scoring stream: {c['score_clients']} clients, each sending /v1/score requests one "
        f"after another (closed loop), each request {c['score_groups']} groups x "
        f"{c['group_size']} rollouts the demo policy sampled at temperature 1 for dev "
        f"problems ({100 * w['score_rollouts_correct']:.0f}% correct; "
        f"{min(tokens)}-{max(tokens)} response tokens per request), with rewards, group ids "
        f"and return_advantages, as the RLFR experiment (research/rlfr) sends them each step",
        "",
        "| window | seconds | tokens/s (client) | tokens/s (server counter) | batches | "
        "/score latency p50 | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "idle_before": "learner idle (before)",
        "training": f"{c['load_updates']} updates trained back to back",
        "idle_after": "learner idle (after)",
    }
    for key, label in names.items():
        x = win[key]
        lines.append(
            f"| {label} | {x['seconds']:.1f} | {x['tokens_per_s']:.0f} | "
            f"{x['server_tokens_per_s']:.0f} | {x['batches']} | {x['latency_p50_s']:.2f} s | "
            f"{x['latency_max_s']:.2f} s |"
        )
    lines += [
        "",
        f"- Throughput: idle **{thr['idle_tokens_per_s']:.0f}** tokens/s, while training "
        f"**{thr['training_tokens_per_s']:.0f}** tokens/s: a drop of "
        f"**{100 * thr['drop']:.0f}%** over the training window",
        f"- Scoring time lost per update: **{thr['lost_s_per_update']:.2f} s** = "
        f"{thr['lost_per_update_in_batches']:.1f} scoring batches of {thr['batch_s']:.2f} s "
        f"(idle windows' seconds / scheduler batches) or "
        f"{thr['lost_s_per_update'] / request_s:.1f} /score requests of {request_s:.2f} s "
        f"(one request of the stream alone). Goal (at most one batch per update): "
        f"**{'met' if thr['meets_goal'] else 'missed'}**",
        "- Why scoring loses time: the in-process learner computes on the scheduler's single "
        "model thread (service/state.py hands it the scheduler's executor), as two jobs per "
        "step (service/updates/learner.py: `_encode`, the policy encodes the samples that "
        "scoring's latent memo does not hold; "
        "`_train`, the flow's forward, backward and optimiser step and the export), with a "
        "scoring batch free to run between them; the checkpoint write and fsync run off the "
        "model thread. The step's compute still displaces scoring one for one: with nothing "
        f"else running one step of {c['samples']} samples took {lat['published_p50_s']:.2f} s "
        f"to publish (p50), {lat['published_p50_s'] / thr['batch_s']:.1f} scoring batches"
        + (
            ""
            if thr["meets_goal"]
            else ". Within one batch per update needs a cheaper step or a learner on its own "
            "cores"
        ),
        "- Definitions: tokens/s (client) = response tokens of the /score requests that "
        "completed in the window, as the least-squares slope of their cumulative sum over "
        f"completion time (a request is {request_s:.2f} s of work alone: tokens / window "
        "length would move by a whole request with where the edges fall); tokens/s (server "
        "counter) = "
        "flowfield_tokens_scored_total over the window / its length. The training window runs "
        "from the first POST /v1/update to the moment the last version is served, each update "
        "posted as soon as the previous one is served; the second idle window starts once "
        "requests sent after training were answered; the idle rate pools both idle windows; "
        "drop = 1 - training / idle rate; lost time per update = training window seconds x "
        "drop / updates; GET /v1/flow is polled in all three windows alike",
    ]
    if thr["error_count"]:
        lines.append(f"- /score errors during the stream: {thr['error_count']} "
                     f"(first: {thr['errors'][0]})")
    return "\n".join(lines) + "\n"


__all__ = [
    "GOAL_SERVED_P50_S",
    "SECTION",
    "UpdateBenchConfig",
    "markdown_section",
    "run_update_bench",
]
