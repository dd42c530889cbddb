# flowfield reward service. Default: the CUDA build of PyTorch, for GPU serving.
#
#   docker build -t flowfield .
#   docker run -p 8000:8000 flowfield                      # bundled demo policy and flow, CPU
#   docker run --gpus all -e FLOWFIELD_DEVICE=cuda -p 8000:8000 \
#     -v /srv/policies:/models:ro -v flowfield-checkpoints:/checkpoints \
#     -e FLOWFIELD_MODEL_PATH=/models/my-policy -e FLOWFIELD_FLOW_PATH=/models/my-flow flowfield
#   docker run ... flowfield flowfield learn               # the stand-alone learner (needs Redis)
#
# PyTorch comes from the PyTorch CUDA wheel index (TORCH_INDEX_URL); the CUDA runtime
# libraries are inside the wheel, so the base image needs no CUDA toolkit, only an NVIDIA
# driver and the NVIDIA container toolkit on the host. Build arguments:
#
#   BASE_IMAGE       any Debian/Ubuntu-like image with python3 (>= 3.11) and its venv module;
#                    default python:3.11-slim. A base made locally works as well, e.g. from
#                    Debian's packages: debootstrap --variant=minbase
#                    --include=python3,python3-venv,ca-certificates bookworm rootfs, then
#                    `tar -C rootfs -c . | docker import - flowfield-base` (what
#                    scripts/docker-smoke.sh does where no registry is reachable)
#   TORCH_VERSION    2.13.0
#   TORCH_INDEX_URL  where torch comes from: https://download.pytorch.org/whl/cu128 (default),
#                    .../whl/cu126 for another CUDA, .../whl/cpu for a small CPU-only image
#   TORCH_VARIANT    a local version suffix to pin the build, e.g. "+cpu" (default: none)
#   TORCH_FIND_LINKS extra wheel locations (a directory listing URL), e.g. a local mirror
#                    that holds the torch wheel; empty by default
#
#   # CPU image, torch from the CPU index:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t flowfield:cpu .
#   # CPU image from a local wheel (no PyTorch index reachable), on a local base:
#   docker build --network host --build-arg BASE_IMAGE=flowfield-base \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple --build-arg TORCH_VARIANT=+cpu \
#     --build-arg TORCH_FIND_LINKS=http://127.0.0.1:8765/ -t flowfield:cpu .
#
# The image defaults to FLOWFIELD_DEVICE=cpu so that a plain `docker run` works on any host;
# docker-compose.yml and deploy/k8s set FLOWFIELD_DEVICE=cuda.

ARG BASE_IMAGE=python:3.11-slim

# ---- stage 1: build the project's wheel (source only; nothing of it reaches the image but
#      the wheel, so editing a test or a doc never invalidates the dependency layers) ----
FROM ${BASE_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --upgrade "pip>=24" "setuptools>=68" wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flowfield ./flowfield
COPY service ./service
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# ---- stage 2: the runtime image ----
FROM ${BASE_IMAGE} AS runtime

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VARIANT=
ARG TORCH_FIND_LINKS=

# Python packages live in a virtual environment: the same on python:*-slim and on a
# distribution's own python3 (whose system site-packages pip must not touch, PEP 668)
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --upgrade "pip>=24"

# 1. PyTorch: the largest layer and the one that changes least
RUN pip install "torch==${TORCH_VERSION}${TORCH_VARIANT}" --index-url "${TORCH_INDEX_URL}" \
      ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"}

# 2. the project's other dependencies, read from pyproject.toml alone (this layer is rebuilt
#    only when pyproject.toml changes; torch is already satisfied by step 1)
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/pyproject.toml

# 3. the project itself (library, service, bundled demo policy and flow): small and last
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels

# non-root user; the volumes are created (and owned by it) before they are declared, so fresh
# named volumes start out writable by the service
RUN groupadd --system --gid 10001 flowfield \
 && useradd --system --uid 10001 --gid flowfield --create-home --home-dir /home/flowfield flowfield \
 && mkdir -p /models /checkpoints \
 && chown flowfield:flowfield /models /checkpoints
VOLUME ["/models", "/checkpoints"]

ENV FLOWFIELD_HOST=0.0.0.0 \
    FLOWFIELD_PORT=8000 \
    FLOWFIELD_CHECKPOINT_DIR=/checkpoints \
    FLOWFIELD_DEVICE=cpu

USER 10001:10001
WORKDIR /home/flowfield
EXPOSE 8000

# liveness: the process answers HTTP (python's urllib: the image has no curl). The start
# period covers loading the policy; /readyz (model loaded) is for routing.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FLOWFIELD_PORT', '8000'), timeout=4)"]

# SIGTERM drains in-flight requests, then exits 0
STOPSIGNAL SIGTERM
CMD ["flowfield", "serve"]
