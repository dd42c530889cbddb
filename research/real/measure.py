"""`measure`: the current product (flowfield fit / eval / serve) on the real model, as is.

Runs, each under /usr/bin/time -v (wall time and peak RSS), with FLOWFIELD_THREADS,
OMP_NUM_THREADS and --threads set to --threads:

1. flowfield fit --model <out>/model --data <expert jsonl> --out <out>/fits/<name>
   --epochs E --batch-tokens B   (a short fit: the default --min-steps is 2,000)
2. flowfield eval --model ... --flow <fit> --data <out>/rollouts/dev.jsonl --json ...
   (the DEV split only)
3. flowfield serve --model ... --flow <fit> on a free port; /readyz; one /v1/score request
   with text, one with ids, the same rollout with "<|im_end|>" left on, and /get_reward;
   then the process's RSS (VmRSS, VmHWM) and SIGTERM.

Everything lands in <out>/measure/: the logs, eval.json and measurements.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib import error, request


@dataclass
class MeasureConfig:
    out: Path = Path("runs/real")
    data: Path | None = None  # default: <out>/expert/templated.jsonl
    name: str = "templated256"
    limit: int = 256  # fit on the first N samples of --data (0 = all): encoding is the cost
    epochs: float = 25.0
    batch_tokens: int = 512
    threads: int = 1
    bootstrap: int = 200
    steps: tuple[str, ...] = ("fit", "eval", "serve")


def _env(threads: int, out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLOWFIELD_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        FLOWFIELD_CHECKPOINT_DIR=str(out / "measure" / "checkpoints"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _flowfield() -> list[str]:
    exe = shutil.which("flowfield")
    return [exe] if exe else [sys.executable, "-c", "from flowfield.cli import app; app()"]


def _shown(cmd: list[str]) -> str:
    """The command as a reader would type it (`flowfield ...`)."""
    return " ".join(["flowfield", *cmd[len(_flowfield()) :]])


def parse_time_v(text: str) -> dict:
    """Wall time and peak RSS from /usr/bin/time -v's report."""
    out: dict = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["max_rss_mb"] = round(int(m.group(1)) / 1024, 1)
    cpu = [re.search(rf"{k} time \(seconds\): ([\d.]+)", text) for k in ("User", "System")]
    if all(cpu):
        out["cpu_s"] = round(sum(float(c.group(1)) for c in cpu), 1)
    m = re.search(r"Percent of CPU this job got: (\d+)%", text)
    if m:
        out["cpu_percent"] = int(m.group(1))
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        out["wall_s"] = round(_clock(m.group(1)), 1)
    return out


