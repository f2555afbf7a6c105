"""runtime.runner: the processes of one plan, and the interface the Supervisor drives them through."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import List, Tuple

import grpc
from docarray import DocList
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Client, Deployment
from runtime import protocol
from runtime.runner import Runner, SupervisedChild
from runtime.secrets import private_dir, resolve_secret
from runtime.specs import SupervisionPolicy
from runtime.supervision import Supervisor


# -- the interface, in process ---------------------------------------------------------------------
class DeadProcess:
    """A child that has exited (what the Supervisor reads of a process)."""
    alive = False
    applying = None
    log_path = '/nonexistent.log'

    def __init__(self, pid: int):
        self.pid = pid

    def log_tail(self, n: int) -> str:
        return 'boom'


class InterfaceOnly:
    """Exactly the runner interface the Supervisor may use: anything else raises AttributeError."""
    __slots__ = ('name', 'closing', 'calls', '_children')

    def __init__(self, children: List[SupervisedChild]):
        self.name = 'dep'
        self.closing = threading.Event()
        self.calls: List[Tuple[str, ...]] = []
        self._children = children

    def children(self) -> List[SupervisedChild]:
        return list(self._children)

    def restart(self, name: str) -> None:
        self.calls.append(('restart', name))
        # the restarted child dies again at once: a new dead process each time
        self._children = [c._replace(process=DeadProcess(c.process.pid + 1)) if c.name == name else c
                          for c in self._children]

    def take_out(self, name: str, cause: str) -> None:
        self.calls.append(('take_out', name, cause))

    def put_back(self, name: str) -> None:
        self.calls.append(('put_back', name))


def test_the_supervisor_restarts_then_takes_out_a_crash_looping_child_through_the_runner_interface():
    policy = SupervisionPolicy(max_restarts=2, restart_window=60.0, backoff_base=0.01, backoff_max=0.01)
    runner = InterfaceOnly([SupervisedChild('dep/gateway', policy, None, None),
                            SupervisedChild('dep/rep-0', policy, DeadProcess(100), None)])
    supervisor = Supervisor(runner)   # type: ignore[arg-type]
    supervisor.start()
    try:
        wait_until(lambda: any(c[0] == 'take_out' for c in runner.calls), 30, 'the crash loop to be detected')
    finally:
        runner.closing.set()
        supervisor.join()
    restarts = [c for c in runner.calls if c[0] == 'restart']
    assert restarts == [('restart', 'dep/rep-0')] * 2, runner.calls
    (take_out,) = [c for c in runner.calls if c[0] == 'take_out']
    assert take_out[1] == 'dep/rep-0' and 'crash loop' in take_out[2] and 'boom' in take_out[2]
    assert supervisor.describe('dep/rep-0')['state'] == 'crash-loop'


# -- a real runner ---------------------------------------------------------------------------------------
def _info(address: str) -> dict:
    with grpc.insecure_channel(address, options=protocol.GRPC_OPTIONS) as ch:
        return json.loads(ch.unary_unary(protocol.INFO)(b'', timeout=10))


def _shard(runner: Runner) -> list:
    return _info(f'127.0.0.1:{runner.local_port}')['nodes']['run']['shards'][0]


def test_a_runner_starts_its_plan_restarts_a_replica_on_its_port_and_takes_it_out_and_back():
    log_dir = tempfile.mkdtemp(prefix='orchestra-runner-')
    private_dir(log_dir)
    runner = Runner(Deployment(name='run', replicas=2).run_plan(), resolve_secret(None), log_dir, timeout_ready=60)
    stages = runner.stages
    runner.start()
    try:
        replicas = stages[0].replicas
        assert all(r.address and r.process.alive for r in replicas)
        assert replicas[0].plan is runner.plan.stages[0].shards[0][0]   # what runs sits next to the plan
        assert [c.name for c in runner.children()] == ['run/gateway', 'run/rep-0', 'run/rep-1']
        first = replicas[0]
        port, old_pid = first.port, first.process.pid
        first.process.kill()
        wait_until(lambda: not first.process.alive, 10, 'the killed replica to exit')
        runner.restart(first.name)
        assert first.process.alive and first.process.pid != old_pid and first.port == port
        assert _info(first.address)['pid'] == first.process.pid   # the same address answers
        runner.take_out(first.name, 'left down by the test')
        assert [r.get('stopped') for r in _shard(runner)] == ['left down by the test', None]
        runner.put_back(first.name)
        assert [r.get('stopped') for r in _shard(runner)] == [None, None]
        client = Client(port=runner.gateway_ports['grpc'])
        try:
            assert client.post('/x', DocList[TextDoc]([TextDoc(text='hi')])).text == ['hi']
        finally:
            client.close()
    finally:
        runner.stop()
    assert runner.closing.is_set() and not any(r.process.alive for r in stages[0].replicas)
    assert not runner.gateway.alive
    assert os.path.isdir(log_dir)


def test_a_deployment_supervises_through_its_runner():
    with Deployment(name='sup', replicas=1) as dep:
        assert dep._supervisor.runner is dep._runner
        assert dep.gateway is dep._runner.gateway
