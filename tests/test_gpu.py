"""runtime.gpu: CUDA_VISIBLE_DEVICES=RR parsing, device count, NVML snapshot."""
from __future__ import annotations

import sys
import threading
import types
import warnings

import pytest
from hypothesis import given, strategies as st

from runtime import gpu
from runtime.gpu import (
    GPUSpecError,
    assign_devices,
    cuda_initialised_in_this_process,
    device_count,
    gpu_snapshot,
    replica_env,
    warn_if_cuda_initialised,
)

UUIDS = [
    'GPU-0aaaaaaa-74d2-7297-d557-12771b6a79d5',
    'GPU-0bbbbbbb-74d2-7297-d557-12771b6a79d5',
    'GPU-0ccccccc-74d2-7297-d557-12771b6a79d5',
    'GPU-0ddddddd-74d2-7297-d557-12771b6a79d5',
]


@pytest.fixture(autouse=True)
def _fresh_nvml():
    gpu._reset_nvml()
    yield
    gpu._reset_nvml()


@pytest.fixture
def no_nvml(monkeypatch):
    """NVML unusable, whatever this machine has."""
    monkeypatch.setitem(sys.modules, 'pynvml', None)  # `import pynvml` -> ImportError
    monkeypatch.delenv('CUDA_TOTAL_DEVICES', raising=False)
    gpu._reset_nvml()


class _NVMLError(Exception):
    pass


def _fake_pynvml(n: int, *, init_error: str | None = None, calls: list | None = None):
    mod = types.ModuleType('pynvml')
    mod.NVMLError = _NVMLError

    def nvmlInit():
        if calls is not None:
            calls.append('init')
        if init_error:
            raise _NVMLError(init_error)

    def handle(i):
        if not 0 <= i < n:
            raise _NVMLError('Invalid Argument')
        return i

    def util(h):
        if h == 1:
            raise _NVMLError('Not Supported')  # e.g. a MIG device
        return types.SimpleNamespace(gpu=10 * (h + 1), memory=5)

    mod.nvmlInit = nvmlInit
    mod.nvmlShutdown = lambda: calls.append('shutdown') if calls is not None else None
    mod.nvmlDeviceGetCount = lambda: n
    mod.nvmlDeviceGetHandleByIndex = handle
    mod.nvmlDeviceGetUtilizationRates = util
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=1000 * h, total=80 * 2**30, free=80 * 2**30 - 1000 * h)
    mod.nvmlDeviceGetUUID = lambda h: UUIDS[h % len(UUIDS)]
    mod.nvmlDeviceGetName = lambda h: b'NVIDIA H100 80GB HBM3'  # old pynvml returns bytes
    return mod


# --------------------------------------------------------------------------- the Jina table


@pytest.mark.parametrize('spec, replicas, total, expected', [
    ('RR', 5, 3, ['0', '1', '2', '0', '1']),
    ('RR1:', 5, 3, ['1', '2', '1', '2', '1']),
    ('RR0:2', 5, 3, ['0', '1', '0', '1', '0']),
    ('RR2', 2, 3, ['2', '2']),
    ('RR0,2,3', 5, 4, ['0', '2', '3', '0', '2']),
    ('RR1,3', 5, 4, ['1', '3', '1', '3', '1']),
    ('RR0:4:2', 3, 4, ['0', '2', '0']),
    ('RR::2', 3, 5, ['0', '2', '4']),
    ('RR-2:', 3, 4, ['2', '3', '2']),           # Python slice semantics
    ('RR:2', 3, 4, ['0', '1', '0']),
    ('RR0,0,1', 3, 2, ['0', '0', '1']),          # repeats are allowed: two replicas on GPU 0
    ('RR 0, 2', 3, 4, ['0', '2', '0']),          # spaces around items are tolerated
    ('RR', 0, 3, []),
])
def test_jina_round_robin_table(spec, replicas, total, expected):
    assert assign_devices(spec, replicas, total_devices=total) == expected


def test_uuids_round_robin_without_a_count(no_nvml):
    spec = 'RR' + ','.join(UUIDS)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # UUIDs need no device count: no warning
        assert assign_devices(spec, 5) == UUIDS + [UUIDS[0]]


def test_mig_uuids_and_single_uuid():
    migs = 'MIG-4b1f8a5e-1c2d-5e6f-8a9b-0c1d2e3f4a5b,MIG-GPU-0aaaaaaa-74d2/1/0'
    assert assign_devices('RR' + migs, 3) == [
        'MIG-4b1f8a5e-1c2d-5e6f-8a9b-0c1d2e3f4a5b', 'MIG-GPU-0aaaaaaa-74d2/1/0',
        'MIG-4b1f8a5e-1c2d-5e6f-8a9b-0c1d2e3f4a5b']
    assert assign_devices('RR' + UUIDS[2], 2) == [UUIDS[2], UUIDS[2]]


