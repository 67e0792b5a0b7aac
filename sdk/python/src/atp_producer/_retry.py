"""How often and how patiently a publisher tries again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter: before retry ``k`` (from 1) a publisher waits a
    random time up to ``min(max_delay, initial × 2^(k-1))`` seconds. Retrying is always safe: a
    SignedEvent's bytes never change, and ATP records one event per id."""

    attempts: int = 8
    initial: float = 0.1
    max_delay: float = 5.0

    def backoff(self, k: int) -> float:
        cap = min(self.max_delay, self.initial * 2 ** max(k - 1, 0))
        return random.uniform(0, cap)


NEVER = Retry(attempts=1)
