"""Flow: Executors chained and branched behind one gateway (real processes, real gRPC)."""
import time

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import pid_gone
from orchestra_nb import Client, Executor, Flow, RemoteError, requests
from topology_executors import Trail

APPEND = 'topology_executors:Append'


def test_two_step_flow_chains_executors_in_order():
    f = (Flow(name='chain')
         .add(name='a', uses=APPEND, uses_with={'tag': 'a'})
         .add(name='b', uses=APPEND, uses_with={'tag': 'b'}, replicas=2))
    with f:
        docs = DocList[Trail]([Trail(text=f'd{i}') for i in range(20)])
        out = f.post('/', docs, request_size=3)
        assert out.text == [f'd{i}-a-b' for i in range(20)]
        assert all(d.trail == ['a', 'b'] for d in out)
        assert [d.id for d in out] == [d.id for d in docs]
        st = f.status()
        assert [(r['node'], r['name']) for r in st['replicas']] == [('a', 'a/rep-0'), ('b', 'b/rep-0'),
                                                                   ('b', 'b/rep-1')]
        assert all(r['state'] == 'ready' for r in st['replicas']) and st['gateway']['state'] == 'ready'
        assert sum(r['requests'].get('/', 0) for r in st['replicas'] if r['node'] == 'b') == 7
        # a Client on the Flow's port sees the same thing
        assert Client(port=f.port).post('/', Trail(text='c')).text == ['c-a-b']
        assert 'b/rep-1' in f.logs()
        pids = [r['pid'] for r in st['replicas']] + [f.gateway.pid]
    assert all(pid_gone(p) for p in pids)


def test_flow_passes_endpoints_through_executors_that_do_not_serve_them():
    f = (Flow().add(name='up', uses='topology_executors:OnlyUpper')
         .add(name='tail', uses=APPEND, uses_with={'tag': 't'}))
    with f:
        assert f.post('/upper', Trail(text='x')).trail[0] == ['upper', 't']
        assert f.post('/other', Trail(text='x')).trail[0] == ['t']          # `up` passed it on
    g = Flow().add(name='up', uses='topology_executors:OnlyUpper').add(name='up2', uses='topology_executors:OnlyUpper')
    with g:
        with pytest.raises(RemoteError, match=r"no Executor of .* serves endpoint '/nope'"):
            g.post('/nope', Trail(text='x'))


def test_branching_flow_with_needs_joins_by_id():
    f = (Flow()
         .add(name='a', uses=APPEND, uses_with={'tag': 'a'})
         .add(name='b', uses=APPEND, uses_with={'tag': 'b'}, needs='gateway')
         .add(name='c', uses=APPEND, uses_with={'tag': 'c'}, needs=['a', 'b'])
         .add(name='d', uses=APPEND, uses_with={'tag': 'd'}, needs='gateway')
         .needs_all(name='end'))
    assert f.open_branches() == ['end']
    assert [e.name for e in f.entries if e.is_join] == ['end']
    with f:
        docs = DocList[Trail]([Trail(text='q0'), Trail(text='q1')])
        out = f.post('/', docs)
        assert [d.id for d in out] == [d.id for d in docs]
        # a -> c and b -> c joined in `needs` order, then c and d joined by the joiner
        assert out[0].trail == ['a', 'b', 'c', 'd']
        assert out.text == ['q0-a-c', 'q1-a-c']       # single values: the first branch wins
        names = [r['name'] for r in f.status()['replicas']]
        assert names == ['a/rep-0', 'b/rep-0', 'c/rep-0', 'd/rep-0']   # the joiner runs no process


def test_flow_with_a_sharded_executor_and_jina_style_add():
    f = (Flow().add(name='enc', uses=APPEND, uses_with={'tag': 'e'})
         .add(name='idx', uses='topology_executors:ShardedSearch', shards=2,
              polling={'/search': 'ALL', '*': 'ANY'}))
    with f:
        from topology_executors import Query
        out = f.post('/search', Query(text='q'))
        assert out[0].shard_seen == [0, 1] and len(out[0].matches) == 4


def test_flow_repr_draws_the_graph_without_network():
    f = (Flow(name='g')
         .add(name='enc', uses=APPEND, replicas=2)
         .add(name='idx', uses='topology_executors:ShardedSearch', shards=2, needs='gateway',
              polling={'/search': 'ALL', '*': 'ANY'})
         .needs_all())
    text = repr(f)
    assert text.splitlines()[0] == "<Flow 'g' stopped, 3 Executor(s)>"
    assert 'gateway -> enc  [Append, replicas=2]' in text
    assert "gateway -> idx  [ShardedSearch, shards=2, replicas=1, polling={'/search': 'ALL', '*': 'ANY'}]" in text
    assert 'enc, idx -> joiner  [join]' in text
    assert 'joiner -> gateway' in text
    html = f.graph_html()
    assert html.count('<svg') == 1 and 'enc' in html and 'idx' in html and 'joiner' in html
    assert html.count('<line') == 5                     # g->enc, g->idx, enc->j, idx->j, j->out


