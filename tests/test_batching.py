"""Dynamic batching: concurrent requests in fewer Executor calls; results, order and errors per request."""
import asyncio

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from orchestra_nb import Client, Deployment, Executor, dynamic_batching, requests, write
from runtime import protocol
from runtime.batching import batching_bound, in_flight_for, with_dynamic_batching
from runtime.codec import decode_docs, encode_docs
from runtime.executor import EndpointTable, call_endpoint, normalise_result
from runtime.specs import ReplicaSpec
from runtime.worker import ReplicaServer


class Tagger(Executor):
    """Records the size of every call; fails a whole call that holds a doc with text 'bad'."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    @requests(on='/tag')
    @dynamic_batching(max_batch_size=8, max_wait_ms=50)
    def tag(self, docs: DocList[TextDoc], parameters: dict, **kwargs) -> DocList[TextDoc]:
        self.calls.append(len(docs))
        if any(d.text == 'bad' for d in docs):
            raise ValueError('a bad doc in this call')
        for d in docs:
            d.text = f"{d.text}{parameters.get('suffix', '!')}"

    @requests(on='/drop')
    @dynamic_batching(max_wait_ms=50)
    def drop(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        self.calls.append(len(docs))
        return docs[:1]

    @requests(on='/stats')
    @dynamic_batching(max_wait_ms=50)
    def stats(self, docs: DocList[TextDoc], **kwargs):
        self.calls.append(len(docs))
        return {'seen': len(docs)}

    @requests(on='/store')
    @write
    @dynamic_batching(max_wait_ms=50)
    def store(self, docs: DocList[TextDoc], **kwargs):
        self.calls.append(len(docs))
        if any(d.text == 'bad' for d in docs):
            raise ValueError('cannot store a bad doc')

    @requests(on='/plain')
    def plain(self, docs: DocList[TextDoc], **kwargs):
        self.calls.append(len(docs))


def frame(endpoint, texts, **parameters):
    docs = DocList[TextDoc]([TextDoc(text=t) for t in texts])
    return protocol.pack({'endpoint': endpoint, 'parameters': parameters}, encode_docs(docs))


def serve_concurrently(frames, cls=Tagger):
    """Send every frame to one in-process replica at once; -> (replies, calls per Executor call)."""
    server = ReplicaServer(ReplicaSpec(name='batch', uses=cls, deployment='batch'))

    async def main():
        return await asyncio.gather(*(server.call(f, None) for f in frames))

    try:
        replies = asyncio.run(main())
    finally:
        server.pool.shutdown()
    out = []
    for r in replies:
        h, body = protocol.unpack(r)
        out.append((h, decode_docs(bytes(body), TextDoc) if h.get('ok') else None))
    return out, server.executor.calls, server


def test_concurrent_requests_become_one_call_with_exact_per_request_results():
    frames = [frame('/tag', [f'r{i}d{j}' for j in range(1 + i % 3)]) for i in range(6)]
    replies, calls, server = serve_concurrently(frames)
    assert calls == [sum(1 + i % 3 for i in range(6))]          # one Executor call for all six requests
    for i, (h, docs) in enumerate(replies):
        assert h['ok']
        assert docs.text == [f'r{i}d{j}!' for j in range(1 + i % 3)]   # its own docs, in order
    assert server.describe()['batching']['/tag']['batches'] == 1


def test_max_batch_size_bounds_each_call():
    replies, calls, _ = serve_concurrently([frame('/tag', [str(i)]) for i in range(20)])
    assert calls == [8, 8, 4]
    assert [d.text for _, d in replies] == [[f'{i}!'] for i in range(20)]


def test_different_parameters_are_never_mixed():
    frames = [frame('/tag', ['a'], suffix='?'), frame('/tag', ['b']), frame('/tag', ['c'], suffix='?')]
    replies, calls, _ = serve_concurrently(frames)
    assert sorted(calls) == [1, 2]
    assert [d.text for _, d in replies] == [['a?'], ['b!'], ['c?']]


def test_a_failing_request_fails_alone():
    frames = [frame('/tag', ['a']), frame('/tag', ['bad']), frame('/tag', ['c', 'd'])]
    replies, calls, _ = serve_concurrently(frames)
    assert calls == [4, 1, 1, 2]              # the batch failed, then each request ran on its own
    (h0, d0), (h1, _), (h2, d2) = replies
    assert h0['ok'] and d0.text == ['a!']
    assert not h1['ok'] and h1['error']['type'] == 'ValueError' and 'a bad doc' in h1['error']['message']
    assert h2['ok'] and d2.text == ['c!', 'd!']


def test_undecodable_request_fails_alone():
    bad = protocol.pack({'endpoint': '/tag', 'parameters': {}}, b'ONB\x01garbage')
    replies, calls, _ = serve_concurrently([frame('/tag', ['a']), bad, frame('/tag', ['b'])])
    assert calls == [2]
    assert replies[0][1].text == ['a!'] and replies[2][1].text == ['b!']
    assert not replies[1][0]['ok'] and 'malformed' in replies[1][0]['error']['message']


def test_write_endpoint_is_never_rerun():
    replies, calls, _ = serve_concurrently([frame('/store', ['a']), frame('/store', ['bad'])])
    assert calls == [2]
    assert all(not h['ok'] and 'cannot store' in h['error']['message'] for h, _ in replies)


def test_wrong_result_length_is_a_clear_error():
    replies, calls, _ = serve_concurrently([frame('/drop', ['a', 'b']), frame('/drop', ['c'])])
    assert calls[0] == 3
    assert all(not h['ok'] for h, _ in replies)
    assert 'one doc per input doc' in replies[0][0]['error']['message']


def test_dict_results_reach_every_request():
    replies, calls, _ = serve_concurrently([frame('/stats', ['a']), frame('/stats', ['b', 'c'])])
    assert calls == [3]
    assert [h['results'] for h, _ in replies] == [{'seen': 3}, {'seen': 3}]
    assert [d.text for _, d in replies] == [['a'], ['b', 'c']]


def test_endpoints_without_batching_are_untouched():
    replies, calls, server = serve_concurrently([frame('/plain', ['a']), frame('/plain', ['b'])])
    assert calls == [1, 1] and '/plain' not in server.batchers


def test_decorator_arguments_and_jina_aliases():
    with pytest.raises(ValueError, match='max_batch_size'):
        dynamic_batching(max_batch_size=0)
    with pytest.raises(ValueError, match='max_wait_ms'):
        dynamic_batching(max_wait_ms=-1)

    @dynamic_batching(preferred_batch_size=5, timeout=7)
    def f(docs, **kwargs):
        pass
    assert f._orchestra_dynamic_batching == {'max_batch_size': 5, 'max_wait_ms': 7.0}
    assert batching_bound(Tagger) == 32 and in_flight_for(Tagger, 4) == 32 and in_flight_for(Tagger, 64) is None


def test_with_dynamic_batching_adds_batching_to_an_existing_class():
    class Plain(Executor):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.calls = []

        @requests(on='/x')
        def x(self, docs: DocList[TextDoc], **kwargs):
            self.calls.append(len(docs))

    Batched = with_dynamic_batching(Plain, '/x', max_batch_size=4, max_wait_ms=50)
    assert issubclass(Batched, Plain) and batching_bound(Batched) == 4 and batching_bound(Plain) == 0
    _, calls, _ = serve_concurrently([frame('/x', [str(i)]) for i in range(6)], cls=Batched)
    assert calls == [4, 2]
    with pytest.raises(ValueError, match='/nope'):
        with_dynamic_batching(Plain, '/nope')


class WideTagger(Executor):
    """Module level, so replicas import it by name (``test_batching:WideTagger``)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    @requests(on='/tag')
    @dynamic_batching(max_batch_size=8, max_wait_ms=500)
    def tag(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        self.calls.append(len(docs))
        for d in docs:
            d.text = d.text.upper()

    @requests(on='/calls')
    def get_calls(self, **kwargs):
        return {'calls': self.calls}


def test_deployment_batches_more_than_the_default_in_flight_bound():
    docs = DocList[TextDoc]([TextDoc(text=f'doc {i}') for i in range(24)])
    with Deployment(uses='test_batching:WideTagger') as dep:
        out = dep.post('/tag', docs, request_size=1, prefetch=24)
        assert out.text == [f'DOC {i}' for i in range(24)] and out.id == docs.id
        c = Client(port=dep.port)
        c.post('/calls')
        calls = c.last_results['calls']
        c.close()
        assert sum(calls) == 24 and len(calls) < 24 and max(calls) <= 8
        assert max(calls) > 4, calls          # more than the gateway's default 4 in flight
        assert dep.status()['replicas'][0]['batching']['/tag']['requests'] == 24


class Conventions(Executor):
    """Endpoints that take some of Jina's keywords, all of them, or return a coroutine."""

    @requests(on='/some')
    def some(self, docs, parameters):
        return {'n': len(docs), 'parameters': parameters}

    @requests(on='/all')
    def all_(self, docs, **kwargs):
        return {'keywords': sorted(kwargs)}

    @requests(on='/async')
    async def later(self, docs, **kwargs):
        await asyncio.sleep(0)
        return docs[:1]


def test_call_endpoint_passes_jinas_keywords_and_runs_coroutines():
    table = EndpointTable(Conventions())
    docs = DocList[TextDoc]([TextDoc(text='a'), TextDoc(text='b')])
    assert call_endpoint(table.lookup('/some'), docs, {'k': 1}) == {'n': 2, 'parameters': {'k': 1}}
    assert call_endpoint(table.lookup('/all'), docs, {}) == {
        'keywords': ['docs_map', 'docs_matrix', 'parameters', 'tracing_context']}
    assert call_endpoint(table.lookup('/async'), docs, {}).text == ['a']


def test_normalise_result():
    docs = DocList[TextDoc]([TextDoc(text='a')])
    results, out = normalise_result(None, docs, '/x')
    assert results is None and out is docs
    results, out = normalise_result({'n': 1}, docs, '/x')
    assert results == {'n': 1} and out is docs
    other = DocList[TextDoc]([TextDoc(text='b')])
    results, out = normalise_result(other, docs, '/x')
    assert results is None and out is other
    one = normalise_result(TextDoc(text='c'), docs, '/x')[1]
    assert isinstance(one, DocList) and one.text == ['c']
    listed = normalise_result([TextDoc(text='d')], docs, '/x')[1]
    assert isinstance(listed, DocList) and [d.text for d in listed] == ['d']
    with pytest.raises(TypeError, match=r"endpoint '/x' returned int; return a DocList, a dict, or None"):
        normalise_result(3, docs, '/x')
