"""The Grafana dashboard against a running service and a real Prometheus.

One service (embedded defaults, in-process learner, so the learner metrics have data too) gets
/score and /update traffic, including an error, skipped samples and a duplicate update_id. Then:
- every metric and label any dashboard query uses is in the service's /metrics;
- a real Prometheus (Debian package `prometheus`) scraping the service evaluates every dashboard
  query, with Grafana's variables replaced by concrete values, and each returns data;
- the health checks of the Dockerfile and docker-compose.yml and the Kubernetes probes pass
  against the service (and the health checks fail when nothing listens).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    K8S,
    REPO,
    Prometheus,
    Server,
    dashboard,
    dashboard_targets,
    demo_sample,
    dockerfile_stages,
    exec_form,
    find_prometheus,
    free_port,
    legend_labels,
    load_compose,
    load_yaml_docs,
    promql_parts,
    substitute,
    variable_queries,
)
from prometheus_client.parser import text_string_to_metric_families

# slow lane: Prometheus scraping a live service
pytestmark = pytest.mark.slow

JOB = "flowfield"  # the job name of deploy/prometheus/prometheus.yml
RATE_WINDOW = "1m"  # stands in for $__rate_interval: covers the whole test's traffic
TARGET_LABELS = {"job", "instance"}


def _served(server: Server) -> dict[str, list[tuple[dict, float]]]:
    """The service's /metrics: sample name -> [(labels, value)]."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    out: dict[str, list[tuple[dict, float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _drive(client: httpx.Client, rnd: int) -> None:
    """One round of traffic: scoring, a bad request, updates (accepted, skipped, duplicate)."""
    for i in range(3):
        body = {
            "samples": [
                demo_sample(10 * rnd + i, reward=1.0, group_id=f"g{rnd}-{i}"),
                demo_sample(10 * rnd + i, reward=0.0, wrong=True, group_id=f"g{rnd}-{i}",
                            id=f"w-{rnd}-{i}"),
            ],
            "options": {"return_deviations": True, "return_advantages": True},
        }
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
    assert client.post("/score", json={"samples": [demo_sample(rnd)]}).status_code == 200
    bad = client.post("/v1/score", json={"samples": [{"id": "no-response"}]})
    assert bad.status_code == 422, bad.text
    upd = {
        "update_id": f"round-{rnd}",
        "samples": [demo_sample(100 * rnd + i, reward=1.0) for i in range(4)]
        + [demo_sample(100 * rnd + 9, reward=0.0, wrong=True)],
    }
    r = client.post("/v1/update", json=upd)
    assert r.status_code == 202 and r.json()["accepted"] == 4, r.text
    assert client.post("/v1/update", json=upd).json()["duplicate"] is True


def _wait_version(client: httpx.Client, version: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/v1/flow").json()["flow_version"] >= version:
            return
        time.sleep(0.2)
    raise AssertionError(f"the learner did not publish version {version}")


def _wait_scraped(prom: Prometheus, server: Server, steps: int, timeout: float = 30.0) -> None:
    """Until the service counts `steps` learner steps and Prometheus holds its current
    counters (a scrape after the traffic)."""
    names = ("flowfield_tokens_scored_total", "flowfield_learner_steps_total")
    deadline = time.time() + timeout
    want: dict = {}
    got: dict = {}
    while time.time() < deadline:
        served = _served(server)
        want = {name: served[name][0][1] for name in names}
        got = {}
        for name in names:
            res = prom.query(f'{name}{{job="{JOB}"}}')
            got[name] = float(res[0]["value"][1]) if res else None
        if want["flowfield_learner_steps_total"] >= steps and got == want:
            return
        time.sleep(0.3)
    raise AssertionError(f"Prometheus did not scrape the traffic: {got} != {want}\n{prom.log()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A service with traffic, and (when installed) a Prometheus that scraped it."""
    tmp = tmp_path_factory.mktemp("deploy-obs")
    binary = find_prometheus()
    port = free_port()
    prom = None
    if binary:
        deploy_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        (job,) = [j for j in deploy_cfg["scrape_configs"] if j["job_name"] == JOB]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": job.get("metrics_path", "/metrics"),
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    # the compose stack finds replicas by DNS; here the one service
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                }
            ],
        }
        (tmp / "prom").mkdir()
        prom = Prometheus(binary, tmp / "prom", config)
    server = None
    try:
        server = Server(
            tmp,
            env={"FLOWFIELD_LEARNER_BATCH": "4", "FLOWFIELD_LEARNER_BLOCK_MS": "200"},
            name="obs",
            port=port,
        )
        with server.client() as client:
            _drive(client, 1)
            _wait_version(client, 1)
            if prom:
                _wait_scraped(prom, server, steps=1)
            _drive(client, 2)  # a second round, so that rates over the window are non-zero
            _wait_version(client, 2)
            if prom:
                _wait_scraped(prom, server, steps=2)
        yield server, prom
    finally:
        if server:
            server.stop()
        if prom:
            prom.stop()


