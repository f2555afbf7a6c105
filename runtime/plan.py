"""The plan: what to start for one Deployment or Flow, apart from what runs.

A :class:`RunPlan` holds the stages of the request graph (:class:`StagePlan`: an
Executor's shards x :class:`ReplicaPlan`, or a join) and the gateway's
:class:`~runtime.specs.GatewaySpec`. ``Orchestration.run_plan()`` builds it -- the one
function behind a local start (a :class:`~runtime.runner.Runner` starts it) and both
exports (:mod:`runtime.export.plan` reads it), so what runs here and what is exported
cannot drift.

    >>> plan = Deployment(name='up', replicas=2).run_plan()   # doctest: +SKIP
    >>> [r.name for r in plan.replicas]                       # doctest: +SKIP
    ['up/rep-0', 'up/rep-1']
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from runtime.specs import GatewaySpec, ReplicaSpec, StageSpec, SupervisionPolicy

@dataclass(frozen=True)
class RaftLayout:
    """Where a stateful Executor's RAFT nodes live on the machine that runs them.

    The machine-dependent part of a stateful stage's plan: a local start chooses it here
    (:func:`runtime.raft.plan.place_raft`: picks ports, makes the folders, writes
    ``peers.json``), an export gives the container's (:mod:`runtime.export.plan`)."""
    workspace: str                          # the RAFT folders are under <workspace>/<name>/.raft
    peer_ports: Dict[int, Tuple[int, ...]]  # shard -> one RAFT port per replica
    grpc_ports: Tuple[int, ...]             # one per replica (shard-major) for those without a fixed port
    bind_host: str = '127.0.0.1'
    connect_host: str = '127.0.0.1'


@dataclass(frozen=True)
class Placement:
    """The machine-dependent values of one Executor's plan, supplied by whoever plans it.

    ``devices``: ``CUDA_VISIBLE_DEVICES`` per replica, shard-major (None: leave it as it is);
    ``raft``: the RAFT layout of a stateful Executor (None otherwise).

    >>> Placement(devices=(None, None))
    Placement(devices=(None, None), raft=None)
    """
    devices: Tuple[Optional[str], ...]
    raft: Optional[RaftLayout] = None


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica process to run (its :class:`ReplicaSpec` and environment), or an external
    address to use (no spec). What runs it is the runner's (:class:`runtime.runner.RunningReplica`)."""
    name: str
    shard: int
    replica: int
    spec: Optional[ReplicaSpec]
    env: Dict[str, Optional[str]] = field(default_factory=dict)
    external_address: Optional[str] = None


@dataclass
class StagePlan:
    """One stage of the request graph: an Executor's shards x replicas, polling, joins (no shards: a join).

    Built by ``Deployment.stage_plan`` from the checked arguments and a :class:`Placement`;
    a runner never changes it: scaling plans a new one."""
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
    policy: SupervisionPolicy = field(default_factory=SupervisionPolicy)
    floating: bool = False                  # Flow.add(floating=True): its output goes nowhere

    def stage_spec(self) -> StageSpec:
        """What the gateway needs of this stage (its shards' addresses come later, by ``set_replicas``)."""
        return StageSpec(name=self.name, needs=tuple(self.needs) if self.needs is not None else None,
                         polling=self.polling, no_reduce=self.no_reduce, allow_partial=self.allow_partial,
                         stateful=self.stateful, max_in_flight=self.max_in_flight, timeout_send=self.timeout_send,
                         health_timeout=self.policy.health_timeout, shards=tuple(() for _ in self.shards),
                         floating=self.floating)

    @property
    def replicas(self) -> List[ReplicaPlan]:
        return [r for shard in self.shards for r in shard]


@dataclass(frozen=True)
class RunPlan:
    """What to start for one Deployment or Flow: its stages and its gateway."""
    name: str
    stages: Tuple[StagePlan, ...]
    gateway: GatewaySpec

    @property
    def replicas(self) -> List[ReplicaPlan]:
        """Every replica of every stage (external ones included), in graph order."""
        return [r for s in self.stages for r in s.replicas]
