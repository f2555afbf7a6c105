"""Deployment: one Executor as shards x replicas of processes behind a gateway.

    >>> with Deployment(name='up', uses=Upper, replicas=3) as dep:
    ...     dep.post('/upper', DocList[TextDoc]([TextDoc(text='hi')]))

Arguments are checked up front; a bad one raises ``ValueError`` naming the
value and what is allowed. Unknown keyword arguments are refused with the
closest valid name (Jina only warns).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from runtime import config
from runtime.args import (DEPLOYMENT_ARGS, arg_names, check_count, check_kwargs, check_values, protocol_ports,
                          translate_jina_arguments)
from runtime.hosts import check_host
from runtime.limits import check_processes
from runtime.orchestration import Orchestration
from runtime.plan import Placement, ReplicaPlan, StagePlan
from runtime.specs import LOOPBACK, PollingPolicy, ReplicaSpec, SupervisionPolicy
from runtime.uses import DEFAULT_USES, hub_message, is_hub_reference, resolve_uses
from runtime.yamlio import ConfigError, source_label

_NAMES = arg_names(DEPLOYMENT_ARGS)


@dataclass(frozen=True)
class ExecutorArgs:
    """One Executor's checked arguments (a Deployment's, or a ``Flow.add``'s): all its stage plan is
    built from, with a :class:`~runtime.plan.Placement` (:func:`plan_stage`)."""
    name: str
    uses: Any
    uses_with: Dict[str, Any]
    replicas: int
    shards: int
    polling: PollingPolicy
    needs: Any
    env: Dict[str, str]
    workspace: Optional[str]
    host: str
    stateful: bool
    external: bool
    external_addresses: Tuple[str, ...]
    blas_threads: Optional[int]
    log_level: str
    no_reduce: bool
    allow_partial: bool
    timeout_send: Optional[float]
    policy: SupervisionPolicy
    max_in_flight_per_replica: int
    raft_peer_ports: Optional[Dict[int, List[int]]]   # stateful: runtime.raft.validate_stateful's
    raft_conf: Optional[Dict[str, Any]]
    raft_options: Optional[Dict[str, Any]]
    raft_password: Optional[str]
    read_consistency: str
    durability: str
    monitoring: bool = False   # its replicas serve Prometheus /metrics (runtime.metrics)


def local_placement(args: ExecutorArgs, replicas: Optional[int] = None) -> Placement:
    """This machine's values for an Executor's plan (:class:`~runtime.plan.Placement`), with their side
    effects: GPUs counted here (``CUDA_VISIBLE_DEVICES=RR...``); stateful, the RAFT ports and folders
    (:func:`runtime.raft.place_raft`). A local start calls it once; an export gives the containers'."""
    if args.external:
        return Placement(devices=())
    from runtime.gpu import assign_devices, warn_if_cuda_initialised
    cuda_spec = args.env.get('CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES'))
    devices = assign_devices(cuda_spec, args.shards * (replicas or args.replicas))
    if any(d is not None for d in devices) and cuda_spec and cuda_spec.startswith('RR'):
        warn_if_cuda_initialised()
    raft = None
    if args.stateful:
        from runtime.raft import place_raft
        raft = place_raft(args)
    return Placement(devices=tuple(devices), raft=raft)


