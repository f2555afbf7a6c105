"""What Deployment and Flow share: processes behind one gateway, and their lifecycle.

A subclass implements one method, :meth:`Orchestration._plan`, returning the
stages of its request graph (:class:`~runtime.plan.StagePlan`: the replica processes
of each shard, polling, needs); :meth:`Orchestration.run_plan` adds the gateway and is
the one function behind a local start and both exports. A
:class:`~runtime.runner.Runner` owns the processes of a started plan. Everything else
comes for free: starting every process in parallel
(the gateway included), readiness with errors that quote the failing
replica's log, ``post``/``apost``, ``status()``, ``logs()``, ``block()``,
supervision (a crashed replica is restarted on its port), scaling, and
``close()`` stopping everything in parallel.

    >>> with Deployment(uses=MyExec, replicas=3) as dep:
    ...     dep.post('/x', docs)
"""
from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from runtime import reprs
from runtime.client import Client, CrudShortcuts
from runtime.exposure import warn_if_exposed
from runtime.logfiles import tail
from runtime.loop import RequestCancelled, run_async, run_sync
from runtime.plan import Placement, RunPlan, StagePlan
from runtime.processes import ChildProcess
from runtime.runner import Runner, RunningStage, ainfo
from runtime.secrets import private_dir, resolve_secret
from runtime.specs import MONITORING, GatewaySpec, OrchestrationStatus
from runtime.supervision import Supervisor

log = logging.getLogger('orchestra')

#: ``callback(event, orchestration)`` for every start and close in this process, ``event``
#: being ``'started'``, ``'closing'`` (still running: a last status can be read) or
#: ``'closed'``; called in the thread that started/closed it. The
#: notebook face (orchestra_nb/registry.py) subscribes so it knows every running Deployment
#: and Flow, however it was started. A callback that raises is logged and ignored.
OBSERVERS: List[Callable[[str, 'Orchestration'], None]] = []


def _notify(event: str, obj: 'Orchestration') -> None:
    for callback in list(OBSERVERS):
        try:
            callback(event, obj)
        except Exception:
            log.exception('an orchestration observer failed on %r', event)


