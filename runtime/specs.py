"""What crosses a process boundary: frozen, typed specs, and the values owner and gateway share.

The owner (a Deployment or Flow) starts children from specs and the children read them
back, checked, on arrival:

- :class:`ReplicaSpec` -- one replica process: its Executor, where it runs, its RAFT part;
- :class:`RaftSpec` (with :class:`RaftPeer`) -- a stateful replica's RAFT node;
- :class:`GatewaySpec` (with one :class:`StageSpec` per stage of the request graph) -- the gateway;
- :class:`SupervisionPolicy` -- how the owner supervises a stage's replicas;
- :class:`PollingPolicy` -- which shards get a request (owner, config and gateway alike);
- the status records ``status()`` returns (:class:`OrchestrationStatus` and its parts).

Each default that more than one process relies on is declared here once, taken from the
argument schema (:mod:`runtime.args`) where a user can set it; ``tests/test_specs.py``
fails if one is written anywhere else.

**Serialisation.** ``spec.to_dict()`` gives plain values (dicts, lists, str, int, float,
bool, None); ``Spec.from_dict(data)`` checks every field's type and refuses unknown or
missing keys with a :class:`SpecError` naming them. What the owner writes to a child's
lifeline is ``to_dict()``; the child calls ``from_dict``. One field is not plain:
``ReplicaSpec.uses`` may be an Executor *class* (one defined in a notebook cell travels by
value): the owner -> child pipe is pickled with cloudpickle (:mod:`runtime.processes`),
and only that pipe -- a spec that goes over the network (an export's ``--graph``) holds
no class, and nothing from the network is unpickled.

    >>> spec = ReplicaSpec(name='dep/rep-0', uses='my_package.executors:Indexer')
    >>> ReplicaSpec.from_dict(spec.to_dict()) == spec
    True

This module imports nothing of the project but the argument schema (an import-linter
contract in pyproject.toml says so).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Type, TypedDict, TypeVar, Union

from runtime.args import DEPLOYMENT_ARGS, by_name

_ARGS = by_name(DEPLOYMENT_ARGS)


def _user_default(name: str) -> Any:
    """The schema's default of argument ``name``: where a user can set it, it is declared there."""
    return _ARGS[name].default


# -- defaults shared by processes -------------------------------------------------------------
#: requests in flight per replica before the gateway queues (``max_in_flight_per_replica``)
MAX_IN_FLIGHT_PER_REPLICA: int = _user_default('max_in_flight_per_replica')
#: seconds a replica has to answer its health probe (``health_timeout``)
HEALTH_TIMEOUT_S: float = _user_default('health_timeout')
#: seconds between two health probes of one replica (owner and gateway alike)
HEALTH_INTERVAL_S = 1.0
#: how long the gateway holds a request for a shard whose replicas are all down (restarting)
#: before it fails naming the shard; ``$ORCHESTRA_REPLICA_WAIT_S`` overrides it
REPLICA_WAIT_S = 5.0
#: the log level of a child process (``log_level``)
LOG_LEVEL: str = _user_default('log_level')
#: whether the gateway and replicas serve Prometheus metrics (``monitoring``)
MONITORING: bool = _user_default('monitoring')
#: a replica's gRPC host and a gateway's default host
LOOPBACK = '127.0.0.1'
#: the gateway's doors when none is asked for (``protocol``)
PROTOCOLS: Tuple[str, ...] = (_user_default('protocol'),)
#: the name of the graph's source and sink in ``needs`` (the gateway itself)
GATEWAY = 'gateway'


class SpecError(ValueError):
    """A spec that is malformed (a wrong type, an unknown or missing field); the message names it."""


# -- (de)serialisation ----------------------------------------------------------------------------
S = TypeVar('S', bound='_Spec')


class _Spec:
    """``to_dict`` / ``from_dict`` (checked) for the frozen dataclasses below."""

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (dicts and lists), field by field; ``from_dict`` reads it back."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: Type[S], data: Any, where: Optional[str] = None) -> S:
        """``data`` (``to_dict``'s form) -> the spec; raises :class:`SpecError` naming what is wrong."""
        where = where or cls.__name__
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise SpecError(f'{where}: expected a mapping of field -> value, got {type(data).__name__}')
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields), key=str)
        if unknown:
            raise SpecError(f'{where}: unknown field(s) {", ".join(map(repr, unknown))}; '
                            f'allowed: {", ".join(fields)}')
        missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SpecError(f'{where}: missing field(s) {", ".join(map(repr, missing))}')
        hints = _hints(cls)
        return cls(**{k: _checked(v, hints[k], f'{where}.{k}') for k, v in data.items()})


def _hints(cls: type) -> Dict[str, Any]:
    return typing.get_type_hints(cls, globalns=globals())


