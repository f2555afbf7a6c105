"""Telemetry: request counters, process CPU/RSS (psutil) and GPUs (NVML).

Three pieces, all read by ``status()`` and the Dashboard:

- :class:`RequestStats`: one replica's (or gateway's) requests per endpoint, errors,
  in flight, latency percentiles. Its :meth:`~RequestStats.snapshot` also carries the
  process's ``cpu_percent`` and ``rss_bytes``, so a replica's and the gateway's ``Info``
  get them without further wiring.
- :class:`ProcessSampler`: CPU % and RSS of one process, sampled by a daemon thread every
  second. Reading a sample never blocks (it returns the last one), so requests never wait
  for psutil. :func:`process_sampler` is the per-process singleton.
- :func:`gpu_status`: every GPU's utilization and memory (NVML, via
  :func:`runtime.gpu.gpu_snapshot`) plus the replica -> ``CUDA_VISIBLE_DEVICES`` map.
  Without NVML it says so in one line (``note``) instead of raising.

    >>> s = RequestStats(); s.started('/x'); s.finished('/x', 0.002)
    >>> s.snapshot()['requests']
    {'/x': 1}
    >>> sorted(process_sampler().snapshot())
    ['cpu_percent', 'rss_bytes']
"""
from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import psutil

__all__ = ['RequestStats', 'ProcessSampler', 'process_sampler', 'process_telemetry', 'gpu_status']

#: seconds between two CPU/RSS samples of a process
SAMPLE_INTERVAL = 1.0


class ProcessSampler:
    """CPU % and RSS of process ``pid`` (default: this one), sampled in a daemon thread.

    ``cpu_percent`` is psutil's: percent of one CPU over the last interval (a process
    busy on two cores reads 200). The first value, before one interval has passed, is
    the average since the process started. ``rss_bytes`` is the resident set size.
    A value psutil cannot read (the process is gone, access denied) is ``None``.

    >>> sampler = ProcessSampler(interval=0.5).start()
    >>> snap = sampler.snapshot(); sampler.stop()
    >>> snap['rss_bytes'] > 0
    True
    """

    def __init__(self, pid: Optional[int] = None, interval: float = SAMPLE_INTERVAL):
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
            raise ValueError(f'interval={interval!r}: must be a number of seconds > 0')
        self.pid = os.getpid() if pid is None else int(pid)
        self.interval = float(interval)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc: Optional[psutil.Process] = None
        self._last: Dict[str, Any] = {'cpu_percent': None, 'rss_bytes': None}

    def start(self) -> 'ProcessSampler':
        """Take a first sample now, then keep sampling in the background. Idempotent."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._first_sample()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f'telemetry-{self.pid}')
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampling thread (the last sample stays readable)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=2 * self.interval + 1)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def snapshot(self) -> Dict[str, Any]:
        """The last sample: ``{'cpu_percent': float | None, 'rss_bytes': int | None}``."""
        with self._lock:
            return dict(self._last)

    # -- sampling -------------------------------------------------------------
    def _first_sample(self) -> None:
        try:
            self._proc = psutil.Process(self.pid)
            with self._proc.oneshot():
                times = self._proc.cpu_times()
                age = max(1e-3, time.time() - self._proc.create_time())
                rss = self._proc.memory_info().rss
            self._proc.cpu_percent(None)   # primes psutil's interval measure
            self._last = {'cpu_percent': round(100.0 * (times.user + times.system) / age, 1),
                          'rss_bytes': int(rss)}
        except psutil.Error:
            self._proc = None

    def _sample(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            with proc.oneshot():
                cpu = proc.cpu_percent(None)
                rss = proc.memory_info().rss
            sample = {'cpu_percent': round(float(cpu), 1), 'rss_bytes': int(rss)}
        except psutil.Error:   # gone, or not ours to read
            sample = {'cpu_percent': None, 'rss_bytes': None}
        with self._lock:
            self._last = sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


_sampler_lock = threading.Lock()
_sampler: Optional[ProcessSampler] = None


def process_sampler() -> ProcessSampler:
    """This process's sampler, started on first use (a fresh one after a fork)."""
    global _sampler
    s = _sampler
    if s is not None and s.pid == os.getpid() and s.running:
        return s
    with _sampler_lock:
        if _sampler is None or _sampler.pid != os.getpid() or not _sampler.running:
            _sampler = ProcessSampler().start()
        return _sampler