class Orchestration(CrudShortcuts):
    """Base of Deployment and Flow; see the module docstring."""

    def __init__(self, name: str, doors: Tuple[List[str], List[Optional[int]]], host: str, timeout_ready: float,
                 log_dir: Optional[str], max_in_flight_per_replica: int, stream_logs: bool,
                 secret: Optional[str] = None, tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 monitoring: bool = MONITORING, port_monitoring: Optional[int] = None):
        """``doors``: the gateway's protocols and their ports (0: the OS picks), from
        :func:`runtime.args.protocol_ports`; ``monitoring``/``port_monitoring``: Prometheus /metrics."""
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
        self.monitoring = monitoring                # Prometheus /metrics (runtime.metrics)
        self.port_monitoring = port_monitoring      # the gateway's; None: the OS picks
        self.stages: List[RunningStage] = []      # what runs (or ran last): the plan's stages and processes
        self._runner: Optional[Runner] = None     # its processes, while started
        self._client: Optional[Client] = None
        self._started = False
        self._supervisor: Optional[Supervisor] = None

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
        plan = self.run_plan()
        self._secret = resolve_secret(self._secret_arg,
                                      [stage.secret_file for stage in plan.stages if stage.secret_file])
        private_dir(self.log_dir)   # 0700; the log files are 0600
        runner = Runner(plan, self._secret, self.log_dir, self.timeout_ready)
        self._runner, self.stages = runner, runner.stages
        runner.start(progress)   # raises (having stopped what it started) naming the process that failed
        self._started = True
        self.startup_seconds = time.monotonic() - t0
        warn_if_exposed(self)
        self._client = Client(port=runner.local_port)   # the gateway's loopback port: no TLS to verify
        self._supervisor = Supervisor(runner)
        self._supervisor.start()
        if self.stream_logs:
            runner.stream_logs()
        _notify('started', self)
        return self

    def close(self) -> None:
        """Stop every process (in parallel). Safe to call twice."""
        if self._runner is not None:
            if self._started and not self._runner.closing.is_set():
                _notify('closing', self)   # still running: observers can read a last status
            self._runner.closing.set()
        if self._supervisor is not None:   # its restarts in flight stop what they started
            self._supervisor.join()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._runner is not None:
            self._runner.stop()
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
    def gateway(self) -> Optional[ChildProcess]:
        """The gateway's process (the current one: a restart replaces it), once started."""
        return self._runner.gateway if self._runner is not None else None

    @property
    def port(self) -> Optional[int]:
        """The port of the first door (``protocol``'s first entry; gRPC by default)."""
        return self.ports.get(self.protocols[0])

    @property
    def ports(self) -> Dict[str, Optional[int]]:
        """protocol -> port of every door of the gateway (before start: the ports asked for, or None).

        >>> Deployment(protocol=['grpc', 'http'], port=[5555, 5556]).ports   # doctest: +SKIP
        {'grpc': 5555, 'http': 5556}
        """
        if self.gateway is not None and self.gateway.info.get('ports'):
            return {p: int(n) for p, n in self.gateway.info['ports'].items()}
        if self._runner is not None and self._runner.gateway_ports:   # kept across gateway restarts
            return dict(self._runner.gateway_ports)
        return {p: n or None for p, n in zip(self.protocols, self._door_ports)}

    @property
    def addresses(self) -> Dict[str, str]:
        """protocol -> address of every door, e.g. ``{'grpc': '127.0.0.1:5555', 'http': 'http://127.0.0.1:5556'}``."""
        from runtime.doors import door_address
        return {p: door_address(p, self.host, n, bool(self.tls_cert)) for p, n in self.ports.items()}

    @property
    def _local_port(self) -> Optional[int]:
        """The gateway's loopback port (Call, Info, and Control with the secret)."""
        return self._runner.local_port if self._runner is not None else None

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
                               image: Optional[str] = None, app_dir: Optional[str] = None,
                               prometheus: bool = False) -> str:
        """Write a Docker Compose file (one service per replica + the gateway); returns its path.

        With ``monitoring=True`` the metrics ports are published and Prometheus configs written next to
        it; ``prometheus=True`` adds a Prometheus service scraping every container (docs/monitoring.md)."""
        from runtime.export import DEFAULT_IMAGE, to_docker_compose_yaml
        return to_docker_compose_yaml(self, output_path, network_name=network_name,
                                      image=image or DEFAULT_IMAGE, app_dir=app_dir, prometheus=prometheus)

    def to_kubernetes_yaml(self, output_base_path: str, k8s_namespace: Optional[str] = None,
                           image: Optional[str] = None, app_dir: Optional[str] = None,
                           service_monitor: bool = False) -> List[str]:
        """Write Kubernetes manifests under ``output_base_path``; returns the files written.

        With ``monitoring=True`` pods carry the ``prometheus.io/*`` scrape annotations;
        ``service_monitor=True`` adds a prometheus-operator ``ServiceMonitor``."""
        from runtime.export import DEFAULT_IMAGE, to_kubernetes_yaml
        return to_kubernetes_yaml(self, output_base_path, k8s_namespace=k8s_namespace,
                                  image=image or DEFAULT_IMAGE, app_dir=app_dir, service_monitor=service_monitor)

    def prometheus_config(self, scrape_interval: str = '5s') -> str:
        """A Prometheus config (YAML) scraping this running Deployment's gateway and replicas (``monitoring=True``).

        >>> open('prometheus.yml', 'w').write(dep.prometheus_config())   # doctest: +SKIP
        """
        from runtime.export.prometheus import scrape_config
        from runtime.metrics import scrape_targets
        self._require_started()
        return scrape_config(self.name, scrape_targets(self.status()), scrape_interval)

    # -- status and logs --------------------------------------------------------------
    def status(self, timeout: float = 2.0) -> OrchestrationStatus:
        """Structured state: the gateway and every replica (pid, state, requests, ...)."""
        return run_sync(self._astatus(timeout), timeout + 5, what=f'status of {self.name!r}')

    async def astatus(self, timeout: float = 2.0) -> OrchestrationStatus:
        return await run_async(self._astatus(timeout))

    async def _astatus(self, timeout: float) -> OrchestrationStatus:
        replicas = [(stage, r) for stage in self.stages for r in stage.replicas]
        infos = await asyncio.gather(*(ainfo(r.address, timeout) for _, r in replicas),
                                     ainfo(f'127.0.0.1:{self._local_port}' if self._local_port else None, timeout))
        out_replicas = []
        for (stage, r), info in zip(replicas, infos[:-1]):
            proc = r.process
            if info is not None:
                state = 'ready'
            elif proc is not None and not proc.alive:
                closing = self._runner is None or self._runner.closing.is_set()
                state = 'stopped' if closing or not self._started else 'down'
            else:
                state = 'unreachable' if self._started else 'stopped'
            # 'node': the status record's key for the stage, kept for its readers (docs/architecture.md, names)
            rec = {'name': r.name, 'node': stage.name, 'pid': proc.pid if proc else None,
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
        self._runner.put_back(name)

    def logs(self, replica: Optional[str] = None, n: int = 50) -> str:
        """The last ``n`` lines of each replica's log (or of the one whose name contains ``replica``)."""
        chunks = []
        procs = [r.process for stage in self.stages for r in stage.replicas if r.process]
        procs += [self.gateway] if self.gateway else []
        for p in procs:
            if replica is not None and str(replica) not in p.name:
                continue
            chunks.append(f'==> {p.name} ({p.log_path}) <==\n{tail(p.log_path, n)}')
        return '\n'.join(chunks)

    # -- the plan ------------------------------------------------------------------------
    def _plan(self, placements: Optional[Dict[str, Placement]] = None) -> List[StagePlan]:
        """The stages of the request graph (what a subclass implements); ``placements``: see :meth:`run_plan`."""
        raise NotImplementedError

    def run_plan(self, placements: Optional[Dict[str, Placement]] = None) -> RunPlan:
        """What to start: the stages and the gateway (a door per protocol, on ``port``'s entry for it, or
        one the OS picks).

        The one function behind a local start and both exports (:mod:`runtime.export.plan`).
        ``placements``: Executor name -> the machine-dependent values (GPU devices, RAFT layout) of
        the machine that runs it; an Executor not named gets this machine's (with their side
        effects: ``Deployment.placement``). The secret is added by the runner at start, never
        written in a plan."""
        stages = tuple(self._plan(placements))
        gateway = GatewaySpec(name=f'{self.name}/gateway', host=self.host, protocols=tuple(self.protocols),
                              ports=tuple(p or 0 for p in self._door_ports),
                              max_in_flight_per_replica=self.max_in_flight_per_replica,
                              stages=tuple(s.stage_spec() for s in stages), tls_cert=self.tls_cert,
                              tls_key=self.tls_key, monitoring=self.monitoring,
                              port_monitoring=self.port_monitoring or 0)
        return RunPlan(self.name, stages, gateway)

    # -- scaling ------------------------------------------------------------------------
    def _scale_stage(self, target: StagePlan, drain_timeout: float = 30.0) -> Dict[str, List[str]]:
        """Make stage ``target.name`` run ``target``'s replicas (:meth:`Runner.scale_stage`), dropping no request.

        ``target`` comes from :meth:`Deployment.plan_with_replicas`, which refuses stateful
        and external Deployments.
        """
        self._require_started()
        return self._runner.scale_stage(target, drain_timeout)