def plan_stage(args: ExecutorArgs, placement: Placement, replicas: Optional[int] = None,
               replica_port: Optional[int] = None) -> StagePlan:
    """An Executor as one stage of a request graph, from its checked arguments and ``placement`` --
    nothing else of this machine is read, nothing written. The one planning function of a
    Deployment, a Flow's Executors and both exports. ``replicas``: per shard, when scaling;
    ``replica_port``: ``Flow.add(port=...)``'s fixed port of the one replica.

    >>> plan_stage(Deployment(name='up', replicas=2).executor_args(), Placement((None, None)))  # doctest: +SKIP
    """
    replicas = replicas or args.replicas
    if args.external:
        shard = [ReplicaPlan(name=f'{args.name}/rep-{i}', shard=0, replica=i, spec=None,
                             external_address=address) for i, address in enumerate(args.external_addresses)]
        return StagePlan(args.name, [shard], polling=args.polling.to_config(), needs=args.needs,
                         timeout_send=args.timeout_send, policy=args.policy)
    from runtime.gpu import replica_env
    cuda_spec = args.env.get('CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES'))
    shards = []
    for s in range(args.shards):
        shard = []
        for r in range(replicas):
            replica_name = f'{args.name}/shard-{s}/rep-{r}' if args.shards > 1 else f'{args.name}/rep-{r}'
            replica_spec = ReplicaSpec(name=replica_name, uses=args.uses, uses_with=args.uses_with,
                                       deployment=args.name, replica_id=r, shard_id=s, shards=args.shards,
                                       replicas=replicas, workspace=args.workspace, host=LOOPBACK,
                                       blas_threads=args.blas_threads, log_level=args.log_level,
                                       port=replica_port or 0, monitoring=args.monitoring)
            device = placement.devices[s * replicas + r]
            env = replica_env(args.env, device)
            if device is None and cuda_spec and cuda_spec.strip().startswith('RR'):
                env['CUDA_VISIBLE_DEVICES'] = None  # never pass a literal 'RR...' on
            shard.append(ReplicaPlan(name=replica_name, shard=s, replica=r, spec=replica_spec, env=env))
        shards.append(shard)
    plan = StagePlan(args.name, shards, polling=args.polling.to_config(), needs=args.needs,
                     no_reduce=args.no_reduce, allow_partial=args.allow_partial, stateful=args.stateful,
                     timeout_send=args.timeout_send, policy=args.policy)
    from runtime.batching import in_flight_for   # dynamic batching needs room to gather a batch
    plan.max_in_flight = in_flight_for(args.uses, args.max_in_flight_per_replica)
    if args.stateful:
        from runtime.raft import plan_raft
        plan_raft(args, plan, placement.raft)
    return plan


