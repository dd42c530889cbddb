"""`flowfield bench`: end-to-end /score throughput against the reference computation.

One run, one model, one set of rollouts, four ways of computing the per-token deviations:

  reference  the authors' design (RLFR.md s8), written plainly here: a full forward with
             output_hidden_states over each group's right-padded batch (all positions, final
             norm and LM head included, as their RL forward computes logits), then the flow
             on EVERY position of the padded batch for every hooked layer and timestep
  library    FlowScorer.score on all the round's samples (shared prompts encoded once)
  no-share   the same with LatentEncoder.share_prompts switched off
  http       `flowfield serve` in a subprocess, one POST /v1/score per group, all groups of a
             round sent at once from a thread pool

Throughput is response tokens per second. The paths take turns round by round (their order
rotates), so the server never computes while the reference does and slow phases of a shared
machine hit every path alike; ratios are medians of the per-round ratios. The first round
(smaller, `warmup_groups`) is excluded from the timings. The in-process paths run on one model
thread, like the service's scheduler (see run_bench: it decides libgomp's spin-waiting). Every
path's deviations are checked against each other before anything is reported.

Heavy imports (torch, transformers, the library) are local to the functions that need them,
so registering `bench` in the CLI does not slow down `flowfield --help`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import torch

    from flowfield.encoder import LatentEncoder
    from flowfield.flownet import FlowMetadata, FlowNet
    from flowfield.objective import NoiseBank

SECTION = "## /score throughput"
PATHS = ("reference", "library", "no_share", "http")


@dataclass(frozen=True)
class BenchConfig:
    # workload: GRPO-like groups of responses sharing a prompt
    groups: int = 4  # groups per measured round
    group_size: int = 8
    prompt_tokens: int = 128  # prompt lengths are uniform in +-12.5% around this
    min_response: int = 64
    max_response: int = 256
    rounds: int = 4  # measured rounds, after one warm-up round
    warmup_groups: int = 1
    # policy: a random-initialised Qwen2
    hidden: int = 512
    layers: int = 8
    heads: int = 8
    kv_heads: int = 2
    intermediate: int = 1536
    vocab: int = 32000
    # flow: W = d
    flow_depth: int = 4
    timesteps: tuple[float, ...] = (0.8,)
    # runtime
    threads: int = 2
    batch_max_tokens: int = 32768  # the service's default FLOWFIELD_BATCH_MAX_TOKENS
    http: bool = True
    seed: int = 0


@dataclass
class Group:
    group_id: str
    prompt: list[int]
    responses: list[list[int]]


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)  # wall clock, per measured round
    cpu_seconds: list[float] = field(default_factory=list)  # CPU time of every process involved
    tokens: list[int] = field(default_factory=list)  # response tokens per measured round

    def rates(self) -> list[float]:
        return [n / s for n, s in zip(self.tokens, self.seconds)]

    def cpu_rates(self) -> list[float]:
        return [n / s for n, s in zip(self.tokens, self.cpu_seconds)]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ---- assets and workload ---------------------------------------------------------------------


def build_policy(directory: Path, cfg: BenchConfig) -> Path:
    """A random-initialised Qwen2 of the configured shape, saved like any HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from flowfield.demo.tokenizer import build_tokenizer

    config = Qwen2Config(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=max(2048, 2 * (cfg.prompt_tokens + cfg.max_response)),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(cfg.seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(directory))
    build_tokenizer().save_pretrained(str(directory))  # only ids are sent; the service wants one
    return directory


def build_flow(directory: Path, encoder: LatentEncoder, cfg: BenchConfig) -> Path:
    """A flow with W = d and random non-zero weights (an untrained one is exactly v = 0)."""
    import torch

    from flowfield.checkpoint import save_flow
    from flowfield.flownet import FlowMetadata, FlowNet, flow_for_encoder

    torch.manual_seed(cfg.seed + 1)
    net = FlowNet(
        flow_for_encoder(encoder.hidden_size, encoder.layer_fractions, depth=cfg.flow_depth)
    )
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2 and not p.any():  # the zero-initialised adaLN and output layers
                p.normal_(std=0.02)
    meta = FlowMetadata(net.config, dataclasses.asdict(encoder.identity))
    return save_flow(directory, net, meta)


def make_round(cfg: BenchConfig, groups: int, seed: int) -> list[Group]:
    """`groups` groups of `group_size` random responses to one random prompt each."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def uniform(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    def ids(n: int) -> list[int]:
        return torch.randint(3, cfg.vocab, (n,), generator=g).tolist()

    spread = cfg.prompt_tokens // 8
    out = []
    for k in range(groups):
        prompt = ids(uniform(cfg.prompt_tokens - spread, cfg.prompt_tokens + spread))
        responses = [
            ids(uniform(cfg.min_response, cfg.max_response)) for _ in range(cfg.group_size)
        ]
        out.append(Group(f"r{seed}-g{k}", prompt, responses))
    return out


def flatten(groups: list[Group]) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    return prompts, responses


# ---- the reference: their design, written plainly ----------------------------------------------


class Reference:
    """Full forward with all hidden states over a padded group batch, flow on every position.

    Uses its own copy of the model (not LatentEncoder) and the scorer's NoiseBank: the noise
    at response position k of a sample is the scorer's noise for k, so the two agree on
    response tokens (all but the last of each response, whose next-token context here is a
    padding position's latent or the border's zero, as in a padded batch).
    """

    def __init__(
        self,
        model_dir: Path,
        flow: FlowNet,
        meta: FlowMetadata,
        blocks: list[int],
        noise: NoiseBank,
        max_rows: int = 1 << 16,
    ) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        if max(blocks) >= self.model.config.num_hidden_layers - 1:
            # HF returns the last block's output after the final norm: not the raw stream
            raise ValueError(
                f"the reference reads output_hidden_states, which cannot give the raw output of "
                f"the last block; hooked blocks {blocks} need more than "
                f"{self.model.config.num_hidden_layers} layers"
            )
        self.flow = flow.eval()
        self.fractions = meta.config.layer_fractions
        self.context = meta.config.context
        self.blocks = blocks
        self.noise = noise
        self.max_rows = max_rows

    def deviations(self, groups: list[Group], timesteps: tuple[float, ...]) -> list[torch.Tensor]:
        """Per-token deviations at each sample's response positions, one batch per group."""
        out = []
        for g in groups:
            out += self.group_deviations([g.prompt] * len(g.responses), g.responses, timesteps)
        return out

    def group_deviations(
        self, prompts: list[list[int]], responses: list[list[int]], timesteps: tuple[float, ...]
    ) -> list[torch.Tensor]:
        import torch

        with torch.inference_mode():
            seqs = [p + r for p, r in zip(prompts, responses)]
            B, T = len(seqs), max(len(s) for s in seqs)
            ids = torch.zeros((B, T), dtype=torch.long)
            mask = torch.zeros((B, T), dtype=torch.long)
            for b, s in enumerate(seqs):
                ids[b, : len(s)] = torch.tensor(s)
                mask[b, : len(s)] = 1
            out = self.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            )
            assert out.logits.shape == (B, T, self.model.config.vocab_size)  # LM head ran
            # hidden_states[i + 1] is the output of block i
            h = torch.stack([out.hidden_states[i + 1] for i in self.blocks])  # [L, B, T, d]
            ctx = torch.zeros_like(h)  # neighbour in the padded row; zero at the border
            if self.context == "next":
                ctx[:, :, :-1] = h[:, :, 1:]
            elif self.context == "prev":
                ctx[:, :, 1:] = h[:, :, :-1]
            # noise index of position j in row b: its response index j - p_b (mod T elsewhere)
            starts = torch.tensor([len(p) for p in prompts])
            index = (torch.arange(T)[None, :] - starts[:, None]) % T  # [B, T]
            e = self.every_position(h, ctx, index, timesteps)  # [B, T]
            return [
                e[b, len(p) : len(p) + len(r)] for b, (p, r) in enumerate(zip(prompts, responses))
            ]

    def every_position(
        self,
        h: torch.Tensor,
        ctx: torch.Tensor,
        index: torch.Tensor,
        timesteps: tuple[float, ...],
    ) -> torch.Tensor:
        """Mean over timesteps and layers of t/(1-t) (1/d)||v(x_t, t, c, l) - (h - eps)||^2."""
        import torch

        L, B, T, d = h.shape
        S = len(timesteps)
        eps = self.noise.take(S, L, T)[:, :, index]  # [S, L, B, T, d]
        t = torch.tensor(timesteps)[:, None, None, None, None]  # [S, 1, 1, 1, 1]
        x1 = h[None]
        xt = (t * x1 + (1 - t) * eps).reshape(-1, d)
        u = (x1 - eps).reshape(-1, d)
        c = ctx[None].expand(S, L, B, T, d).reshape(-1, d)
        t_rows = t.expand(S, L, B, T, 1).reshape(-1)
        lf = torch.tensor(self.fractions)[None, :, None, None].expand(S, L, B, T).reshape(-1)
        err = torch.empty(xt.shape[0])
        for s in range(0, xt.shape[0], self.max_rows):
            rows = slice(s, s + self.max_rows)
            v = self.flow(xt[rows], t_rows[rows], c[rows], lf[rows])
            err[rows] = (v - u[rows]).pow(2).mean(dim=-1)
        weight = t.reshape(S, 1, 1, 1) / (1 - t.reshape(S, 1, 1, 1))
        return (err.reshape(S, L, B, T) * weight).mean(dim=(0, 1))


