"""What the TRL and OpenRLHF adapters share: the reward options both take (documented on each
adapter) and the service client, given or built from URL(s) on first use."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from flowfield_client.client import AsyncFlowfieldClient, FlowfieldClient

C = TypeVar("C", FlowfieldClient, AsyncFlowfieldClient)


class RewardAdapterBase(Generic[C]):
    """Base of `FlowfieldOpenRLHFReward` and `FlowfieldReward` (TRL); `client_class` is the
    client the adapter calls the service with."""

    client_class: type[C]

    def __init__(
        self, client: C | str | Sequence[str] | None, *, verifier: Callable[..., Any] | None,
        add_verifier: bool, flow_weight: float, push_accepted: bool | None,
        accept_threshold: float, score_options: Mapping[str, Any] | None, strict_updates: bool,
        client_kwargs: Mapping[str, Any] | None,
    ) -> None:
        given = isinstance(client, self.client_class)
        self._client: C | None = client if given else None  # type: ignore[assignment]
        self._urls = None if given else client
        self._client_kwargs = dict(client_kwargs or {})
        self.verifier = verifier
        self.add_verifier = add_verifier
        self.flow_weight = float(flow_weight)
        self.push_accepted = verifier is not None if push_accepted is None else push_accepted
        self.accept_threshold = float(accept_threshold)
        self.score_options = dict(score_options or {})
        self.strict_updates = strict_updates
        self.run_id = uuid.uuid4().hex[:12]

    @property
    def client(self) -> C:
        """The client given, else one built from the URL(s) on first use (for the async
        client: inside the trainer's event loop)."""
        if self._client is None:
            self._client = self.client_class(self._urls, **self._client_kwargs)
        return self._client
