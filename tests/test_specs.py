"""runtime.specs: serialisation round trips, the check on arrival, and one declaration per default."""
from __future__ import annotations

import ast
import dataclasses
import os
import tempfile

import pytest

from runtime.args import DEPLOYMENT_ARGS, FLOW_ARGS, by_name
from runtime.specs import (HEALTH_TIMEOUT_S, MAX_IN_FLIGHT_PER_REPLICA, REPLICA_WAIT_S, GatewaySpec, PollingPolicy,
                           RaftPeer, RaftSpec, ReplicaSpec, SpecError, StageSpec, SupervisionPolicy)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raft_spec() -> RaftSpec:
    return RaftSpec(replica=0, shard=1, name='kv/shard-1/rep-0', address='127.0.0.1:7104', bind='127.0.0.1:7104',
                    peers=(RaftPeer(1, 'kv/shard-1/rep-1', '127.0.0.1:7105', '127.0.0.1:9001'),),
                    dir='/tmp/kv/.raft/shard-1/rep-0', conf={'raftMinTimeout': 0.6}, password='pw')


def gateway_spec() -> GatewaySpec:
    return GatewaySpec(name='f/gateway', protocols=('grpc', 'http'), ports=(5555, 5556), secret='s3cret', stages=(
        StageSpec('enc', shards=((),)),
        StageSpec('idx', needs=('enc',), polling={'/search': 'ALL', '*': 'ANY'}, stateful=True,
                  max_in_flight=8, timeout_send=2.5, shards=(('127.0.0.1:1', '127.0.0.1:2'), ())),
        StageSpec('join', needs=('enc', 'idx'))))


# --------------------------------------------------------------------------- serialisation
@pytest.mark.parametrize('spec', [
    ReplicaSpec(name='dep/rep-0', uses='runtime.executors.echo:Echo'),
    ReplicaSpec(name='kv/shard-1/rep-0', uses='sample_executors:WhoAmI', uses_with={'a': [1, 2]}, deployment='kv',
                replica_id=0, shard_id=1, shards=2, replicas=3, workspace='/w', port=9000, blas_threads=1,
                secret='x', raft=raft_spec()),
    gateway_spec(),
    SupervisionPolicy(health_timeout=0.5, max_restarts=2),
], ids=['replica', 'stateful-replica', 'gateway', 'policy'])
def test_a_spec_survives_its_own_serialisation(spec):
    data = spec.to_dict()
    assert type(spec).from_dict(data) == spec
    import json
    if not isinstance(spec, ReplicaSpec) or isinstance(spec.uses, str):   # plain values: JSON too
        assert type(spec).from_dict(json.loads(json.dumps(data))) == spec


def test_an_executor_class_travels_in_the_replica_spec_as_the_class():
    from sample_executors import WhoAmI
    spec = ReplicaSpec(name='d/rep-0', uses=WhoAmI)
    assert ReplicaSpec.from_dict(spec.to_dict()).uses is WhoAmI


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReplicaSpec(name='a', uses='m:C').port = 1   # type: ignore[misc]


@pytest.mark.parametrize('change, message', [
    (lambda d: d.update(port='80'), "ReplicaSpec.port='80': expected an integer"),
    (lambda d: d.update(port=True), 'ReplicaSpec.port=True: expected an integer'),
    (lambda d: d.update(colour='red'), "unknown field(s) 'colour'; allowed: name, uses"),
    (lambda d: d.pop('name'), "missing field(s) 'name'"),
    (lambda d: d['raft'].update(peers=[{'replica': 1, 'name': 'b', 'raft': 'h:1'}]),
     "ReplicaSpec.raft.peers[0]: missing field(s) 'grpc'"),
    (lambda d: d['raft'].update(conf=['x']), "ReplicaSpec.raft.conf=['x']: expected a mapping"),
    (lambda d: d.update(raft=7), 'ReplicaSpec.raft: expected a mapping of field -> value, got int'),
])
def test_a_malformed_spec_is_refused_naming_the_field(change, message):
    data = ReplicaSpec(name='a', uses='m:C', raft=raft_spec()).to_dict()
    change(data)
    with pytest.raises(SpecError) as e:
        ReplicaSpec.from_dict(data)
    assert message in str(e.value)