# ---- the service over HTTP ---------------------------------------------------------------------


class ServerProcess:
    """`python -m service.cli serve` on a free local port, with the bench's model and flow."""

    def __init__(self, model_dir: Path, flow_dir: Path, workdir: Path, cfg: BenchConfig) -> None:
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "FLOWFIELD_MODEL_PATH": str(model_dir),
            "FLOWFIELD_FLOW_PATH": str(flow_dir),
            "FLOWFIELD_CHECKPOINT_DIR": str(workdir / "checkpoints"),
            "FLOWFIELD_LEARNER": "false",
            "FLOWFIELD_THREADS": str(cfg.threads),
            "FLOWFIELD_BATCH_MAX_TOKENS": str(cfg.batch_max_tokens),
            "FLOWFIELD_MAX_SAMPLES": str(max(1024, cfg.group_size)),
            "FLOWFIELD_LOG_LEVEL": "WARNING",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open for the process's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            try:
                if self.client.get("/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready:\n{self.log_path.read_text()}")

    def score_round(
        self, bodies: list[bytes], pool: ThreadPoolExecutor
    ) -> list[list[dict[str, Any]]]:
        """POST every group's body at once; the results of each group, in order."""

        def post(body: bytes) -> list[dict[str, Any]]:
            r = self.client.post(
                "/v1/score", content=body, headers={"content-type": "application/json"}
            )
            r.raise_for_status()
            return r.json()["results"]

        return list(pool.map(post, bodies))

    def batches(self) -> int:
        """Scoring batches the server's scheduler has run so far (its Prometheus counter)."""
        text = self.client.get("/metrics").text
        found = re.search(r"^flowfield_batch_samples_count (\S+)$", text, re.M)
        return int(float(found.group(1))) if found else 0

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def request_body(group: Group, timesteps: tuple[float, ...]) -> bytes:
    samples = [
        {
            "id": f"{group.group_id}-{k}",
            "group_id": group.group_id,
            "prompt_ids": group.prompt,
            "response_ids": r,
        }
        for k, r in enumerate(group.responses)
    ]
    options = {"return_deviations": True, "timesteps": list(timesteps)}
    return json.dumps({"samples": samples, "options": options}).encode()


