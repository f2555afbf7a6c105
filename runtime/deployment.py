"""Deployment: one Executor as shards x replicas of processes behind a gateway.

    >>> with Deployment(name='up', uses=Upper, replicas=3) as dep:
    ...     dep.post('/upper', DocList[TextDoc]([TextDoc(text='hi')]))

Arguments are checked up front; a bad one raises ``ValueError`` naming the
value and what is allowed. Unknown keyword arguments are refused with the
closest valid name (Jina only warns).
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from runtime.executor import RuntimeArgs
from runtime.orchestration import NodePlan, Orchestration, ReplicaPlan
from runtime.routing import PollingPolicy

#: every argument a Deployment (and Flow.add) accepts
DEPLOYMENT_ARGS = (
    'name', 'uses', 'uses_with', 'replicas', 'shards', 'polling', 'port', 'host', 'env',
    'workspace', 'timeout_ready', 'stateful', 'peer_ports', 'raft_configuration', 'raft_password',
    'read_consistency', 'external', 'max_in_flight_per_replica', 'blas_threads', 'log_dir',
    'no_reduce', 'allow_partial', 'stream_logs', 'needs', 'py_modules', 'log_level',
)


def check_kwargs(kwargs: Dict[str, Any], allowed: Sequence[str], where: str) -> None:
    """Refuse unknown keyword arguments, suggesting the closest valid one."""
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f'; did you mean {close[0]!r}?' if close else ''
            raise ValueError(f'{where} got an unknown argument {key!r}{hint} '
                             f'(valid: {", ".join(sorted(allowed))})')


def check_count(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{what}={value!r}: must be an integer >= {minimum}')
    return value


def check_port(port: Any, what: str = 'port') -> Optional[int]:
    if port is None:
        return None
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f'{what}={port!r}: must be an integer from 0 to 65535 (0 or None: the OS picks)')
    return port


class Deployment(Orchestration):
    """One Executor served by ``replicas`` processes per shard, behind one gateway port."""

    def __init__(self, name: str = 'executor', uses: Any = None, uses_with: Optional[dict] = None,
                 replicas: int = 1, shards: int = 1, polling: Union[str, Dict[str, str], None] = None,
                 port: Union[int, List[int], None] = None, host: Union[str, List[str]] = '127.0.0.1',
                 env: Optional[Dict[str, str]] = None, workspace: Optional[str] = None,
                 timeout_ready: float = 60.0, stateful: bool = False,
                 peer_ports: Union[List[int], Dict[Any, List[int]], None] = None,
                 raft_configuration: Optional[dict] = None, raft_password: Optional[str] = None,
                 read_consistency: str = 'eventual', external: bool = False,
                 max_in_flight_per_replica: int = 4, blas_threads: Optional[int] = None,
                 log_dir: Optional[str] = None, no_reduce: bool = False, allow_partial: bool = False,
                 stream_logs: bool = False, log_level: str = 'INFO', **kwargs):
        check_kwargs(kwargs, DEPLOYMENT_ARGS, 'Deployment')
        self._uses_source, self._uses_with_source = uses, uses_with   # as written: what save_config writes
        if kwargs.get('py_modules') or isinstance(uses, dict) or (
                isinstance(uses, str) and uses.lower().endswith(('.yml', '.yaml'))):
            from runtime.config import resolve_uses   # class name in py_modules, nested or YAML uses
            uses, uses_with = resolve_uses(uses, uses_with, kwargs.get('py_modules'))
        if not isinstance(name, str) or not name or '/' in name:
            raise ValueError(f'name={name!r}: must be a non-empty string without "/"')
        self.replicas = check_count(replicas, 'replicas')
        self.shards = check_count(shards, 'shards')
        self.polling = PollingPolicy(polling)   # validates
        if uses_with is not None and not isinstance(uses_with, dict):
            raise ValueError(f'uses_with={uses_with!r}: must be a dict of constructor arguments')
        if env is not None and not isinstance(env, dict):
            raise ValueError(f'env={env!r}: must be a dict of environment variables')
        if not isinstance(timeout_ready, (int, float)) or timeout_ready <= 0:
            raise ValueError(f'timeout_ready={timeout_ready!r}: must be a number of seconds > 0')
        if read_consistency not in ('eventual', 'strong'):
            raise ValueError(f"read_consistency={read_consistency!r}: allowed: 'eventual', 'strong'")
        self.external = bool(external)
        self.uses = uses
        self.uses_with = dict(uses_with or {})
        self.env = dict(env or {})
        self.workspace = os.path.abspath(workspace) if workspace else None
        self.stateful = bool(stateful)
        self.peer_ports = peer_ports
        self.raft_configuration = (dict(raft_configuration) if isinstance(raft_configuration, dict)
                                   else raft_configuration or {})   # a non-dict: validate_stateful says why
        self.raft_password = raft_password
        self.read_consistency = read_consistency
        self.blas_threads = blas_threads
        self.no_reduce = no_reduce
        self.allow_partial = allow_partial
        self.log_level = log_level
        self.needs = kwargs.get('needs')
        self.py_modules = kwargs.get('py_modules')
        if self.external:
            from runtime.external import external_addresses
            # the addresses are the replicas: replicas=N (N != 1, the default) must agree
            self.external_addresses = external_addresses(host, port, None if replicas == 1 else replicas)
            self.replicas = len(self.external_addresses)
            gw_port, gw_host = None, '127.0.0.1'
        else:
            if not isinstance(host, str):
                raise ValueError(f'host={host!r}: a list of hosts needs external=True')
            gw_port, gw_host = check_port(port), host
            if self.uses is None:
                self.uses = 'runtime.executors.echo:Echo'
            self._check_gpu_spec()
        if self.stateful:
            from runtime.consensus import validate_stateful
            validate_stateful(self)
        super().__init__(name=name, port=gw_port, host=gw_host, timeout_ready=timeout_ready,
                         log_dir=log_dir, max_in_flight_per_replica=check_count(
                             max_in_flight_per_replica, 'max_in_flight_per_replica'),
                         stream_logs=stream_logs)

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
    def _plan(self) -> List[NodePlan]:
        return [self.node_plan()]

    def node_plan(self) -> NodePlan:
        """This Deployment as one node of a graph (a Flow uses it too)."""
        if self.external:
            shard = [ReplicaPlan(name=f'{self.name}/rep-{i}', shard=0, replica=i, config={},
                                 external_address=a) for i, a in enumerate(self.external_addresses)]
            return NodePlan(self.name, [shard], polling=self.polling.to_config(), needs=self.needs)
        from runtime.gpu import assign_devices, replica_env, warn_if_cuda_initialised
        spec = self.env.get('CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES'))
        devices = assign_devices(spec, self.shards * self.replicas)
        if any(d is not None for d in devices) and spec and spec.startswith('RR'):
            warn_if_cuda_initialised()
        shards = []
        for s in range(self.shards):
            shard = []
            for r in range(self.replicas):
                rname = (f'{self.name}/shard-{s}/rep-{r}' if self.shards > 1 else f'{self.name}/rep-{r}')
                ra = RuntimeArgs(name=self.name, replica_id=r, shard_id=s, shards=self.shards,
                                 replicas=self.replicas, workspace=self.workspace)
                config = {'uses': self.uses, 'uses_with': self.uses_with, 'runtime_args': ra.__dict__,
                          'display_name': rname, 'host': '127.0.0.1', 'port': 0,
                          'blas_threads': self.blas_threads, 'log_level': self.log_level,
                          'py_modules': self.py_modules}
                device = devices[s * self.replicas + r]
                env = replica_env(self.env, device)
                if device is None and spec and spec.strip().startswith('RR'):
                    env['CUDA_VISIBLE_DEVICES'] = None  # never pass a literal 'RR...' on
                shard.append(ReplicaPlan(name=rname, shard=s, replica=r, config=config, env=env))
            shards.append(shard)
        plan = NodePlan(self.name, shards, polling=self.polling.to_config(), needs=self.needs,
                        no_reduce=self.no_reduce, allow_partial=self.allow_partial, stateful=self.stateful)
        from runtime.batching import in_flight_for   # dynamic batching needs room to gather a batch
        plan.max_in_flight = in_flight_for(self.uses, self.max_in_flight_per_replica)
        if self.stateful:
            from runtime.consensus import plan_stateful
            plan_stateful(self, plan)
        return plan

    # -- scaling ----------------------------------------------------------------------
    def scale(self, replicas: int, drain_timeout: float = 30.0) -> 'Deployment':
        """Run ``replicas`` replicas per shard from now on, without dropping requests.

        Stateless deployments only. New replicas join the gateway once they answer;
        removed ones stop taking requests first, finish what they hold, then stop.
        """
        n = check_count(replicas, 'replicas')
        self.check_scalable()
        self._require_started()
        self._scale_node(self.plan_with_replicas(n), drain_timeout)
        self.replicas = n
        return self

    def check_scalable(self) -> None:
        """Raise ``ValueError`` for what cannot scale: stateful (RAFT) and external Deployments."""
        if self.stateful:
            raise ValueError(f'{self.name!r} is stateful: a RAFT group keeps the membership it '
                             'started with; scale works for stateless deployments')
        if self.external:
            raise ValueError(f'{self.name!r} uses external replicas; they are not ours to scale')

    def plan_with_replicas(self, replicas: int) -> NodePlan:
        """This Deployment's node plan as if it ran ``replicas`` replicas per shard (for scaling)."""
        self.check_scalable()
        old = self.replicas
        self.replicas = replicas
        try:
            return self.node_plan()
        finally:
            self.replicas = old

    # -- configs ----------------------------------------------------------------------
    @classmethod
    def load_config(cls, source: str) -> 'Deployment':
        """A Deployment from a ``jtype: Deployment`` YAML file (or YAML text); see runtime.config."""
        from runtime.config import load_deployment
        return load_deployment(source)

    def save_config(self, path: str) -> None:
        """Write this Deployment as ``jtype: Deployment`` YAML; :meth:`load_config` reads it back."""
        from runtime.config import save
        save(self, path)

    def needs_all(self, **kwargs) -> 'Deployment':
        """A Deployment is one Executor: nothing to join (Jina's docs call it; kept for their examples)."""
        return self

    # -- reprs ------------------------------------------------------------------------
    def __repr__(self) -> str:
        state = 'running' if self._started else 'stopped'
        extra = f', shards={self.shards}' if self.shards > 1 else ''
        extra += ', stateful=True' if self.stateful else ''
        where = f' at {self.address}' if self._started else ''
        return f'<Deployment {self.name!r} replicas={self.replicas}{extra} {state}{where}>'