def test_a_gateway_spec_needs_one_port_per_door():
    with pytest.raises(SpecError, match=r"protocols=\['grpc', 'http'\] and ports=\[5555\]"):
        GatewaySpec(name='g', stages=(), protocols=('grpc', 'http'), ports=(5555,))


def test_a_gateway_spec_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecError, match='GatewaySpec: expected a mapping of field -> value, got list'):
        GatewaySpec.from_dict([])
    with pytest.raises(SpecError, match=r"GatewaySpec.stages\[0\].health_timeout='soon': expected a number"):
        GatewaySpec.from_dict({'name': 'g', 'stages': [{'name': 'a', 'health_timeout': 'soon'}]})


def test_a_child_given_a_malformed_spec_fails_saying_so(tmp_path):
    """The check on arrival: the owner sees the child's error, naming the field."""
    from runtime.processes import ChildFailedError, ChildProcess, start_all
    data = ReplicaSpec(name='bad/rep-0', uses='runtime.executors.echo:Echo').to_dict()
    data['port'] = 'eighty'
    gw = GatewaySpec(name='bad/gateway', stages=()).to_dict()
    gw['stages'] = [{'name': 'x', 'polling': 3}]
    for role, config, field in (('worker', data, "ReplicaSpec.port='eighty'"),
                                ('gateway', gw, 'GatewaySpec.stages[0].polling=3')):
        proc = ChildProcess(f'bad/{role}', role, config, str(tmp_path / f'{role}.log'))
        with pytest.raises(ChildFailedError) as e:
            start_all([proc], timeout=60)
        assert f'this {"replica" if role == "worker" else "gateway"} was given a malformed spec' in str(e.value)
        assert field in str(e.value)


# --------------------------------------------------------------------------- one declaration per default
#: spec fields that a user sets through an argument of the same name (or another name)
USER_SET = {
    (SupervisionPolicy, 'health_timeout'): 'health_timeout',
    (SupervisionPolicy, 'restart_grace'): 'restart_grace',
    (SupervisionPolicy, 'max_restarts'): 'max_restarts',
    (SupervisionPolicy, 'restart_window'): 'restart_window',
    (StageSpec, 'health_timeout'): 'health_timeout',
    (GatewaySpec, 'max_in_flight_per_replica'): 'max_in_flight_per_replica',
    (ReplicaSpec, 'log_level'): 'log_level',
    (ReplicaSpec, 'deployment'): 'name',
    (RaftSpec, 'read_consistency'): 'read_consistency',
    (RaftSpec, 'durability'): 'durability',
}


def test_the_specs_take_user_set_defaults_from_the_schema():
    schema = by_name(DEPLOYMENT_ARGS)
    for (cls, name), arg in USER_SET.items():
        default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
        assert default == schema[arg].default, f'{cls.__name__}.{name}'
    assert by_name(FLOW_ARGS)['max_in_flight_per_replica'].default == MAX_IN_FLIGHT_PER_REPLICA
    assert GatewaySpec(name='g', stages=()).protocols == (schema['protocol'].default,)   # the doors' default
    assert SupervisionPolicy().health_timeout == HEALTH_TIMEOUT_S == schema['health_timeout'].default


def _cross_process_defaults():
    """name -> default, for the settings more than one process relies on (walked from the specs)."""
    out = {}
    for (cls, name), arg in USER_SET.items():
        if arg == name:
            out[name] = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    policy = SupervisionPolicy()
    out.update(backoff_base=policy.backoff_base, backoff_max=policy.backoff_max,
               max_in_flight=MAX_IN_FLIGHT_PER_REPLICA, wait_for_replica=REPLICA_WAIT_S, replica_wait_s=REPLICA_WAIT_S)
    return out


