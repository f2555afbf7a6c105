"""What Deployment and Flow share: processes behind one gateway, and their lifecycle.

A subclass implements one method, :meth:`Orchestration._plan`, returning the
graph's nodes (:class:`NodePlan`: the replica processes of each shard, polling,
needs). Everything else comes for free: starting every process in parallel
(the gateway included), readiness with errors that quote the failing
replica's log, ``post``/``apost``, ``status()``, ``logs()``, ``block()``,
supervision (a crashed replica is restarted on its port), scaling, and
``close()`` stopping everything in parallel.

    >>> with Deployment(uses=MyExec, replicas=3) as dep:
    ...     dep.post('/x', docs)
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc

from runtime import protocol, reprs
from runtime.client import Client
from runtime.exposure import warn_if_exposed
from runtime.loop import RequestCancelled, run_async, run_sync
from runtime.logfiles import tail
from runtime.processes import ChildFailedError, ChildProcess, start_all, stop_all
from runtime.secrets import call_metadata, private_dir, resolve_secret
from runtime.supervision import Policy, Supervisor

log = logging.getLogger('orchestra')

#: ``callback(event, orchestration)`` for every start and close in this process, ``event``
#: being ``'started'`` or ``'closed'``; called in the thread that started/closed it. The
#: notebook face (orchestra_nb/registry.py) subscribes so it knows every running Deployment
#: and Flow, however it was started. A callback that raises is logged and ignored.
OBSERVERS: List[Callable[[str, 'Orchestration'], None]] = []


def _notify(event: str, obj: 'Orchestration') -> None:
    for callback in list(OBSERVERS):
        try:
            callback(event, obj)
        except Exception:
            log.exception('an orchestration observer failed on %r', event)


@dataclass
class ReplicaPlan:
    """One replica process to run (or an external address to use)."""
    name: str
    shard: int
    replica: int
    config: Dict[str, Any]
    env: Dict[str, Optional[str]] = field(default_factory=dict)
    external_address: Optional[str] = None
    process: Optional[ChildProcess] = None
    address: Optional[str] = None

    @property
    def port(self) -> Optional[int]:
        return int(self.address.rsplit(':', 1)[1]) if self.address else None


@dataclass
class NodePlan:
    """One Executor of the graph: shards x replicas, polling, joins."""
    name: str
    shards: List[List[ReplicaPlan]]
    polling: Any = None
    needs: Optional[List[str]] = None
    no_reduce: bool = False
    allow_partial: bool = False
    stateful: bool = False
    max_in_flight: Optional[int] = None
    secret_file: Optional[str] = None   # stateful: where the Deployment's secret is kept (runtime.secrets)
    timeout_send: Optional[float] = None    # the gateway's deadline per request to a replica
    policy: Optional[Policy] = None         # supervision settings (None: the defaults)

    @property
    def replicas(self) -> List[ReplicaPlan]:
        return [r for shard in self.shards for r in shard]


class Orchestration:
    """Base of Deployment and Flow; see the module docstring."""

    def __init__(self, name: str, doors: Tuple[List[str], List[Optional[int]]], host: str, timeout_ready: float,
                 log_dir: Optional[str], max_in_flight_per_replica: int, stream_logs: bool,
                 secret: Optional[str] = None, tls_cert: Optional[str] = None, tls_key: Optional[str] = None):
        """``doors``: the gateway's protocols and their ports (0: the OS picks), from
        :func:`runtime.args.protocol_ports`."""
        from runtime.tls import check_tls
        self.name = name
        self.protocols, self._door_ports = list(doors[0]), list(doors[1])
        self.protocol = self.protocols[0] if len(self.protocols) == 1 else list(self.protocols)   # as Jina writes it
        # as the user wrote it (None: the OS picks), for saved configs
        self._port_arg = (self._door_ports[0] if len(self._door_ports) == 1 else
                          None if all(p is None for p in self._door_ports) else list(self._door_ports))
        self.host = host
        self.timeout_ready = timeout_ready
        self.max_in_flight_per_replica = max_in_flight_per_replica
        self.stream_logs = stream_logs
        self.log_dir = log_dir or os.path.join(tempfile.gettempdir(), 'orchestra-nb',
                                               f'{name}-{os.getpid()}-{uuid.uuid4().hex[:6]}')
        self._secret_arg = secret     # never an attribute named `secret`: configs saved from this omit it
        self._secret: Optional[str] = None   # the one in use (runtime.secrets.resolve_secret at start)
        self.tls_cert, self.tls_key = check_tls(tls_cert, tls_key)
        self.nodes: List[NodePlan] = []
        self.gateway: Optional[ChildProcess] = None
        self._client: Optional[Client] = None
        self._started = False
        self._closing = threading.Event()
        self._supervisor: Optional[Supervisor] = None
        self._gateway_ports: Optional[Dict[str, int]] = None   # protocol -> port, kept across gateway restarts
        self._lock = threading.RLock()

    # -- what a subclass implements ------------------------------------------------
    def _plan(self) -> List[NodePlan]:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------
    def start(self, progress: Optional[Callable[[str, str, Optional[str]], None]] = None) -> 'Orchestration':
        """Start every process; return when all answer, or raise naming the one that failed.

        ``progress(name, state, detail)``, when given, is called in this thread as each
        process is started (``'starting'``) and as it reports ``'ready'`` or
        ``'failed'`` (``detail``: the error and the tail of its log).
        """
        if self._started:
            return self
        t0 = time.monotonic()
        self._closing.clear()
        self.nodes = self._plan()
        local = [r for n in self.nodes for r in n.replicas if r.external_address is None]
        self._secret = resolve_secret(self._secret_arg, [n.secret_file for n in self.nodes if n.secret_file])
        private_dir(self.log_dir)   # 0700; the log files are 0600
        for r in local:
            r.config['secret'] = self._secret   # in the spec (private pipe): never argv or env
            r.process = ChildProcess(r.name, 'worker', r.config, self._log_path(r.name), r.env)
        self.gateway = ChildProcess(f'{self.name}/gateway', 'gateway', self._gateway_config(),
                                    self._log_path(f'{self.name}/gateway'))
        try:
            start_all([r.process for r in local] + [self.gateway], self.timeout_ready,
                      progress and (lambda c, state, detail: progress(c.name, state, detail)))
            for r in local:
                r.address = f'127.0.0.1:{r.process.info["port"]}'
            for n in self.nodes:
                for r in n.replicas:
                    if r.external_address:
                        r.address = r.external_address
            self._started = True
            self._gateway_ports = {p: int(n) for p, n in self.gateway.info['ports'].items()}
            self._connect_gateway()
        except BaseException:
            self._started = False
            stop_all([r.process for r in local if r.process] + [self.gateway])
            raise
        self.startup_seconds = time.monotonic() - t0
        warn_if_exposed(self)
        self._client = Client(port=self._local_port)   # the gateway's loopback port: no TLS to verify
        self._supervisor = Supervisor(self)
        self._supervisor.start()
        if self.stream_logs:
            self._start_log_streaming()
        _notify('started', self)
        return self

    def close(self) -> None:
        """Stop every process (in parallel). Safe to call twice."""
        self._closing.set()
        if self._supervisor is not None:   # its restarts in flight stop what they started
            self._supervisor.join()
        if self._client is not None:
            self._client.close()
            self._client = None
        procs = [r.process for n in self.nodes for r in n.replicas if r.process]
        stop_all(procs + ([self.gateway] if self.gateway else []))
        was_started, self._started = self._started, False
        if was_started:
            _notify('closed', self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if self._started:
                self.close()
        except Exception:
            pass

    def block(self, stop_event: Optional[threading.Event] = None) -> None:
        """Serve until Ctrl-C (or until ``stop_event`` is set)."""
        stop_event = stop_event or threading.Event()
        try:
            while not stop_event.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`close`."""
        return self._started

    # -- rich views (Jupyter/IPython call these; no notebook package is imported) -------
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass with its own ``__repr__`` the table view too: IPython's pretty
        printer prefers a class's own ``__repr__`` to an inherited ``_repr_pretty_``."""
        super().__init_subclass__(**kwargs)
        if '__repr__' in cls.__dict__ and '_repr_pretty_' not in cls.__dict__:
            cls._repr_pretty_ = Orchestration._repr_pretty_

    def _repr_html_(self) -> str:
        """Header, summary and (while running) the per-replica table."""
        return reprs.status_html(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """The text form: ``repr`` plus one line per replica while running."""
        p.text(repr(self) if cycle else reprs.status_text(self))

    # -- talking to it --------------------------------------------------------------
    @property
    def port(self) -> Optional[int]:
        """The port of the first door (``protocol``'s first entry; gRPC by default)."""
        return self.ports.get(self.protocols[0])

    @property
    def ports(self) -> Dict[str, Optional[int]]:
        """protocol -> port of every door of the gateway (before start: the ports asked for, or None)."""
        if self.gateway is not None and self.gateway.info.get('ports'):
            return {p: int(n) for p, n in self.gateway.info['ports'].items()}
        if self._gateway_ports:
            return dict(self._gateway_ports)
        return {p: n or None for p, n in zip(self.protocols, self._door_ports)}

    @property
    def addresses(self) -> Dict[str, str]:
        """protocol -> address of every door, e.g. ``{'grpc': '127.0.0.1:5555', 'http': 'http://127.0.0.1:5556'}``."""
        from runtime.doors import door_address
        return {p: door_address(p, self.host, n, bool(self.tls_cert)) for p, n in self.ports.items()}

    @property
    def _local_port(self) -> Optional[int]:
        """The gateway's loopback port (Call, Info, and Control with the secret)."""
        return self.gateway.info.get('local_port') if self.gateway is not None else None

    @property
    def address(self) -> str:
        return f'{self.host}:{self.port}'

    def _require_started(self) -> Client:
        if not self._started or self._client is None:
            raise RuntimeError(f'{type(self).__name__} {self.name!r} is not started; '
                               'use `with dep:` or call dep.start() first')
        return self._client

    def post(self, on: str, inputs: Any = None, request_size: int = 100, **kwargs):
        """Send docs to endpoint ``on`` through the gateway; returns a DocList (see :meth:`Client.post`).

        Interrupted (Ctrl-C, the notebook's interrupt button), the request is cancelled and
        :class:`~runtime.loop.RequestCancelled` (a ``KeyboardInterrupt``) says so in one line."""
        client = self._require_started()
        try:
            return client.post(on, inputs, request_size=request_size, **kwargs)
        except KeyboardInterrupt:
            raise RequestCancelled(f'{self.name}.post({on!r}) was cancelled; {type(self).__name__} '
                                   f'{self.name!r} is still running') from None

    async def apost(self, on: str, inputs: Any = None, request_size: int = 100, **kwargs):
        """Async twin of :meth:`post`."""
        return await self._require_started().apost(on, inputs, request_size=request_size, **kwargs)

    # -- beyond one machine (runtime/export, docs/scaling-out.md) -------------------------
    def to_docker_compose_yaml(self, output_path: str, network_name: Optional[str] = None,
                               image: Optional[str] = None, app_dir: Optional[str] = None) -> str:
        """Write a Docker Compose file (one service per replica + the gateway); returns its path."""
        from runtime.export import DEFAULT_IMAGE, to_docker_compose_yaml
        return to_docker_compose_yaml(self, output_path, network_name=network_name,
                                      image=image or DEFAULT_IMAGE, app_dir=app_dir)

    def to_kubernetes_yaml(self, output_base_path: str, k8s_namespace: Optional[str] = None,
                           image: Optional[str] = None, app_dir: Optional[str] = None) -> List[str]:
        """Write Kubernetes manifests under ``output_base_path``; returns the files written."""
        from runtime.export import DEFAULT_IMAGE, to_kubernetes_yaml
        return to_kubernetes_yaml(self, output_base_path, k8s_namespace=k8s_namespace,
                                  image=image or DEFAULT_IMAGE, app_dir=app_dir)

    # -- status and logs --------------------------------------------------------------
    def status(self, timeout: float = 2.0) -> Dict[str, Any]:
        """Structured state: the gateway and every replica (pid, state, requests, ...)."""
        return run_sync(self._astatus(timeout), timeout + 5, what=f'status of {self.name!r}')

    async def astatus(self, timeout: float = 2.0) -> Dict[str, Any]:
        return await run_async(self._astatus(timeout))

    async def _astatus(self, timeout: float) -> Dict[str, Any]:
        replicas = [(n, r) for n in self.nodes for r in n.replicas]
        infos = await asyncio.gather(*(_ainfo(r.address, timeout) for _, r in replicas),
                                     _ainfo(f'127.0.0.1:{self._local_port}' if self._local_port else None, timeout))
        out_replicas = []
        for (node, r), info in zip(replicas, infos[:-1]):
            proc = r.process
            if info is not None:
                state = 'ready'
            elif proc is not None and not proc.alive:
                state = 'stopped' if self._closing.is_set() or not self._started else 'down'
            else:
                state = 'unreachable' if self._started else 'stopped'
            rec = {'name': r.name, 'node': node.name, 'pid': proc.pid if proc else None,
                   'shard': r.shard, 'replica': r.replica, 'state': state, 'address': r.address,
                   'port': r.port, 'external': r.external_address is not None, 'requests': {}}
            if info:
                rec.update({k: v for k, v in info.items() if k not in ('name', 'shard', 'replica', 'ready')})
            rec.setdefault('cuda_visible_devices', r.env.get('CUDA_VISIBLE_DEVICES'))
            self._supervision_status(rec, r.name, info is not None)
            out_replicas.append(rec)
        gw = infos[-1] or {}
        gw['state'] = 'ready' if infos[-1] else ('down' if self._started else 'stopped')
        gw['pid'] = self.gateway.pid if self.gateway else None
        self._supervision_status(gw, f'{self.name}/gateway', infos[-1] is not None)
        from runtime.telemetry import gpu_status   # NVML off the loop: a slow driver blocks nothing
        gpus = await asyncio.to_thread(gpu_status, {r['name']: r.get('cuda_visible_devices')
                                                    for r in out_replicas if not r['external']})
        return {'name': self.name, 'address': self.address, 'addresses': self.addresses, 'gateway': gw,
                'replicas': out_replicas, 'gpus': gpus}

    def _supervision_status(self, rec: Dict[str, Any], name: str, answered: bool) -> None:
        """Add the supervisor's view (``rec['supervision']``); a down child's state and ``error`` say why."""
        watch = self._supervisor.describe(name) if self._supervisor and self._started else None
        if watch is None:
            return
        rec['supervision'] = watch
        if not answered and watch['state'] != 'running':
            rec['state'] = watch['state']   # crash-loop, restarting, waiting (backoff), hung
        if watch.get('cause') and watch['state'] in ('crash-loop', 'hung'):
            rec['error'] = watch['cause']

    def restart_replica(self, name: str) -> None:
        """Let the supervisor restart ``name`` (a replica or ``NAME/gateway``) left down by a crash loop."""
        if self._supervisor is None or name not in self._supervisor.watches:
            known = ', '.join(self._supervisor.watches) if self._supervisor else 'none (not started)'
            raise ValueError(f'{name!r} is not a supervised process of {self.name!r}; known: {known}')
        self._supervisor.reset([name])
        self._tell_gateway_stopped()

    def logs(self, replica: Optional[str] = None, n: int = 50) -> str:
        """The last ``n`` lines of each replica's log (or of the one whose name contains ``replica``)."""
        chunks = []
        procs = [r.process for node in self.nodes for r in node.replicas if r.process]
        procs += [self.gateway] if self.gateway else []
        for p in procs:
            if replica is not None and str(replica) not in p.name:
                continue
            chunks.append(f'==> {p.name} ({p.log_path}) <==\n{tail(p.log_path, n)}')
        return '\n'.join(chunks)

    # -- internals ----------------------------------------------------------------------
    def _log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, name.replace('/', os.sep) + '.log')

    def _gateway_config(self) -> Dict[str, Any]:
        return {'name': f'{self.name}/gateway', 'host': self.host,
                'protocols': list(self.protocols), 'ports': [p or 0 for p in self._door_ports],
                'max_in_flight_per_replica': self.max_in_flight_per_replica,
                'nodes': [{'name': n.name, 'needs': n.needs, 'polling': n.polling,
                           'no_reduce': n.no_reduce, 'allow_partial': n.allow_partial,
                           'max_in_flight': n.max_in_flight, 'stateful': n.stateful,
                           'timeout_send': n.timeout_send,
                           'health_timeout': (n.policy or Policy()).health_timeout,
                           'shards': [[] for _ in n.shards]} for n in self.nodes],
                'secret': self._secret, 'tls_cert': self.tls_cert, 'tls_key': self.tls_key}

    def _connect_gateway(self) -> None:
        """Tell the gateway where every shard's replicas listen."""
        for n in self.nodes:
            for i in range(len(n.shards)):
                self._gateway_control(self._replicas_header(n, i))

    def _replicas_header(self, n: NodePlan, i: int) -> Dict[str, Any]:
        """``set_replicas`` for shard ``i`` of ``n``: addresses, names, logs, and why any is left down."""
        live = [r for r in n.shards[i] if r.address]
        stopped = self._supervisor.stopped_reasons() if self._supervisor else {}
        return {'op': 'set_replicas', 'node': n.name, 'shard': i, 'addresses': [r.address for r in live],
                'names': [r.name for r in live],
                'logs': [r.process.log_path if r.process else None for r in live],
                'stopped': {r.address: stopped[r.name] for r in live if r.name in stopped}}

    def _tell_gateway_stopped(self) -> None:
        """Re-send every shard's replicas (with the crash-looped ones' causes) to the gateway."""
        try:
            self._connect_gateway()
        except Exception as e:   # the gateway is down: it gets them when it is restarted
            log.warning('could not tell the gateway of %s which replicas are down: %s', self.name, e)

    def _gateway_control(self, header: Dict[str, Any]) -> None:
        async def go():
            async with grpc.aio.insecure_channel(f'127.0.0.1:{self._local_port}',
                                                 options=protocol.GRPC_OPTIONS) as ch:
                return await ch.unary_unary(protocol.CONTROL)(protocol.pack(header), timeout=10,
                                                              metadata=call_metadata(self._secret))
        h, _ = protocol.unpack(run_sync(go(), 15, what=f'the gateway of {self.name!r}'))
        if not h.get('ok'):
            raise RuntimeError(f'gateway refused {header.get("op")}: {h.get("error")}')

    # -- scaling ------------------------------------------------------------------------
    def _scale_node(self, target: NodePlan, drain_timeout: float = 30.0) -> Dict[str, List[str]]:
        """Make node ``target.name`` run ``target``'s replicas in each shard, dropping no request.

        ``target`` comes from :meth:`Deployment.plan_with_replicas`, which refuses stateful
        and external Deployments.

        Up: the new replicas start, answer, then join the gateway. Down: the gateway
        stops sending to the removed replicas first (they drain), then they stop once
        they hold no request (or after ``drain_timeout`` s). Returns the names added/removed.
        """
        self._require_started()
        node = next((n for n in self.nodes if n.name == target.name), None)
        if node is None:
            raise ValueError(f'{self.name!r} has no executor named {target.name!r}; '
                             f'known: {", ".join(n.name for n in self.nodes)}')
        if len(target.shards) != len(node.shards):
            raise ValueError(f'scaling changes replicas, not shards ({len(node.shards)} in {node.name!r})')
        with self._lock:
            added = [r for shard, want in zip(node.shards, target.shards) for r in want[len(shard):]]
            removed = [r for shard, want in zip(node.shards, target.shards) for r in shard[len(want):]]
            for r in added:
                r.config['secret'] = self._secret
                r.process = ChildProcess(r.name, 'worker', r.config, self._log_path(r.name), r.env)
            start_all([r.process for r in added], self.timeout_ready)  # raises (and stops them) on failure
            for r in added:
                r.address = f'127.0.0.1:{r.process.info["port"]}'
            for i, (shard, want) in enumerate(zip(node.shards, target.shards)):
                if len(want) == len(shard):
                    continue
                shard[:] = shard + want[len(shard):] if len(want) > len(shard) else shard[:len(want)]
                self._gateway_control(self._replicas_header(node, i))
        if removed:
            run_sync(self._adrain(removed, drain_timeout), drain_timeout + 5,
                     what=f'replicas of {node.name!r} to finish their requests')
            stop_all([r.process for r in removed if r.process])
        return {'added': [r.name for r in added], 'removed': [r.name for r in removed]}

    async def _adrain(self, replicas: List[ReplicaPlan], timeout: float) -> None:
        """Wait until none of ``replicas`` holds a request (twice in a row), or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        idle_before = False
        while loop.time() < deadline:
            infos = await asyncio.gather(*(_ainfo(r.address, 1.0) for r in replicas))
            idle = all(not info or not info.get('in_flight') for info in infos)
            if idle and idle_before:
                return
            idle_before = idle
            await asyncio.sleep(0.1)
        log.warning('replicas %s still busy after %.0f s; stopping them anyway',
                    ', '.join(r.name for r in replicas), timeout)

    def _restart(self, r: ReplicaPlan) -> None:
        """Start dead replica ``r`` again on its port with its config (in a thread of the
        :class:`~runtime.supervision.Supervisor`, one per replica: restarts run in parallel).
        Raises :class:`ChildFailedError` when it does not get ready."""
        if self._closing.is_set() or not any(r is x for n in self.nodes for x in n.replicas):
            return  # closing, or scaled away
        log.warning('restarting %s on port %s', r.name, r.port)
        r.process = ChildProcess(r.name, 'worker', dict(r.config, port=r.port), r.process.log_path, r.env)
        self._start_supervised(r.process)

    def _restart_gateway(self) -> None:
        """Start the dead gateway again on its port, then send it the replica addresses."""
        if self._closing.is_set():
            return
        log.warning('restarting the gateway of %s on %s', self.name, self._gateway_ports)
        old = self.gateway
        # every listener comes back on its port: clients (and this owner's own, on the loopback one) reconnect
        config = dict(self._gateway_config(), ports=[(self._gateway_ports or {}).get(p, 0) for p in self.protocols],
                      local_port=old.info.get('local_port'))
        self.gateway = ChildProcess(old.name, 'gateway', config, old.log_path)
        self._start_supervised(self.gateway)
        if not self._closing.is_set():
            self._connect_gateway()

    def _start_supervised(self, proc: ChildProcess) -> None:
        """Start ``proc`` and wait until it is ready (``timeout_ready``), or until closing (then stop it)."""
        proc.start()
        deadline = time.monotonic() + self.timeout_ready
        while not proc.wait_reported(0.2) and time.monotonic() < deadline and not self._closing.is_set():
            pass
        if self._closing.is_set():
            proc.stop()
            return
        if not proc.wait_reported(0):   # not ready in time: a death, counted like any other
            proc.kill()
            raise ChildFailedError(proc._explain(f'{proc.role} {proc.name} was not ready within '
                                                 f'{self.timeout_ready:.1f} s'))
        proc.wait_ready(0)   # raises when it failed to start

    def _start_log_streaming(self) -> None:
        procs = [r.process for n in self.nodes for r in n.replicas if r.process]

        def follow():
            offsets = {p.log_path: 0 for p in procs}
            while not self._closing.wait(0.2):
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


async def _ainfo(address: Optional[str], timeout: float) -> Optional[Dict[str, Any]]:
    if not address:
        return None
    try:
        async with grpc.aio.insecure_channel(address, options=protocol.GRPC_OPTIONS) as ch:
            return json.loads(await ch.unary_unary(protocol.INFO)(b'', timeout=timeout))
    except (grpc.aio.AioRpcError, ValueError, asyncio.TimeoutError):
        return None