def _plain(value: Any) -> Any:
    if isinstance(value, _Spec):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _say(hint: Any) -> str:
    return getattr(hint, '__name__', None) or str(hint).replace('typing.', '')


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (lists become tuples, ints floats, mappings specs), else SpecError."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union:
        if value is None and type(None) in params:
            return None
        choices = [p for p in params if p is not type(None)]
        if len(choices) == 1:   # Optional[X]: X's own message, which may name a nested field
            return _checked(value, choices[0], where)
        for p in choices:
            try:
                return _checked(value, p, where)
            except SpecError:
                pass
        raise SpecError(f'{where}={value!r}: expected {" or ".join(_say(p) for p in params)}')
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise SpecError(f'{where}={value!r}: expected a list')
        item = params[0] if params else Any
        return tuple(_checked(v, item, f'{where}[{i}]') for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SpecError(f'{where}={value!r}: expected a mapping')
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, _Spec):
        return hint.from_dict(value, where)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SpecError(f'{where}={value!r}: expected a number')
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SpecError(f'{where}={value!r}: expected an integer')
    if hint in (str, bool):
        if isinstance(value, hint):
            return value
        raise SpecError(f'{where}={value!r}: expected {"a string" if hint is str else "true or false"}')
    raise SpecError(f'{where}: no check for type {_say(hint)}')   # a field type this module cannot read


# -- supervision and polling -------------------------------------------------------------------------
@dataclass(frozen=True)
class SupervisionPolicy(_Spec):
    """How one stage's replicas are supervised; the Deployment arguments of the same names.

    >>> SupervisionPolicy().health_timeout == HEALTH_TIMEOUT_S
    True
    """
    health_timeout: float = HEALTH_TIMEOUT_S                     # a missed probe: out of rotation
    restart_grace: float = _user_default('restart_grace')        # unanswered this long: SIGKILL, restart
    max_restarts: int = _user_default('max_restarts')            # restarts within restart_window, then left down
    restart_window: float = _user_default('restart_window')
    backoff_base: float = 0.5       # seconds before the 2nd restart within the window, doubling
    backoff_max: float = 10.0


POLLING_MODES = ('ANY', 'ALL')
#: polling when the user gives none: ``/search`` goes to every shard, the rest to one
DEFAULT_POLLING = {'/search': 'ALL'}


class PollingPolicy:
    """Which shards get a request to an endpoint.

    >>> PollingPolicy({'/custom': 'ALL', '*': 'ANY'}).mode('/custom')
    'ALL'
    >>> PollingPolicy(None).mode('/search'), PollingPolicy('ALL').mode('/index')
    ('ALL', 'ALL')
    """

    def __init__(self, polling: Union[str, Dict[str, str], None] = None):
        self.plain: Optional[str] = None
        self.table: Dict[str, str] = {}
        if polling is None:
            pass
        elif isinstance(polling, str):
            self.plain = self._check(polling, 'polling')
        elif isinstance(polling, dict):
            for endpoint, mode in polling.items():
                if not isinstance(endpoint, str):
                    raise ValueError(f'polling keys are endpoint strings or "*", got {endpoint!r}')
                self.table[endpoint] = self._check(mode, f'polling[{endpoint!r}]')
        else:
            raise ValueError(f"polling must be 'ANY', 'ALL' or a dict of endpoint -> mode, got {polling!r}")

    @staticmethod
    def _check(mode: Any, where: str) -> str:
        if isinstance(mode, str) and mode.upper() in POLLING_MODES:
            return mode.upper()
        raise ValueError(f"{where}={mode!r} is not a polling mode; allowed: 'ANY', 'ALL'")

    def mode(self, endpoint: str) -> str:
        if endpoint in self.table:
            return self.table[endpoint]
        if '*' in self.table:
            return self.table['*']
        if self.plain is not None:
            return self.plain
        return DEFAULT_POLLING.get(endpoint, 'ANY')

    def to_config(self) -> Union[str, Dict[str, str], None]:
        if self.table:
            return dict(self.table)
        return self.plain


# -- replicas ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RaftPeer(_Spec):
    """Another replica of the same shard, as a RAFT node sees it."""
    replica: int
    name: str
    raft: str       # host:port of its RAFT node
    grpc: str       # host:port of its replica server (payload fetches, snapshots)


@dataclass(frozen=True)
class RaftSpec(_Spec):
    """A stateful replica's RAFT node (built by :func:`runtime.raft.plan.plan_raft`)."""
    replica: int
    shard: int
    name: str
    address: str                    # host:port its peers reach its RAFT node at
    bind: str                       # host:port it listens on
    peers: Tuple[RaftPeer, ...]
    dir: str                        # its RAFT folder (journal, payloads, snapshots)
    conf: Dict[str, Any] = field(default_factory=dict)      # pysyncobj settings
    options: Dict[str, Any] = field(default_factory=dict)   # orchestra-nb's RAFT options
    password: Optional[str] = None  # None: the Deployment's secret encrypts RAFT traffic
    read_consistency: str = _user_default('read_consistency')
    durability: str = _user_default('durability')


