"""Shards, polling and reduce, end to end: real replica processes behind a real gateway; the
balancing decisions (replica, shards, retry) in process."""
import asyncio
import itertools

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from orchestra_nb import Deployment, RemoteError
from runtime.routing import PollingPolicy, ReplicaSet, choose_replica, choose_shards, choose_writer, retry_allowed
from topology_executors import Query, calls


# -- the table of Jina's scale-out page: Executor body runs for one request to '/' ----------------

@pytest.mark.parametrize('topology, polling, expected_calls', [
    ({'replicas': 2}, 'ALL', 1),
    ({'replicas': 2}, 'ANY', 1),
    ({'shards': 2}, 'ALL', 2),
    ({'shards': 2}, 'ANY', 1),
])
def test_polling_table_of_the_jina_docs(tmp_path, topology, polling, expected_calls):
    log = tmp_path / 'calls.txt'
    dep = Deployment(uses='topology_executors:Counting', uses_with={'path': str(log)},
                     polling=polling, **topology).needs_all()
    with dep:
        r = dep.post('/', TextDoc(text='hello'))
        assert r.text == ['hello']
    lines = calls(log)
    assert len(lines) == expected_calls, lines
    assert all(line.endswith(":['hello']") for line in lines)
    if expected_calls == 2:
        assert sorted(line.split(':')[0] for line in lines) == ['0', '1']  # one call per shard


# -- polling precedence: explicit key, then '*', then a plain string, then the defaults --------------

@pytest.mark.parametrize('polling, expected', [
    ({'/custom': 'ALL', '/search': 'ANY', '*': 'ANY'}, {'/custom': 3, '/search': 1, '/index': 1, '/x': 1}),
    ({'/a': 'ANY', '*': 'ALL'}, {'/a': 1, '/search': 3, '/index': 3, '/x': 3}),
    ('ALL', {'/index': 3, '/search': 3, '/x': 3}),     # unlike Jina: a plain 'ALL' covers /index too
    (None, {'/search': 3, '/index': 1, '/x': 1}),      # the defaults
], ids=['explicit-key', 'star', 'plain-string', 'defaults'])
def test_polling_precedence_with_three_shards(tmp_path, polling, expected):
    log = tmp_path / 'calls.txt'
    with Deployment(name='sh', uses='topology_executors:Counting', uses_with={'path': str(log)},
                    shards=3, polling=polling) as dep:
        for endpoint, n in expected.items():
            before = len(calls(log))
            assert dep.post(endpoint, TextDoc(text='q')).text == ['q']
            assert len(calls(log)) - before == n, f'{endpoint}: {calls(log)[before:]}'


@pytest.mark.parametrize('polling, endpoint, mode', [
    ({'/custom': 'ALL', '*': 'ANY'}, '/custom', 'ALL'),
    ({'/custom': 'ALL', '*': 'ANY'}, '/search', 'ANY'),     # '*' beats the /search default
    ({'/custom': 'ALL'}, '/search', 'ALL'),                 # no '*': the default for /search
    ({'/custom': 'ALL'}, '/index', 'ANY'),
    ('ALL', '/index', 'ALL'),
    ('any', '/search', 'ANY'),                              # a plain string beats the defaults
    (None, '/search', 'ALL'),
    (None, '/anything', 'ANY'),
    ({'*': 'all'}, '/index', 'ALL'),
])
def test_polling_policy_precedence(polling, endpoint, mode):
    assert PollingPolicy(polling).mode(endpoint) == mode


@pytest.mark.parametrize('polling, match', [
    ('SOME', "'SOME'.*'ANY', 'ALL'"),
    ({'/x': 'MAYBE'}, r"polling\['/x'\]='MAYBE'"),
    (3, 'polling must be'),
    ({1: 'ALL'}, 'keys are endpoint strings'),
])
def test_bad_polling_names_the_value(polling, match):
    with pytest.raises(ValueError, match=match):
        PollingPolicy(polling)


# -- reduce ---------------------------------------------------------------------------------------

