"""Per-replica counters: requests per endpoint, in flight, latency percentiles.

Process CPU/RSS (psutil) and GPU (NVML) sampling live here too, so that
``status()`` and the Dashboard read one structure.

    >>> s = RequestStats(); s.started('/x'); s.finished('/x', 0.002)
    >>> s.snapshot()['requests']
    {'/x': 1}
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Dict

import numpy as np


class RequestStats:
    """Counts and latencies of one replica's (or gateway's) requests."""

    def __init__(self, window: int = 2048):
        self._lock = threading.Lock()
        self.requests: Dict[str, int] = collections.Counter()
        self.errors: Dict[str, int] = collections.Counter()
        self.in_flight = 0
        self._latencies = collections.deque(maxlen=window)   # (finish time, seconds)
        self.started_at = time.time()

    def started(self, endpoint: str) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[endpoint] += 1
            self._latencies.append((time.time(), seconds))

    def failed(self, endpoint: str) -> None:
        with self._lock:
            self.errors[endpoint] += 1

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            lat = np.array([s for _, s in self._latencies]) if self._latencies else None
            recent = [t for t, _ in self._latencies]
            now = time.time()
            return {
                'requests': dict(self.requests),
                'errors': dict(self.errors),
                'in_flight': self.in_flight,
                'p50_ms': float(np.percentile(lat, 50) * 1e3) if lat is not None else None,
                'p99_ms': float(np.percentile(lat, 99) * 1e3) if lat is not None else None,
                'qps_5s': sum(1 for t in recent if now - t <= 5.0) / 5.0,
            }
