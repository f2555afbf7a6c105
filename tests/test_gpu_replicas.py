"""CUDA_VISIBLE_DEVICES=RR through real replica processes.

Each replica reports the ``CUDA_VISIBLE_DEVICES`` it really has, twice: in its ``Info``
(``status()['replicas'][i]['cuda_visible_devices']``) and in the docs it serves
(``WhoAmI`` writes ``replica:pid:CUDA_VISIBLE_DEVICES``). GPUs are simulated with
``CUDA_TOTAL_DEVICES`` (NVML is switched off for these tests so that a real GPU does not
change the count). The last test, marked ``gpu``, runs on a real NVIDIA GPU only.
"""
import importlib.util
import os
import sys
import warnings

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Deployment, Executor, requests
from runtime import gpu

UUIDS = [
    'GPU-0aaaaaaa-74d2-7297-d557-12771b6a79d5',
    'GPU-0bbbbbbb-74d2-7297-d557-12771b6a79d5',
    'GPU-0ccccccc-74d2-7297-d557-12771b6a79d5',
    'GPU-0ddddddd-74d2-7297-d557-12771b6a79d5',
]


@pytest.fixture
def simulated_gpus(monkeypatch):
    """NVML off (whatever this machine has) and no inherited CUDA_* settings.

    Returns ``set_total(n)``: ``CUDA_TOTAL_DEVICES=n`` (``None``: unset), Jina's way to
    simulate GPUs.
    """
    monkeypatch.setitem(sys.modules, 'pynvml', None)    # `import pynvml` -> ImportError
    for var in ('CUDA_VISIBLE_DEVICES', 'CUDA_TOTAL_DEVICES'):
        monkeypatch.delenv(var, raising=False)
    gpu._reset_nvml()

    def set_total(n):
        if n is None:
            monkeypatch.delenv('CUDA_TOTAL_DEVICES', raising=False)
        else:
            monkeypatch.setenv('CUDA_TOTAL_DEVICES', str(n))
    yield set_total
    gpu._reset_nvml()


def replica_devices(dep: Deployment, n_docs: int = 12) -> list:
    """Each replica's real CUDA_VISIBLE_DEVICES, in shard-then-replica order (None: unset).

    Read from the replicas' Info, then cross-checked against the docs they serve.
    """
    replicas = dep.status()['replicas']
    assert all(r['state'] == 'ready' for r in replicas), replicas
    by_pid = {r['pid']: r['cuda_visible_devices'] for r in replicas}
    out = dep.post('/who', DocList[TextDoc]([TextDoc() for _ in range(n_docs)]), request_size=1)
    seen = set()
    for text in out.text:
        _, pid, cvd = text.split(':', 2)
        pid = int(pid)
        assert pid in by_pid, f'{text!r} comes from a pid that status() does not list: {by_pid}'
        assert (None if cvd == 'None' else cvd) == by_pid[pid], (text, by_pid)
        seen.add(pid)
    assert len(seen) > 1 or len(by_pid) == 1, f'only {seen} served {n_docs} requests'
    return [r['cuda_visible_devices'] for r in replicas]


# the table from Jina's tests: spec, replicas, GPUs (None: unknown), expected devices
RR_TABLE = [
    ('RR', 5, 3, ['0', '1', '2', '0', '1']),
    ('RR1:', 5, 3, ['1', '2', '1', '2', '1']),
    ('RR0:2', 5, 3, ['0', '1', '0', '1', '0']),
    ('RR2', 2, 3, ['2', '2']),
    ('RR0,2,3', 5, 4, ['0', '2', '3', '0', '2']),
    ('RR' + ','.join(UUIDS), 5, None, UUIDS + UUIDS[:1]),
]


@pytest.mark.parametrize('spec, replicas, total, expected', RR_TABLE,
                         ids=['RR', 'RR1:', 'RR0:2', 'RR2', 'RR0,2,3', 'RRuuids'])