def test_reduce_by_id_with_nested_matches_across_three_shards():
    queries = DocList[Query]([Query(text='q0'), Query(text='q1')])
    with Deployment(name='idx', uses='topology_executors:ShardedSearch', shards=3) as dep:
        out = dep.post('/search', queries)   # /search polls ALL by default
    assert [d.id for d in out] == [d.id for d in queries]           # one doc per id, input order
    for q in out:
        assert q.matches.text == ['s0-m0', 's0-m1', 's1-m0', 's1-m1', 's2-m0', 's2-m1']
        assert q.matches.shard == [0, 0, 1, 1, 2, 2]                # nested DocLists: shard order
        assert q.shard_seen == [0, 1, 2]                            # lists: concatenated
        assert q.scores == {'shard0': 0.0, 'shard1': 1.0, 'shard2': 2.0}   # dicts: merged
        assert q.owner == 'shard0'                                  # single values: lowest shard wins


def test_no_reduce_returns_every_shard_result_unmerged():
    queries = DocList[Query]([Query(text='q0'), Query(text='q1')])
    with Deployment(name='idx', uses='topology_executors:ShardedSearch', shards=3, no_reduce=True) as dep:
        out = dep.post('/search', queries)
        assert dep.status()['gateway']['nodes']['idx']['no_reduce'] is True
    assert len(out) == 6
    assert out.owner == ['shard0', 'shard0', 'shard1', 'shard1', 'shard2', 'shard2']
    assert [len(q.matches) for q in out] == [2] * 6


def test_sharded_index_any_spreads_docs_and_all_gathers_them():
    with Deployment(name='store', uses='topology_executors:ShardedStore', shards=2) as dep:
        docs = DocList[TextDoc]([TextDoc(text=f'd{i}') for i in range(6)])
        dep.post('/index', docs, request_size=1)                    # ANY: one shard per request
        found = dep.post('/search', TextDoc(text='q'))              # ALL: every shard, reduced by id
    assert sorted(d.id for d in found) == sorted(d.id for d in docs)
    shards = {t.split('@')[1] for t in found.text}
    assert shards == {'0', '1'}, found.text                         # both shards hold some docs


# -- a shard that is down while polling ALL ---------------------------------------------------------

def test_shard_down_fails_naming_it_unless_partial_results_are_allowed(monkeypatch):
    monkeypatch.setenv('ORCHESTRA_REPLICA_WAIT_S', '0.5')   # how long the gateway waits for a restart
    with Deployment(name='idx', uses='topology_executors:ShardedSearch', shards=2) as dep:
        monkeypatch.setattr(dep._runner, 'restart', lambda name: None)  # keep the shard down
        victim = [r for r in dep.stages[0].replicas if r.shard == 1][0]
        victim.process.kill()
        with pytest.raises(RemoteError, match=r'shard idx/shard-1 is down while polling ALL') as info:
            dep.post('/search', Query(text='q'))
        assert 'allow_partial=True' in str(info.value)
        out = dep.post('/search', Query(text='q'), allow_partial=True)
        assert out.owner == ['shard0'] and out[0].shard_seen == [0]


def test_allow_partial_deployment_answers_from_live_shards(monkeypatch):
    monkeypatch.setenv('ORCHESTRA_REPLICA_WAIT_S', '0.5')
    with Deployment(name='idx', uses='topology_executors:ShardedSearch', shards=2, allow_partial=True) as dep:
        monkeypatch.setattr(dep._runner, 'restart', lambda name: None)
        [r for r in dep.stages[0].replicas if r.shard == 0][0].process.kill()
        out = dep.post('/search', Query(text='q'))
        assert out.owner == ['shard1'] and [m.shard for m in out[0].matches] == [1, 1]


def test_replica_and_shard_names():
    with Deployment(name='grid', uses='topology_executors:ShardedSearch', shards=2, replicas=2) as dep:
        names = [r['name'] for r in dep.status()['replicas']]
    assert names == ['grid/shard-0/rep-0', 'grid/shard-0/rep-1', 'grid/shard-1/rep-0', 'grid/shard-1/rep-1']


# -- the decisions, in process ------------------------------------------------------------------------

