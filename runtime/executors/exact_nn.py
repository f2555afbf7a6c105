"""ExactNNSearch: brute-force nearest neighbours over a contiguous float32 matrix.

The Executor of Jina's scale-out page (there built on docarray's
``InMemoryExactNNIndex``), written for speed::

    from orchestra_nb import Deployment
    from orchestra_nb.executors import ExactNNSearch, QueryDoc

    with Deployment(uses=ExactNNSearch, replicas=3, stateful=True, workspace='./raft') as dep:
        dep.post('/index', docs, request_size=100)              # docs: DocList[TextDoc] with embeddings
        res = dep.post('/search', queries, parameters={'limit': 10}, return_type=DocList[QueryDoc])
        res[0].matches, res[0].scores                           # best first

Endpoints:

- ``/index`` (``@write``): appends the docs' embeddings to one float32 matrix that grows
  geometrically (amortised O(1) per doc, never re-stacked per call), plus their ids and texts.
- ``/search``: every query of a request in one matrix product; the best ``limit``
  (default 100, ``parameters={'limit': k}``) by ``argpartition`` then a sort of those k.
  Returns :class:`QueryDoc` s: ``matches`` (id and text of the indexed docs; embeddings too
  with ``parameters={'return_embeddings': True}``) and ``scores`` (same order, higher is
  closer), as docarray's ``find`` returns ``(documents, scores)``.
- ``/count``: ``{'count': n}`` in the reply's results (``Client.last_results``).

``metric`` is ``'cosine'`` (default) or ``'dot'``. State is saved by :meth:`snapshot`
as ``.npy`` arrays (no pickle) and loaded by :meth:`restore`.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any, Dict, List, Optional

import numpy as np
import pydantic
from docarray import DocList
from docarray.documents import TextDoc

from runtime.executor import Executor, requests, write

METRICS = ('cosine', 'dot')
DEFAULT_LIMIT = 100


class QueryDoc(TextDoc):
    """A query and its results: ``matches`` best first, ``scores[i]`` belongs to ``matches[i]``."""
    matches: DocList[TextDoc] = DocList[TextDoc]()
    scores: List[float] = []


def _fast_constructor(cls: type):
    """``make(values, fields_set)`` -> a ``cls`` instance without validation, ~50x faster than
    ``cls.model_construct``; ``values`` must hold every field. Falls back to ``model_construct``
    if this pydantic lays out models differently."""
    names = list(cls.model_fields)

    def slow(values: Dict[str, Any], fields_set) -> Any:
        return cls.model_construct(_fields_set=set(fields_set), **values)

    try:
        base = pydantic.BaseModel.__dict__
        set_dict, set_fs = base['__dict__'].__set__, base['__pydantic_fields_set__'].__set__
        set_extra, set_private = base['__pydantic_extra__'].__set__, base['__pydantic_private__'].__set__
        new = object.__new__

        def fast(values: Dict[str, Any], fields_set) -> Any:
            o = new(cls)
            set_dict(o, values)
            set_fs(o, set(fields_set))
            set_extra(o, None)
            set_private(o, None)
            return o

        probe = {n: None for n in names}
        probe.update(id='probe', text='probe')
        if fast(dict(probe), ('id', 'text')) != slow(dict(probe), ('id', 'text')):
            return slow
        return fast
    except Exception:  # pragma: no cover - a pydantic without these slots
        return slow


_make_text = _fast_constructor(TextDoc)
_make_query = _fast_constructor(QueryDoc)
_MATCH_SET = ('id', 'text')
_QUERY_SET = ('id', 'text', 'embedding', 'matches', 'scores')


def top_k(s: np.ndarray, k: int):
    """Exact top ``k`` of every row of ``s`` -> ``(indices, scores)``, best first.

    ``argpartition`` over a whole row of 100k scores costs ~0.4 ms. Cheaper and still exact:
    a threshold from a strided sample of the row (its ``~3k/m``-th largest, ``m`` the stride)
    keeps only the scores at or above it (~3k candidates); when at least ``k`` pass, the top
    ``k`` are among them, else that row falls back to ``argpartition``. Then a sort of the
    candidates.
    """
    rows, n = s.shape
    k = min(k, n)
    if k == 0:
        return np.empty((rows, 0), dtype=np.int64), np.empty((rows, 0), dtype=s.dtype)
    idx = np.empty((rows, k), dtype=np.int64)
    stride = n // (20 * k)
    if stride >= 4:
        sample = s[:, ::stride]
        r = min(sample.shape[1], 3 * k // stride + 1)
        thresholds = np.partition(sample, sample.shape[1] - r, axis=1)[:, sample.shape[1] - r]
        for i in range(rows):
            cand = np.flatnonzero(s[i] >= thresholds[i])
            if len(cand) < k:
                cand = np.sort(np.argpartition(s[i], n - k)[n - k:])
            order = np.argsort(-s[i, cand], kind='stable')[:k]
            idx[i] = cand[order]
    else:
        part = np.argpartition(s, n - k, axis=1)[:, n - k:] if k < n else np.broadcast_to(np.arange(n), s.shape)
        for i in range(rows):
            cand = np.sort(part[i])
            idx[i] = cand[np.argsort(-s[i, cand], kind='stable')]
    return idx, np.take_along_axis(s, idx, axis=1)


class ExactNNSearch(Executor):
    """Exact nearest-neighbour search; see the module docstring.

    :param metric: ``'cosine'`` (default) or ``'dot'``.
    :param dim: embedding size; ``None``: taken from the first indexed doc.
    :param initial_capacity: rows allocated before the first growth.
    """

    def __init__(self, metric: str = 'cosine', dim: Optional[int] = None,
                 initial_capacity: int = 1024, **kwargs):
        super().__init__(**kwargs)
        if metric not in METRICS:
            raise ValueError(f'metric={metric!r}: allowed: {", ".join(map(repr, METRICS))}')
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f'dim={dim!r}: must be a positive integer or None')
        self.metric = metric
        self.dim = dim
        self._capacity0 = max(1, int(initial_capacity))
        self._matrix = np.empty((0, dim or 0), dtype=np.float32)
        self._inv_norms = np.empty(0, dtype=np.float32)
        self._n = 0
        self._ids: List[str] = []
        self._texts: List[Optional[str]] = []

    # -- state --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def embeddings(self) -> np.ndarray:
        """The indexed embeddings, ``(n, dim)`` float32 (a view, do not modify)."""
        return self._matrix[:self._n]

    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` more rows, doubling the capacity as needed."""
        need = self._n + extra
        cap = self._matrix.shape[0]
        if need <= cap:
            return
        new_cap = max(self._capacity0, cap)
        while new_cap < need:
            new_cap *= 2
        grown = np.empty((new_cap, self.dim), dtype=np.float32)
        grown[:self._n] = self._matrix[:self._n]
        inv = np.empty(new_cap, dtype=np.float32)
        inv[:self._n] = self._inv_norms[:self._n]
        self._matrix, self._inv_norms = grown, inv

    def _stack(self, docs, what: str) -> np.ndarray:
        """The docs' embeddings as one ``(len(docs), dim)`` float32 block."""
        rows = []
        for i, d in enumerate(docs):
            e = getattr(d, 'embedding', None)
            if e is None:
                raise ValueError(f'{what}: doc {i} (id {d.id!r}) has no embedding; '
                                 'ExactNNSearch needs docs with .embedding set')
            rows.append(np.asarray(e, dtype=np.float32).reshape(-1))
        if not rows:
            return np.empty((0, self.dim or 0), dtype=np.float32)
        sizes = {r.shape[0] for r in rows}
        if len(sizes) > 1:
            raise ValueError(f'{what}: embeddings of different sizes {sorted(sizes)} in one request')
        (size,) = sizes
        if self.dim is not None and size != self.dim:
            raise ValueError(f'{what}: embeddings have {size} dimensions, the index holds {self.dim}')
        return np.stack(rows)

    # -- endpoints ----------------------------------------------------------------------
    @requests(on='/index')
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        """Append ``docs`` (which must carry embeddings) to the index."""
        block = self._stack(docs, '/index')
        if not len(block):
            return docs
        if self.dim is None:
            self.dim = int(block.shape[1])
            self._matrix = np.empty((0, self.dim), dtype=np.float32)
        self._reserve(len(block))
        a, b = self._n, self._n + len(block)
        self._matrix[a:b] = block
        norms = np.linalg.norm(block, axis=1)
        self._inv_norms[a:b] = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._ids.extend(d.id for d in docs)
        self._texts.extend(d.text for d in docs)
        self._n = b
        return docs

    @requests(on='/search')
    def search(self, docs: DocList[TextDoc], parameters: Optional[Dict[str, Any]] = None,
               **kwargs) -> DocList[QueryDoc]:
        """The best ``parameters['limit']`` matches of every query (one matrix product)."""
        parameters = parameters or {}
        limit = parameters.get('limit', DEFAULT_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"parameters['limit']={limit!r}: must be an integer >= 1")
        with_emb = bool(parameters.get('return_embeddings', False))
        queries = self._stack(docs, '/search')
        if len(queries) and self._n:
            idx, scores = self.topk(queries, limit)
            idx, scores = idx.tolist(), scores.tolist()
        else:
            idx = scores = [[] for _ in docs]
        ids, texts, matrix = self._ids, self._texts, self._matrix
        match_list = DocList[TextDoc].construct
        out = []
        for d, row, srow in zip(docs, idx, scores):
            if with_emb:
                matches = [_make_text({'id': ids[j], 'text': texts[j], 'url': None, 'bytes_': None,
                                       'embedding': matrix[j].copy()}, _MATCH_SET + ('embedding',)) for j in row]
            else:
                matches = [_make_text({'id': ids[j], 'text': texts[j], 'url': None, 'embedding': None,
                                       'bytes_': None}, _MATCH_SET) for j in row]
            out.append(_make_query({'id': d.id, 'text': d.text, 'url': getattr(d, 'url', None),
                                    'embedding': getattr(d, 'embedding', None),
                                    'bytes_': getattr(d, 'bytes_', None),
                                    'matches': match_list(matches), 'scores': srow}, _QUERY_SET))
        return DocList[QueryDoc].construct(out)

    @requests(on='/count')
    def count(self, **kwargs) -> Dict[str, int]:
        """``{'count': number of indexed docs}`` (read it from ``Client.last_results``)."""
        return {'count': self._n}

    # -- the search itself -----------------------------------------------------------------
    def scores_of(self, queries: np.ndarray) -> np.ndarray:
        """``(q, n)`` similarity of each query to every indexed doc (higher is closer)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        s = queries @ self._matrix[:self._n].T
        if self.metric == 'cosine':
            qn = np.linalg.norm(queries, axis=1)
            q_inv = np.divide(1.0, qn, out=np.zeros_like(qn), where=qn > 0)
            s *= self._inv_norms[:self._n][None, :]
            s *= q_inv[:, None]
        return s

    def topk(self, queries: np.ndarray, k: int):
        """-> ``(indices, scores)``, each ``(q, min(k, n))``, best first."""
        return top_k(self.scores_of(queries), k)

    # -- snapshot / restore (RAFT, restarts) ---------------------------------------------------
    def snapshot(self, path: str) -> None:
        """Write the index to ``path``: a zip of ``.npy`` arrays (``np.savez``), no pickle.

        Written to a temporary file first and renamed, so ``path`` is always complete.
        """
        n = self._n
        texts = self._texts
        has_text = np.array([t is not None for t in texts], dtype=bool)
        arrays = {
            'embeddings': self._matrix[:n],
            'ids': np.array(self._ids, dtype=str) if n else np.empty(0, dtype='<U1'),
            'texts': np.array([t or '' for t in texts], dtype=str) if n else np.empty(0, dtype='<U1'),
            'has_text': has_text,
            'meta': np.array([self.dim or 0, METRICS.index(self.metric)], dtype=np.int64),
        }
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.exactnn-', suffix='.npz')
        try:
            with os.fdopen(fd, 'wb') as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def restore(self, path: str) -> None:
        """Load what :meth:`snapshot` wrote (``allow_pickle=False``)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                emb, ids, texts = z['embeddings'], z['ids'], z['texts']
                has_text, meta = z['has_text'], z['meta']
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f'{path}: not an ExactNNSearch snapshot ({type(e).__name__}: {e})') from e
        dim = int(meta[0]) or None
        metric = METRICS[int(meta[1])]
        if metric != self.metric:
            self.logger.warning('snapshot %s was taken with metric=%r; keeping metric=%r', path, metric, self.metric)
        n = len(ids)
        self.dim = dim
        self._matrix = np.empty((0, dim or 0), dtype=np.float32)
        self._inv_norms = np.empty(0, dtype=np.float32)
        self._n = 0
        if n:
            self._reserve(n)
            self._matrix[:n] = emb
            norms = np.linalg.norm(emb, axis=1)
            self._inv_norms[:n] = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._n = n
        self._ids = ids.tolist()
        self._texts = [t if h else None for t, h in zip(texts.tolist(), has_text.tolist())]

    def save(self, name: str = 'index.npz') -> str:
        """Snapshot into this replica's workspace; returns the path."""
        path = os.path.join(self.workspace, name)
        self.snapshot(path)
        return path

    def load(self, name: str = 'index.npz') -> str:
        """Restore from this replica's workspace; returns the path."""
        path = os.path.join(self.workspace, name)
        self.restore(path)
        return path
