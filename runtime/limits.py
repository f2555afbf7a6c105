"""How many replica processes one Deployment or Flow may start: refuse ``replicas=10000`` up front.

Every replica is its own process (~30-70 MB, a share of the CPUs), so a typo such as
``replicas=10000`` would fork until the machine falls over. :func:`check_processes` refuses
``replicas``, ``shards`` and ``replicas x shards`` (and a Flow's total) above
:func:`max_processes`: the environment variable :data:`MAX_PROCESSES_ENV` if set, else a
default derived from this machine (:func:`machine_default`), never below :data:`FLOOR`.

    >>> check_processes(3, 2, 'Deployment')   # 6 processes: fine
    6
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

#: set to a positive integer to raise (or lower) the limit
MAX_PROCESSES_ENV = 'ORCHESTRA_MAX_PROCESSES'
#: the default never goes below this (tests and examples run 3-5 replicas on small machines)
FLOOR = 32
#: default: this many replica processes per CPU ...
PER_CPU = 32
#: ... and at most one per this much available memory
MEMORY_PER_PROCESS = 64 * 1024 * 1024


def machine_default() -> Tuple[int, str]:
    """(limit, how it was derived) from the CPU count and the memory available now."""
    cpus = os.cpu_count() or 1
    try:
        import psutil
        available: Optional[int] = psutil.virtual_memory().available
    except Exception:   # psutil missing or /proc unreadable: CPUs alone
        available = None
    by_cpu = cpus * PER_CPU
    limit = by_cpu if available is None else min(by_cpu, available // MEMORY_PER_PROCESS)
    limit = max(FLOOR, int(limit))
    mem = 'unknown memory' if available is None else f'{available / 2**30:.1f} GiB available memory'
    return limit, (f'{cpus} CPUs x {PER_CPU}, one per {MEMORY_PER_PROCESS >> 20} MiB of {mem}, '
                   f'at least {FLOOR}')


def max_processes() -> Tuple[int, str]:
    """(limit, where it comes from): ``$ORCHESTRA_MAX_PROCESSES``, else :func:`machine_default`."""
    raw = os.environ.get(MAX_PROCESSES_ENV)
    if raw is not None and raw.strip():
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f'{MAX_PROCESSES_ENV}={raw!r}: must be a positive integer (the most replica '
                             'processes one Deployment or Flow may start)')
        return value, f'set by {MAX_PROCESSES_ENV}'
    limit, how = machine_default()
    return limit, f'the default for this machine: {how}'


def check_processes(replicas: int, shards: int, where: str, others: int = 0) -> int:
    """Refuse more replica processes than :func:`max_processes`; -> ``replicas * shards``.

    ``others``: processes the rest of a Flow already starts (its total is checked too).
    """
    limit, why = max_processes()
    total = replicas * shards
    hint = (f'(limit {limit}, {why}); set {MAX_PROCESSES_ENV}=N to allow more, if this machine '
            'can run them')
    if replicas > limit:
        raise ValueError(f'{where}: replicas={replicas} is more replica processes than allowed {hint}')
    if shards > limit:
        raise ValueError(f'{where}: shards={shards} is more replica processes than allowed {hint}')
    if total > limit:
        raise ValueError(f'{where}: replicas={replicas} x shards={shards} = {total} replica processes, '
                         f'more than allowed {hint}')
    if others and others + total > limit:
        raise ValueError(f'{where}: {others + total} replica processes in the Flow ({others} before this '
                         f'Executor, {total} in it), more than allowed {hint}')
    return total
