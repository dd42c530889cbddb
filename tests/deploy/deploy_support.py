"""Helpers of the deployment tests: a real service and a real Prometheus in subprocesses, and
parsers for the Dockerfile, compose/Kubernetes YAML, the Grafana dashboard and PromQL."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import live_server
import yaml
from live_server import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flowfield.json"
K8S = DEPLOY / "k8s"


# ---------------------------------------------------------------------------- processes


class Server(live_server.Server):
    """`flowfield serve` in a subprocess: the tests' live server (tests/live_server.py)."""

    def __init__(
        self,
        tmp: Path,
        env: dict[str, str] | None = None,
        name: str = "server",
        port: int | None = None,
    ) -> None:
        super().__init__(tmp, env, name=name, port=port)


def find_prometheus() -> str | None:
    """The prometheus binary: on PATH, or installed from Debian's package when we can.

    .ci/run installs the package; this fallback covers a developer machine (root, apt).
    Returns None when it is missing and cannot be installed.
    """
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
    ):
        try:
            ok = subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok and cmd[1] == "install":
            break
    return shutil.which("prometheus")


class Prometheus:
    """A real Prometheus server on a free loopback port with a temporary config and TSDB."""

    def __init__(self, binary: str, tmp: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open for the process's lifetime
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            cwd=tmp,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def query(self, expr: str) -> list[dict]:
        """Instant query through the HTTP API; the result vector (or matrix/scalar as list)."""
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body.get("status") == "success", (expr, body)
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets(self) -> list[dict]:
        return httpx.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


# ---------------------------------------------------------------------------- the service


def service_env_names() -> set[str]:
    """Every FLOWFIELD_* variable the service reads: the Settings fields, plus the extra ones
    read with os.environ in service/ (FLOWFIELD_CONFIG, the learner's FLOWFIELD_LEARNER_*)."""
    from service.settings import Settings

    names = {f"FLOWFIELD_{name.upper()}" for name in Settings.model_fields}
    for path in (REPO / "service").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"""environ(?:\.get)?[\[(]\s*["'](FLOWFIELD_[A-Z0-9_]+)""", text))
    return names


def demo_sample(i: int, reward: float | None = None, wrong: bool = False, **extra) -> dict:
    """A demo-arithmetic rollout (correct, or with a wrong carry)."""
    from flowfield.demo.task import Problem, expert_solution

    p = Problem(1234 + i, 5678)
    text = expert_solution(p)
    if wrong:
        text = text.replace("+1=", "+0=", 1) if "+1=" in text else text.replace("+0=", "+1=", 1)
    sample = {"id": f"s-{i}", "prompt": p.prompt, "response": text, **extra}
    if reward is not None:
        sample["reward"] = reward
    return sample


# ---------------------------------------------------------------------------- YAML


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads compose's merge tags (!reset, !override)."""


def _tagged(tag: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)
        return {"__tag__": tag, "value": value}

    return construct


_ComposeLoader.add_constructor("!reset", _tagged("!reset"))
_ComposeLoader.add_constructor("!override", _tagged("!override"))


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose variable interpolation with an empty environment: ${X:-default} -> default."""
    if isinstance(value, str):
        return _INTERP.sub(lambda m: m.group(3) or "", value)
    return value


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(interpolate(v)) for k, v in env.items()}


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_stages(path: Path) -> list[dict]:
    """The Dockerfile as stages: [{"name", "base", "instructions": [(KEYWORD, args)]}]."""
    lines: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stages: list[dict] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"name": name, "base": parts[0], "instructions": []})
        if stages:
            stages[-1]["instructions"].append((keyword, args))
        else:  # ARG before the first FROM
            stages.append({"name": "__global__", "base": None, "instructions": [(keyword, args)]})
    return stages


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments: JSON exec form, or shell form via sh -c."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def parse_env_instruction(args: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in shlex.split(args):
        k, _, v = tok.partition("=")
        out[k] = v
    return out


# ---------------------------------------------------------------------------- dashboard


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def iter_panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_targets(dash: dict) -> list[tuple[str, dict]]:
    """(panel title, target) for every query target of every panel."""
    return [(p["title"], t) for p in iter_panels(dash) for t in p.get("targets", [])]


def variable_queries(dash: dict) -> list[tuple[str, str, str]]:
    """(name, PromQL selector, label) of every query variable: label_values(selector, label)."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        assert m, f"variable {v['name']}: expected label_values(selector, label), got {q!r}"
        out.append((v["name"], m.group(1), m.group(2)))
    return out


_VAR = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) with concrete values."""

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(repl, expr)


# ---------------------------------------------------------------------------- PromQL

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"""([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'[^']*')""")


def promql_parts(expr: str) -> dict[str, Any]:
    """The parts of a PromQL expression the checks need, without a full parser.

    selectors: [(metric name, [label names matched])], grouping_labels: labels named in
    by/without/on/ignoring/group_* clauses, metrics: every metric name used.
    """
    s = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    selectors: list[tuple[str | None, list[str]]] = []

    def take_selector(m: re.Match) -> str:
        names = [mm.group(1) for mm in _MATCHER.finditer(m.group(2))]
        name = m.group(1)
        if name in _KEYWORDS:  # e.g. `and {job="x"}` is not a metric name
            name = None
        selectors.append((name, names))
        return " __selector__ "

    s = _SELECTOR.sub(take_selector, s)
    grouping: set[str] = set()

    def take_grouping(m: re.Match) -> str:
        grouping.update(x.strip() for x in m.group(2).split(",") if x.strip())
        return " "

    s = _GROUPING.sub(take_grouping, s)
    s = _STRING.sub(" ", s)
    s = re.sub(r"(?<![\w:])[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?(?![\w:])", " ", s)
    for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*(\()?", s):
        name, call = m.group(1), m.group(2)
        if call or name in _KEYWORDS or name == "__selector__":
            continue
        selectors.append((name, []))
    metrics = {name for name, _ in selectors if name}
    return {"selectors": selectors, "grouping_labels": grouping, "metrics": metrics}


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))
