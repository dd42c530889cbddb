"""flowfield-client: HTTP client for the flowfield reward service, and RL-trainer adapters.

    from flowfield_client import FlowfieldClient, Sample
    with FlowfieldClient("http://127.0.0.1:8000") as ff:
        res = ff.score([Sample(prompt="Q:1234+5678\\n", response="4+8+0=12,...")])
        print(res[0].token_rewards, res[0].flow_return, res.flow_version)
        graph = ff.score_graph([GraphGroup("task-3", [GraphTrajectory("t-0", [...], "done")])])

Adapters (each imports its framework lazily, so importing this package never pulls torch):
`flowfield_client.adapters.trl` (GRPOTrainer reward function, trl 1.16), `...adapters.openrlhf`
(`reward_func` file, OpenRLHF 0.11), `...adapters.verl` (reward-loop manager and the
`flowfield_grpo` advantage estimator, verl 0.9).
"""

from flowfield_client.client import (
    DEFAULT_TIMEOUT,
    AsyncFlowfieldClient,
    ClientStats,
    FlowfieldClient,
)
from flowfield_client.errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    FlowfieldConnectionError,
    FlowfieldError,
    FlowfieldTimeoutError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from flowfield_client.models import (
    EndpointHealth,
    FlowInfo,
    GraphGroup,
    GraphGroupResult,
    GraphResponse,
    GraphStep,
    GraphStepResult,
    GraphTrajectory,
    GraphTrajectoryResult,
    Health,
    PolicyResult,
    Sample,
    ScoreResponse,
    ScoreResult,
    UpdateResult,
)
from flowfield_client.retry import NO_RETRY, RetryEvent, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "APIStatusError",
    "AsyncFlowfieldClient",
    "AuthenticationError",
    "BadRequestError",
    "ClientStats",
    "DEFAULT_TIMEOUT",
    "EndpointHealth",
    "FlowInfo",
    "FlowfieldClient",
    "FlowfieldConnectionError",
    "FlowfieldError",
    "FlowfieldTimeoutError",
    "GraphGroup",
    "GraphGroupResult",
    "GraphResponse",
    "GraphStep",
    "GraphStepResult",
    "GraphTrajectory",
    "GraphTrajectoryResult",
    "Health",
    "InternalServerError",
    "InvalidRequestError",
    "NO_RETRY",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PolicyResult",
    "RateLimitError",
    "RetryEvent",
    "RetryPolicy",
    "Sample",
    "ScoreResponse",
    "ScoreResult",
    "ServiceUnavailableError",
    "UpdateResult",
    "__version__",
]