def _clock(text: str) -> float:
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _timed(cmd: list[str], env: dict, log: Path) -> tuple[int, str, dict]:
    log.parent.mkdir(parents=True, exist_ok=True)
    full = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
    print(f"[measure] $ {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(full, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    text = log.read_text(errors="replace")
    return rc, text, parse_time_v(text)


def parse_fit_log(text: str) -> dict:
    """Steps, loss, timings and the held-out report from `flowfield fit`'s output."""
    res: dict = {}
    m = re.search(r"fit: (\d+) steps, (\d+) tokens, final loss ([\d.]+), ([\d.]+)s", text)
    if m:
        res.update(steps=int(m.group(1)), tokens=int(m.group(2)), final_loss=float(m.group(3)))
        res["loop_and_report_s"] = float(m.group(4))
    enc = re.findall(r"encode expert data:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<", text)
    if enc:
        done, _, elapsed = enc[-1]
        res["encode_s"] = _clock(elapsed)
        res["encode_s_per_sample"] = round(_clock(elapsed) / max(1, int(done)), 3)
    bars = re.findall(r"fit:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<", text)
    if bars:
        done, _, elapsed = bars[-1]
        res["loop_s"] = _clock(elapsed)
        res["seconds_per_step"] = round(_clock(elapsed) / max(1, int(done)), 4)
    m = re.search(r"fitting flow: (.*)", text)
    if m:
        res["plan"] = m.group(1)
    m = re.search(r"^held-out report \(.*$(?:\n  .*$)*", text, re.M)
    res["report"] = [line for line in m.group(0).splitlines() if line.strip()] if m else []
    m = re.search(r"^early stopping: .*$", text, re.M)
    if m:
        res["early_stopping"] = m.group(0)
    res["warnings"] = re.findall(r"WARNING \S+ (.*)", text)
    return res


def measure_fit(cfg: MeasureConfig, env: dict) -> dict:
    out = Path(cfg.out)
    data = Path(cfg.data or out / "expert" / "templated.jsonl")
    if cfg.limit:
        lines = [x for x in data.read_text().splitlines() if x.strip()][: cfg.limit]
        data = out / "measure" / f"{cfg.name}-data.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("\n".join(lines) + "\n")
    fit_out = out / "fits" / cfg.name
    cmd = [
        *_flowfield(), "fit", "--model", str(out / "model"), "--data", str(data),
        "--out", str(fit_out), "--epochs", f"{cfg.epochs:g}",
        "--batch-tokens", str(cfg.batch_tokens), "--threads", str(cfg.threads),
    ]
    rc, text, timing = _timed(cmd, env, out / "measure" / f"fit-{cfg.name}.log")
    res: dict = {"command": _shown(cmd), "rc": rc, **timing, "flow": str(fit_out),
                 "data": str(data)}
    res.update(parse_fit_log(text))
    return res


def measure_eval(cfg: MeasureConfig, env: dict) -> dict:
    out = Path(cfg.out)
    fit_out = out / "fits" / cfg.name
    js = out / "measure" / f"eval-dev-{cfg.name}.json"
    cmd = [
        *_flowfield(), "eval", "--model", str(out / "model"), "--flow", str(fit_out),
        "--data", str(out / "rollouts" / "dev.jsonl"), "--json", str(js),
        "--threads", str(cfg.threads), "--bootstrap", str(cfg.bootstrap),
    ]
    rc, text, timing = _timed(cmd, env, out / "measure" / f"eval-dev-{cfg.name}.log")
    res: dict = {"command": _shown(cmd), "rc": rc, **timing, "json": str(js)}
    if rc != 0 or not js.is_file():
        res["error"] = text[-2000:]
        return res
    report = json.loads(js.read_text())
    ev = report["evaluations"][0]
    res.update(
        n=ev["n"], accuracy=ev["accuracy"], auroc=ev["auroc"],
        mean_deviation_correct=ev["mean_deviation_correct"],
        mean_deviation_incorrect=ev["mean_deviation_incorrect"],
        localisation=ev.get("localisation"), eval_seconds=report.get("seconds"),
        setup={k: report["setup"][k] for k in ("encoder", "layer_mapping", "dtype", "threads")},
    )
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 300) -> tuple[int, dict, float]:
    data = json.dumps(body).encode()
    req = request.Request(url, data=data, headers={"content-type": "application/json"})
    t0 = time.time()
    try:
        with request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), time.time() - t0
    except error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.time() - t0