@given(total=st.integers(1, 16), replicas=st.integers(0, 40))
def test_rr_property(total, replicas):
    assert assign_devices('RR', replicas, total) == [str(i % total) for i in range(replicas)]


@given(total=st.integers(1, 12), replicas=st.integers(1, 30),
       start=st.none() | st.integers(-12, 12), stop=st.none() | st.integers(-12, 12),
       step=st.none() | st.integers(-3, 3).filter(bool))
def test_slice_property_matches_python(total, replicas, start, stop, step):
    text = ':'.join('' if v is None else str(v) for v in (start, stop, step))
    chosen = list(range(total))[slice(start, stop, step)]
    if not chosen:
        with pytest.raises(GPUSpecError):
            assign_devices('RR' + text, replicas, total)
    else:
        assert assign_devices('RR' + text, replicas, total) == [
            str(chosen[i % len(chosen)]) for i in range(replicas)]


# --------------------------------------------------------------------------- no RR


@pytest.mark.parametrize('spec', ['0', '1,3', UUIDS[0], '-1', 'rr', ' 2 '])
def test_other_values_pass_through_unchanged(spec):
    assert assign_devices(spec, 3, total_devices=4) == [spec] * 3


@pytest.mark.parametrize('spec', [None, ''])
def test_none_or_empty_changes_nothing(spec):
    assert assign_devices(spec, 3) == [None, None, None]


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize('spec, total', [
    ('RRx', 3),
    ('RR1:a', 3),
    ('RR-1', 3),
    ('RR3', 3),           # index >= total
    ('RR0,3', 3),
    ('RR5:', 3),          # slice selecting nothing
    ('RR2:1', 3),
    ('RR0,,2', 3),        # empty items
    ('RR0,', 3),
    ('RR,0', 3),
    ('RR1:2:0', 3),       # zero step
    ('RR1:2:3:4', 3),
    ('RR0,GPU-abc', 3),   # mixed
    ('RRGPU-', 3),
    ('RR1.5', 3),
    ('RR0', 0),           # no device 0 when the count is known to be 0
])
def test_malformed_specs_raise_naming_the_spec(spec, total):
    with pytest.raises(GPUSpecError) as info:
        assign_devices(spec, 2, total_devices=total)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert repr(spec) in message
    assert "'RR0:2'" in message and 'UUID' in message  # says what is allowed


@pytest.mark.parametrize('spec', ['RRx', 'RR1:a', 'RR-1', 'RR0,,1'])
def test_syntax_errors_raise_even_without_a_gpu(no_nvml, spec):
    with pytest.raises(GPUSpecError, match='RR'):
        assign_devices(spec, 2)


def test_bad_arguments():
    with pytest.raises(ValueError):
        assign_devices('RR', -1, 3)
    with pytest.raises(ValueError):
        assign_devices('RR', 2, -3)
    with pytest.raises(TypeError):
        assign_devices('RR', 2.0, 3)


# --------------------------------------------------------------------------- no GPU known


@pytest.mark.parametrize('spec', ['RR', 'RR1:', 'RR0:2'])
def test_no_gpu_known_warns_and_leaves_unset(no_nvml, spec):
    with pytest.warns(RuntimeWarning, match='no GPU was found') as record:
        assert assign_devices(spec, 3) == [None, None, None]
    assert 'CUDA_TOTAL_DEVICES' in str(record[0].message)


def test_zero_devices_warns_too():
    with pytest.warns(RuntimeWarning, match='no GPU was found'):
        assert assign_devices('RR', 2, total_devices=0) == [None, None]


def test_explicit_indexes_pass_unchecked_when_count_unknown(no_nvml):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert assign_devices('RR1,3', 3) == ['1', '3', '1']
        assert assign_devices('RR7', 2) == ['7', '7']


def test_simulated_count_from_env(no_nvml, monkeypatch):
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '3')
    assert assign_devices('RR', 5) == ['0', '1', '2', '0', '1']
    with pytest.raises(GPUSpecError):
        assign_devices('RR3', 1)


def test_replica_env_never_passes_rr_on():
    base = {'CUDA_VISIBLE_DEVICES': 'RR', 'X': '1'}
    assert replica_env(base, '1') == {'CUDA_VISIBLE_DEVICES': '1', 'X': '1'}
    assert replica_env(base, None) == {'X': '1'}
    assert base == {'CUDA_VISIBLE_DEVICES': 'RR', 'X': '1'}  # not mutated
    assert replica_env({'CUDA_VISIBLE_DEVICES': ''}, None) == {'CUDA_VISIBLE_DEVICES': ''}
    assert replica_env(None, '0') == {'CUDA_VISIBLE_DEVICES': '0'}


# --------------------------------------------------------------------------- device_count


