"""The processes of one plan: start them all, restart one, take one out of rotation, stop them all.

A :class:`Runner` owns the child processes of one running Deployment or Flow: a replica
process per local :class:`~runtime.plan.ReplicaPlan` of its stages and the gateway. The
plan stays as it was built; what runs is kept next to it, in :class:`RunningStage` and
:class:`RunningReplica` (``Deployment.stages``).
The owner (:class:`~runtime.orchestration.Orchestration`) plans, then hands the plan to a
runner; the :class:`~runtime.supervision.Supervisor` drives the runner through this small
interface only:

- :attr:`Runner.closing` -- set when the runner stops; the supervisor stops with it;
- :meth:`Runner.children` -- the gateway and every local replica as running now
  (:class:`SupervisedChild`: name, supervision policy, current process, address);
- :meth:`Runner.restart` -- start child ``name`` again on its port with its spec; returns once
  it is ready, raises :class:`~runtime.processes.ChildFailedError` when it is not;
- :meth:`Runner.take_out` -- the gateway stops routing to a replica left down (and says why);
- :meth:`Runner.put_back` -- it may route to it again once it answers.

    >>> runner = Runner(dep.run_plan(), secret, log_dir, timeout_ready=60)   # doctest: +SKIP
    >>> runner.start(); runner.restart('dep/rep-0'); runner.stop()          # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional

import grpc

from runtime import protocol
from runtime.loop import run_sync
from runtime.processes import ChildFailedError, ChildProcess, start_all, stop_all
from runtime.secrets import call_metadata
from runtime.specs import GatewaySpec, SupervisionPolicy

if TYPE_CHECKING:
    from runtime.plan import ReplicaPlan, RunPlan, StagePlan

log = logging.getLogger('orchestra')


class RunningReplica:
    """A replica of a started plan: its :class:`~runtime.plan.ReplicaPlan` (``plan``; its fields
    read through) and the process running it, or its external address."""

    def __init__(self, plan: 'ReplicaPlan'):
        self.plan = plan
        self.process: Optional[ChildProcess] = None   # the current one (a restart replaces it)
        self.address: Optional[str] = plan.external_address   # host:port once it runs

    def __getattr__(self, name: str) -> Any:   # name, shard, replica, spec, env, external_address
        if name == 'plan':
            raise AttributeError(name)
        return getattr(self.plan, name)

    @property
    def port(self) -> Optional[int]:
        return int(self.address.rsplit(':', 1)[1]) if self.address else None


class RunningStage:
    """A stage of a started plan: its :class:`~runtime.plan.StagePlan` (``plan``; its fields read
    through) and its running replicas per shard (scaling changes these lists, not the plan)."""

    def __init__(self, plan: 'StagePlan'):
        self.plan = plan
        self.shards: List[List[RunningReplica]] = [[RunningReplica(r) for r in shard] for shard in plan.shards]

    def __getattr__(self, name: str) -> Any:   # name, policy, needs, polling, stateful, secret_file, ...
        if name == 'plan':
            raise AttributeError(name)
        return getattr(self.plan, name)

    @property
    def replicas(self) -> List[RunningReplica]:
        return [r for shard in self.shards for r in shard]


class SupervisedChild(NamedTuple):
    """One child as the supervisor sees it: a replica or the gateway."""
    name: str
    policy: SupervisionPolicy
    process: Optional[ChildProcess]   # the current one (a restart replaces it)
    address: Optional[str]            # where its Info answers (health probes)


class Runner:
    """Owns the processes of one plan; see the module docstring."""

    def __init__(self, plan: 'RunPlan', secret: Optional[str], log_dir: str, timeout_ready: float):
        self.name = plan.name
        self.plan = plan
        self.stages = [RunningStage(s) for s in plan.stages]   # what runs; scaling changes their shards
        self.gateway_spec: GatewaySpec = replace(plan.gateway, secret=secret)   # private pipe: never argv/env
        self.secret = secret
        self.log_dir = log_dir
        self.timeout_ready = timeout_ready
        self.closing = threading.Event()
        self.gateway: Optional[ChildProcess] = None
        self.gateway_ports: Dict[str, int] = {}   # protocol -> port of each door, kept across gateway restarts
        self._left_down: Dict[str, str] = {}      # replica name -> why it is out of rotation (crash loop)
        self._lock = threading.RLock()

    # -- all of them ----------------------------------------------------------------
    def local_replicas(self) -> List[RunningReplica]:
        return [r for s in self.stages for r in s.replicas if r.external_address is None]

    def start(self, progress: Optional[Callable[[str, str, Optional[str]], None]] = None) -> None:
        """Start every process in parallel; return when all are ready and the gateway knows the replicas.

        Raises (after stopping what it started) naming the process that failed."""
        local = self.local_replicas()
        for r in local:
            r.process = self.replica_process(r)
        self.gateway = ChildProcess(self.gateway_spec.name, 'gateway', self.gateway_spec.to_dict(),
                                    self.log_path(self.gateway_spec.name))
        try:
            start_all([r.process for r in local] + [self.gateway], self.timeout_ready,
                      progress and (lambda c, state, detail: progress(c.name, state, detail)))
            for r in local:
                r.address = f'127.0.0.1:{r.process.info["port"]}'
            self.gateway_ports = {p: int(n) for p, n in self.gateway.info['ports'].items()}
            self.connect_gateway()
        except BaseException:
            self.closing.set()
            stop_all([r.process for r in local if r.process] + [self.gateway])
            raise

    def stop(self) -> None:
        """Stop every process (in parallel). Safe to call twice."""
        self.closing.set()
        procs = [r.process for s in self.stages for r in s.replicas if r.process]
        stop_all(procs + ([self.gateway] if self.gateway else []))

    @property
    def local_port(self) -> Optional[int]:
        """The gateway's loopback port (Call, Info, and Control with the secret)."""
        return self.gateway.info.get('local_port') if self.gateway is not None else None

    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, name.replace('/', os.sep) + '.log')

    def replica_process(self, r: RunningReplica, port: Optional[int] = None,
                        log_path: Optional[str] = None) -> ChildProcess:
        """A (not started) process for replica ``r``, with the secret (private pipe: never argv or env)."""
        assert r.spec is not None, f'{r.name} is external'
        spec = replace(r.spec, secret=self.secret, port=r.spec.port if port is None else port)
        return ChildProcess(r.name, 'worker', spec.to_dict(), log_path or self.log_path(r.name), r.env)

    # -- the supervisor's interface ---------------------------------------------------
    def children(self) -> List[SupervisedChild]:
        """The gateway and every local replica, as running now."""
        single = self.stages[0].policy if len(self.stages) == 1 else None
        out = [SupervisedChild(self.gateway_spec.name, single or SupervisionPolicy(), self.gateway,
                               self.gateway_probe_address())]
        for s in self.stages:
            out += [SupervisedChild(r.name, s.policy, r.process, r.address) for r in s.replicas
                    if r.external_address is None]
        return out

    def restart(self, name: str) -> None:
        """Start dead child ``name`` again on its port with its spec (the supervisor calls this in a
        thread per child: restarts run in parallel). Raises :class:`ChildFailedError` when it does
        not get ready; does nothing while closing or when ``name`` was scaled away."""
        if name == self.gateway_spec.name:
            return self._restart_gateway()
        r = next((r for r in self.local_replicas() if r.name == name), None)
        if self.closing.is_set() or r is None:
            return  # closing, or scaled away
        log.info('restarting %s on port %s', r.name, r.port)   # the supervisor's warning already said so
        r.process = self.replica_process(r, port=r.port, log_path=r.process.log_path if r.process else None)
        self._start_and_wait(r.process)

    def take_out(self, name: str, cause: str) -> None:
        """Replica ``name`` is left down (``cause``): the gateway routes around it and names the cause."""
        self._left_down[name] = cause
        self.tell_gateway()

    def put_back(self, name: str) -> None:
        """Replica ``name`` may get requests again (once it answers its health probe)."""
        self._left_down.pop(name, None)
        self.tell_gateway()

    # -- the gateway ------------------------------------------------------------------
    def gateway_probe_address(self) -> Optional[str]:
        """Where the gateway's health is probed (gRPC Info): its loopback port, plaintext whatever the
        public doors are (a TLS door, a bind to one non-loopback address, no gRPC door at all)."""
        port = self.local_port or self.gateway_ports.get('grpc')
        return f'127.0.0.1:{port}' if port else None

    def _restart_gateway(self) -> None:
        """Start the dead gateway again on its ports, then send it the replica addresses."""
        if self.closing.is_set():
            return
        log.info('restarting the gateway of %s on %s', self.name, self.gateway_ports)
        old = self.gateway
        # every listener comes back on its port: clients (and the owner's own, on the loopback one) reconnect
        spec = replace(self.gateway_spec,
                       ports=tuple(self.gateway_ports.get(p, 0) for p in self.gateway_spec.protocols),
                       local_port=old.info.get('local_port') or 0)
        self.gateway = ChildProcess(old.name, 'gateway', spec.to_dict(), old.log_path)
        self._start_and_wait(self.gateway)
        if not self.closing.is_set():
            self.connect_gateway()

    def connect_gateway(self) -> None:
        """Tell the gateway where every shard's replicas listen."""
        for s in self.stages:
            for i in range(len(s.shards)):
                self.gateway_control(self._replicas_header(s, i))

    def tell_gateway(self) -> None:
        """Re-send every shard's replicas (with the left-down ones' causes) to the gateway."""
        try:
            self.connect_gateway()
        except Exception as e:   # the gateway is down: it gets them when it is restarted
            log.warning('could not tell the gateway of %s which replicas are down: %s', self.name, e)

    def _replicas_header(self, s: RunningStage, i: int) -> Dict[str, Any]:
        """``set_replicas`` for shard ``i`` of ``s``: addresses, names, logs, and why any is left down."""
        live = [r for r in s.shards[i] if r.address]
        return {'op': 'set_replicas', 'node': s.name, 'shard': i, 'addresses': [r.address for r in live],
                'names': [r.name for r in live],
                'logs': [r.process.log_path if r.process else None for r in live],
                'stopped': {r.address: self._left_down[r.name] for r in live if r.name in self._left_down}}

    def gateway_control(self, header: Dict[str, Any]) -> None:
        async def go():
            async with grpc.aio.insecure_channel(f'127.0.0.1:{self.local_port}',
                                                 options=protocol.GRPC_OPTIONS) as ch:
                return await ch.unary_unary(protocol.CONTROL)(protocol.pack(header), timeout=10,
                                                              metadata=call_metadata(self.secret))
        h, _ = protocol.unpack(run_sync(go(), 15, what=f'the gateway of {self.name!r}'))
        if not h.get('ok'):
            raise RuntimeError(f'gateway refused {header.get("op")}: {h.get("error")}')

    # -- scaling ------------------------------------------------------------------------
    def scale_stage(self, target: 'StagePlan', drain_timeout: float = 30.0) -> Dict[str, List[str]]:
        """Make stage ``target.name`` run ``target``'s replicas in each shard, dropping no request.

        Up: the new replicas start, answer, then join the gateway. Down: the gateway stops
        sending to the removed replicas first (they drain), then they stop once they hold no
        request (or after ``drain_timeout`` s). Returns the names added/removed.
        """
        stage = next((s for s in self.stages if s.name == target.name), None)
        if stage is None:
            raise ValueError(f'{self.name!r} has no executor named {target.name!r}; '
                             f'known: {", ".join(s.name for s in self.stages)}')
        if len(target.shards) != len(stage.shards):
            raise ValueError(f'scaling changes replicas, not shards ({len(stage.shards)} in {stage.name!r})')
        with self._lock:
            new = [[RunningReplica(p) for p in want[len(shard):]] for shard, want in zip(stage.shards, target.shards)]
            added = [r for shard in new for r in shard]
            removed = [r for shard, want in zip(stage.shards, target.shards) for r in shard[len(want):]]
            for r in added:
                r.process = self.replica_process(r)
            start_all([r.process for r in added], self.timeout_ready)  # raises (and stops them) on failure
            for r in added:
                r.address = f'127.0.0.1:{r.process.info["port"]}'
            for i, (shard, want) in enumerate(zip(stage.shards, target.shards)):
                if len(want) == len(shard):
                    continue
                shard[:] = shard + new[i] if len(want) > len(shard) else shard[:len(want)]
                self.gateway_control(self._replicas_header(stage, i))
        if removed:
            run_sync(self._adrain(removed, drain_timeout), drain_timeout + 5,
                     what=f'replicas of {stage.name!r} to finish their requests')
            stop_all([r.process for r in removed if r.process])
        return {'added': [r.name for r in added], 'removed': [r.name for r in removed]}

    async def _adrain(self, replicas: List[RunningReplica], timeout: float) -> None:
        """Wait until none of ``replicas`` holds a request (twice in a row), or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        idle_before = False
        while loop.time() < deadline:
            infos = await asyncio.gather(*(ainfo(r.address, 1.0) for r in replicas))
            idle = all(not info or not info.get('in_flight') for info in infos)
            if idle and idle_before:
                return
            idle_before = idle
            await asyncio.sleep(0.1)
        log.warning('replicas %s still busy after %.0f s; stopping them anyway',
                    ', '.join(r.name for r in replicas), timeout)

    # -- internals ------------------------------------------------------------------------
    def _start_and_wait(self, proc: ChildProcess) -> None:
        """Start ``proc`` and wait until it is ready (``timeout_ready``), or until closing (then stop it)."""
        proc.start()
        deadline = time.monotonic() + self.timeout_ready
        while not proc.wait_reported(0.2) and time.monotonic() < deadline and not self.closing.is_set():
            pass
        if self.closing.is_set():
            proc.stop()
            return
        if not proc.wait_reported(0):   # not ready in time: a death, counted like any other
            proc.kill()
            raise ChildFailedError(proc._explain(f'{proc.role} {proc.name} was not ready within '
                                                 f'{self.timeout_ready:.1f} s'))
        proc.wait_ready(0)   # raises when it failed to start

    def stream_logs(self) -> None:
        """Copy the replicas' log lines to this process's stderr until the runner stops."""
        procs = [r.process for r in self.local_replicas() if r.process]

        def follow():
            offsets = {p.log_path: 0 for p in procs}
            while not self.closing.wait(0.2):
                for path in offsets:
                    try:
                        with open(path, 'rb') as f:
                            f.seek(offsets[path])
                            data = f.read()
                            offsets[path] = f.tell()
                    except OSError:
                        continue
                    if data:
                        sys.stderr.write(data.decode(errors='replace'))
        threading.Thread(target=follow, daemon=True, name=f'logs-{self.name}').start()


async def ainfo(address: Optional[str], timeout: float) -> Optional[Dict[str, Any]]:
    """The Info of the server at ``address`` (a replica or a gateway), or None when it does not answer."""
    if not address:
        return None
    try:
        async with grpc.aio.insecure_channel(address, options=protocol.GRPC_OPTIONS) as ch:
            return json.loads(await ch.unary_unary(protocol.INFO)(b'', timeout=timeout))
    except (grpc.aio.AioRpcError, ValueError, asyncio.TimeoutError):
        return None