def _all_exprs() -> list[tuple[str, str, str]]:
    """(where, expr, legend) of every panel query, and each query variable's selector."""
    dash = dashboard()
    out = [(title, t["expr"], t.get("legendFormat", "")) for title, t in dashboard_targets(dash)]
    out += [(f"variable ${name}", sel, "") for name, sel, _ in variable_queries(dash)]
    return out


def test_every_dashboard_metric_and_label_is_exported(stack):
    server, _ = stack
    served = _served(server)
    labels_of = {name: set().union(*(set(lbl) for lbl, _ in s)) for name, s in served.items()}
    problems = []
    for where, expr, legend in _all_exprs():
        parts = promql_parts(expr)
        assert parts["metrics"], f"{where}: no metric in {expr}"
        available = set(TARGET_LABELS)
        for name, matchers in parts["selectors"]:
            if name is None:
                continue
            if name not in served:
                problems.append(f"{where}: {name} is not exported by the service")
                continue
            available |= labels_of[name]
            unknown = set(matchers) - labels_of[name] - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {name} has no label(s) {sorted(unknown)}")
        for label in parts["grouping_labels"] | legend_labels(legend):
            if label not in available:
                problems.append(f"{where}: label {label!r} is on none of its metrics")
    assert not problems, "\n".join(problems)


def test_prometheus_evaluates_every_dashboard_query(stack):
    server, prom = stack
    if prom is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: .ci/run must install the Debian package")
        pytest.skip("no prometheus binary: install Debian's package (apt-get install prometheus)")
    (target,) = [t for t in prom.targets() if t["labels"]["job"] == JOB]
    assert target["health"] == "up", target
    instance = target["labels"]["instance"]
    values = {
        "job": JOB,
        "instance": instance,  # as Grafana puts a single value into =~
        "endpoint": ".*",
        "__rate_interval": RATE_WINDOW,
        "__interval": "5s",
        "__range": RATE_WINDOW,
    }
    empty, nan_only = [], []
    for where, expr, _ in _all_exprs():
        if where.startswith("variable "):
            label = next(lbl for n, _, lbl in variable_queries(dashboard())
                         if f"variable ${n}" == where)
            query = f"count by ({label}) ({substitute(expr, values)})"
        else:
            query = substitute(expr, values)
        result = prom.query(query)
        if not result:
            empty.append(f"{where}: {query}")
            continue
        finite = [r for r in result if math.isfinite(float(r["value"][1]))]
        if not finite:
            nan_only.append(f"{where}: {query} -> {result}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    assert not nan_only, "queries with only NaN:\n" + "\n".join(nan_only)


def _healthcheck_commands() -> dict[str, list[str]]:
    """The Dockerfile's HEALTHCHECK and the compose scorer's healthcheck, as argv."""
    runtime = dockerfile_stages(REPO / "Dockerfile")[-1]
    (hc,) = [a for kw, a in runtime["instructions"] if kw == "HEALTHCHECK"]
    docker = exec_form(hc.split("CMD", 1)[1])
    compose = load_compose(REPO / "docker-compose.yml")["services"]["flowfield"]["healthcheck"]
    test = compose["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    compose_cmd = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    cmds = {"Dockerfile HEALTHCHECK": docker, "compose flowfield healthcheck": compose_cmd}
    for name, cmd in cmds.items():
        assert cmd[0] == "python", f"{name}: the image has python, not curl"
        cmds[name] = [sys.executable, *cmd[1:]]
    return cmds


def test_health_checks_and_probes_hit_the_running_service(stack):
    server, _ = stack
    dead = free_port()
    for name, cmd in _healthcheck_commands().items():
        ok = subprocess.run(cmd, env={**os.environ, "FLOWFIELD_PORT": str(server.port)},
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, f"{name} failed against a healthy service: {ok.stderr}"
        down = subprocess.run(cmd, env={**os.environ, "FLOWFIELD_PORT": str(dead)},
                              capture_output=True, text=True, timeout=30)
        assert down.returncode != 0, f"{name} passed with nothing listening"
    paths = set()
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_docs(path):
            if doc.get("kind") != "Deployment":
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if "httpGet" in c.get(probe, {}):
                        paths.add(c[probe]["httpGet"]["path"])
    assert paths == {"/healthz", "/readyz"}
    for p in sorted(paths):
        assert httpx.get(server.url + p, timeout=5).status_code == 200, p
    assert httpx.get(server.url + "/metrics", timeout=5).status_code == 200
