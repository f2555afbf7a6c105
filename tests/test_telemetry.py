"""Telemetry: process CPU/RSS sampled in the background, GPUs through NVML, all in status().

This machine has no NVIDIA GPU, so "with NVML" is simulated by a stand-in ``pynvml``
module in the owner process (where ``status()`` reads the GPUs); the real NVML path is
covered by the ``gpu``-marked test in test_gpu_replicas.py.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import types

import psutil
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Deployment
from runtime import gpu
from runtime.telemetry import ProcessSampler, RequestStats, gpu_status, process_sampler, process_telemetry

UUIDS = ['GPU-0aaaaaaa-74d2-7297-d557-12771b6a79d5', 'GPU-0bbbbbbb-74d2-7297-d557-12771b6a79d5']


@pytest.fixture(autouse=True)
def _fresh_nvml():
    gpu._reset_nvml()
    yield
    gpu._reset_nvml()


class _NVMLError(Exception):
    pass


def fake_pynvml(n: int) -> types.ModuleType:
    """A stand-in for nvidia-ml-py on a machine with ``n`` GPUs (GPU 1 cannot report utilization)."""
    mod = types.ModuleType('pynvml')
    mod.NVMLError = _NVMLError
    mod.nvmlInit = lambda: None
    mod.nvmlShutdown = lambda: None
    mod.nvmlDeviceGetCount = lambda: n

    def handle(i):
        if not 0 <= i < n:
            raise _NVMLError('Invalid Argument')
        return i

    def util(h):
        if h == 1:
            raise _NVMLError('Not Supported')
        return types.SimpleNamespace(gpu=40 + h, memory=10)

    mod.nvmlDeviceGetHandleByIndex = handle
    mod.nvmlDeviceGetUtilizationRates = util
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30,
                                                                  free=(79 - h) * 2**30)
    mod.nvmlDeviceGetUUID = lambda h: UUIDS[h % 2]
    mod.nvmlDeviceGetName = lambda h: b'NVIDIA H100 80GB HBM3'
    return mod


@pytest.fixture
def nvml(monkeypatch):
    """``nvml(n)``: NVML reports n GPUs (``None``: NVML is missing), from now on in this process."""
    monkeypatch.delenv('CUDA_TOTAL_DEVICES', raising=False)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)

    def use(n):
        monkeypatch.setitem(sys.modules, 'pynvml', None if n is None else fake_pynvml(n))
        gpu._reset_nvml()
    return use


# --------------------------------------------------------------------------- processes

def test_sampler_reports_this_process_and_follows_its_cpu():
    sampler = ProcessSampler(interval=0.2).start()
    try:
        snap = sampler.snapshot()
        assert snap['rss_bytes'] == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
        assert snap['cpu_percent'] is not None and snap['cpu_percent'] >= 0
        stop = threading.Event()

        def burn():
            while not stop.is_set():
                sum(range(10_000))
        t = threading.Thread(target=burn, daemon=True)
        t.start()
        try:
            wait_until(lambda: (sampler.snapshot()['cpu_percent'] or 0) > 5, timeout=15,
                       what='the sampler to see a CPU-bound thread')
        finally:
            stop.set()
            t.join(5)
    finally:
        sampler.stop()
    assert not sampler.running
    assert sampler.snapshot()['rss_bytes'] > 0          # the last sample stays readable


def test_sampler_of_a_process_that_exits_reads_none_and_never_raises():
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
    try:
        sampler = ProcessSampler(pid=child.pid, interval=0.1).start()
        assert sampler.snapshot()['rss_bytes'] > 0
        child.kill()
        child.wait(5)
        wait_until(lambda: sampler.snapshot() == {'cpu_percent': None, 'rss_bytes': None}, timeout=10,
                   what='the sampler to notice its process is gone')
        sampler.stop()
    finally:
        child.kill()
        child.wait(5)


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match='interval=0'):
        ProcessSampler(interval=0)


def test_process_sampler_is_one_per_process():
    assert process_sampler() is process_sampler()
    assert set(process_telemetry()) == {'cpu_percent', 'rss_bytes'}


def test_request_stats_keep_their_api_and_add_process_telemetry():
    s = RequestStats()
    s.started('/x')
    s.finished('/x', 0.002)
    s.started('/x')
    s.failed('/x')
    s.finished('/x', 0.004)
    snap = s.snapshot()
    assert snap['requests'] == {'/x': 2} and snap['errors'] == {'/x': 1} and snap['in_flight'] == 0
    assert snap['p50_ms'] == pytest.approx(3.0) and snap['qps_5s'] == pytest.approx(0.4)
    assert snap['rss_bytes'] > 0 and snap['cpu_percent'] >= 0
    assert 'rss_bytes' not in RequestStats(process=False).snapshot()


# --------------------------------------------------------------------------- GPUs

def test_gpu_status_without_nvml_is_a_one_line_note(nvml):
    nvml(None)
    st = gpu_status({'x/rep-0': None})
    assert st['available'] is False and st['gpus'] == []
    assert 'NVML' in st['note'] and '\n' not in st['note']
    assert st['assignment'] == {'x/rep-0': None}


def test_gpu_status_on_this_machine_never_raises(monkeypatch):
    st = gpu_status()
    assert set(st) == {'available', 'note', 'gpus', 'assignment'}
    if not st['available']:
        assert st['note'] and '\n' not in st['note']


def test_gpu_status_maps_replicas_by_index_list_and_uuid_prefix(nvml):
    nvml(2)
    st = gpu_status({'a/rep-0': '0', 'a/rep-1': UUIDS[1][:12], 'b/rep-0': '0,1', 'c/rep-0': None})
    assert st['available'] is True and st['note'] is None
    g0, g1 = st['gpus']
    assert (g0['index'], g0['uuid'], g0['name'], g0['utilization'], g0['memory_used'], g0['memory_total']) == (
        0, UUIDS[0], 'NVIDIA H100 80GB HBM3', 40, 2**30, 80 * 2**30)
    assert g1['utilization'] is None and g1['memory_used'] == 2 * 2**30   # 'Not Supported' is None
    assert g0['replicas'] == ['a/rep-0', 'b/rep-0']
    assert g1['replicas'] == ['a/rep-1', 'b/rep-0']


# --------------------------------------------------------------------------- through status()

def test_status_carries_process_and_gpu_telemetry_with_and_without_nvml(nvml):
    nvml(2)                                              # simulated: 2 GPUs through NVML
    with Deployment(name='tel', uses='sample_executors:WhoAmI', replicas=3,
                    env={'CUDA_VISIBLE_DEVICES': 'RR'}) as dep:
        dep.post('/who', DocList[TextDoc]([TextDoc() for _ in range(6)]), request_size=1)
        st = dep.status()
        for rec in st['replicas'] + [st['gateway']]:
            assert rec['cpu_percent'] is not None and rec['cpu_percent'] >= 0, rec
            real = psutil.Process(rec['pid']).memory_info().rss
            assert rec['rss_bytes'] == pytest.approx(real, rel=0.5), (rec['pid'], rec['rss_bytes'], real)
        assert [r['cuda_visible_devices'] for r in st['replicas']] == ['0', '1', '0']
        gpus = st['gpus']
        assert gpus['available'] is True
        assert [(g['index'], g['replicas']) for g in gpus['gpus']] == [
            (0, ['tel/rep-0', 'tel/rep-2']), (1, ['tel/rep-1'])]
        assert gpus['gpus'][0]['memory_used'] == 2**30

        nvml(None)                                       # NVML gone (as on this machine)
        st = dep.status()
        assert st['gpus']['available'] is False and st['gpus']['gpus'] == []
        assert 'NVML' in st['gpus']['note'] and '\n' not in st['gpus']['note']
        assert st['gpus']['assignment'] == {'tel/rep-0': '0', 'tel/rep-1': '1', 'tel/rep-2': '0'}
        assert all(r['rss_bytes'] > 0 for r in st['replicas'])