#: declarations the scan tolerates, each with why (file, line text fragment)
TOLERATED = {
    # the constructors spell their keywords out for editors; tests/test_args.py checks them against the schema
    ('runtime/deployment.py', '__init__'), ('runtime/flow.py', '__init__'),
}


def _default_literals(path: str, names: dict):
    """(function, name, value, line) for each literal default of a cross-process name in ``path``."""
    tree = ast.parse(open(path).read())
    found = []

    def key_of(node: ast.AST):
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            return node.slice.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'get' \
                and node.args and isinstance(node.args[0], ast.Constant):
            return node.args[0].value
        if isinstance(node, ast.Name):
            return node.id
        return None

    def same(name, value) -> bool:
        return (name in names and isinstance(value, ast.Constant) and not isinstance(value.value, bool)
                and value.value == names[name])

    def visit(node: ast.AST, func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
            a = node.args
            positional = a.posonlyargs + a.args
            for arg, default in zip(positional[len(positional) - len(a.defaults):], a.defaults):
                if same(arg.arg, default):
                    found.append((func, arg.arg, default.value, default.lineno))
            for arg, default in zip(a.kwonlyargs, a.kw_defaults):
                if default is not None and same(arg.arg, default):
                    found.append((func, arg.arg, default.value, default.lineno))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if same(node.target.id, node.value):
                found.append((func, node.target.id, node.value.value, node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'get' \
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant):
            if same(node.args[0].value, node.args[1]):
                found.append((func, node.args[0].value, node.args[1].value, node.lineno))
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            name = key_of(node.values[0])
            if same(name, node.values[-1]):
                found.append((func, name, node.values[-1].value, node.lineno))
        elif isinstance(node, ast.keyword) and same(node.arg, node.value):
            found.append((func, node.arg, node.value.value, node.value.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, '<module>')
    return found


def test_no_cross_process_default_is_declared_outside_the_specs_and_the_schema():
    names = _cross_process_defaults()
    assert {'health_timeout', 'max_in_flight_per_replica', 'restart_grace', 'read_consistency'} <= set(names)
    offenders = []
    for folder, dirs, files in os.walk(os.path.join(ROOT, 'runtime')):
        dirs[:] = [d for d in dirs if d != '__pycache__']
        for f in files:
            path = os.path.join(folder, f)
            rel = os.path.relpath(path, ROOT)
            if not f.endswith('.py') or rel in ('runtime/specs.py', 'runtime/args.py'):
                continue
            for func, name, value, line in _default_literals(path, names):
                if (rel, func) not in TOLERATED:
                    offenders.append(f'{rel}:{line} ({func}): {name} = {value!r}')
    assert not offenders, ('cross-process defaults declared outside runtime/specs.py (use its constants or the '
                           'spec\'s field default):\n' + '\n'.join(offenders))


def test_the_scan_finds_a_repeated_default():
    with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
        f.write('def f(health_timeout=2.0):\n    x = c.get("max_in_flight_per_replica") or 4\n'
                '    return c.get("durability", "fsync")\n')
    try:
        found = {(name, value) for _, name, value, _ in _default_literals(f.name, _cross_process_defaults())}
    finally:
        os.unlink(f.name)
    assert found == {('health_timeout', 2.0), ('max_in_flight_per_replica', 4), ('durability', 'fsync')}


# --------------------------------------------------------------------------- shared value types
def test_polling_policy_lives_in_the_specs_and_routing_still_offers_it():
    from runtime import routing
    assert routing.PollingPolicy is PollingPolicy
    assert PollingPolicy({'/x': 'all'}).to_config() == {'/x': 'ALL'}


def test_routing_no_longer_reaches_into_supervision_nor_config_into_routing():
    from test_architecture import import_edges, project_modules
    edges = import_edges(project_modules())
    assert ('runtime.routing', 'runtime.supervision') not in edges
    assert ('runtime.config', 'runtime.routing') not in edges
    assert {b for a, b in edges if a == 'runtime.specs'} <= {'runtime.args'}
