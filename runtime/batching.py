"""Dynamic batching: a replica gathers concurrent requests into one Executor call.

    class Search(Executor):
        @requests(on='/search')
        @dynamic_batching(max_batch_size=32, max_wait_ms=2)
        def search(self, docs, parameters, **kwargs): ...

How a replica serves such an endpoint (:class:`DynamicBatcher`):

- Requests wait in a queue. A batch is the oldest waiting request plus the requests
  behind it **with the same parameters**, up to ``max_batch_size`` requests (Ray Serve's
  meaning: requests, not docs). It goes to the Executor as soon as it is full, or
  ``max_wait_ms`` after its oldest request arrived, or -- under load -- as soon as the
  Executor thread is free again (requests that arrived while it was busy ride together).
- One decode per request, their docs concatenated into one ``DocList``, **one** call of
  the method on the Executor thread, and the result split back by the requests' doc
  counts: each request gets exactly its own docs, in order. The method must return one
  doc per input doc in order (or ``None``: the mutated inputs; or a dict: every request
  of the batch gets it as its results).
- Errors stay per request: a request whose docs do not decode fails alone. When the
  batched call raises, each request of the batch is run again on its own (read
  endpoints), so only the requests that fail on their own get the error; a ``@write``
  endpoint is never re-run -- every request of that batch gets the error.

The gateway bounds how many requests it keeps in flight per replica
(``max_in_flight_per_replica``, default 4); that bound caps how many requests a replica
can gather. A Deployment whose Executor batches raises its bound to the largest
``max_batch_size`` (see ``runtime.deployment``).

:func:`with_dynamic_batching` turns batching on for an existing Executor class without
editing it (what ``orchestra bench`` does for its ``b`` setups), like Jina's
``uses_dynamic_batching``.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from runtime.executor import (_BATCHING_ATTR, _ENDPOINTS_ATTR, DEFAULT_ENDPOINT, Endpoint, EndpointTable,
                              call_endpoint, normalise_result)

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 2.0

Reply = Tuple[Dict[str, Any], bytes]
#: ``(results dict or None, docs) -> (reply header, reply body)`` (``runtime.worker.encode_reply``)
EncodeReply = Callable[[Optional[Dict[str, Any]], Any], Reply]


def _check_batching(max_batch_size: Any, max_wait_ms: Any) -> Dict[str, Any]:
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f'max_batch_size={max_batch_size!r}: must be an integer >= 1')
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
        raise ValueError(f'max_wait_ms={max_wait_ms!r}: must be a number of milliseconds >= 0')
    return {'max_batch_size': int(max_batch_size), 'max_wait_ms': float(max_wait_ms)}


def dynamic_batching(func: Optional[Callable] = None, *, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                     max_wait_ms: float = DEFAULT_MAX_WAIT_MS, preferred_batch_size: Optional[int] = None,
                     timeout: Optional[float] = None):
    """Let a replica serve concurrent requests to this endpoint in one call.

    ``max_batch_size``: most requests per call; ``max_wait_ms``: longest a request waits
    for others. Jina's names are accepted too: ``preferred_batch_size`` and ``timeout``
    (milliseconds). Works above or below ``@requests``.

    >>> class E(Executor):
    ...     @requests(on='/embed')
    ...     @dynamic_batching(max_batch_size=16, max_wait_ms=5)
    ...     def embed(self, docs, **kwargs): ...
    """
    if preferred_batch_size is not None:
        max_batch_size = preferred_batch_size
    if timeout is not None:
        max_wait_ms = timeout
    config = _check_batching(max_batch_size, max_wait_ms)

    def mark(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f'@dynamic_batching decorates a method, got {fn!r}')
        setattr(fn, _BATCHING_ATTR, dict(config))
        return fn

    if func is not None:  # bare @dynamic_batching
        return mark(func)
    return mark


def with_dynamic_batching(cls: type, endpoints: Union[str, Sequence[str], None] = None,
                          max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                          max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> type:
    """A subclass of Executor ``cls`` whose endpoint methods batch dynamically.

    ``endpoints``: which ones (default: every endpoint that is not ``@write``).

    >>> Batched = with_dynamic_batching(ExactNNSearch, '/search')  # doctest: +SKIP
    """
    config = _check_batching(max_batch_size, max_wait_ms)
    wanted = [endpoints] if isinstance(endpoints, str) else (list(endpoints) if endpoints else None)
    namespace: Dict[str, Any] = {'__module__': cls.__module__, '__qualname__': f'{cls.__qualname__}Batched',
                                 '__doc__': f'{cls.__name__} with dynamic batching on {wanted or "its read endpoints"}.'}
    found = set()
    seen = set()
    for klass in cls.__mro__:
        for attr, fn in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            served = getattr(fn, _ENDPOINTS_ATTR, ())
            if not served:
                continue
            chosen = [e for e in served if (e in wanted if wanted else not getattr(fn, '_orchestra_write', False))]
            if not chosen:
                continue
            found.update(chosen)
            namespace[attr] = _batched_copy(fn, config)
    missing = sorted(set(wanted or ()) - found)
    if missing:
        raise ValueError(f'{cls.__name__} serves no endpoint {", ".join(map(repr, missing))}')
    return type(f'{cls.__name__}Batched', (cls,), namespace)


def _batched_copy(fn: Callable, config: Dict[str, Any]) -> Callable:
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(self, *args, **kwargs):
            return await fn(self, *args, **kwargs)
    else:
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            return fn(self, *args, **kwargs)
    setattr(wrapper, _BATCHING_ATTR, dict(config))
    return wrapper


# --------------------------------------------------------------------------- the replica side

class BatchContractError(ValueError):
    """A batched endpoint returned something that cannot be split back per request."""


@dataclass
class _Pending:
    key: str
    parameters: dict
    body: bytes
    future: asyncio.Future
    arrived: float


@dataclass
class BatchStats:
    """How one endpoint's requests were batched (reported in the replica's Info)."""
    batches: int = 0
    requests: int = 0
    largest: int = 0
    sizes: Dict[int, int] = field(default_factory=lambda: collections.Counter())

    def record(self, n: int) -> None:
        self.batches += 1
        self.requests += n
        self.largest = max(self.largest, n)
        self.sizes[n] += 1

    def snapshot(self) -> Dict[str, Any]:
        return {'batches': self.batches, 'requests': self.requests, 'largest': self.largest,
                'mean': round(self.requests / self.batches, 2) if self.batches else None}


class DynamicBatcher:
    """Gathers one endpoint's concurrent requests into batches; see the module docstring.

    :param ep: the endpoint (its method runs once per batch).
    :param pool: the replica's single Executor thread.
    :param encode_reply: ``(results dict or None, docs) -> (reply header, reply body)``.
    """

    def __init__(self, ep: Endpoint, pool, encode_reply: EncodeReply,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_wait_ms: float = DEFAULT_MAX_WAIT_MS):
        self.ep = ep
        self.pool = pool
        self.encode_reply = encode_reply
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: List[_Pending] = []
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    async def submit(self, parameters: dict, body: bytes) -> Reply:
        """Queue one request; returns its own ``(reply header, reply body)`` or raises its error."""
        loop = asyncio.get_running_loop()
        try:
            key = json.dumps(parameters, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            key = repr(parameters)
        fut = loop.create_future()
        self._queue.append(_Pending(key, parameters, body, fut, loop.time()))
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            first = self._queue[0]
            deadline = first.arrived + self.max_wait
            while self._same_key(first.key) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key)
            batch = [p for p in batch if not p.future.done()]   # the caller went away
            if not batch:
                continue
            self.stats.record(len(batch))
            try:
                replies = await loop.run_in_executor(self.pool, self.run_batch,
                                                     batch[0].parameters, [p.body for p in batch])
            except BaseException as e:  # the pool shut down, or we were cancelled
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e if isinstance(e, Exception) else RuntimeError('replica stopping'))
                if not isinstance(e, Exception):
                    raise
                continue
            for p, reply in zip(batch, replies):
                if p.future.done():
                    continue
                if isinstance(reply, BaseException):
                    p.future.set_exception(reply)
                else:
                    p.future.set_result(reply)

    def _same_key(self, key: str) -> int:
        return sum(1 for p in self._queue if p.key == key)

    def _take(self, key: str) -> List[_Pending]:
        batch, rest = [], []
        for p in self._queue:
            if p.key == key and len(batch) < self.max_batch_size:
                batch.append(p)
            else:
                rest.append(p)
        self._queue[:] = rest
        return batch

    # -- on the Executor thread -------------------------------------------------------
    def run_batch(self, parameters: dict, bodies: Sequence[bytes]) -> List[Union[Reply, BaseException]]:
        """Decode each body, call the method once per doc class, split and encode the replies."""
        from runtime.codec import decode_docs
        out: List[Union[Reply, BaseException, None]] = [None] * len(bodies)
        groups: Dict[Any, List[Tuple[int, Any]]] = {}
        for i, body in enumerate(bodies):
            try:
                docs = decode_docs(body, self.ep.input_type)
            except Exception as e:
                out[i] = e
                continue
            groups.setdefault(getattr(docs, 'doc_type', None), []).append((i, docs))
        for members in groups.values():
            try:
                replies = self._call(parameters, [d for _, d in members])
            except BatchContractError as e:     # the endpoint's fault, not a request's: no re-run
                replies = [e] * len(members)
            except Exception as e:
                if len(members) == 1 or self.ep.is_write:
                    replies = [e] * len(members)
                else:   # find the request(s) at fault: run each alone, from its own bytes
                    replies = [self._call_alone(parameters, bodies[i]) for i, _ in members]
            for (i, _), reply in zip(members, replies):
                out[i] = reply
        return out  # type: ignore[return-value]

    def _call_alone(self, parameters: dict, body: bytes) -> Union[Reply, BaseException]:
        from runtime.codec import decode_docs
        try:
            return self._call(parameters, [decode_docs(body, self.ep.input_type)])[0]
        except Exception as e:
            return e

    def _call(self, parameters: dict, parts: List[Any]) -> List[Reply]:
        counts = [len(p) for p in parts]
        if len(parts) == 1:
            docs = parts[0]
        else:
            docs = type(parts[0]).construct([d for p in parts for d in p])
        result = call_endpoint(self.ep, docs, parameters)
        if len(parts) == 1:
            return [self.encode_reply(*normalise_result(result, docs, self.ep.name))]
        try:
            results, out = normalise_result(result, docs, self.ep.name)
        except TypeError as e:
            raise BatchContractError(str(e)) from None
        total = sum(counts)
        if len(out) != total:
            raise BatchContractError(f'endpoint {self.ep.name!r} uses dynamic batching but returned {len(out)} '
                                     f'docs for {total} input docs; a batched endpoint must return one doc per '
                                     'input doc, in input order (or None)')
        return [self.encode_reply(results, out[a:b]) for a, b in _bounds(counts)]


def _bounds(counts: Sequence[int]) -> List[Tuple[int, int]]:
    out, a = [], 0
    for c in counts:
        out.append((a, a + c))
        a += c
    return out


class Batchers(dict):
    """endpoint -> :class:`DynamicBatcher` for a replica; endpoints served by a batching
    default method (bare ``@requests``) get their own batcher on first use."""

    def __init__(self, endpoints: EndpointTable, pool, encode_reply: EncodeReply):
        super().__init__()
        self._table = endpoints
        self._pool = pool
        self._encode = encode_reply
        for name in endpoints.names:
            ep = endpoints.lookup(name)
            if ep.batching and name != DEFAULT_ENDPOINT:
                self[name] = self._new(ep)
        default = endpoints.lookup(DEFAULT_ENDPOINT) if DEFAULT_ENDPOINT in endpoints.names else None
        self._default = default if default is not None and default.batching else None

    def _new(self, ep: Endpoint) -> DynamicBatcher:
        return DynamicBatcher(ep, self._pool, self._encode, **ep.batching)

    def __contains__(self, endpoint: object) -> bool:
        if dict.__contains__(self, endpoint):
            return True
        if self._default is None or not isinstance(endpoint, str):
            return False
        try:
            ep = self._table.lookup(endpoint)
        except LookupError:
            return False
        if ep is not self._default:
            return False
        self[endpoint] = self._new(ep)
        return True

    def __bool__(self) -> bool:
        return bool(len(self)) or self._default is not None

    @property
    def largest_batch_size(self) -> int:
        sizes = [b.max_batch_size for b in self.values()]
        if self._default is not None:
            sizes.append(self._default.batching['max_batch_size'])
        return max(sizes, default=0)

    def describe(self) -> Dict[str, Any]:
        return {name: dict(b.stats.snapshot(), max_batch_size=b.max_batch_size,
                           max_wait_ms=b.max_wait * 1000.0) for name, b in self.items()}


def batching_bound(cls: Any) -> int:
    """The largest ``max_batch_size`` among Executor class ``cls``'s endpoints (0: none batch)."""
    sizes = []
    seen = set()
    for klass in getattr(cls, '__mro__', ()):
        for attr, fn in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            cfg = getattr(fn, _BATCHING_ATTR, None)
            if cfg and getattr(fn, _ENDPOINTS_ATTR, None):
                sizes.append(int(cfg.get('max_batch_size', 0)))
    return max(sizes, default=0)


def in_flight_for(uses: Any, max_in_flight: int) -> Optional[int]:
    """The gateway's per-replica in-flight bound for a Deployment of ``uses``.

    ``None`` (keep ``max_in_flight``) unless the Executor batches dynamically: then the
    largest ``max_batch_size``, so that a replica can gather a full batch. ``uses`` given
    as ``'pkg.mod:Class'`` is imported here to read its decorators; when that fails
    (the module only exists where the replicas run, or a YAML path), the bound stays.
    """
    cls = uses
    if isinstance(uses, str):
        if uses.endswith(('.yml', '.yaml')) or '://' in uses:
            return None
        try:
            from runtime.uses import load_executor_class
            cls = load_executor_class(uses)
        except Exception:
            return None
    bound = batching_bound(cls) if isinstance(cls, type) else 0
    return bound if bound > max_in_flight else None
