"""The one interface the agent runs its features through (telemetry, shadow, jobs, recordings).

A feature is built from the agent's `Context` only when its config section says
``enabled: true``; the agent then calls ``start()`` once, ``step()`` on every round of its
loop (on the loop's thread, the same that services MQTT), and ``stop()`` once at the end, in
reverse order. A feature subscribes in ``start`` and unsubscribes in ``stop``, never in its
constructor. The MQTT connection is opened only when an enabled feature says
``needs_mqtt``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


@dataclass
class Context:
    """What a feature may use: the validated config, the thing name, the spool, the shared
    MQTT connection (None when no enabled feature needs it) and the agent's health."""

    cfg: dict[str, Any]
    thing: str
    spool: Any
    client: Any | None
    health: Callable[[], dict[str, Any]]
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class Feature(Protocol):
    name: str

    def start(self) -> None: ...

    def step(self) -> int:
        """One round of work; returns how much was done (0 when idle)."""
        ...

    def stop(self) -> None: ...

    def health(self) -> dict[str, Any]:
        """Counters for the agent's health report (may be empty)."""
        ...
