"""runtime.plan: what a Deployment or Flow starts, built in process (no process is started here),
and the export reading the very same plan."""
from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from orchestra_nb import Deployment, Flow
from runtime import gpu
from runtime.export.plan import build_plan, local_plan
from runtime.plan import RunPlan
from runtime.specs import GatewaySpec, ReplicaSpec, StageSpec


def test_a_deployment_plans_shards_x_replicas_and_its_gateway():
    plan = Deployment(name='idx', uses='runtime.executors.echo:Echo', replicas=2, shards=3, port=5555,
                      polling={'/search': 'ALL', '*': 'ANY'}, max_in_flight_per_replica=6,
                      health_timeout=0.5).run_plan()
    assert isinstance(plan, RunPlan) and plan.name == 'idx'
    (stage,) = plan.stages
    assert [[r.name for r in shard] for shard in stage.shards] == [
        [f'idx/shard-{s}/rep-{r}' for r in range(2)] for s in range(3)]
    spec = stage.shards[2][1].spec
    assert isinstance(spec, ReplicaSpec)
    assert (spec.deployment, spec.shard_id, spec.replica_id, spec.shards, spec.replicas, spec.port) == \
        ('idx', 2, 1, 3, 2, 0)
    assert spec.secret is None and spec.raft is None   # the secret is the runner's to add, at start
    assert not hasattr(plan.replicas[0], 'process')   # a plan holds what to start, never what runs
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.replicas[0].spec = None   # type: ignore[misc]
    assert plan.gateway == GatewaySpec(
        name='idx/gateway', ports=(5555,), max_in_flight_per_replica=6,
        stages=(StageSpec('idx', polling={'/search': 'ALL', '*': 'ANY'}, health_timeout=0.5,
                          shards=((), (), ())),))


def test_a_stateful_deployment_plans_its_raft_nodes(tmp_path):
    plan = Deployment(name='kv', replicas=3, stateful=True, workspace=str(tmp_path),
                      peer_ports=[7301, 7302, 7303], read_consistency='strong').run_plan()
    (stage,) = plan.stages
    rafts = [r.spec.raft for r in stage.replicas]
    assert [r.address for r in rafts] == ['127.0.0.1:7301', '127.0.0.1:7302', '127.0.0.1:7303']
    assert all(r.read_consistency == 'strong' and len(r.peers) == 2 for r in rafts)
    assert all(r.spec.port and r.spec.workspace == str(tmp_path) for r in stage.replicas)   # fixed gRPC ports
    assert stage.secret_file and plan.gateway.stages[0].stateful


def test_gpu_round_robin_is_planned_per_replica(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pynvml', None)
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '2')
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    gpu._reset_nvml()
    try:
        plan = Deployment(name='g', replicas=3, env={'CUDA_VISIBLE_DEVICES': 'RR'}).run_plan()
    finally:
        gpu._reset_nvml()
    assert [r.env.get('CUDA_VISIBLE_DEVICES') for r in plan.replicas] == ['0', '1', '0']


def test_a_flow_plans_its_stages_joins_and_fixed_ports():
    f = (Flow(name='f', max_in_flight_per_replica=3)
         .add(name='a', replicas=2)
         .add(name='b', needs='gateway', port=7411)
         .needs_all(name='j'))
    plan = f.run_plan()
    assert [s.name for s in plan.stages] == ['a', 'b', 'j']
    a, b, j = plan.stages
    assert [r.name for r in a.replicas] == ['a/rep-0', 'a/rep-1']
    assert a.max_in_flight == 4 and plan.gateway.max_in_flight_per_replica == 3   # each Executor's own bound
    assert b.replicas[0].spec.port == 7411
    assert j.shards == [] and j.needs == ['a', 'b']
    assert [(s.name, s.needs, len(s.shards)) for s in plan.gateway.stages] == [
        ('a', ('gateway',), 1), ('b', ('gateway',), 1), ('j', ('a', 'b'), 0)]
    assert f.stages == []   # planning starts nothing and changes nothing


def test_the_export_reads_the_local_run_plan(tmp_path):
    """Local run and export cannot drift: the export's processes and graph are the run plan's."""
    f = (Flow(name='f')
         .add(name='enc', replicas=2, env={'X': '1'})
         .add(name='idx', shards=2, polling={'/search': 'ALL', '*': 'ANY'})
         .add(name='kv', replicas=3, stateful=True, workspace=str(tmp_path)))
    local = f.run_plan()
    stages, gateway = local_plan(f)
    assert [[r.name for r in s.replicas] for s in stages] == [[r.name for r in s.replicas] for s in local.stages]
    def env(r):   # GPUs are assigned for the export's target, not this machine (runtime.export.plan)
        return {k: v for k, v in r.env.items() if k != 'CUDA_VISIBLE_DEVICES'}
    assert [env(r) for s in stages for r in s.replicas] == [env(r) for r in local.replicas]
    assert gateway.stages == local.gateway.stages    # kv stays stateful: the gateway never retries its @write
    export = build_plan(f, app_dir='.')
    assert export.graph.stages == local.gateway.stages
    assert [[[p.name for p in shard] for shard in ex.processes] for ex in export.executors] == \
        [[[r.name for r in shard] for shard in s.shards] for s in local.stages if s.shards]


