"""ExactNNSearch: index, search (cosine/dot, limit), count, snapshot/restore; behind a Deployment."""
import numpy as np
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from orchestra_nb import Client, Deployment, RemoteError
from orchestra_nb.executors import ExactNNSearch, QueryDoc
from runtime.executor import RuntimeArgs, build_executor


def make(n, dim=8, seed=0, prefix='d'):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    return DocList[TextDoc]([TextDoc(id=f'{prefix}{i}', text=f'text {i}', embedding=emb[i]) for i in range(n)])


def executor(tmp_path=None, **uses_with):
    workspace = str(tmp_path) if tmp_path else None
    return build_executor(ExactNNSearch, uses_with, RuntimeArgs(name='nn', workspace=workspace))


def brute_force(docs, query, metric='cosine'):
    m = np.stack([d.embedding for d in docs])
    s = m @ query
    if metric == 'cosine':
        s = s / (np.linalg.norm(m, axis=1) * np.linalg.norm(query))
    return [docs[i].id for i in np.argsort(-s, kind='stable')]


def test_index_grows_geometrically_and_count():
    ex = executor(initial_capacity=4)
    docs = make(1000)
    capacities = set()
    for i in range(0, 1000, 7):
        ex.index(docs[i:i + 7])
        capacities.add(ex._matrix.shape[0])
    assert ex.count() == {'count': 1000} and len(ex) == 1000
    assert capacities == {4 * 2 ** k for k in range(1, 9)}          # doubled, never re-stacked per call
    np.testing.assert_array_equal(ex.embeddings, np.stack([d.embedding for d in docs]))


@pytest.mark.parametrize('metric', ['cosine', 'dot'])
def test_search_matches_brute_force_best_first(metric):
    ex = executor(metric=metric)
    docs = make(300)
    ex.index(docs)
    queries = make(5, seed=1, prefix='q')
    out = ex.search(queries, parameters={'limit': 10})
    assert isinstance(out[0], QueryDoc)
    for q, res in zip(queries, out):
        assert res.id == q.id and res.text == q.text
        assert res.matches.id == brute_force(docs, q.embedding, metric)[:10]
        assert len(res.scores) == 10 and res.scores == sorted(res.scores, reverse=True)
        assert res.matches[0].text is not None and res.matches[0].embedding is None


def test_top_match_of_an_indexed_doc_is_that_doc_with_cosine_one():
    ex = executor()
    docs = make(500)
    ex.index(docs)
    out = ex.search(docs[100:110])
    for d, res in zip(docs[100:110], out):
        assert res.matches[0].id == d.id
        assert res.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert len(res.matches) == 100                      # the default limit


def test_limit_parameter_and_small_index():
    ex = executor()
    ex.index(make(30))
    q = make(2, seed=3, prefix='q')
    assert [len(r.matches) for r in ex.search(q, parameters={'limit': 3})] == [3, 3]
    assert [len(r.matches) for r in ex.search(q, parameters={'limit': 1000})] == [30, 30]   # fewer docs than limit
    with_emb = ex.search(q, parameters={'limit': 2, 'return_embeddings': True})
    assert with_emb[0].matches[0].embedding.shape == (8,)
    with pytest.raises(ValueError, match='limit'):
        ex.search(q, parameters={'limit': 0})


def test_empty_index_and_bad_input_errors():
    ex = executor()
    assert ex.search(make(2))[0].matches == []
    with pytest.raises(ValueError, match='no embedding'):
        ex.index(DocList[TextDoc]([TextDoc(text='no vector')]))
    ex.index(make(3, dim=8))
    with pytest.raises(ValueError, match='8'):
        ex.index(make(3, dim=4))
    with pytest.raises(ValueError, match='metric'):
        executor(metric='l2')


def test_snapshot_restore_roundtrip(tmp_path):
    ex = executor(tmp_path)
    docs = make(257)
    docs[3].text = None
    ex.index(docs)
    path = tmp_path / 'snap.npz'
    ex.snapshot(str(path))
    other = executor(tmp_path)
    other.restore(str(path))
    assert len(other) == 257 and other._ids == ex._ids and other._texts[3] is None
    np.testing.assert_array_equal(other.embeddings, ex.embeddings)
    q = make(3, seed=9, prefix='q')
    assert [r.matches.id for r in other.search(q)] == [r.matches.id for r in ex.search(q)]
    other.index(make(5, seed=2, prefix='new'))             # keeps growing after a restore
    assert len(other) == 262
    assert ex.save() and executor(tmp_path).load()         # in the replica's workspace
    with pytest.raises(ValueError, match='not an ExactNNSearch snapshot'):
        (tmp_path / 'bad.npz').write_bytes(b'nonsense')
        other.restore(str(tmp_path / 'bad.npz'))


def test_behind_a_deployment_top_match_limit_and_count():
    docs = make(400, dim=16)
    with Deployment(uses='orchestra_nb.executors:ExactNNSearch') as dep:
        dep.post('/index', docs, request_size=100)
        out = dep.post('/search', docs[:4], request_size=1, parameters={'limit': 7}, return_type=QueryDoc)
        assert [r.matches[0].id for r in out] == docs[:4].id
        assert all(len(r.matches) == 7 and len(r.scores) == 7 for r in out)
        c = Client(port=dep.port)
        c.post('/count')
        assert c.last_results == {'count': 400}
        with pytest.raises(RemoteError, match='limit'):
            dep.post('/search', docs[:1], parameters={'limit': -1})
        c.close()


@pytest.mark.parametrize('n, k, rows', [(100_000, 100, 4), (1000, 100, 3), (50, 100, 2), (5000, 1, 4), (10, 3, 2)])
def test_top_k_is_exact(n, k, rows):
    from runtime.executors.exact_nn import top_k
    s = np.random.default_rng(n).standard_normal((rows, n)).astype(np.float32)
    idx, scores = top_k(s, k)
    expected = np.argsort(-s, axis=1, kind='stable')[:, :min(k, n)]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(s, expected, axis=1))


def test_top_k_with_ties_returns_k_distinct():
    from runtime.executors.exact_nn import top_k
    s = np.ones((2, 100_000), np.float32)
    s[0, 5] = 2.0
    idx, _ = top_k(s, 100)
    assert idx[0, 0] == 5 and all(len(set(row)) == 100 for row in idx)