def _rss(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":", 1)
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def measure_serve(cfg: MeasureConfig, env: dict) -> dict:
    out = Path(cfg.out)
    fit_out = out / "fits" / cfg.name
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [*_flowfield(), "serve", "--model", str(out / "model"), "--flow", str(fit_out),
           "--port", str(port)]
    log = out / "measure" / f"serve-{cfg.name}.log"
    print(f"[measure] $ {' '.join(cmd)}", flush=True)
    res: dict = {"command": _shown(cmd), "port": port}
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        while time.time() - t0 < 300:
            if proc.poll() is not None:
                res["error"] = f"exited {proc.returncode}: " + log.read_text()[-2000:]
                return res
            try:
                with request.urlopen(base + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (error.URLError, OSError):
                pass
            time.sleep(0.5)
        res["ready_s"] = round(time.time() - t0, 1)
        res["rss_idle_mb"] = _rss(proc.pid)
        text = (out / "rollouts" / "dev.jsonl").read_text()
        rows = [json.loads(x) for x in text.splitlines() if x.strip()]
        # a right and a wrong rollout of one problem (a mixed group)
        mixed = [
            (a, b) for a in rows for b in rows
            if a["group_id"] == b["group_id"] and a["reward"] == 1.0 and b["reward"] == 0.0
            and b["first_error"] is not None
        ]
        right, wrong = mixed[0]
        opts = {"return_deviations": True, "return_advantages": True}

        def sample(r: dict, mode: str, suffix: str = "") -> dict:
            s = {"id": f"{r['id']}-{mode}", "group_id": r["group_id"], "reward": r["reward"]}
            if mode == "ids":
                s.update(prompt_ids=r["prompt_ids"], response_ids=r["response_ids"])
            else:
                s.update(prompt=r["prompt"], response=r["response"] + suffix)
            return s

        calls = {
            "text": [sample(right, "text"), sample(wrong, "text")],
            "ids": [sample(right, "ids"), sample(wrong, "ids")],
            "text_with_im_end": [sample(right, "text", "<|im_end|>"),
                                 sample(wrong, "text", "<|im_end|>")],
        }
        res["requests"] = {}
        for name, samples in calls.items():
            code, body, dt = _post(base + "/v1/score", {"samples": samples, "options": opts})
            res["requests"][name] = {"status": code, "seconds": round(dt, 3), "body": body}
        code, body, dt = _post(
            base + "/get_reward",
            {"query": [r["prompt"] + r["response"] + "<|im_end|>" for r in (right, wrong)],
             "prompts": [r["prompt"] for r in (right, wrong)]},
        )
        res["requests"]["get_reward_with_im_end"] = {
            "status": code, "seconds": round(dt, 3), "body": body}
        res["rollouts"] = {"right": right["id"], "wrong": wrong["id"],
                           "wrong_first_error": wrong["first_error"],
                           "right_tokens": len(right["response_ids"]),
                           "wrong_tokens": len(wrong["response_ids"])}
        res["compare"] = _compare(res["requests"])
        res["rss_after_mb"] = _rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    res["exit_code"] = proc.returncode
    return res


def _compare(reqs: dict) -> dict:
    """Text vs ids: same token count and deviations? What does <|im_end|> add?"""
    out = {}
    try:
        t = reqs["text"]["body"]["results"]
        i = reqs["ids"]["body"]["results"]
        e = reqs["text_with_im_end"]["body"]["results"]
        out["text_tokens"] = [r["num_tokens"] for r in t]
        out["ids_tokens"] = [r["num_tokens"] for r in i]
        out["im_end_tokens"] = [r["num_tokens"] for r in e]
        out["text_equals_ids"] = all(a["deviations"] == b["deviations"] for a, b in zip(t, i))
        out["flow_return_text"] = [r["flow_return"] for r in t]
        out["flow_return_im_end"] = [r["flow_return"] for r in e]
        out["im_end_last_reward"] = [r["token_rewards"][-1] for r in e]
        out["im_end_last_deviation"] = [r["deviations"][-1] for r in e]
        out["deviation_max_text"] = [max(r["deviations"]) for r in t]
    except (KeyError, TypeError, ValueError) as exc:
        out["error"] = repr(exc)
    return out


def code_state() -> dict:
    """Which product code ran: HEAD and the uncommitted changes under flowfield/ and service/
    (the tree is shared and edited while measurements run)."""
    import hashlib

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else ""

    diff = git("diff", "HEAD", "--", "flowfield", "service")
    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "dirty_files": len(git("diff", "--name-only", "HEAD", "--", "flowfield", "service")
                           .split()),
        "diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
    }


def run_measure(cfg: MeasureConfig) -> dict:
    out = Path(cfg.out)
    env = _env(cfg.threads, out)
    path = out / "measure" / "measurements.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault(cfg.name, {})
    for step in cfg.steps:
        fn = {"fit": measure_fit, "eval": measure_eval, "serve": measure_serve}[step]
        load_before = [round(x, 2) for x in os.getloadavg()]
        res = results[cfg.name][step] = fn(cfg, env)
        res["threads"] = cfg.threads
        res["code"] = code_state()
        res["cpus"] = os.cpu_count()
        # other work on the machine (shared cores) inflates every time above
        res["loadavg_1_5_15_before"] = load_before
        res["loadavg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        if res.get("rc", 0) != 0 or "error" in res:
            print(f"[measure] {step} failed; stopping (see {path})", flush=True)
            break
    return results
