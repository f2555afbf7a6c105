"""Is a process gone? For tests (conftest re-exports it) and benchmarks/faults.py."""
from __future__ import annotations


def pid_gone(pid: int) -> bool:
    """True when the process is gone or a zombie (a killed child may linger as one)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
