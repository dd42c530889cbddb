"""The Dockerfile, docker-compose.yml, deploy/ and deploy/k8s are consistent with each other and
with the service: ports, probes, volumes, environment variable names, metrics configuration.

No Docker engine or Kubernetes cluster runs here, so these are static checks (plus promtool and
kubectl kustomize when they are installed); test_deploy_observability.py runs the service."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    K8S,
    REPO,
    compose_env,
    dashboard,
    dockerfile_stages,
    exec_form,
    interpolate,
    iter_panels,
    load_compose,
    load_yaml_docs,
    parse_env_instruction,
    service_env_names,
)

ENV_NAMES = service_env_names()
COMPOSE = load_compose(REPO / "docker-compose.yml")
SERVICES = COMPOSE["services"]
STAGES = dockerfile_stages(REPO / "Dockerfile")
RUNTIME = STAGES[-1]
PROBE_PATHS = {"/healthz", "/readyz"}


def _instructions(keyword: str, stage: dict = RUNTIME) -> list[str]:
    return [args for kw, args in stage["instructions"] if kw == keyword]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _instructions("ENV"):
        env.update(parse_env_instruction(args))
    return env


def _exposed_port() -> int:
    (expose,) = _instructions("EXPOSE")
    return int(expose.split("/")[0])


def _runtime_uid() -> str:
    (user,) = _instructions("USER")
    return user.split(":")[0]


def _k8s_docs() -> dict[str, list[dict]]:
    return {p.name: load_yaml_docs(p) for p in sorted(K8S.glob("*.yaml"))}


def _k8s_objects(kind: str | None = None) -> list[dict]:
    objs = [d for name, docs in _k8s_docs().items() if name != "kustomization.yaml" for d in docs]
    return [o for o in objs if kind is None or o["kind"] == kind]


def _k8s_one(kind: str, name: str) -> dict:
    (obj,) = [o for o in _k8s_objects(kind) if o["metadata"]["name"] == name]
    return obj


def _url_host_port(url: str) -> tuple[str, int]:
    m = re.match(r"^\w+://(?:[^@/]*@)?([^:/]+):(\d+)", url)
    assert m, url
    return m.group(1), int(m.group(2))


def _settings_from(env: dict[str, str], monkeypatch):
    """Settings as the service would build them from exactly this environment."""
    from service.settings import Settings

    for name in list(os.environ):
        if name.startswith("FLOWFIELD_"):
            monkeypatch.delenv(name)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_dependencies_before_the_source():
    runtime = RUNTIME["instructions"]
    kws = [kw for kw, _ in runtime]
    torch_at = next(i for i, (kw, a) in enumerate(runtime) if kw == "RUN" and "torch" in a)
    deps_at = next(i for i, (kw, a) in enumerate(runtime) if kw == "RUN" and "requirements" in a)
    assert "--index-url" in runtime[torch_at][1] and "TORCH_INDEX_URL" in runtime[torch_at][1]
    # the CUDA wheel index by default (a build arg can switch to cpu or another CUDA)
    args = dict(a.split("=", 1) for a in _instructions("ARG") if "=" in a)
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])
    # every COPY before the dependency installs brings pyproject.toml only; the source comes
    # after them (from the wheel stage, which alone copies flowfield/ and service/)
    copies = [(i, a) for i, (kw, a) in enumerate(runtime) if kw == "COPY"]
    for i, a in copies:
        if i < deps_at:
            assert a.split()[0] == "pyproject.toml", a
    source_at = [i for i, a in copies if "--from=" in a]
    assert source_at and min(source_at) > max(torch_at, deps_at)
    assert kws.index("CMD") > min(source_at)
    wheel_stage = next(s for s in STAGES if s["name"] == "wheel")
    copied = " ".join(_instructions("COPY", wheel_stage))
    for needed in ("pyproject.toml", "README.md", "flowfield", "service"):
        assert re.search(rf"(^|\s|\./){re.escape(needed)}(\s|$)", copied), needed


def test_dockerfile_packs_what_the_package_needs():
    """The wheel stage copies every package pyproject.toml includes, and the README it names
    (the demo policy and flow ship as package data of flowfield)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.rstrip("*").rstrip(".") for p in includes}
    wheel_stage = next(s for s in STAGES if s["name"] == "wheel")
    copied = {a.split()[0] for a in _instructions("COPY", wheel_stage)}
    copied |= {tok for a in _instructions("COPY", wheel_stage) for tok in a.split()[:-1]}
    for top in tops:
        assert top in copied, f"{top}/ is a package but the Dockerfile does not copy it"
    assert project["project"]["readme"] in copied
    assert (REPO / "flowfield" / "demo" / "assets" / "policy" / "model.safetensors").exists()
    assert "demo/assets/**/*" in project["tool"]["setuptools"]["package-data"]["flowfield"]