def test_choose_replica_idle_first_bounded_ties_round_robin():
    turns = itertools.count()
    ok = [True, True, True]
    assert choose_replica([1, 0, 2], ok, 4, turns) == 1                      # the fewest in flight
    assert [choose_replica([0, 0, 0], ok, 4, turns) for _ in range(6)] == [0, 1, 2, 0, 1, 2]   # ties: round robin
    assert choose_replica([0, 1, 1], [False, True, True], 4, turns) in (1, 2)  # unhealthy/excluded: skipped
    assert choose_replica([4, 4], [True, True], 4, turns) is None           # all full: the request waits (FIFO)
    assert choose_replica([4, 3], [True, True], 4, turns) == 1
    assert choose_replica([], [], 4, turns) is None


def test_choose_writer_the_leader_with_the_shards_window_else_idle_first():
    turns = itertools.count()
    ok = [True, True, True]
    assert choose_writer([9, 0, 0], ok, [True, False, False], 12, 4, turns) == 0     # the leader, though busiest
    assert choose_writer([11, 0, 0], ok, [True, False, False], 12, 4, turns) == 0    # room in its window
    assert choose_writer([12, 0, 0], ok, [True, False, False], 12, 4, turns) is None  # full: the write waits for it
    assert choose_writer([0, 2, 1], ok, [False, True, False], 3, 1, turns) == 1
    assert choose_writer([0, 3, 1], ok, [False, True, False], 3, 1, turns) is None
    leader_out = [False, True, True]
    assert choose_writer([1, 0, 2], leader_out, [True, False, False], 12, 4, turns) == 1   # leader out: idle first
    assert choose_writer([1, 0, 2], ok, [False] * 3, 12, 4, turns) == 1              # no leader known: idle first
    assert choose_writer([4, 4, 4], ok, [False] * 3, 12, 4, turns) is None           # ... with its bound per replica


def test_writes_wait_for_the_leader_without_holding_up_reads():
    """Two FIFOs: a write waiting for the leader's window does not stop a read a follower can take."""
    async def scenario():
        rs = ReplicaSet(['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'], max_in_flight=1, stateful=True)
        rs._health.cancel()   # no probes of these addresses: the roles are set here
        rs.endpoints = {'/index': {'write': True}, '/search': {'write': False}}
        leader = rs.replicas[1]
        leader.leads = True
        held = [await rs.acquire(write=True) for _ in range(3)]     # the leader's window: 1 x 3 replicas
        assert held == [leader] * 3
        waiting_write = asyncio.ensure_future(rs.acquire(write=True))
        await asyncio.sleep(0)
        assert not waiting_write.done() and rs.queue_depth == 1
        read = await asyncio.wait_for(rs.acquire(), 1)               # a follower takes the read at once
        assert read is not leader
        rs.release(held.pop())
        assert await asyncio.wait_for(waiting_write, 1) is leader    # the leader's room goes to the write
        leader.healthy = False                                        # leader down: writes go idle first
        assert await rs.acquire(write=True) not in (leader, read)
        await rs.close()
    asyncio.run(scenario())


def test_choose_shards_any_all_and_one_shard():
    turns = itertools.count()
    assert choose_shards('ALL', [3, 0, 1], turns) == [0, 1, 2]
    assert choose_shards('ANY', [3, 0, 1], turns) == [1]
    assert [choose_shards('ANY', [0, 0], turns)[0] for _ in range(4)] == [0, 1, 0, 1]
    assert choose_shards('ALL', [7], turns) == [0] and choose_shards('ANY', [7], turns) == [0]


@pytest.mark.parametrize('cause, stateful, write, allowed', [
    ('connection', False, None, True),
    ('connection', True, True, True),      # a stateful replica applies a request id once
    ('hung', False, None, True),
    ('timeout', False, True, True),
    ('hung', True, True, False),           # a stateful @write is never sent twice
    ('timeout', True, None, False),        # not known yet whether it is a @write
    ('timeout', True, False, True),        # a read of a stateful Deployment
])
def test_retry_allowed(cause, stateful, write, allowed):
    assert retry_allowed(cause, stateful, write) is allowed


def test_retry_allowed_refuses_an_unknown_cause():
    with pytest.raises(ValueError, match="cause='boom'; allowed: connection, hung, timeout"):
        retry_allowed('boom', False, None)