class Deployment(Orchestration):
    """One Executor served by ``replicas`` processes per shard, behind one gateway port."""

    #: what a YAML config of this class says in ``jtype:``
    jtype = 'Deployment'

    # The keywords are spelled out (not generated) so that editors and Jupyter show them;
    # runtime/args.py declares each one's default, check and help, and tests/test_args.py
    # checks that this signature lists exactly those names and defaults, in that order.
    def __init__(self, name: str = 'executor', uses: Any = None, uses_with: Optional[dict] = None,
                 replicas: int = 1, shards: int = 1, polling: Union[str, Dict[str, str], None] = None,
                 port: Union[int, List[int], None] = None, host: Union[str, List[str]] = '127.0.0.1',
                 protocol: Union[str, List[str]] = 'grpc', env: Optional[Dict[str, str]] = None,
                 workspace: Optional[str] = None,
                 timeout_ready: float = 60.0, stateful: bool = False,
                 peer_ports: Union[List[int], Dict[Any, List[int]], None] = None,
                 raft_configuration: Optional[dict] = None, raft_password: Optional[str] = None,
                 read_consistency: str = 'eventual', external: bool = False,
                 max_in_flight_per_replica: int = 4, blas_threads: Optional[int] = None,
                 log_dir: Optional[str] = None, no_reduce: bool = False, allow_partial: bool = False,
                 stream_logs: bool = False, log_level: str = 'INFO',
                 needs: Union[str, List[str], None] = None, py_modules: Union[str, List[str], None] = None,
                 timeout_send: Optional[float] = None, health_timeout: float = 2.0, restart_grace: float = 10.0,
                 max_restarts: int = 5, restart_window: float = 60.0,
                 durability: str = 'fsync',
                 secret: Optional[str] = None, tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 monitoring: bool = False, port_monitoring: Optional[int] = None,
                 **kwargs):
        check_kwargs(kwargs, _NAMES, 'Deployment')
        given = dict(locals())
        given.update(translate_jina_arguments(dict(given, **kwargs), 'Deployment'))   # volumes, uses_metas
        checked = check_values(DEPLOYMENT_ARGS, {k: given[k] for k in _NAMES})
        self._uses_source, self._uses_with_source = uses, uses_with   # as written: what save_config writes
        uses, uses_with = checked['uses'], checked['uses_with']
        if is_hub_reference(uses):   # refused up front, as a YAML config and a replica refuse it
            raise ValueError(f'uses={uses!r}: {hub_message(uses)}')
        if not checked['external']:   # in the owner, before any process starts: a wrong uses is one line here
            uses, uses_with = resolve_uses(uses, uses_with, checked['py_modules'])
        self.replicas = checked['replicas']
        self.shards = checked['shards']
        self.polling = PollingPolicy(polling)   # validates
        self.external = checked['external']
        self.uses = uses
        self.uses_with = dict(uses_with or {})
        self.env = dict(checked['env'] or {})
        self.workspace = os.path.abspath(checked['workspace']) if checked['workspace'] else None
        self.stateful = checked['stateful']
        self.peer_ports = peer_ports
        self.raft_configuration = (dict(raft_configuration) if isinstance(raft_configuration, dict)
                                   else raft_configuration or {})   # a non-dict: validate_stateful says why
        self.raft_password = raft_password
        self.read_consistency = checked['read_consistency']
        self.blas_threads = checked['blas_threads']
        self.no_reduce = checked['no_reduce']
        self.allow_partial = checked['allow_partial']
        self.log_level = log_level
        self.needs = needs
        self.py_modules = checked['py_modules']
        self.timeout_send = checked['timeout_send']
        self.policy = SupervisionPolicy(health_timeout=checked['health_timeout'],
                                        restart_grace=checked['restart_grace'], max_restarts=checked['max_restarts'],
                                        restart_window=checked['restart_window'])
        self.durability = checked['durability']   # stateful only: see runtime.raft.durable
        if self.external:
            from runtime.external import external_addresses
            # the addresses are the replicas: replicas=N (N != 1, the default) must agree
            self.external_addresses = external_addresses(host, port, None if replicas == 1 else replicas)
            self.replicas = len(self.external_addresses)
            gw_doors, gw_host = protocol_ports(checked['protocol'], None), '127.0.0.1'
        else:
            if not isinstance(host, str):
                raise ValueError(f'host={host!r}: a list of hosts needs external=True')
            gw_doors, gw_host = protocol_ports(checked['protocol'], port), host
            check_host(host, 'host')
            check_processes(self.replicas, self.shards, f'Deployment {checked["name"]!r}')
            if self.uses is None:
                self.uses = DEFAULT_USES
            self._check_gpu_spec()
        if self.stateful:
            from runtime.raft import validate_stateful
            validate_stateful(self)
        super().__init__(name=checked['name'], doors=gw_doors, host=gw_host, timeout_ready=checked['timeout_ready'],
                         log_dir=checked['log_dir'], max_in_flight_per_replica=checked['max_in_flight_per_replica'],
                         stream_logs=checked['stream_logs'], secret=checked['secret'], tls_cert=checked['tls_cert'],
                         tls_key=checked['tls_key'], monitoring=checked['monitoring'],
                         port_monitoring=checked['port_monitoring'])

    def _check_gpu_spec(self) -> None:
        """A malformed ``CUDA_VISIBLE_DEVICES=RR...`` raises ValueError here, before anything starts.

        Checked again (with the device count of that moment) when the Deployment starts;
        the no-GPU warning is left to that moment.
        """
        spec = self.env.get('CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES'))
        if isinstance(spec, str) and spec.strip().startswith('RR'):
            import warnings
            from runtime.gpu import assign_devices
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                assign_devices(spec, self.shards * self.replicas)

    # -- the plan -------------------------------------------------------------------
    def executor_args(self) -> 'ExecutorArgs':
        """This Deployment's checked arguments, all its stage plan is built from (:func:`plan_stage`)."""
        return ExecutorArgs(
            name=self.name, uses=self.uses, uses_with=dict(self.uses_with), replicas=self.replicas,
            shards=self.shards, polling=self.polling, needs=self.needs, env=dict(self.env),
            workspace=self.workspace, host=self.host, stateful=self.stateful, external=self.external,
            external_addresses=tuple(self.external_addresses) if self.external else (),
            blas_threads=self.blas_threads, log_level=self.log_level, no_reduce=self.no_reduce,
            allow_partial=self.allow_partial, timeout_send=self.timeout_send, policy=self.policy,
            max_in_flight_per_replica=self.max_in_flight_per_replica,
            raft_peer_ports=getattr(self, '_raft_peer_ports', None), raft_conf=getattr(self, '_raft_conf', None),
            raft_options=getattr(self, '_raft_options', None), raft_password=self.raft_password,
            read_consistency=self.read_consistency, durability=self.durability, monitoring=self.monitoring)

    def _plan(self, placements: Optional[Dict[str, Placement]] = None) -> List[StagePlan]:
        placement = (placements or {}).get(self.name)
        return [self.stage_plan(placement if placement is not None else self.placement())]

    def placement(self, replicas: Optional[int] = None) -> Placement:
        """This machine's values for the plan (:func:`local_placement`, with its side effects); a stateful
        Deployment keeps the workspace chosen for its next start and says which RAFT ports it uses
        (``peer_ports_used``)."""
        placement = local_placement(self.executor_args(), replicas)
        if placement.raft is not None:
            self.workspace = placement.raft.workspace
            self.peer_ports_used = {shard: list(ports) for shard, ports in placement.raft.peer_ports.items()}
        return placement

    def stage_plan(self, placement: Optional[Placement] = None, replicas: Optional[int] = None,
                   replica_port: Optional[int] = None) -> StagePlan:
        """This Deployment as one stage of a request graph: :func:`plan_stage` of its checked arguments
        and ``placement`` (default: this machine's, :meth:`placement`)."""
        if placement is None:
            placement = self.placement(replicas)
        return plan_stage(self.executor_args(), placement, replicas, replica_port)

    # -- poison entries ---------------------------------------------------------------
    def skip_entry(self, index: int, shard: int = 0) -> None:
        """Apply RAFT log entry ``index`` of ``shard`` as a no-op on every replica, from their next start.

        For a ``@write`` whose call kills the replica applying it (every replica, each time it
        is restarted: a crash loop that ``status()`` names with the index). The index goes to
        the shard's skip list in the workspace; replicas left down by the crash loop are
        restarted. See docs/reliability.md, "Skipping a poison log entry".
        """
        if not self.stateful:
            raise ValueError(f'{self.name!r} is not stateful: it has no RAFT log to skip entries of')
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < self.shards:
            raise ValueError(f'shard={shard!r}: must be an integer from 0 to {self.shards - 1}')
        from runtime.raft import SKIP_FILE, add_skipped, raft_root
        if self.workspace is None:
            raise ValueError(f'{self.name!r} has no workspace yet: start it first')
        add_skipped(os.path.join(raft_root(self.workspace, self.name), f'shard-{shard}', SKIP_FILE), index)
        if self._started:
            names = [r.name for stage in self.stages for r in stage.shards[shard]]
            for name in names:
                self.restart_replica(name)

    # -- scaling ----------------------------------------------------------------------
    def scale(self, replicas: int, drain_timeout: float = 30.0) -> 'Deployment':
        """Run ``replicas`` replicas per shard from now on, without dropping requests.

        Stateless deployments only. New replicas join the gateway once they answer;
        removed ones stop taking requests first, finish what they hold, then stop.
        """
        n = check_count(replicas, 'replicas')
        self.check_scalable()
        check_processes(n, self.shards, f'Deployment {self.name!r}.scale')
        self._require_started()
        self._scale_stage(self.plan_with_replicas(n), drain_timeout)
        self.replicas = n
        return self

    def check_scalable(self) -> None:
        """Raise ``ValueError`` for what cannot scale: stateful (RAFT) and external Deployments."""
        if self.stateful:
            raise ValueError(f'{self.name!r} is stateful: a RAFT group keeps the membership it '
                             'started with; scale works for stateless deployments')
        if self.external:
            raise ValueError(f'{self.name!r} uses external replicas; they are not ours to scale')

    def plan_with_replicas(self, replicas: int) -> StagePlan:
        """This Deployment's stage plan as if it ran ``replicas`` replicas per shard (for scaling)."""
        self.check_scalable()
        return self.stage_plan(replicas=replicas)

    # -- configs ----------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> 'Deployment':
        """A (not started) Deployment from a ``jtype: Deployment`` spec (:func:`runtime.config.load_spec`)."""
        if spec.get('jtype') != cls.jtype:
            raise ValueError(f"expected a jtype: {cls.jtype} spec, got jtype: {spec.get('jtype')!r}")
        return cls(**spec.get('with', {}))

    @classmethod
    def load_config(cls, source: str) -> 'Deployment':
        """A Deployment from a ``jtype: Deployment`` YAML file (or YAML text); see runtime.config.

        >>> Deployment.load_config('jtype: Deployment\\nreplicas: 2\\n').replicas
        2
        """
        spec = config.load_spec(source)
        label = source_label(source)
        if spec['jtype'] != cls.jtype:
            raise ConfigError(f'{label} is a jtype: {spec["jtype"]} config; use Flow.load_config')
        try:
            return cls.from_spec(spec)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f'{label}: {e}') from None

    def save_config(self, path: str) -> None:
        """Write this Deployment as ``jtype: Deployment`` YAML; :meth:`load_config` reads it back."""
        config.save(self, path)

    def needs_all(self, **kwargs) -> 'Deployment':
        """A Deployment is one Executor: nothing to join (Jina's docs call it; kept for their examples)."""
        return self

    # -- reprs ------------------------------------------------------------------------
    def __repr__(self) -> str:
        state = 'running' if self._started else 'stopped'
        extra = f', shards={self.shards}' if self.shards > 1 else ''
        extra += ', stateful=True' if self.stateful else ''
        where = f' at {", ".join(self.addresses.values())}' if self._started else ''
        return f'<Deployment {self.name!r} replicas={self.replicas}{extra} {state}{where}>'