# ---- the run ----------------------------------------------------------------------------------


def _max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor], drop_last: bool = False) -> float:
    """max |a - b| / max |b| over all samples (optionally without each sample's last token)."""
    import torch

    cut = slice(None, -1) if drop_last else slice(None)
    x = torch.cat([t[cut].double() for t in a])
    y = torch.cat([t[cut].double() for t in b])
    if y.numel() == 0:
        return 0.0
    return float((x - y).abs().max() / y.abs().max().clamp_min(1e-30))


def machine_info() -> dict[str, Any]:
    import torch

    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name")
            ),
            model,
        )
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def run_bench(
    cfg: BenchConfig, workdir: Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Build the assets, run every path round by round, check agreement, return the numbers."""
    import torch

    from flowfield.checkpoint import load_flow
    from flowfield.encoder import LatentEncoder
    from flowfield.objective import NoiseBank
    from flowfield.scorer import FlowScorer, ScoreOptions

    torch.set_num_threads(cfg.threads)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flowfield-bench-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    server: ServerProcess | None = None
    try:
        log(f"building a {cfg.layers}-layer Qwen2 (d={cfg.hidden}), depth-{cfg.flow_depth} flow")
        model_dir = build_policy(workdir / "policy", cfg)
        encoder = LatentEncoder(model_dir, max_batch_tokens=cfg.batch_max_tokens)
        flow_dir = build_flow(workdir / "flow", encoder, cfg)
        flow, meta = load_flow(flow_dir, encoder.identity, encoder.layer_fractions)
        noise = NoiseBank(encoder.hidden_size, seed=0)  # the service's default noise seed
        scorer = FlowScorer(encoder, flow, meta, noise=noise)
        reference = Reference(model_dir, flow, meta, encoder.layers, noise)
        options = ScoreOptions(timesteps=cfg.timesteps)
        if cfg.http:
            log("starting `flowfield serve`")
            server = ServerProcess(model_dir, flow_dir, workdir, cfg)

        # In-process work runs on one model thread, as in the service. With libgomp this is
        # not a detail: a process whose OpenMP work comes from a single thread spin-waits
        # between parallel regions, one with two threads throttles the spinning once its
        # threads outnumber the cores; on a loaded 2-core machine that alone made the same
        # library call up to 1.5x slower in the bench process than in the server.
        model_thread = ThreadPoolExecutor(
            1, "model", initializer=torch.set_num_threads, initargs=(cfg.threads,)
        )

        # each path: the round's groups -> (deviations per sample, token rewards or None)
        def run_reference(groups: list[Group], bodies: list[bytes]):
            devs = model_thread.submit(reference.deviations, groups, cfg.timesteps).result()
            return devs, None

        def run_library(groups: list[Group], bodies: list[bytes], share: bool = True):
            encoder.share_prompts = share
            try:
                scores = model_thread.submit(scorer.score, *flatten(groups), options).result()
            finally:
                encoder.share_prompts = True
            return [s.deviations for s in scores], [s.token_rewards.tolist() for s in scores]

        def run_no_share(groups: list[Group], bodies: list[bytes]):
            return run_library(groups, bodies, share=False)

        def run_http(groups: list[Group], bodies: list[bytes]):
            answers = [a for res in server.score_round(bodies, pool) for a in res]
            devs = [torch.tensor(a["deviations"]) for a in answers]
            return devs, [a["token_rewards"] for a in answers]

        runners = {
            "reference": run_reference,
            "library": run_library,
            "no_share": run_no_share,
            "http": run_http,
        }
        rounds = [make_round(cfg, cfg.warmup_groups, seed=cfg.seed * 1000)]
        rounds += [
            make_round(cfg, cfg.groups, seed=cfg.seed * 1000 + k + 1) for k in range(cfg.rounds)
        ]
        paths = [p for p in PATHS if p != "http" or cfg.http]
        timings = {p: Timing() for p in paths}
        checks: dict[str, float] = {}
        http_batches: list[int] = []  # scheduler batches per measured HTTP round
        pool = ThreadPoolExecutor(max(cfg.groups, cfg.warmup_groups))
        try:
            for k, groups in enumerate(rounds):
                tokens = sum(len(r) for g in groups for r in g.responses)
                bodies = [request_body(g, cfg.timesteps) for g in groups]  # the trainer's work
                devs: dict[str, list[torch.Tensor]] = {}
                rewards: dict[str, list[list[float]] | None] = {}
                for path in paths[k % len(paths) :] + paths[: k % len(paths)]:
                    batches = server.batches() if path == "http" else 0
                    server_cpu = process_cpu_seconds(server.proc.pid) if server else 0.0
                    start, cpu = time.perf_counter(), time.process_time()
                    devs[path], rewards[path] = runners[path](groups, bodies)
                    seconds = time.perf_counter() - start
                    cpu = time.process_time() - cpu
                    if server is not None:  # idle outside the HTTP path
                        cpu += process_cpu_seconds(server.proc.pid) - server_cpu
                    if k > 0:  # round 0 is the warm-up
                        timings[path].seconds.append(seconds)
                        timings[path].cpu_seconds.append(cpu)
                        timings[path].tokens.append(tokens)
                        if path == "http":
                            http_batches.append(server.batches() - batches)
                    log(
                        f"round {k}{' (warm-up)' if k == 0 else ''} {path:>9}: "
                        f"{tokens} tokens in {seconds:6.2f}s = {tokens / seconds:7.1f} tokens/s"
                    )
                _check_round(devs, rewards, checks)
        finally:
            pool.shutdown()
            model_thread.shutdown()
        res = _summarise(cfg, timings, checks, encoder)
        if http_batches:
            res["http_batches_per_round"] = http_batches
        return res
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()


def _check_round(
    results: dict[str, list[torch.Tensor]],
    rewards: dict[str, list[list[float]] | None],
    checks: dict[str, float],
) -> None:
    """Every path must give the library's deviations (the reference: where comparable)."""
    lib = results["library"]
    found = {
        "reference_vs_library": _max_rel_diff(lib, results["reference"], drop_last=True),
        "no_share_vs_library": _max_rel_diff(results["no_share"], lib),
    }
    if "http" in results:
        found["http_vs_library"] = _max_rel_diff(results["http"], lib)
        a = [x for r in rewards["http"] for x in r]
        b = [x for r in rewards["library"] for x in r]
        found["http_vs_library_rewards_abs"] = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
        if len(a) != len(b):
            raise AssertionError("HTTP and library returned different numbers of tokens")
    for key, value in found.items():
        checks[key] = max(checks.get(key, 0.0), value)
    limits = {
        "reference_vs_library": 1e-3,
        "no_share_vs_library": 1e-4,
        "http_vs_library": 1e-4,
        "http_vs_library_rewards_abs": 1e-6,
    }
    bad = {k: v for k, v in found.items() if v > limits[k]}
    if bad:
        raise AssertionError(f"paths disagree beyond tolerance: {bad} (limits {limits})")


def _summarise(
    cfg: BenchConfig,
    timings: dict[str, Timing],
    checks: dict[str, float],
    encoder: LatentEncoder,
) -> dict[str, Any]:
    rates = {p: t.rates() for p, t in timings.items()}
    cpu_rates = {p: t.cpu_rates() for p, t in timings.items()}

    def paired(a: str, b: str, r: dict[str, list[float]] = rates) -> float:
        return statistics.median(x / y for x, y in zip(r[a], r[b]))

    out: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
        "model": {
            "type": "qwen2 (random init)",
            "parameters": sum(p.numel() for p in encoder.model.parameters()),
            "hooked_blocks": encoder.layers,
        },
        "tokens_per_round": timings["library"].tokens,
        "paths": {
            p: {
                "seconds": t.seconds,
                "tokens_per_s": rates[p],
                "median_tokens_per_s": statistics.median(rates[p]),
                "best_tokens_per_s": max(rates[p]),
                "cpu_seconds": t.cpu_seconds,
                "median_tokens_per_cpu_s": statistics.median(cpu_rates[p]),
            }
            for p, t in timings.items()
        },
        "ratios": {
            "library_vs_reference": paired("library", "reference"),
            "no_share_vs_reference": paired("no_share", "reference"),
            "share_prompts_speedup": paired("library", "no_share"),
        },
        "checks": checks,
    }
    if "http" in rates:
        out["ratios"]["http_vs_reference"] = paired("http", "reference")
        out["ratios"]["http_overhead"] = 1.0 - paired("http", "library")
        # the same from CPU time (server + client vs. library): insensitive to other load
        out["ratios"]["http_overhead_cpu"] = 1.0 - paired("http", "library", cpu_rates)
    return out