def test_dockerfile_requirements_step_reads_the_project_dependencies(tmp_path):
    """The RUN that turns pyproject.toml into requirements.txt works and lists every
    dependency (torch included: already satisfied by the CUDA build installed before it)."""
    (run,) = [a for a in _instructions("RUN") if "requirements" in a]
    code = shlex.split(run.split(">", 1)[0])[2]
    assert shlex.split(run)[:2] == ["python", "-c"]
    copied = tmp_path / "pyproject.toml"
    shutil.copy(REPO / "pyproject.toml", copied)
    out = subprocess.run(
        [sys.executable, "-c", code.replace("/tmp/pyproject.toml", str(copied))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out == [d.replace(" ", "") for d in deps]
    assert any(d.startswith("torch") for d in out)


def test_gateway_config_passes_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if not nginx:
        pytest.skip("no nginx: install Debian's package (apt-get install nginx-light)")
    conf = DEPLOY / "compose" / "nginx.conf"
    out = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-g",
            f"error_log {tmp_path}/error.log; pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]

    def glob(pat: str) -> re.Pattern:
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pat[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pat[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(pat[i]), i + 1
        return re.compile(rx + r"\Z")

    def ignored(path: str) -> bool:
        """Docker's rule: the last matching pattern wins; a directory match covers its
        contents."""
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for pat in patterns:
            neg = pat.startswith("!")
            rx = glob(pat.lstrip("!"))
            if any(rx.match(pre) for pre in prefixes):
                result = not neg
        return result

    for needed in (
        "pyproject.toml",
        "README.md",
        "flowfield/__init__.py",
        "flowfield/demo/assets/policy/model.safetensors",
        "flowfield/demo/assets/flow/flow.safetensors",
        "service/app.py",
        "service/updates/learner.py",
    ):
        assert not ignored(needed), f".dockerignore drops {needed}"
    for junk in (
        ".git/config",
        "runs/x",
        "tests/conftest.py",
        "flowfield/__pycache__/x.pyc",
        "flowfield.egg-info/PKG-INFO",
        ".venv/bin/python",
        "BENCHMARKS.md",
    ):
        assert ignored(junk), f".dockerignore keeps {junk}"


def test_dockerfile_runtime_user_volumes_env_healthcheck():
    uid = _runtime_uid()
    assert uid not in ("root", "0") and uid.isdigit(), "numeric non-root USER (runAsNonRoot)"
    assert _instructions("USER") and [kw for kw, _ in RUNTIME["instructions"]].index("USER") < [
        kw for kw, _ in RUNTIME["instructions"]
    ].index("CMD")
    env = _dockerfile_env()
    assert (
        set(env)
        - {
            "PYTHONDONTWRITEBYTECODE",
            "PYTHONUNBUFFERED",
            "PIP_NO_CACHE_DIR",
            "PIP_DISABLE_PIP_VERSION_CHECK",
            "TOKENIZERS_PARALLELISM",
            "HF_HUB_OFFLINE",
            "PATH",
        }
        <= ENV_NAMES
    )
    assert env["PATH"].startswith("/opt/venv/bin:"), "the flowfield command is the venv's"
    assert env["FLOWFIELD_HOST"] == "0.0.0.0"
    assert int(env["FLOWFIELD_PORT"]) == _exposed_port() == 8000
    (volumes,) = _instructions("VOLUME")
    vols = set(exec_form(volumes)) if volumes.startswith("[") else set(volumes.split())
    assert {"/models", env["FLOWFIELD_CHECKPOINT_DIR"]} <= vols
    (hc,) = _instructions("HEALTHCHECK")
    assert "/healthz" in hc and re.search(r"--start-period=\d+", hc)
    cmd = exec_form(hc.split("CMD", 1)[1])
    assert cmd[0] == "python" and "urllib" in cmd[-1]  # the slim image has no curl
    assert exec_form(_instructions("CMD")[-1]) == ["flowfield", "serve"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: _build_args()[m.group(1)], RUNTIME["base"])
    assert "slim" in base or "cuda" in base


def _build_args() -> dict[str, str]:
    """ARG defaults, global and of the runtime stage."""
    out = {}
    for stage in (STAGES[0], RUNTIME):
        for args in _instructions("ARG", stage):
            k, _, v = args.partition("=")
            out[k] = v
    return out


def test_dockerfile_defaults_to_cuda_and_builds_for_cpu_from_arguments():
    args = _build_args()
    assert "/whl/cu" in args["TORCH_INDEX_URL"], "CUDA is the default build"
    assert {"BASE_IMAGE", "TORCH_VERSION", "TORCH_VARIANT", "TORCH_FIND_LINKS"} <= set(args)
    (torch_run,) = [r for r in _instructions("RUN") if "torch==" in r]
    for a in ("TORCH_VERSION", "TORCH_VARIANT", "TORCH_INDEX_URL", "TORCH_FIND_LINKS"):
        assert a in torch_run
    assert all(s["base"] == "${BASE_IMAGE}" for s in STAGES[1:]), "one base for both stages"
    # the documented CPU build: the same arguments the docker smoke test builds with
    text = (REPO / "Dockerfile").read_text()
    smoke = (REPO / "scripts" / "docker-smoke.sh").read_text()
    for arg in ("TORCH_INDEX_URL", "TORCH_VARIANT=+cpu", "TORCH_FIND_LINKS", "BASE_IMAGE"):
        assert arg in text and arg in smoke, arg
    assert "# syntax=" not in text, "a syntax line makes BuildKit pull its frontend image"


def test_dockerfile_env_makes_valid_settings(monkeypatch):
    env = {k: v for k, v in _dockerfile_env().items() if k.startswith("FLOWFIELD_")}
    s = _settings_from(env, monkeypatch)
    assert s.host == "0.0.0.0" and s.port == 8000
    assert str(s.checkpoint_dir) == "/checkpoints"
    assert s.model_path.exists() and s.flow_path.exists(), "the demo policy serves by default"


# ---------------------------------------------------------------------------- compose

SERVICE_KEYS = {
    "build",
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "expose",
    "ports",
    "volumes",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "stop_grace_period",
    "stop_signal",
    "labels",
    "networks",
    "user",
    "working_dir",
    "logging",
    "ulimits",
    "shm_size",
    "profiles",
    "pull_policy",
    "secrets",
    "configs",
}


def test_compose_has_the_stack_and_only_known_keys():
    assert set(SERVICES) >= {"flowfield", "learner", "redis", "prometheus", "grafana"}
    for name, svc in SERVICES.items():
        unknown = set(svc) - SERVICE_KEYS
        assert not unknown, f"compose service {name}: unknown keys {unknown}"
    assert set(COMPOSE) <= {"name", "services", "volumes", "networks", "secrets", "configs"} | {
        k for k in COMPOSE if k.startswith("x-")
    }


def test_compose_scorer_scales_and_matches_the_image():
    fl = SERVICES["flowfield"]
    assert "container_name" not in fl, "container_name prevents --scale"
    for p in fl.get("ports", []):
        host = str(p).rsplit(":", 1)[0] if ":" in str(p) else ""
        assert not host, f"a fixed host port ({p}) prevents --scale: publish via the gateway"
    assert fl["build"]["context"] == "." and fl["build"]["dockerfile"] == "Dockerfile"
    env = compose_env(fl)
    assert set(env) <= ENV_NAMES, set(env) - ENV_NAMES
    port = int(env.get("FLOWFIELD_PORT", _dockerfile_env()["FLOWFIELD_PORT"]))
    assert port == _exposed_port()
    assert [int(str(e).split("/")[0]) for e in fl["expose"]] == [port]
    assert env["FLOWFIELD_LEARNER"] == "false", "scaled scorers must not train"
    assert env["FLOWFIELD_REDIS_URL"].startswith("redis://")
    host, rport = _url_host_port(env["FLOWFIELD_REDIS_URL"])
    assert host in SERVICES and rport == 6379
    assert env["FLOWFIELD_DEVICE"] == "cuda"
    devices = fl["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    hc = fl["healthcheck"]["test"]
    assert hc[0] == "CMD" and any(p in hc[-1] for p in PROBE_PATHS)
    assert fl["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_scorer_env_makes_valid_settings(monkeypatch):
    s = _settings_from(compose_env(SERVICES["flowfield"]), monkeypatch)
    assert s.learner is False and s.redis_url and s.host == "0.0.0.0"
    assert s.score_api_key is None or not s.score_api_key.get_secret_value()
    s = _settings_from(compose_env(SERVICES["learner"]), monkeypatch)
    assert s.redis_url == compose_env(SERVICES["flowfield"])["FLOWFIELD_REDIS_URL"]


def test_compose_learner_shares_state_with_the_scorers():
    fl, le = SERVICES["flowfield"], SERVICES["learner"]
    assert le["command"] == ["flowfield", "learn"]
    assert le.get("image") == fl.get("image")
    assert le["healthcheck"] == {"disable": True}, "the learner serves no HTTP"
    env_f, env_l = compose_env(fl), compose_env(le)
    assert set(env_l) <= ENV_NAMES
    assert env_l["FLOWFIELD_REDIS_URL"] == env_f["FLOWFIELD_REDIS_URL"]
    assert env_l.get("FLOWFIELD_REDIS_PREFIX") == env_f.get("FLOWFIELD_REDIS_PREFIX")
    ckpt = env_f["FLOWFIELD_CHECKPOINT_DIR"]
    assert ckpt == env_l["FLOWFIELD_CHECKPOINT_DIR"]
    assert ckpt == _dockerfile_env()["FLOWFIELD_CHECKPOINT_DIR"]

    def mounts(svc):
        out = {}
        for v in svc["volumes"]:
            src, dst, *mode = v.split("#")[0].strip().split(":")
            out[dst] = (src, mode)
        return out

    mf, ml = mounts(fl), mounts(le)
    # the same named volume at the same path (Redis stores the checkpoint path)
    assert mf[ckpt][0] == ml[ckpt][0] and mf[ckpt][0] in COMPOSE["volumes"]
    assert ml[ckpt][1] == [], "the learner writes versions"
    assert mf["/models"][0] == ml["/models"][0] in COMPOSE["volumes"]


def test_compose_redis_persists_with_aof():
    r = SERVICES["redis"]
    cmd = r["command"] if isinstance(r["command"], list) else r["command"].split()
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(
        v.split(":")[1] == "/data" and v.split(":")[0] in COMPOSE["volumes"] for v in r["volumes"]
    )


def test_compose_bind_mounts_exist_and_named_volumes_are_declared():
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in COMPOSE["volumes"], f"{name}: volume {src} is not declared"


def _bind_target(service: str, source: str) -> str:
    for v in SERVICES[service]["volumes"]:
        src, dst, *_ = v.split(":")
        if Path(src) == Path(source):
            return dst
    raise AssertionError(f"{service} does not mount {source}")


def test_compose_prometheus_scrapes_every_scorer_replica():
    prom = SERVICES["prometheus"]
    cfg_in_container = _bind_target("prometheus", "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={cfg_in_container}" in prom["command"]
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "flowfield"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # DNS service discovery: one target per replica of the compose service
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["flowfield"] and sd["type"] == "A"
    assert sd["port"] == _exposed_port()


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("no promtool: install Debian's package (apt-get install prometheus)")
    out = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_grafana_is_provisioned_with_no_clicks():
    g = SERVICES["grafana"]
    env = compose_env(g)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    prov = _bind_target("grafana", "./deploy/grafana/provisioning")
    assert prov == "/etc/grafana/provisioning"
    dash_dir = _bind_target("grafana", "./deploy/grafana/dashboards")
    (ds_file,) = (DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yaml")
    (ds,) = yaml.safe_load(ds_file.read_text())["datasources"]
    host, port = _url_host_port(ds["url"])
    assert host == "prometheus" and f"{port}:{port}" in SERVICES["prometheus"]["ports"][0]
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert ds["jsonData"]["timeInterval"] == prom_cfg["global"]["scrape_interval"]
    (prov_file,) = (DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(prov_file.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == dash_dir
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/")
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).exists()
    # the dashboard's datasource variable defaults to the provisioned datasource
    dash = dashboard()
    (var,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == ds["type"] and var["current"]["value"] == ds["uid"]


def test_compose_gateway_fronts_the_scorers():
    gw = SERVICES["gateway"]
    conf = (REPO / _bind_source("gateway", "/etc/nginx/nginx.conf")).read_text()
    listen = int(re.search(r"^\s*listen\s+(\d+);", conf, re.M).group(1))
    published = str(interpolate(gw["ports"][0])).rsplit(":", 1)
    assert int(published[1]) == listen
    m = re.search(r"set\s+\$\w+\s+http://([\w-]+):(\d+);", conf)
    assert m and m.group(1) == "flowfield" and int(m.group(2)) == _exposed_port()
    assert re.search(r"resolver\s+127\.0\.0\.11\s+valid=\d+s", conf), "re-resolve replicas"
    size = re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1)
    from service.settings import Settings

    assert int(size) * 2**20 >= Settings.model_fields["max_body_bytes"].default


def _bind_source(service: str, target: str) -> str:
    for v in SERVICES[service]["volumes"]:
        src, dst, *_ = v.split(":")
        if dst == target:
            return src
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_compose_cpu_override_drops_the_gpu():
    cpu = load_compose(DEPLOY / "compose" / "cpu.yml")
    for name in ("flowfield", "learner"):
        svc = cpu["services"][name]
        assert svc["environment"]["FLOWFIELD_DEVICE"] == "cpu"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices == {"__tag__": "!reset", "value": []}
        assert "deploy" in SERVICES[name]


def _gpu_ids(svc: dict) -> list[str]:
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    if isinstance(devices, dict):  # an !override tag
        devices = devices["value"]
    (d,) = devices
    assert d["driver"] == "nvidia" and "gpu" in d["capabilities"]
    assert "count" not in d, "count: 1 gives every container the first GPU"
    return [str(x) for x in d["device_ids"]]


def test_compose_gpus_are_pinned_by_id_and_one_scorer_per_gpu_is_possible():
    assert _gpu_ids(SERVICES["flowfield"]) == ["${FLOWFIELD_SCORER_GPU:-0}"]
    assert _gpu_ids(SERVICES["learner"]) == ["${FLOWFIELD_LEARNER_GPU:-0}"]
    gpus = load_compose(DEPLOY / "compose" / "gpus.yml")["services"]
    pinned = {name: _gpu_ids(svc) for name, svc in gpus.items()}
    ids = [i for v in pinned.values() for i in v]
    assert len(ids) == len(set(ids)) >= 3, f"every service on a GPU of its own: {pinned}"
    extra = [n for n in gpus if n not in SERVICES]
    assert extra, "the override adds scorers"
    for name in extra:
        svc = gpus[name]
        assert svc["extends"] == {"file": "docker-compose.yml", "service": "flowfield"}
        # behind the scorers' DNS name: the gateway and Prometheus find them as replicas
        assert "flowfield" in svc["networks"]["default"]["aliases"]
        assert "container_name" not in svc and "ports" not in svc


# ---------------------------------------------------------------------------- dashboard (static)


def test_dashboard_structure():
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in iter_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    for p in iter_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and refs, p["title"]
        for t in p["targets"]:
            assert t["expr"].strip()
            if p["type"] == "heatmap":
                assert t.get("format") == "heatmap" and "_bucket" in t["expr"]
            # selection variables are applied to every query
            if "flowfield_" in t["expr"]:
                assert "$instance" in t["expr"], (p["title"], t["expr"])
    titles = " | ".join(p["title"].lower() for p in iter_panels(dash))
    for wanted in (
        "requests/s",
        "errors",
        "latency",
        "queue depth",
        "batch size",
        "tokens scored",
        "token reward",
        "flow return",
        "deviation",
        "accepted",
        "pending",
        "learner loss",
        "learner steps",
        "flow version",
        "encoder revision",
    ):
        assert wanted in titles, f"no panel about {wanted}"


# ---------------------------------------------------------------------------- Kubernetes

CONTAINER_KEYS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "ports",
    "env",
    "envFrom",
    "resources",
    "startupProbe",
    "livenessProbe",
    "readinessProbe",
    "lifecycle",
    "securityContext",
    "volumeMounts",
}
PROBE_KEYS = {
    "httpGet",
    "exec",
    "tcpSocket",
    "grpc",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "failureThreshold",
    "successThreshold",
    "terminationGracePeriodSeconds",
}
POD_SPEC_KEYS = {
    "containers",
    "initContainers",
    "volumes",
    "securityContext",
    "serviceAccountName",
    "terminationGracePeriodSeconds",
    "nodeSelector",
    "tolerations",
    "affinity",
    "imagePullSecrets",
    "priorityClassName",
    "topologySpreadConstraints",
}


def _workloads() -> list[dict]:
    return _k8s_objects("Deployment") + _k8s_objects("StatefulSet")


def test_k8s_manifests_parse_and_kustomization_lists_them():
    docs = _k8s_docs()
    (kust,) = docs["kustomization.yaml"]
    listed = set(kust["resources"])
    for name in listed:
        assert (K8S / name).exists(), f"kustomization lists missing {name}"
    optional = {"servicemonitor.yaml"}
    assert set(docs) - {"kustomization.yaml"} - optional == listed
    known = {
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("v1", "PersistentVolumeClaim"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("policy/v1", "PodDisruptionBudget"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }
    for name, objs in docs.items():
        if name == "kustomization.yaml":
            continue
        for o in objs:
            assert (o["apiVersion"], o["kind"]) in known, (name, o.get("kind"))
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", o["metadata"]["name"])
    for w in _workloads():
        spec = w["spec"]["template"]["spec"]
        assert set(spec) <= POD_SPEC_KEYS, set(spec) - POD_SPEC_KEYS
        for c in spec["containers"]:
            assert set(c) <= CONTAINER_KEYS, (w["metadata"]["name"], set(c) - CONTAINER_KEYS)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in c:
                    assert set(c[probe]) <= PROBE_KEYS, (probe, set(c[probe]) - PROBE_KEYS)


def test_k8s_kustomize_renders():
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl: install Debian's package (apt-get install kubernetes-client)")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds.count("Deployment") == 2 and "StatefulSet" in kinds
    for d in rendered:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "flowfield"


def test_k8s_selectors_match_their_pods():
    for w in _workloads():
        sel = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), w["metadata"]["name"]
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in _workloads()
    }
    for svc in _k8s_objects("Service"):
        sel = svc["spec"]["selector"]
        matched = [n for n, labels in pods.items() if sel.items() <= labels.items()]
        assert matched, f"Service {svc['metadata']['name']} selects no pods"
        if svc["metadata"]["name"] == "flowfield":
            assert matched == ["flowfield-scorer"], "the learner serves no HTTP"


def _container(deploy: str) -> dict:
    (c,) = _k8s_one("Deployment", deploy)["spec"]["template"]["spec"]["containers"]
    return c


def _env_of(deploy: str) -> dict[str, str]:
    """The container's environment as the pod sees it (ConfigMaps, Secrets, env)."""
    c = _container(deploy)
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(_k8s_one("ConfigMap", src["configMapRef"]["name"])["data"])
        if "secretRef" in src:
            sec = _k8s_one("Secret", src["secretRef"]["name"])
            env.update(sec.get("stringData", {}))
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "")
    return env


def test_k8s_env_names_are_read_by_the_service():
    for cm in _k8s_objects("ConfigMap"):
        assert set(cm["data"]) <= ENV_NAMES, set(cm["data"]) - ENV_NAMES
    for sec in _k8s_objects("Secret"):
        assert set(sec["stringData"]) <= ENV_NAMES
        assert set(sec["stringData"]) == {"FLOWFIELD_SCORE_API_KEY", "FLOWFIELD_UPDATE_API_KEY"}
    for w in _workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                assert e["name"] in ENV_NAMES, e["name"]
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in src else "Secret"
                _k8s_one(kind, ref["name"])  # exists


def test_k8s_env_makes_valid_settings(monkeypatch):
    s = _settings_from(_env_of("flowfield-scorer"), monkeypatch)
    assert s.learner is False and s.device == "cuda" and s.host == "0.0.0.0"
    assert s.score_api_key and s.update_api_key, "the scorers get the API keys"
    s = _settings_from(_env_of("flowfield-learner"), monkeypatch)
    assert s.redis_url


def test_k8s_scorer_ports_probes_gpu_and_scrape_annotations():
    dep = _k8s_one("Deployment", "flowfield-scorer")
    c = _container("flowfield-scorer")
    env = _env_of("flowfield-scorer")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": int(env["FLOWFIELD_PORT"])}
    assert int(env["FLOWFIELD_PORT"]) == _exposed_port()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        port = c[probe]["httpGet"]["port"]
        assert port in ports or port in ports.values(), probe
    assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert dep["spec"]["replicas"] >= 2
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == ports["http"]
    assert ann["prometheus.io/path"] == "/metrics"
    assert c["args"] == ["flowfield", "serve"]
    svc = _k8s_one("Service", "flowfield")
    (sp,) = svc["spec"]["ports"]
    assert sp["targetPort"] in ports and sp["port"] == ports["http"]
    sm = _k8s_one("ServiceMonitor", "flowfield")
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == sp["name"] and ep["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # the drain (30 s in service/cli.py) fits in the grace period
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30


def test_k8s_learner_is_one_replica_with_the_same_state():
    dep = _k8s_one("Deployment", "flowfield-learner")
    c = _container("flowfield-learner")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert c["args"] == ["flowfield", "learn"]
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(c)
    # it serves only its metrics, on the port the scrape annotations name
    (port,) = c["ports"]
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == port["containerPort"]
    assert _env_of("flowfield-learner")["FLOWFIELD_LEARNER_METRICS_PORT"] == str(
        port["containerPort"]
    )
    assert _env_of("flowfield-learner").get("FLOWFIELD_LEARNER", "true") != "false"
    env_s, env_l = _env_of("flowfield-scorer"), _env_of("flowfield-learner")
    for k in ("FLOWFIELD_REDIS_URL", "FLOWFIELD_REDIS_PREFIX", "FLOWFIELD_CHECKPOINT_DIR"):
        assert env_s[k] == env_l[k], k


def test_k8s_every_service_monitor_endpoint_reaches_a_metrics_port():
    """Each ServiceMonitor selects a Service that has the endpoint's port, and that port
    leads to a container port serving /metrics: the scorers' http, the learner's metrics."""
    pods = {w["metadata"]["name"]: w for w in _k8s_objects("Deployment")}
    scraped = set()
    for sm in _k8s_objects("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in _k8s_objects("Service")
                if sel.items() <= s["metadata"]["labels"].items()]
        assert svcs, f"ServiceMonitor {sm['metadata']['name']} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert ep["path"] == "/metrics"
            for svc in svcs:
                (sp,) = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
                for name, dep in pods.items():
                    labels = dep["spec"]["template"]["metadata"]["labels"]
                    if svc["spec"]["selector"].items() <= labels.items():
                        (c,) = dep["spec"]["template"]["spec"]["containers"]
                        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                        assert sp["targetPort"] in ports, (svc["metadata"]["name"], ports)
                        scraped.add(name)
    assert scraped == {"flowfield-scorer", "flowfield-learner"}
    learner = _k8s_one("Service", "flowfield-learner")
    (lp,) = learner["spec"]["ports"]
    assert lp["port"] == int(_env_of("flowfield-learner")["FLOWFIELD_LEARNER_METRICS_PORT"])


def test_k8s_scorers_have_a_disruption_budget_that_lets_nodes_drain():
    (pdb,) = _k8s_objects("PodDisruptionBudget")
    scorer = _k8s_one("Deployment", "flowfield-scorer")
    labels = scorer["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    learner = _k8s_one("Deployment", "flowfield-learner")["spec"]["template"]["metadata"]
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= learner["labels"].items()
    # never unsatisfiable: at least one scorer may always be evicted, even with one replica
    assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] >= 1


def test_k8s_volumes_and_claims():
    claims = {o["metadata"]["name"]: o for o in _k8s_objects("PersistentVolumeClaim")}
    mounts_by_claim: dict[str, set[tuple[str, str]]] = {}
    for w in _k8s_objects("Deployment"):
        spec = w["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        for c in spec["containers"]:
            for m in c["volumeMounts"]:
                assert m["name"] in vols, f"{w['metadata']['name']}: no volume {m['name']}"
                claim = vols[m["name"]]["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"no PVC {claim}"
                mounts_by_claim.setdefault(claim, set()).add(
                    (w["metadata"]["name"], m["mountPath"])
                )
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert str(spec["securityContext"]["runAsUser"]) == _runtime_uid()
    ckpt = _env_of("flowfield-scorer")["FLOWFIELD_CHECKPOINT_DIR"]
    (claim,) = [c for c, ms in mounts_by_claim.items() if any(p == ckpt for _, p in ms)]
    assert mounts_by_claim[claim] == {("flowfield-scorer", ckpt), ("flowfield-learner", ckpt)}
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], "shared across nodes"
    learner_mounts = {m["mountPath"]: m for m in _container("flowfield-learner")["volumeMounts"]}
    assert not learner_mounts[ckpt].get("readOnly"), "the learner writes versions"


def test_k8s_redis_is_persistent_and_matches_the_url():
    env = _env_of("flowfield-scorer")
    host, port = _url_host_port(env["FLOWFIELD_REDIS_URL"])
    svc = _k8s_one("Service", host)
    assert any(p["port"] == port for p in svc["spec"]["ports"])
    sts = _k8s_one("StatefulSet", "redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--appendonly") + 1] == "yes"
    assert c["args"][c["args"].index("--maxmemory-policy") + 1] == "noeviction"
    data_dir = c["args"][c["args"].index("--dir") + 1]
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert any(
        m["name"] == vct["metadata"]["name"] and m["mountPath"] == data_dir
        for m in c["volumeMounts"]
    )
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