def test_rr_table_through_replica_processes(simulated_gpus, spec, replicas, total, expected):
    simulated_gpus(total)
    with Deployment(name='rr', uses='sample_executors:WhoAmI', replicas=replicas,
                    env={'CUDA_VISIBLE_DEVICES': spec}) as dep:
        assert replica_devices(dep, n_docs=2 * replicas) == expected
        st = dep.status()
        names = [f'rr/rep-{i}' for i in range(replicas)]
        assert st['gpus']['assignment'] == dict(zip(names, expected))


def test_rr_from_the_starting_environment_counts_over_all_shards(simulated_gpus, monkeypatch):
    simulated_gpus(3)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', 'RR')
    with Deployment(name='sh', uses='sample_executors:WhoAmI', shards=2, replicas=2) as dep:
        assert replica_devices(dep) == ['0', '1', '2', '0']
        st = dep.status()
        assert [r['name'] for r in st['replicas']] == [
            'sh/shard-0/rep-0', 'sh/shard-0/rep-1', 'sh/shard-1/rep-0', 'sh/shard-1/rep-1']
        assert [(r['shard'], r['replica']) for r in st['replicas']] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_rr_without_any_gpu_warns_and_sets_nothing(simulated_gpus, monkeypatch):
    simulated_gpus(None)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', 'RR')    # inherited by the replicas unless removed
    dep = Deployment(name='nogpu', uses='sample_executors:WhoAmI', replicas=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        dep.start()
    try:
        notes = [str(w.message) for w in caught if 'no GPU was found' in str(w.message)]
        assert len(notes) == 1, [str(w.message) for w in caught]
        assert "CUDA_VISIBLE_DEVICES='RR'" in notes[0] and 'CUDA_TOTAL_DEVICES' in notes[0]
        assert replica_devices(dep) == [None, None]      # never the literal 'RR'
        st = dep.status()
        assert st['gpus']['available'] is False and st['gpus']['note']
        assert st['gpus']['assignment'] == {'nogpu/rep-0': None, 'nogpu/rep-1': None}
    finally:
        dep.close()


def test_plain_value_passes_through_and_env_wins_over_the_starting_environment(simulated_gpus,
                                                                              monkeypatch):
    simulated_gpus(4)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', 'RRx')   # malformed, but env= overrides it
    with Deployment(uses='sample_executors:WhoAmI', replicas=2,
                    env={'CUDA_VISIBLE_DEVICES': '1,3'}) as dep:
        assert replica_devices(dep) == ['1,3', '1,3']


@pytest.mark.parametrize('spec, total, why', [
    ('RRx', 3, "'x' is neither a device index"),
    ('RR1:a', 3, "slice bound 'a'"),
    ('RR0,,1', 3, 'empty item'),
    ('RR-1', 3, 'negative'),
    ('RR3', 3, 'device index 3 does not exist'),
    ('RR5:', 3, 'selects no device'),
    ('RRx', None, "'x' is neither"),             # syntax errors surface without any GPU
])
@pytest.mark.parametrize('via', ['env', 'environ'])
def test_malformed_spec_raises_at_construction_naming_it(simulated_gpus, monkeypatch, spec, total, why, via):
    simulated_gpus(total)
    kwargs = {}
    if via == 'env':
        kwargs['env'] = {'CUDA_VISIBLE_DEVICES': spec}
    else:
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', spec)
    with pytest.raises(ValueError) as info:
        Deployment(uses='sample_executors:WhoAmI', replicas=2, **kwargs)   # nothing is started
    msg = str(info.value)
    assert f'CUDA_VISIBLE_DEVICES={spec!r}' in msg and why in msg, msg


def test_malformed_spec_set_after_construction_fails_at_start(simulated_gpus, monkeypatch):
    simulated_gpus(3)
    dep = Deployment(uses='sample_executors:WhoAmI')
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', 'RR7')
    with pytest.raises(ValueError, match=r"CUDA_VISIBLE_DEVICES='RR7'.*does not exist"):
        dep.start()
    assert not dep._started and dep.gateway is None    # failed before any process started


# --------------------------------------------------------------------------- a real GPU

def _nvidia_gpus() -> int:
    snap = gpu.gpu_snapshot()
    return len(snap['gpus']) if snap['available'] else 0


def _framework() -> str | None:
    for name in ('torch', 'cupy'):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


class HoldTensor(Executor):
    """Allocates ``size`` bytes on its GPU at start (torch or cupy) and holds them while it lives.

    Defined at module level so that replicas import it by reference.
    """

    def __init__(self, framework: str = 'torch', size: int = 2**20, **kwargs):
        super().__init__(**kwargs)
        n = size // 4
        if framework == 'torch':
            import torch
            self.tensor = torch.ones(n, dtype=torch.float32, device='cuda')
            torch.cuda.synchronize()
            self.allocated = int(torch.cuda.memory_allocated())
            self.total = int(self.tensor.sum(dtype=torch.float64).item())   # computed on the GPU
        else:
            import cupy
            self.tensor = cupy.ones(n, dtype=cupy.float32)
            cupy.cuda.runtime.deviceSynchronize()
            self.allocated = int(self.tensor.nbytes)
            self.total = int(self.tensor.sum(dtype=cupy.float64).item())    # computed on the GPU

    @requests
    def who(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = (f'{self.runtime_args.replica_id}:{os.getpid()}:'
                      f'{os.environ.get("CUDA_VISIBLE_DEVICES")}:{self.allocated}:{self.total}')


@pytest.mark.gpu
@pytest.mark.skipif(_nvidia_gpus() == 0, reason='no NVIDIA GPU: NVML finds none on this machine')
def test_two_rr_replicas_hold_tensors_on_the_real_gpu():
    framework = _framework()
    if framework is None:
        pytest.skip('neither torch nor cupy is installed: nothing to allocate a GPU tensor with')
    size = 256 * 2**20
    n_gpus = _nvidia_gpus()
    before = {g['index']: g['memory_used'] or 0 for g in gpu.gpu_snapshot()['gpus']}
    env = {'CUDA_VISIBLE_DEVICES': 'RR', 'CUDA_DEVICE_ORDER': 'PCI_BUS_ID'}
    with Deployment(name='gpu', uses=HoldTensor, uses_with={'framework': framework, 'size': size},
                    replicas=2, env=env, timeout_ready=240) as dep:
        st = dep.status()
        expected = [str(i % n_gpus) for i in range(2)]
        assert [r['cuda_visible_devices'] for r in st['replicas']] == expected
        out = dep.post('/who', DocList[TextDoc]([TextDoc() for _ in range(6)]), request_size=1)
        by_replica = {}
        for text in out.text:
            rid, pid, cvd, allocated, total = text.split(':')
            by_replica[rid] = (cvd, int(allocated), int(total))
        assert set(by_replica) == {'0', '1'}, out.text
        for rid, (cvd, allocated, total) in by_replica.items():
            assert cvd == expected[int(rid)]
            assert allocated >= size and total == size // 4

        gpus = st['gpus']
        assert gpus['available'] is True and gpus['note'] is None
        assert gpus['assignment'] == {'gpu/rep-0': expected[0], 'gpu/rep-1': expected[1]}
        for g in gpus['gpus']:
            assert g['memory_total'] and g['memory_total'] > 0
            want = [f'gpu/rep-{i}' for i in range(2) if expected[i] == str(g['index'])]
            assert g['replicas'] == want
        grown = sum((g['memory_used'] or 0) - before.get(g['index'], 0) for g in gpus['gpus'])
        assert grown >= 2 * size, f'NVML shows {grown} more bytes used; expected >= {2 * size}'
        for i in {int(e) for e in expected}:
            g = next(g for g in gpus['gpus'] if g['index'] == i)
            assert g['memory_used'] > 0 and g['utilization'] is not None

    def released() -> bool:
        now = {g['index']: g['memory_used'] or 0 for g in gpu.gpu_snapshot()['gpus']}
        return sum(now.values()) - sum(before.values()) < size
    wait_until(released, timeout=30, what='NVML to show the replicas\' GPU memory released')
