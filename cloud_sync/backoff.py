"""Retry pacing shared by the sinks and the connection (no network library needed)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: delay = U(0, min(cap, base * 2**attempt))."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 60.0, rng: random.Random | None = None):
        self.base_s, self.cap_s = base_s, cap_s
        self.rng = rng or random.Random(0)
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