def process_telemetry() -> Dict[str, Any]:
    """``{'cpu_percent', 'rss_bytes'}`` of this process, from :func:`process_sampler`."""
    return process_sampler().snapshot()


def _after_fork_in_child() -> None:
    # the sampler thread does not survive a fork, and its lock may be held
    global _sampler, _sampler_lock
    _sampler_lock = threading.Lock()
    _sampler = None


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RequestStats:
    """Counts and latencies of one replica's (or gateway's) requests.

    With ``process=True`` (the default) :meth:`snapshot` also carries this process's
    ``cpu_percent`` and ``rss_bytes`` (see :class:`ProcessSampler`).
    """

    def __init__(self, window: int = 2048, process: bool = True):
        self._lock = threading.Lock()
        self.requests: Dict[str, int] = collections.Counter()
        self.errors: Dict[str, int] = collections.Counter()
        self.in_flight = 0
        self._latencies = collections.deque(maxlen=window)   # (finish time, seconds)
        self.started_at = time.time()
        self.process = bool(process)
        if self.process:
            process_sampler()

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
            snap = {
                'requests': dict(self.requests),
                'errors': dict(self.errors),
                'in_flight': self.in_flight,
                'p50_ms': float(np.percentile(lat, 50) * 1e3) if lat is not None else None,
                'p99_ms': float(np.percentile(lat, 99) * 1e3) if lat is not None else None,
                'qps_5s': sum(1 for t in recent if now - t <= 5.0) / 5.0,
            }
        if self.process:
            snap.update(process_telemetry())
        return snap


# --------------------------------------------------------------------------- GPUs

def _devices_of(value: Optional[str]) -> List[str]:
    """``'0,2'`` -> ``['0', '2']``; ``None``/``''`` -> ``[]``."""
    return [v.strip() for v in (value or '').split(',') if v.strip()]


def _names_gpu(device: str, gpu: Mapping[str, Any]) -> bool:
    """Does one ``CUDA_VISIBLE_DEVICES`` item name this GPU (index, UUID or UUID prefix)?"""
    if device == str(gpu.get('index')):
        return True
    uuid = gpu.get('uuid') or ''
    return bool(uuid) and device.startswith(('GPU-', 'MIG-')) and uuid.startswith(device)


def gpu_status(assignment: Optional[Mapping[str, Optional[str]]] = None) -> Dict[str, Any]:
    """Every GPU now, and which replicas were given which device.

    ``assignment`` maps replica names to the ``CUDA_VISIBLE_DEVICES`` each one got
    (``None``: not set). Returns :func:`runtime.gpu.gpu_snapshot`'s record
    (``available``, ``note``, ``gpus``: index, uuid, name, utilization %, memory_used and
    memory_total in bytes) with, per GPU, ``replicas``: the replicas whose value names its
    index or UUID; and ``assignment`` itself. Never raises: without NVML, ``available`` is
    False, ``gpus`` is empty and ``note`` says why in one line.

    Indexes are matched as written; with mixed GPU models set
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so CUDA's and NVML's indexes agree.

    >>> st = gpu_status({'enc/rep-0': '0', 'enc/rep-1': None})
    >>> st['assignment']
    {'enc/rep-0': '0', 'enc/rep-1': None}
    """
    from runtime.gpu import gpu_snapshot
    assignment = dict(assignment or {})
    try:
        snap = gpu_snapshot()
    except Exception as exc:   # gpu_snapshot should not raise; stay safe for the dashboard
        snap = {'available': False, 'note': f'GPU telemetry failed: {type(exc).__name__}: {exc}',
                'gpus': []}
    gpus = []
    for g in snap.get('gpus') or []:
        users = [name for name, value in assignment.items()
                 if any(_names_gpu(d, g) for d in _devices_of(value))]
        gpus.append(dict(g, replicas=users))
    return {'available': bool(snap.get('available')), 'note': snap.get('note'), 'gpus': gpus,
            'assignment': assignment}