# ---- reporting --------------------------------------------------------------------------------


def format_table(res: dict[str, Any]) -> str:
    names = {
        "reference": "reference: full forward + flow on every position",
        "library": "library: FlowScorer.score (shared prompts once)",
        "no_share": "library, share_prompts off",
        "http": "service over HTTP (one POST /v1/score per group)",
    }
    lines = [
        "| path | tokens/s (median) | tokens/s (best) | x reference | tokens per CPU-second |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for p, v in res["paths"].items():
        ratio = 1.0 if p == "reference" else res["ratios"][f"{p}_vs_reference"]
        lines.append(
            f"| {names[p]} | {v['median_tokens_per_s']:.0f} | {v['best_tokens_per_s']:.0f} | "
            f"{ratio:.2f}x | {v['median_tokens_per_cpu_s']:.0f} |"
        )
    return "\n".join(lines)


def markdown_section(res: dict[str, Any], command: str) -> str:
    c, m, r, chk = res["config"], res["machine"], res["ratios"], res["checks"]
    tokens = res["tokens_per_round"]
    lines = [
        SECTION,
        "",
        f"- Command: `{command}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, Python "
        f"{m['python']}, torch {m['torch']}, {c['threads']} torch threads for every path "
        f"(FLOWFIELD_THREADS={c['threads']} for the server); the paths take turns round by "
        "round, never at the same time; in-process paths run on one model thread, as the service "
        "does",
        f"- Policy: random-initialised Qwen2, d={c['hidden']}, {c['layers']} layers, "
        f"{c['heads']} heads ({c['kv_heads']} KV), MLP {c['intermediate']}, vocab {c['vocab']}, "
        f"{res['model']['parameters'] / 1e6:.1f}M parameters, hooked blocks "
        f"{res['model']['hooked_blocks']}; flow W=d={c['hidden']}, depth {c['flow_depth']}, "
        f"timesteps {list(c['timesteps'])}",
        f"- Workload per round: {c['groups']} groups x {c['group_size']} responses sharing a "
        f"prompt of ~{c['prompt_tokens']} tokens, responses uniform in "
        f"{c['min_response']}-{c['max_response']} tokens ({min(tokens)}-{max(tokens)} response "
        f"tokens per round); {c['rounds']} measured rounds after a {c['warmup_groups']}-group "
        "warm-up round",
        "",
        format_table(res),
        "",
        f"- Library / reference: **{r['library_vs_reference']:.2f}x**; shared-prompt encoding "
        f"alone: {r['share_prompts_speedup']:.2f}x over share_prompts off",
    ]
    if "http_vs_reference" in r:
        lines.append(
            f"- Service end to end / reference: **{r['http_vs_reference']:.2f}x** (target >= 2x);"
            f" HTTP overhead (1 - HTTP / library throughput): **{100 * r['http_overhead']:.1f}%**"
            f" (target < 10%); counted in CPU time of server + client vs. library: "
            f"{100 * r['http_overhead_cpu']:.1f}%; the scheduler ran "
            f"{'/'.join(str(n) for n in res.get('http_batches_per_round', []))} batches in the "
            "measured rounds"
        )
    lines.append(
        f"- Agreement: library vs reference deviations max rel. diff "
        f"{chk['reference_vs_library']:.1e} (all response tokens but the last, whose next-token "
        f"context in a padded batch is a padding latent); share_prompts off vs on "
        f"{chk['no_share_vs_library']:.1e}"
        + (
            f"; HTTP vs library {chk['http_vs_library']:.1e} (token rewards max abs diff "
            f"{chk['http_vs_library_rewards_abs']:.1e})"
            if "http_vs_library" in chk
            else ""
        )
    )
    lines.append(
        "- Ratios are medians of per-round ratios (the paths take turns within each round); "
        "tokens/s are response tokens per wall-clock second; tokens per CPU-second count the "
        "CPU time of every process involved (bench process, and the server for HTTP)"
    )
    return "\n".join(lines) + "\n"


def replace_section(path: Path, section: str) -> None:
    """Put `section` in place of the file's `## /score throughput` section (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
        text = text.rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# ---- command line -----------------------------------------------------------------------------


def _timesteps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated timesteps, got {text!r}") from None


def bench_command(
    groups: int = typer.Option(4, help="groups per measured round"),
    group_size: int = typer.Option(8, help="responses per group (sharing one prompt)"),
    prompt_tokens: int = typer.Option(128, help="typical prompt length (+-12.5%)"),
    min_response: int = typer.Option(64, help="shortest response"),
    max_response: int = typer.Option(256, help="longest response"),
    rounds: int = typer.Option(4, help="measured rounds (after one warm-up round)"),
    warmup_groups: int = typer.Option(1, help="groups in the warm-up round"),
    hidden: int = typer.Option(512, help="policy hidden size d (and flow width W)"),
    layers: int = typer.Option(8, help="policy decoder blocks"),
    heads: int = typer.Option(8, help="attention heads"),
    kv_heads: int = typer.Option(2, help="key/value heads"),
    intermediate: int = typer.Option(1536, help="MLP size"),
    vocab: int = typer.Option(32000, help="vocabulary size"),
    flow_depth: int = typer.Option(4, help="flow residual blocks"),
    timesteps: str = typer.Option("0.8", help="comma-separated flow timesteps"),
    threads: int = typer.Option(2, help="torch threads for every path (and the server)"),
    batch_max_tokens: int = typer.Option(32768, help="scheduler / encoder batch budget"),
    http: bool = typer.Option(True, help="also measure the service over HTTP"),
    seed: int = typer.Option(0, help="weights and workload seed"),
    json_out: Path = typer.Option(None, "--json", help="write all numbers as JSON here"),
    markdown: Path = typer.Option(
        None, help="replace the '## /score throughput' section of this file (BENCHMARKS.md)"
    ),
    workdir: Path = typer.Option(None, help="keep model, flow and server log here"),
) -> None:
    """End-to-end /score throughput vs. the reference computation (RLFR.md s8), as ratios."""
    cfg = BenchConfig(
        groups=groups,
        group_size=group_size,
        prompt_tokens=prompt_tokens,
        min_response=min_response,
        max_response=max_response,
        rounds=rounds,
        warmup_groups=warmup_groups,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=vocab,
        flow_depth=flow_depth,
        timesteps=_timesteps(timesteps),
        threads=threads,
        batch_max_tokens=batch_max_tokens,
        http=http,
        seed=seed,
    )
    if min(groups, group_size, rounds, warmup_groups) < 1 or min_response > max_response:
        raise typer.BadParameter("sizes must be positive and min-response <= max-response")
    res = run_bench(cfg, workdir, log=lambda m: typer.echo(m, err=True))
    typer.echo(format_table(res))
    for key, value in res["ratios"].items():
        typer.echo(f"{key}: {value:.3f}")
    typer.echo("checks (max rel. diff): " + json.dumps(res["checks"]))
    if json_out:
        json_out.write_text(json.dumps(res, indent=2) + "\n")
    if markdown:
        replace_section(markdown, markdown_section(res, command_line(cfg, markdown)))


def command_line(cfg: BenchConfig, markdown: Path | None = None) -> str:
    """The `flowfield bench` command that reproduces this configuration."""
    args = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        name = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(name if value else f"--no-{f.name}")
        elif isinstance(value, tuple):
            args.append(f"{name} {','.join(str(v) for v in value)}")
        else:
            args.append(f"{name} {value}")
    if markdown is not None:
        args.append(f"--markdown {markdown}")
    return " ".join(["flowfield bench", *args])


if __name__ == "__main__":
    typer.run(bench_command)