def test_device_count_from_env(no_nvml, monkeypatch):
    assert device_count() is None
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '4')
    assert device_count() == 4
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '0')
    assert device_count() == 0


@pytest.mark.parametrize('raw', ['four', '-2', '1.5'])
def test_device_count_bad_env_warns_and_is_unknown(no_nvml, monkeypatch, raw):
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', raw)
    with pytest.warns(RuntimeWarning, match='CUDA_TOTAL_DEVICES'):
        assert device_count() is None


def test_device_count_nvml_failure_falls_back_to_env(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml', _fake_pynvml(2, init_error='Driver Not Loaded'))
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '5')
    gpu._reset_nvml()
    assert device_count() == 5


def test_device_count_prefers_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml', _fake_pynvml(2))
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '5')
    gpu._reset_nvml()
    assert device_count() == 2
    assert assign_devices('RR', 3) == ['0', '1', '0']


def test_nvml_initialised_once_per_process_thread_safe(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, 'pynvml', _fake_pynvml(1, calls=calls))
    gpu._reset_nvml()
    barrier = threading.Barrier(16)

    def work():
        barrier.wait()
        device_count()
        gpu_snapshot()

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls.count('init') == 1


def test_real_nvml_failure_is_caught():
    # On this machine either NVML works or it fails: neither may raise.
    n = device_count()
    assert n is None or n >= 0


# --------------------------------------------------------------------------- snapshot


def test_snapshot_without_gpu(no_nvml):
    snap = gpu_snapshot()
    assert snap['available'] is False
    assert snap['gpus'] == []
    assert snap['note'].startswith('no NVIDIA GPU found (NVML: ')
    assert '\n' not in snap['note']


def test_snapshot_nvml_init_error_is_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml',
                        _fake_pynvml(0, init_error='NVML Shared Library Not Found'))
    gpu._reset_nvml()
    assert gpu_snapshot() == {
        'available': False, 'gpus': [],
        'note': 'no NVIDIA GPU found (NVML: NVML Shared Library Not Found)'}


def test_snapshot_with_fake_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml', _fake_pynvml(2))
    gpu._reset_nvml()
    snap = gpu_snapshot()
    assert snap['available'] is True and snap['note'] is None
    assert [g['index'] for g in snap['gpus']] == [0, 1]
    first, second = snap['gpus']
    assert first == {'index': 0, 'uuid': UUIDS[0], 'name': 'NVIDIA H100 80GB HBM3',
                     'utilization': 10, 'memory_used': 0, 'memory_total': 80 * 2**30}
    assert second['utilization'] is None  # not supported on that device: None, no error


def test_snapshot_zero_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml', _fake_pynvml(0))
    gpu._reset_nvml()
    snap = gpu_snapshot()
    assert snap['available'] is False and 'no NVIDIA GPU found' in snap['note']


# --------------------------------------------------------------------------- CUDA state


def test_cuda_not_initialised_here():
    assert 'torch' not in sys.modules or not sys.modules['torch'].cuda.is_initialized()
    assert cuda_initialised_in_this_process() is False
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        warn_if_cuda_initialised()


def test_cuda_initialised_detects_torch(monkeypatch):
    fake = types.ModuleType('torch')
    fake.cuda = types.SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, 'torch', fake)
    assert cuda_initialised_in_this_process() is False
    fake.cuda = types.SimpleNamespace(is_initialized=lambda: True)
    assert cuda_initialised_in_this_process() is True
    with pytest.warns(RuntimeWarning, match='CUDA is already initialised'):
        warn_if_cuda_initialised()


def test_cuda_initialised_detects_jax_gpu_backend(monkeypatch):
    bridge = types.ModuleType('jax._src.xla_bridge')
    bridge._backends = {'cpu': object()}
    monkeypatch.setitem(sys.modules, 'jax._src.xla_bridge', bridge)
    assert cuda_initialised_in_this_process() is False
    bridge._backends['cuda'] = object()
    assert cuda_initialised_in_this_process() is True


def test_cuda_initialised_detects_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, 'cupy', types.ModuleType('cupy'))
    assert cuda_initialised_in_this_process() is True


def test_does_not_import_frameworks():
    before = set(sys.modules)
    cuda_initialised_in_this_process()
    assert not {'torch', 'cupy', 'jax'} & (set(sys.modules) - before)


# --------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
def test_snapshot_on_a_real_gpu():
    gpu._reset_nvml()
    snap = gpu_snapshot()
    if not snap['available']:
        pytest.skip(f"no GPU: {snap['note']}")
    assert snap['gpus'], snap
    for g in snap['gpus']:
        assert g['memory_total'] and g['memory_total'] > 0
        assert g['uuid'] and g['uuid'].startswith(('GPU-', 'MIG-'))
    n = device_count()
    assert n == len(snap['gpus'])
    assert assign_devices('RR', n + 1) == [str(i % n) for i in range(n + 1)]
