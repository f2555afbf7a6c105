"""The fork server (zygote): children forked from a preloaded process behave like fresh ones."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from docarray.documents import TextDoc

from conftest import pid_gone, wait_until
from orchestra_nb import Deployment, Executor, requests
from runtime import forkserver
from runtime.processes import ChildProcess, start_all, stop_all

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

class Describe(Executor):
    """Answers with what the replica sees of its process: session, cwd, environment."""

    @requests(on='/describe')
    def describe(self, docs, **kwargs):
        import ctypes
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p

        def c_getenv(name):   # what C code (a CUDA runtime) sees, not only os.environ
            value = libc.getenv(name.encode())
            return value.decode() if value is not None else None

        for d in docs:
            d.text = json.dumps({
                'pid': os.getpid(), 'sid': os.getsid(0), 'pgid': os.getpgid(0), 'cwd': os.getcwd(),
                'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'c_cuda': c_getenv('CUDA_VISIBLE_DEVICES'),
                'mine': os.environ.get('ORCHESTRA_TEST_MINE'), 'c_mine': c_getenv('ORCHESTRA_TEST_MINE'),
                'gone': os.environ.get('ORCHESTRA_TEST_GONE'), 'stdin_is_pipe': _is_pipe(0)})


def _is_pipe(fd: int) -> bool:
    import stat
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def _vias(dep) -> list:
    return [r.process.via for stage in dep.stages for r in stage.replicas] + [dep.gateway.via]


@pytest.fixture
def forkserver_on(monkeypatch):
    monkeypatch.delenv('ORCHESTRA_FORKSERVER', raising=False)
    if not forkserver.enabled():
        pytest.skip('the fork server is not available here')


def test_forked_children_have_own_session_env_and_cwd(forkserver_on, monkeypatch, tmp_path):
    monkeypatch.setenv('ORCHESTRA_TEST_MINE', 'from-owner')   # set after the zygote started
    monkeypatch.chdir(tmp_path)
    with Deployment(uses=Describe, replicas=2, env={'CUDA_VISIBLE_DEVICES': '5'}) as dep:
        assert _vias(dep) == ['forkserver'] * 3
        zygote = forkserver.zygote_pid()
        seen = [json.loads(dep.post('/describe', TextDoc()).text[0]) for _ in range(2)]
        for proc in [r.process for r in dep.stages[0].replicas] + [dep.gateway]:
            ps = psutil.Process(proc.pid)
            assert ps.ppid() == zygote              # forked by the zygote ...
            assert os.getsid(proc.pid) == proc.pid  # ... in a session of its own
            assert ps.cwd() == str(tmp_path)
    me = os.getsid(0)
    for s in seen:
        assert s['sid'] == s['pid'] == s['pgid'] and s['sid'] != me
        assert s['cwd'] == str(tmp_path)
        assert s['cuda'] == s['c_cuda'] == '5'
        assert s['mine'] == s['c_mine'] == 'from-owner'
        assert s['stdin_is_pipe']


def test_unset_variable_is_unset_in_the_forked_child(forkserver_on, monkeypatch, tmp_path):
    monkeypatch.setenv('ORCHESTRA_TEST_GONE', 'owner-has-it')
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '3')
    from runtime.specs import ReplicaSpec
    config = ReplicaSpec(name='d/rep-0', uses=Describe, deployment='d').to_dict()
    proc = ChildProcess('d/rep-0', 'worker', config, str(tmp_path / 'd.log'),
                        env={'ORCHESTRA_TEST_GONE': None, 'CUDA_VISIBLE_DEVICES': '0,1'})
    try:
        start_all([proc], timeout=60)
        assert proc.via == 'forkserver'
        from runtime.client import Client
        client = Client(port=proc.info['port'])
        try:
            seen = json.loads(client.post('/describe', TextDoc()).text[0])
        finally:
            client.close()
    finally:
        stop_all([proc])
    assert seen['gone'] is None and seen['cuda'] == seen['c_cuda'] == '0,1'


def test_disabled_by_environment_falls_back_to_subprocesses(monkeypatch):
    monkeypatch.setenv('ORCHESTRA_FORKSERVER', '0')
    with Deployment(uses='sample_executors:Upper', replicas=2) as dep:
        assert _vias(dep) == ['subprocess'] * 3
        assert dep.post('/upper', TextDoc(text='a')).text == ['A']
        assert all(psutil.Process(p).ppid() == os.getpid()
                   for p in [r.process.pid for r in dep.stages[0].replicas])


class InChild(Executor):
    """Answers with ``runtime.child.IN_CHILD`` as the replica sees it."""

    @requests(on='/in_child')
    def in_child(self, docs, **kwargs):
        import runtime.child
        for d in docs:
            d.text = json.dumps(runtime.child.IN_CHILD)


@pytest.mark.parametrize('via', ['forkserver', 'subprocess'])
def test_children_know_they_are_children(via, monkeypatch):
    """``runtime.child`` owns IN_CHILD (an Executor importing orchestra_nb starts no zygote),
    set in a forked child and in ``python -m runtime.child`` alike."""
    if via == 'forkserver':
        monkeypatch.delenv('ORCHESTRA_FORKSERVER', raising=False)
        if not forkserver.enabled():
            pytest.skip('the fork server is not available here')
    else:
        monkeypatch.setenv('ORCHESTRA_FORKSERVER', '0')
    import runtime.child
    assert runtime.child.IN_CHILD is False     # not in the owner
    with Deployment(uses=InChild) as dep:
        assert _vias(dep) == [via] * 2
        assert dep.post('/in_child', TextDoc()).text == ['true']


def test_import_sensitive_variable_gets_a_fresh_interpreter(forkserver_on):
    with Deployment(uses='sample_executors:Upper', env={'OPENBLAS_NUM_THREADS': '1'}) as dep:
        assert _vias(dep) == ['subprocess', 'forkserver']   # the gateway has no such env
        assert dep.post('/upper', TextDoc(text='b')).text == ['B']


def test_zygote_that_cannot_start_falls_back(forkserver_on, monkeypatch):
    broken = forkserver.ForkServer()
    monkeypatch.setattr(forkserver, '_server', broken)
    monkeypatch.setattr(forkserver, 'ZYGOTE_CODE', 'import sys; sys.exit(3)')
    with Deployment(uses='sample_executors:Upper') as dep:
        assert _vias(dep) == ['subprocess'] * 2
        assert dep.post('/upper', TextDoc(text='c')).text == ['C']
    assert broken.disabled and broken.pid is None


def test_killed_zygote_is_replaced_and_its_children_still_stop(forkserver_on):
    with Deployment(uses='sample_executors:Upper', replicas=2) as dep:
        pids = [r.process.pid for r in dep.stages[0].replicas] + [dep.gateway.pid]
        zygote = forkserver.zygote_pid()
        os.kill(zygote, signal.SIGKILL)
        wait_until(lambda: forkserver.zygote_pid() != zygote, what='the killed zygote to be noticed')
        assert dep.post('/upper', TextDoc(text='d')).text == ['D']   # its children are unaffected
        with Deployment(uses='sample_executors:Upper') as other:       # a new zygote forks these
            assert _vias(other) == ['forkserver'] * 2
            assert forkserver.zygote_pid() not in (None, zygote)
    assert all(pid_gone(p) for p in pids)   # stopped through their pidfds (they were orphaned)


def test_supervisor_restart_and_scaling_fork_from_the_zygote(forkserver_on):
    with Deployment(uses='sample_executors:WhoAmI', replicas=1) as dep:
        victim = dep.stages[0].replicas[0].process
        old = victim.pid
        victim.kill()
        assert pid_gone(old)
        wait_until(lambda: dep.stages[0].replicas[0].process.pid != old
                   and dep.status()['replicas'][0]['state'] == 'ready', timeout=20,
                   what='the supervisor to restart rep-0')
        assert dep.stages[0].replicas[0].process.via == 'forkserver'
        dep.scale(replicas=2)
        assert [r.process.via for r in dep.stages[0].replicas] == ['forkserver'] * 2


OWNER = '''
import json, os, sys, time
sys.path.insert(0, {tests!r})
from orchestra_nb import Deployment
from runtime import forkserver
dep = Deployment(uses='sample_executors:Upper', replicas=2).start()
procs = [r.process for r in dep.stages[0].replicas] + [dep.gateway]
print(json.dumps({{'pids': [p.pid for p in procs], 'via': [p.via for p in procs],
                  'zygote': forkserver.zygote_pid()}}), flush=True)
{then}
'''


def _run_owner(tmp_path, then: str) -> tuple:
    script = tmp_path / 'owner.py'
    script.write_text(textwrap.dedent(OWNER.format(tests=TESTS, then=then)))
    env = {k: v for k, v in os.environ.items() if k != 'ORCHESTRA_FORKSERVER'}
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env=env)
    info = json.loads(owner.stdout.readline())
    return owner, info


def test_children_and_zygote_die_when_owner_is_killed(forkserver_on, tmp_path):
    owner, info = _run_owner(tmp_path, 'time.sleep(600)')
    try:
        assert info['via'] == ['forkserver'] * 3 and info['zygote']
        pids = info['pids'] + [info['zygote']]
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
        wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5,
                   what=f'children and zygote {pids} to exit')
    finally:
        owner.kill()
        owner.wait()


def test_zygote_stops_at_interpreter_exit(forkserver_on, tmp_path):
    owner, info = _run_owner(tmp_path, 'dep.close()')   # then the script ends
    try:
        assert owner.wait(30) == 0
        assert info['zygote']
        wait_until(lambda: all(pid_gone(p) for p in info['pids'] + [info['zygote']]), timeout=5,
                   what='the zygote to exit with its owner')
    finally:
        owner.kill()
        owner.wait()


def test_children_do_not_prewarm_a_zygote_of_their_own(forkserver_on):
    with Deployment(uses='sample_executors:Upper', replicas=1) as dep:   # imports orchestra_nb
        dep.post('/upper', TextDoc(text='e'))
        replica = psutil.Process(dep.stages[0].replicas[0].process.pid)
        assert replica.children() == []


def test_blas_works_in_forked_children(forkserver_on):
    class Dot(Executor):
        @requests(on='/dot')
        def dot(self, docs, **kwargs):
            import numpy as np
            a = np.arange(300 * 300, dtype=np.float64).reshape(300, 300) / 1e4
            for d in docs:
                d.text = f'{float((a @ a).sum()):.6e}'

    import numpy as np
    a = np.arange(300 * 300, dtype=np.float64).reshape(300, 300) / 1e4
    with Deployment(uses=Dot) as dep:
        assert dep.stages[0].replicas[0].process.via == 'forkserver'
        assert dep.post('/dot', TextDoc()).text == [f'{float((a @ a).sum()):.6e}']
