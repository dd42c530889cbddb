"""The durable update path: accepted samples -> queue -> learner -> versioned flow checkpoints.

HTTP handlers call `make_queue(settings)` and `UpdateQueue.enqueue`; the serving process (or
the stand-alone `flowfield learn` process) runs a `Learner`; scorers follow `FlowStore.watch`.
"""

from service.updates.flowstore import CommitConflict, FlowStore
from service.updates.learner import Learner, LearnerConfigError, default_consumer_name
from service.updates.queue import (
    InProcessQueue,
    QueueUnavailable,
    RedisStreamQueue,
    UpdateQueue,
    make_queue,
)
from service.updates.types import EnqueueResult, Entry, UpdateSample

__all__ = [
    "CommitConflict",
    "EnqueueResult",
    "Entry",
    "FlowStore",
    "InProcessQueue",
    "Learner",
    "LearnerConfigError",
    "QueueUnavailable",
    "RedisStreamQueue",
    "UpdateQueue",
    "UpdateSample",
    "default_consumer_name",
    "make_queue",
]
