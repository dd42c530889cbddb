"""Redis key names shared by the queue, the flow store, the learner and the policy sync.

One place, so the atomic scripts in different modules agree on them. Every key starts with
`settings.redis_prefix`; for Redis Cluster use a prefix with a hash tag (e.g. "{flowfield}")
so the multi-key scripts stay in one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "learners"


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    @property
    def stream(self) -> str:
        """Stream of accepted samples; consumer group `learners`."""
        return f"{self.prefix}:updates"

    def update(self, update_id: str) -> str:
        """Marker that an update_id was queued (SET NX EX ttl)."""
        return f"{self.prefix}:update:{update_id}"

    @property
    def version(self) -> str:
        """Current flow version (integer; missing = 0, the initial flow)."""
        return f"{self.prefix}:flow:version"

    @property
    def path(self) -> str:
        """Checkpoint directory of the current version."""
        return f"{self.prefix}:flow:path"

    @property
    def announce(self) -> str:
        """Pub/sub channel; the message is the new version number."""
        return f"{self.prefix}:flow:announce"

    def version_record(self, version: int) -> str:
        """Hash: which stream entries and samples a version was trained on (expires)."""
        return f"{self.prefix}:flow:v{version}"

    @property
    def trained(self) -> str:
        """Hash sample_id -> times trained (an audit; exactly-once makes every value 1)."""
        return f"{self.prefix}:trained"

    @property
    def lock(self) -> str:
        """The single-learner lock (SET NX PX, renewed by its holder)."""
        return f"{self.prefix}:learner:lock"

    @property
    def policy(self) -> str:
        """Hash of the recorded policy: epoch, path, name, revision, label, set_at, set_by."""
        return f"{self.prefix}:policy"

    @property
    def policy_announce(self) -> str:
        """Pub/sub channel; the message is the new policy epoch."""
        return f"{self.prefix}:policy:announce"


def text(value: str | bytes | None) -> str | None:
    """Redis replies as str whether or not the client decodes responses."""
    if isinstance(value, bytes):
        return value.decode()
    return value