@pytest.mark.parametrize('build, match', [
    (lambda: Flow().add(name='a').add(name='a'), "name='a' is already used"),
    (lambda: Flow().add(name='gateway'), 'reserved'),
    (lambda: Flow().add(name='a', needs='b'), "needs='b' for 'a': no such Executor"),
    (lambda: Flow().add(name='a', replicass=2), "did you mean 'replicas'"),
    (lambda: Flow().add(name='a', replicas=0), 'replicas=0'),
    (lambda: Flow().needs_all(), 'no Executors to join'),
    (lambda: Flow().add(name='a').needs('a'), 'at least two'),
    (lambda: Flow(protocol='udp'), "allowed: 'grpc', 'http', 'websocket'"),
    (lambda: Flow(protocol=['grpc', 'http'], port=5555), 'one port per protocol'),
    (lambda: Flow().add(protocol='http'), 'pass protocol to Flow'),
    (lambda: Flow(prot=1), "Flow got an unknown argument 'prot'"),
    (lambda: Flow().add(uses=APPEND, replicas=2, port=12345), 'a fixed port needs exactly one replica'),
])
def test_bad_flow_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_empty_flow_refuses_to_start():
    with pytest.raises(ValueError, match='has no Executors'):
        Flow().start()


def test_flow_default_names_and_needs():
    f = Flow().add(uses=APPEND).add(uses=APPEND).add(name='side', uses=APPEND, needs='gateway')
    assert [(e.name, e.needs) for e in f.entries] == [('executor0', ['gateway']), ('executor1', ['executor0']),
                                                      ('side', ['gateway'])]
    assert f.open_branches() == ['executor1', 'side']
    assert f['executor1'].name == 'executor1'
    # without `uses` an Executor echoes in a process of its own (as in Jina), unless it only joins
    g = Flow().add(name='a').add(name='b', needs='gateway').add(name='j', needs=['a', 'b']).add(name='e')
    assert [e.is_join for e in g.entries] == [False, False, True, False]
    assert g['a'].uses == 'runtime.executors.echo:Echo'
    with pytest.raises(KeyError, match='known: executor0, executor1, side'):
        f['nope']


# -- Jina's Flow-wide arguments and floating Executors -------------------------------------------

class Suffix(Executor):
    def __init__(self, suffix='', **kwargs):
        self.suffix = suffix

    @requests
    def add(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = (d.text or '') + self.suffix
        return docs


class Recorder(Executor):
    """Appends each doc's text to a file (a floating Executor's output goes nowhere)."""

    def __init__(self, path='', **kwargs):
        self.path = path

    @requests
    def record(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        with open(self.path, 'a') as f:
            f.write(''.join(f'{d.text}\n' for d in docs))
        for d in docs:
            d.text = 'SHOULD NOT COME BACK'
        return docs


def test_flow_wide_arguments_are_the_defaults_of_add():
    f = (Flow(replicas=2, env={'A': '1'}, polling='ALL', shards=1)
         .add(name='a').add(name='b', replicas=1, env={'B': '2'}))
    a, b = f['a'], f['b']
    assert (a.replicas, b.replicas) == (2, 1)
    assert a.env == {'A': '1'} and b.env == {'A': '1', 'B': '2'}   # env is merged
    with pytest.raises(ValueError, match='replicas=0'):
        Flow(replicas=0)
    with pytest.raises(ValueError, match="gpus= is a Jina argument not supported here"):
        Flow(gpus='all')


def test_floating_executor_runs_but_its_output_goes_nowhere(tmp_path):
    log = tmp_path / 'seen.txt'
    f = (Flow().add(name='a', uses=Suffix, uses_with={'suffix': 'a'})
         .add(name='rec', uses=Recorder, uses_with={'path': str(log)}, floating=True)
         .add(name='b', uses=Suffix, uses_with={'suffix': 'b'}))
    assert f.entries[2].needs == ['a']   # chained after the Executor before the floating one
    with f:
        assert f.post('/x', TextDoc(text='>')).text == ['>ab']
        deadline = time.monotonic() + 20
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text() == '>a\n'