@pytest.mark.parametrize('make', [lambda: Deployment(name='d', replicas=2),
                                  lambda: Flow(name='f').add(name='a').add(name='b')])
def test_planning_twice_gives_the_same_plan(make):
    obj = make()
    one, two = obj.run_plan(), obj.run_plan()
    assert one.gateway == two.gateway
    assert [r.spec for r in one.replicas] == [r.spec for r in two.replicas]


def _without_machine_values(stage):
    """A stage plan with its machine-dependent values (a Placement's: GPU devices, RAFT layout) taken out."""
    def replica(r):
        spec = r.spec and dataclasses.replace(r.spec, raft=None, port=0, workspace=None)
        env = {k: v for k, v in r.env.items() if k != 'CUDA_VISIBLE_DEVICES'}
        return dataclasses.replace(r, spec=spec, env=env)
    return dataclasses.replace(stage, shards=[[replica(r) for r in shard] for shard in stage.shards],
                               secret_file=None)


def test_export_and_local_run_plan_a_stateful_gpu_sharded_flow_alike(tmp_path, monkeypatch):
    """One function plans both: they differ only in the machine-dependent values, and an exported
    stateful stage is stateful because the plan says so (no copy with it switched off, no patch)."""
    monkeypatch.setitem(sys.modules, 'pynvml', None)
    monkeypatch.setenv('CUDA_TOTAL_DEVICES', '2')
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    gpu._reset_nvml()
    try:
        f = (Flow(name='f')
             .add(name='enc', replicas=3, env={'CUDA_VISIBLE_DEVICES': 'RR'})
             .add(name='idx', shards=2, replicas=2, polling={'/search': 'ALL', '*': 'ANY'})
             .add(name='kv', replicas=3, shards=2, stateful=True, workspace=str(tmp_path / 'ws')))
        stages, gateway = local_plan(f)
        assert not (tmp_path / 'ws').exists()   # the export's plan wrote nothing here, picked no port
        local = f.run_plan()
    finally:
        gpu._reset_nvml()
    assert (tmp_path / 'ws' / 'kv' / '.raft' / 'peers.json').exists()   # the local start's side effect
    assert gateway == local.gateway and gateway.stages[2].stateful
    assert [_without_machine_values(s) for s in stages] == [_without_machine_values(s) for s in local.stages]
    # what differs is the placement: this machine's GPUs and RAFT layout, or the containers'
    assert [r.env.get('CUDA_VISIBLE_DEVICES') for r in local.stages[0].replicas] == ['0', '1', '0']
    assert [r.env.get('CUDA_VISIBLE_DEVICES') for r in stages[0].replicas] == [None] * 3
    kv = stages[2]
    assert kv.stateful and all(r.spec.raft is not None and r.spec.workspace == '/orchestra/workspace'
                               for r in kv.replicas)
    assert [r.spec.raft.bind for r in kv.shards[1]] == ['0.0.0.0:9203', '0.0.0.0:9204', '0.0.0.0:9205']
    export = build_plan(f, app_dir='.')
    assert export.executor('kv').stateful and export.graph.stages[2].stateful
    assert export.executor('kv').raft_ports == {0: [9200, 9201, 9202], 1: [9203, 9204, 9205]}


def test_a_supplied_placement_is_all_the_machine_a_plan_reads(tmp_path):
    from runtime.plan import Placement, RaftLayout
    dep = Deployment(name='kv', replicas=3, stateful=True, workspace=str(tmp_path / 'ws'))
    layout = RaftLayout(workspace='/w', peer_ports={0: (1, 2, 3)}, grpc_ports=(11, 12, 13))
    stage = dep.stage_plan(Placement(devices=('7', None, '5'), raft=layout))
    assert not (tmp_path / 'ws').exists()
    assert [r.env.get('CUDA_VISIBLE_DEVICES') for r in stage.replicas] == ['7', None, '5']
    assert [(r.spec.port, r.spec.raft.address) for r in stage.replicas] == [
        (11, '127.0.0.1:1'), (12, '127.0.0.1:2'), (13, '127.0.0.1:3')]
    assert os.path.dirname(stage.secret_file) == '/w/kv/.raft'


def test_a_flow_plans_from_each_executors_checked_arguments_not_from_a_deployment():
    from runtime.deployment import ExecutorArgs, plan_stage
    from runtime.plan import Placement
    f = Flow(name='f').add(name='a', replicas=2, env={'X': '1'}).add(name='b', shards=2)
    args = f.entries[0].args
    assert isinstance(args, ExecutorArgs) and (args.name, args.replicas, args.env) == ('a', 2, {'X': '1'})
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.replicas = 3   # type: ignore[misc]
    f['a'].replicas = 7   # flow['a'] is a view for users and writers: the Flow never plans through it
    a, b = f.run_plan().stages
    assert a.replicas == plan_stage(args, Placement((None, None)), replica_port=None).replicas
    assert [r.name for r in a.replicas] == ['a/rep-0', 'a/rep-1'] and len(b.shards) == 2
