"""Prometheus metrics, prefix flowfield_. The Grafana dashboard uses only these."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

REQUESTS = Counter("flowfield_requests_total", "HTTP requests", ["endpoint", "status"])
REQUEST_ERRORS = Counter(
    "flowfield_request_errors_total", "HTTP requests answered 4xx/5xx", ["endpoint", "status"]
)
REQUEST_LATENCY = Histogram(
    "flowfield_request_latency_seconds",
    "request latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_TIME = Histogram(
    "flowfield_score_queue_seconds",
    "time a sample waits before its batch starts",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_SAMPLES = Histogram(
    "flowfield_batch_samples",
    "samples per scoring batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_TOKENS = Histogram(
    "flowfield_batch_tokens",
    "tokens (prompt + response) per scoring batch",
    buckets=(64, 256, 1024, 4096, 16384, 65536, 262144),
)
SCORE_QUEUE_DEPTH = Gauge("flowfield_score_queue_samples", "samples waiting to be scored")
CANCELLED_UNITS = Counter(
    "flowfield_score_cancelled_units_total",
    "scoring work units dropped because their request was cancelled (the client disconnected): "
    "queued units, and a running batch abandoned when all its requests were gone",
)
TOKENS_SCORED = Counter("flowfield_tokens_scored_total", "response tokens scored")
SAMPLES_SCORED = Counter("flowfield_samples_scored_total", "samples scored", ["status"])
TOKEN_REWARD = Histogram(
    "flowfield_token_reward",
    "shaped per-token reward (non-zero tokens)",
    buckets=(-0.01, -0.0075, -0.005, -0.0025, -0.001, 0.0, 0.001, 0.0025, 0.005, 0.0075, 0.01),
)
FLOW_RETURN = Histogram(
    "flowfield_flow_return",
    "sum of token rewards per sample",
    buckets=(-0.15, -0.1, -0.05, -0.025, -0.01, 0.0, 0.01, 0.025, 0.05, 0.1, 0.15),
)
# prometheus_client does not export _sum for histograms with negative buckets; this running
# sum (it can go down) gives the mean flow return: delta(sum) / increase(flow_return_count)
FLOW_RETURN_SUM = Gauge("flowfield_flow_return_running_sum", "running sum of flow returns")
DEVIATION = Histogram(
    "flowfield_deviation",
    "raw per-token flow deviation",
    buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
GRAPH_STEPS = Counter("flowfield_graph_steps_total", "agent steps scored by /v1/score/graph")
GRAPH_TRAJECTORIES = Counter(
    "flowfield_graph_trajectories_total", "trajectories scored by /v1/score/graph"
)
UPDATE_SAMPLES = Counter(
    "flowfield_update_samples_total", "samples posted to /update", ["outcome"]
)  # outcome: accepted | skipped
UPDATE_DUPLICATES = Counter("flowfield_update_duplicates_total", "repeated update_ids")
PENDING_SAMPLES = Gauge(
    "flowfield_pending_samples",
    "accepted samples not yet trained on (queue-wide with Redis; read from the queue when "
    "/metrics is scraped)",
)
LEARNER_LOSS = Gauge("flowfield_learner_loss", "flow-matching loss of the last learner step")
LEARNER_STEPS = Counter("flowfield_learner_steps_total", "learner optimiser steps")
SAMPLES_TRAINED = Counter("flowfield_samples_trained_total", "samples the learner trained on")
LATENTS_REUSED = Counter(
    "flowfield_learner_latents_reused_total",
    "samples the learner trained on with the latents scoring had computed (no second encoder pass)",
)
FLOW_VERSION = Gauge("flowfield_flow_version", "flow version this process scores with")
ENCODER_INFO = Info("flowfield_encoder", "policy encoder in use (labels: name, revision, ...)")
POLICY_EPOCH = Gauge(
    "flowfield_policy_epoch",
    "policy epoch this process encodes with (Redis policy sync; 0 = the configured policy)",
)
POLICY_IN_SYNC = Gauge(
    "flowfield_policy_in_sync",
    "1 while this process encodes with the recorded current policy; 0 after it failed to "
    "load it (the process then reports not ready)",
)
POLICY_IN_SYNC.set(1)
