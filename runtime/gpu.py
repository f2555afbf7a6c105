"""GPU placement for replicas: ``CUDA_VISIBLE_DEVICES=RR`` parsing and assignment.

Jina's convention: when a Deployment is started with ``CUDA_VISIBLE_DEVICES`` set to a
value that begins with ``RR`` (from ``env=`` or from the starting process's
environment), each replica gets its own device, assigned round robin:

==============================  ==========================================  =================
spec                            devices cycled over                          5 replicas, 3 GPUs
==============================  ==========================================  =================
``RR``                          every GPU: ``range(total)``                  0,1,2,0,1
``RR1:``                        a Python slice of ``range(total)``           1,2,1,2,1
``RR0:2``                       ``start:stop:step`` (``RR::2``) too          0,1,0,1,0
``RR2``                         one GPU for every replica                    2,2,2,2,2
``RR0,2``                       a list of indexes                            0,2,0,2,0
``RRGPU-<uuid>,MIG-<uuid>``     a list of UUIDs (no GPU count needed)        u0,u1,u2,u0,u1
==============================  ==========================================  =================

Any other value is passed through unchanged to every replica, and no value changes
nothing. This module is pure logic: it starts no process. The Deployment calls
:func:`assign_devices` once and puts the i-th value in the i-th replica's environment
(:func:`replica_env` does exactly that).

Indexes are CUDA's. CUDA numbers GPUs fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
while NVML and ``nvidia-smi`` use PCI order. On a machine with mixed GPUs, set
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that index ``i`` is the same card in all three.

It also reads the GPUs through NVML (``pynvml``, from ``nvidia-ml-py``) for
:func:`device_count` and the dashboard's :func:`gpu_snapshot`; without NVML (no driver,
no GPU) both degrade quietly instead of raising.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading
import warnings
from typing import Any, Mapping, Optional

__all__ = [
    'GPUSpecError',
    'device_count',
    'assign_devices',
    'replica_env',
    'cuda_initialised_in_this_process',
    'warn_if_cuda_initialised',
    'gpu_snapshot',
]

ENV_VAR = 'CUDA_VISIBLE_DEVICES'
TOTAL_ENV_VAR = 'CUDA_TOTAL_DEVICES'
RR_PREFIX = 'RR'

_ALLOWED = (
    "allowed: 'RR' (every GPU), 'RR<start>:<stop>[:<step>]' (a Python slice of the GPU "
    "indexes, e.g. 'RR1:' or 'RR0:2'), 'RR<i>' (GPU i for every replica), "
    "'RR<i>,<j>,...' (a list of GPU indexes, e.g. 'RR0,2,3'), or "
    "'RRGPU-<uuid>,GPU-<uuid>,...' / 'RRMIG-<uuid>,...' (a list of device UUIDs)"
)

_INDEX_RE = re.compile(r'^\d+$', re.ASCII)
_SLICE_PART_RE = re.compile(r'^-?\d+$', re.ASCII)
_UUID_RE = re.compile(r'^(?:GPU|MIG)-[0-9A-Za-z][0-9A-Za-z/\-]*$', re.ASCII)


class GPUSpecError(ValueError):
    """A ``CUDA_VISIBLE_DEVICES=RR...`` value that cannot be turned into devices."""


# --------------------------------------------------------------------------- NVML

_nvml_lock = threading.Lock()
# (pid, ok, reason, module): NVML is initialised at most once per process, lazily.
_nvml_state: Optional[tuple] = None
_nvml_atexit = False


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _nvml_lock
    _nvml_lock = threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _nvml() -> tuple[Any, Optional[str]]:
    """Return ``(pynvml, None)`` with NVML initialised, or ``(None, reason)``.

    The outcome (success or failure) is cached per process; thread-safe.
    """
    global _nvml_state, _nvml_atexit
    pid = os.getpid()
    state = _nvml_state
    if state is not None and state[0] == pid:
        return (state[3] if state[1] else None), state[2]
    with _nvml_lock:
        state = _nvml_state
        if state is not None and state[0] == pid:
            return (state[3] if state[1] else None), state[2]
        module = None
        try:
            import pynvml as module  # noqa: PLC0415 - optional, imported lazily
        except Exception as exc:  # ImportError, or a broken install
            ok, reason = False, f'pynvml unavailable: {_describe(exc)}'
        else:
            try:
                module.nvmlInit()
                ok, reason = True, None
            except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
                ok, reason = False, _describe(exc)
        _nvml_state = (pid, ok, reason, module)
        if ok and not _nvml_atexit:
            atexit.register(_nvml_shutdown)
            _nvml_atexit = True
        return (module if ok else None), reason


def _nvml_shutdown() -> None:
    state = _nvml_state
    if state is not None and state[1] and state[0] == os.getpid():
        try:
            state[3].nvmlShutdown()
        except Exception:
            pass


def _reset_nvml() -> None:
    """Forget the cached NVML outcome (tests, or after installing a driver)."""
    global _nvml_state
    with _nvml_lock:
        _nvml_shutdown()
        _nvml_state = None


def _total_from_env() -> Optional[int]:
    raw = os.environ.get(TOTAL_ENV_VAR)
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        warnings.warn(
            f'{TOTAL_ENV_VAR}={raw!r} is ignored: it must be a whole number >= 0',
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return value


def device_count() -> Optional[int]:
    """Number of GPUs on this machine, or ``None`` when it cannot be known.

    NVML first; when NVML does not work (no driver, no GPU), the ``CUDA_TOTAL_DEVICES``
    environment variable (Jina's convention, handy to simulate GPUs); else ``None``.
    Never raises.

    >>> n = device_count()   # e.g. 4 on a 4-GPU box, None on a laptop without NVIDIA
    >>> n is None or n >= 0
    True
    """
    nvml, _ = _nvml()
    if nvml is not None:
        try:
            return int(nvml.nvmlDeviceGetCount())
        except Exception:
            pass
    return _total_from_env()


# --------------------------------------------------------------------------- parsing


def _error(spec: str, why: str) -> GPUSpecError:
    return GPUSpecError(f'{ENV_VAR}={spec!r} is not a valid round-robin spec: {why}; {_ALLOWED}')


def _parse(spec: str) -> tuple[str, Any]:
    """Parse the text after ``RR``: ('all', None) | ('slice', slice) | ('indexes', [int]) |
    ('uuids', [str]). Raises GPUSpecError for anything else."""
    body = spec.strip()[len(RR_PREFIX):].strip()
    if not body:
        return 'all', None
    if ':' in body:
        parts = [p.strip() for p in body.split(':')]
        if len(parts) > 3:
            raise _error(spec, 'a slice has at most two colons (start:stop:step)')
        bounds = []
        for part in parts:
            if part == '':
                bounds.append(None)
            elif _SLICE_PART_RE.match(part):
                bounds.append(int(part))
            else:
                raise _error(spec, f'slice bound {part!r} is not a whole number')
        if len(bounds) == 3 and bounds[2] == 0:
            raise _error(spec, 'slice step cannot be zero')
        return 'slice', slice(*bounds)
    items = [item.strip() for item in body.split(',')]
    if any(item == '' for item in items):
        raise _error(spec, 'empty item in the device list')
    if all(_INDEX_RE.match(item) for item in items):
        return 'indexes', [int(item) for item in items]
    if all(_UUID_RE.match(item) for item in items):
        return 'uuids', items
    is_index = [bool(_INDEX_RE.match(i)) for i in items]
    is_uuid = [bool(_UUID_RE.match(i)) for i in items]
    if all(a or b for a, b in zip(is_index, is_uuid)):
        raise _error(spec, 'do not mix device indexes and UUIDs in one list')
    bad = next(i for i, a, b in zip(items, is_index, is_uuid) if not (a or b))
    if bad.startswith('-') and _INDEX_RE.match(bad[1:]):
        raise _error(spec, f'device index {bad!r} is negative')
    raise _error(spec, f'{bad!r} is neither a device index nor a GPU-/MIG- UUID')


def assign_devices(
    spec: Optional[str], n_replicas: int, total_devices: Optional[int] = None
) -> list[Optional[str]]:
    """One ``CUDA_VISIBLE_DEVICES`` value per replica (``None``: do not set it).

    ``spec`` is the value of ``CUDA_VISIBLE_DEVICES`` given to the Deployment (``env=``,
    else the starting process's environment). ``total_devices`` defaults to
    :func:`device_count`. Replica ``i`` gets ``devices[i % len(devices)]``.

    >>> assign_devices('RR', 5, total_devices=3)
    ['0', '1', '2', '0', '1']
    >>> assign_devices('RR1:', 5, total_devices=3)
    ['1', '2', '1', '2', '1']
    >>> assign_devices('RR0:2', 5, total_devices=3)
    ['0', '1', '0', '1', '0']
    >>> assign_devices('RR2', 2, total_devices=3)
    ['2', '2']
    >>> assign_devices('RR0,2,3', 5, total_devices=4)
    ['0', '2', '3', '0', '2']
    >>> assign_devices('RRGPU-aa,GPU-bb', 3)
    ['GPU-aa', 'GPU-bb', 'GPU-aa']
    >>> assign_devices('1,3', 2), assign_devices(None, 2)
    (['1,3', '1,3'], [None, None])

    Rules:

    * ``None`` or ``''``: ``[None] * n`` (nothing changes; an inherited ``''``, which
      hides every GPU, stays as it is).
    * a value not starting with ``RR``: passed through unchanged to every replica.
    * ``RR`` and slices need the GPU count; when it is unknown (or 0), a warning says no
      GPU was found and every replica gets ``None``: the literal ``RR...`` must never
      reach a replica (see :func:`replica_env`).
    * indexes and lists are checked against the count when it is known, passed on
      unchecked when it is not; UUIDs never need the count.
    * anything malformed raises :class:`GPUSpecError` (a ``ValueError``) quoting the spec,
      even when no GPU is present.
    """
    if isinstance(n_replicas, bool) or not isinstance(n_replicas, int):
        raise TypeError(f'n_replicas must be an int, got {n_replicas!r}')
    if n_replicas < 0:
        raise ValueError(f'n_replicas must be >= 0, got {n_replicas}')
    if total_devices is not None and (
        isinstance(total_devices, bool) or not isinstance(total_devices, int) or total_devices < 0
    ):
        raise ValueError(f'total_devices must be an int >= 0 or None, got {total_devices!r}')
    if spec is None or spec == '':
        return [None] * n_replicas
    if not isinstance(spec, str):
        raise TypeError(f'{ENV_VAR} must be a string, got {type(spec).__name__}')
    if not spec.strip().startswith(RR_PREFIX):
        return [spec] * n_replicas

    kind, value = _parse(spec)  # syntax errors surface whatever the machine
    if kind == 'uuids':
        devices: list[str] = value
    else:
        total = device_count() if total_devices is None else total_devices
        if kind in ('all', 'slice') and not total:
            if total == 0:
                why = 'the device count is 0'
            else:
                why = f'NVML: {_nvml()[1]}; {TOTAL_ENV_VAR} is not set'
            warnings.warn(
                f'{ENV_VAR}={spec!r}: no GPU was found ({why}), so no device is assigned and '
                f'{ENV_VAR} is left unset for the replicas. Set {TOTAL_ENV_VAR}=<n> to '
                f'simulate n GPUs.',
                RuntimeWarning,
                stacklevel=2,
            )
            return [None] * n_replicas
        if kind == 'all':
            indexes = list(range(total))
        elif kind == 'slice':
            indexes = list(range(total))[value]
            if not indexes:
                raise _error(spec, f'the slice selects no device out of {total} GPU(s)')
        else:
            indexes = value
            if total is not None:
                too_big = [i for i in indexes if i >= total]
                if too_big:
                    raise _error(
                        spec,
                        f'device index {too_big[0]} does not exist on this machine, which '
                        f'has {total} GPU(s) (indexes 0..{total - 1})'
                        if total else
                        f'device index {too_big[0]} does not exist: this machine has no GPU',
                    )
        devices = [str(i) for i in indexes]
    return [devices[i % len(devices)] for i in range(n_replicas)]


def replica_env(
    env: Optional[Mapping[str, str]], device: Optional[str]
) -> dict[str, str]:
    """A copy of ``env`` for one replica, with its assigned ``device``.

    A string is set as ``CUDA_VISIBLE_DEVICES``; ``None`` leaves the variable as it is,
    except that an ``RR...`` value is removed (it is not a valid CUDA value).

    >>> replica_env({'CUDA_VISIBLE_DEVICES': 'RR', 'A': '1'}, '2')
    {'CUDA_VISIBLE_DEVICES': '2', 'A': '1'}
    >>> replica_env({'CUDA_VISIBLE_DEVICES': 'RR', 'A': '1'}, None)
    {'A': '1'}
    """
    out = dict(env or {})
    if device is not None:
        out[ENV_VAR] = device
    elif out.get(ENV_VAR, '').strip().startswith(RR_PREFIX):
        del out[ENV_VAR]
    return out


# --------------------------------------------------------------------------- CUDA state


def cuda_initialised_in_this_process() -> bool:
    """True when a GPU framework already holds CUDA in this process.

    Looks only at ``sys.modules`` (never imports anything): torch with
    ``torch.cuda.is_initialized()``, cupy once imported, jax with a GPU backend created.

    >>> cuda_initialised_in_this_process() if 'torch' not in sys.modules else False
    False
    """
    torch = sys.modules.get('torch')
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return True
        except Exception:
            pass
    if 'cupy' in sys.modules:
        return True
    xla_bridge = sys.modules.get('jax._src.xla_bridge')
    if xla_bridge is not None:
        try:
            backends = getattr(xla_bridge, '_backends', None) or {}
            if any(str(name).lower() in ('gpu', 'cuda', 'rocm') for name in backends):
                return True
        except Exception:
            pass
    return False


def warn_if_cuda_initialised() -> None:
    """Warn when :func:`cuda_initialised_in_this_process` is True.

    Replicas forked from a process that already holds CUDA can fail to initialise it or
    keep the parent's devices instead of their own ``CUDA_VISIBLE_DEVICES``.
    """
    if cuda_initialised_in_this_process():
        warnings.warn(
            'CUDA is already initialised in this process (torch/cupy/jax): replicas that '
            'inherit it may not see the devices assigned by CUDA_VISIBLE_DEVICES. Start the '
            'Deployment before touching the GPU here (or restart the kernel).',
            RuntimeWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------- snapshot


def _text(value: Any) -> str:
    return value.decode(errors='replace') if isinstance(value, bytes) else str(value)


def _try(fn, *args) -> Any:
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported (MIG, some boards), ...
        return None


def gpu_snapshot() -> dict:
    """The GPUs seen by NVML now, for the dashboard and ``status()``.

    ``{'available': bool, 'note': str | None, 'gpus': [{'index', 'uuid', 'name',
    'utilization', 'memory_used', 'memory_total'}]}``; utilization in percent, memory in
    bytes; a field NVML cannot read is ``None``. Without NVML: ``available`` False and a
    one-line ``note``; never raises.

    >>> snap = gpu_snapshot()
    >>> sorted(snap)
    ['available', 'gpus', 'note']
    """
    nvml, reason = _nvml()
    if nvml is None:
        return {'available': False, 'note': f'no NVIDIA GPU found (NVML: {reason})', 'gpus': []}
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception as exc:
        return {'available': False, 'note': f'no NVIDIA GPU found (NVML: {_describe(exc)})',
                'gpus': []}
    gpus = []
    for index in range(count):
        handle = _try(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        util = _try(nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = _try(nvml.nvmlDeviceGetMemoryInfo, handle)
        uuid = _try(nvml.nvmlDeviceGetUUID, handle)
        name = _try(nvml.nvmlDeviceGetName, handle)
        gpus.append({
            'index': index,
            'uuid': None if uuid is None else _text(uuid),
            'name': None if name is None else _text(name),
            'utilization': None if util is None else int(util.gpu),
            'memory_used': None if mem is None else int(mem.used),
            'memory_total': None if mem is None else int(mem.total),
        })
    if not gpus:
        return {'available': False, 'note': 'no NVIDIA GPU found (NVML: 0 devices)', 'gpus': []}
    return {'available': True, 'note': None, 'gpus': gpus}