@dataclass(frozen=True)
class ReplicaSpec(_Spec):
    """One replica process: the Executor it serves, where it runs, and (stateful) its RAFT node.

    ``uses`` is an Executor class or an import path ``pkg.mod:Class`` (see the module
    docstring for how a class travels). ``deployment``, ``replica_id``, ``shard_id``,
    ``shards``, ``replicas`` and ``workspace`` become the Executor's ``runtime_args``.
    """
    name: str                                   # the process: 'dep/rep-0', 'dep/shard-1/rep-0'
    uses: Any
    uses_with: Dict[str, Any] = field(default_factory=dict)
    deployment: str = _user_default('name')     # the Deployment (or Flow Executor) it belongs to
    replica_id: int = 0
    shard_id: int = 0
    shards: int = 1
    replicas: int = 1
    workspace: Optional[str] = None
    host: str = LOOPBACK
    port: int = 0                               # 0: the OS picks, the replica reports it
    blas_threads: Optional[int] = None          # None: runtime.worker.default_blas_threads
    log_level: str = LOG_LEVEL
    secret: Optional[str] = None                # set by the owner at start (private pipe, never argv/env)
    raft: Optional[RaftSpec] = None             # stateful replicas only
    monitoring: bool = MONITORING               # serve /metrics (runtime.metrics)
    port_monitoring: int = 0                    # its port; 0: the OS picks, reported in Info

    @property
    def stateful(self) -> bool:
        return self.raft is not None


# -- the gateway --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec(_Spec):
    """One stage of the gateway's request graph: an Executor's shards and how to route to them,
    or (no shards) a join of its ``needs``.

    ``shards`` holds each shard's replica addresses as far as known at start (empty for a
    local run: the owner sends them once the replicas are ready; an export writes them).
    """
    name: str
    needs: Optional[Tuple[str, ...]] = None     # None: fed by the gateway
    polling: Union[str, Dict[str, str], None] = None   # PollingPolicy.to_config()
    no_reduce: bool = False
    allow_partial: bool = False
    stateful: bool = False                      # a stateful @write is never retried elsewhere
    max_in_flight: Optional[int] = None         # None: the gateway's max_in_flight_per_replica
    timeout_send: Optional[float] = None
    health_timeout: float = HEALTH_TIMEOUT_S
    shards: Tuple[Tuple[str, ...], ...] = ()
    discover: Optional[str] = None              # 'dns': shard entries are names to keep resolving (exports)
    floating: bool = False                      # Flow.add(floating=True): the answer does not wait for it


@dataclass(frozen=True)
class GatewaySpec(_Spec):
    """The gateway process: where it listens (a door per protocol) and the graph it routes through."""
    name: str
    stages: Tuple[StageSpec, ...]
    host: str = LOOPBACK
    protocols: Tuple[str, ...] = PROTOCOLS      # its public doors: 'grpc', 'http', 'websocket'
    ports: Tuple[int, ...] = (0,)               # the port of each door, in that order; 0: the OS picks
    local_port: int = 0                         # the loopback port the owner controls it on
    max_in_flight_per_replica: int = MAX_IN_FLIGHT_PER_REPLICA
    replica_wait_s: Optional[float] = None      # None: $ORCHESTRA_REPLICA_WAIT_S, else REPLICA_WAIT_S
    secret: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    monitoring: bool = MONITORING               # serve /metrics (runtime.metrics) on host
    port_monitoring: int = 0                    # its port; 0: the OS picks, reported in Info

    def __post_init__(self) -> None:
        if not self.protocols or len(self.ports) != len(self.protocols):
            raise SpecError(f'GatewaySpec {self.name!r}: protocols={list(self.protocols)} and ports={list(self.ports)} '
                            'must be non-empty and of the same length (one port per door)')


# -- what status() returns -------------------------------------------------------------------------------
class SupervisionStatus(TypedDict, total=False):
    """The supervisor's view of one child (``rec['supervision']``)."""
    state: str              # running | restarting | waiting | hung | crash-loop
    restarts: int
    deaths_in_window: int
    cause: str
    unanswered_s: float


class ReplicaStatus(TypedDict, total=False):
    """One replica in ``status()['replicas']``; the replica's own Info fields are added when it answers."""
    name: str
    node: str               # the Executor (stage) it serves; key kept from the first releases
    pid: Optional[int]
    shard: int
    replica: int
    state: str              # ready | down | stopped | unreachable | restarting | waiting | hung | crash-loop
    address: Optional[str]
    port: Optional[int]
    external: bool
    requests: Dict[str, Any]
    cuda_visible_devices: Optional[str]
    supervision: SupervisionStatus
    error: str


class GatewayStatus(TypedDict, total=False):
    """``status()['gateway']``: the gateway's Info (``nodes``: its stages) plus state and pid."""
    state: str
    pid: Optional[int]
    name: str
    port: int
    ports: Dict[str, int]   # protocol -> port of each door
    nodes: Dict[str, Any]
    supervision: SupervisionStatus


class OrchestrationStatus(TypedDict):
    """What ``Deployment.status()`` / ``Flow.status()`` return."""
    name: str
    address: str
    addresses: Dict[str, str]   # protocol -> address of each door
    gateway: GatewayStatus
    replicas: List[ReplicaStatus]
    gpus: Dict[str, Any]   # runtime.telemetry.gpu_status
