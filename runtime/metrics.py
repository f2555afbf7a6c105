"""Prometheus metrics of one process (a replica or a gateway): ``monitoring=True``.

Each process that monitors owns one :class:`Metrics`: its own ``CollectorRegistry``
(never prometheus_client's global one), served read-only at ``/metrics`` by
:func:`serve_metrics` on ``port_monitoring`` (0: the OS picks; the port is reported in
the process's Info, hence in ``status()``). docs/monitoring.md lists every name, type and
label, and the PromQL of the Dashboard's panels.

Two kinds of metrics, to keep the request path cheap:

- counted on the request path: counters and histograms whose label children are created
  once per endpoint and cached (:meth:`Metrics.for_endpoint`), so a request costs a dict
  lookup and prometheus_client's own increments;
- read when Prometheus scrapes: in flight, queue depth, replicas in rotation, RAFT
  (role, term, commit and applied index, log lag), CPU/RSS and GPUs, by a collector that
  reads the state the process already keeps (:class:`ScrapeCollector`).

Labels are bounded: the Executor, replica and shard, the endpoint (an Executor's
endpoints are declared in its class), the gateway's name; never a request or doc id.

Executors add their own metrics with :meth:`runtime.executor.Executor.monitor` /
:func:`monitor`, registered in the replica's registry (:func:`current`).

    >>> m = Metrics('replica', {'executor': 'enc', 'replica': '0', 'shard': '0'})
    >>> m.for_endpoint('/index').observe(0.002, ok=True)
    >>> b'orchestra_replica_requests_total' in m.exposition()
    True
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (CollectorRegistry, Counter, Histogram, Summary, disable_created_metrics, generate_latest,
                               make_wsgi_app)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

#: the one path the metrics endpoint serves
METRICS_PATH = '/metrics'
#: latency buckets (seconds): 0.5 ms .. 60 s, fine where echo and search requests fall
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0)
#: dynamic batch sizes (requests per Executor call)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: the RAFT roles, one series each in ``orchestra_raft_role`` (1 for the current one)
RAFT_ROLES = ('leader', 'follower', 'candidate', 'starting')

REPLICA_LABELS = ('executor', 'replica', 'shard')
GATEWAY_LABELS = ('gateway',)


class EndpointMetrics:
    """The cached label children of one endpoint: what a request touches."""

    __slots__ = ('requests', 'errors', 'seconds')

    def __init__(self, metrics: 'Metrics', endpoint: str):
        labels = dict(metrics.labels, endpoint=endpoint)
        self.requests = metrics.requests.labels(**labels)
        self.errors = metrics.errors.labels(**labels)
        self.seconds = metrics.seconds.labels(**labels)

    def observe(self, seconds: float, ok: bool) -> None:
        """One request done: counted, its latency observed, an error counted when not ``ok``."""
        self.requests.inc()
        self.seconds.observe(seconds)
        if not ok:
            self.errors.inc()


class Metrics:
    """The metrics of one process: ``role`` is ``'replica'`` or ``'gateway'``; ``labels`` its constant labels
    (:data:`REPLICA_LABELS` / :data:`GATEWAY_LABELS`)."""

    def __init__(self, role: str, labels: Dict[str, str]):
        if role not in ('replica', 'gateway'):
            raise ValueError(f"role={role!r}: allowed: 'replica', 'gateway'")
        self.role = role
        self.labels = {k: str(v) for k, v in labels.items()}
        disable_created_metrics()   # no *_created series: half the samples, nothing the panels read
        self.registry = CollectorRegistry(auto_describe=True)
        names = tuple(self.labels) + ('endpoint',)
        what = 'replica processing' if role == 'replica' else 'gateway end to end'
        p = f'orchestra_{role}'
        self.requests = Counter(f'{p}_requests', f'requests answered ({what}), per endpoint', names,
                                registry=self.registry)
        self.errors = Counter(f'{p}_errors', 'requests answered with an error, per endpoint', names,
                              registry=self.registry)
        self.seconds = Histogram(f'{p}_request_seconds', f'request latency in seconds ({what})', names,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.docs: Optional[Counter] = None
        if role == 'replica':
            self.docs = Counter('orchestra_replica_documents', 'documents the Executor processed, per endpoint',
                                names, registry=self.registry)
        self._endpoints: Dict[str, EndpointMetrics] = {}
        self._docs: Dict[str, Any] = {}
        self._user: Dict[str, Any] = {}
        self._user_lock = threading.Lock()

    def for_endpoint(self, endpoint: str) -> EndpointMetrics:
        """The cached children of ``endpoint`` (created on its first request)."""
        m = self._endpoints.get(endpoint)
        if m is None:
            m = self._endpoints[endpoint] = EndpointMetrics(self, endpoint)
        return m

    def docs_of(self, endpoint: str) -> Any:
        """The documents counter of the Executor method declared on ``endpoint`` (cached)."""
        c = self._docs.get(endpoint)
        if c is None:
            c = self._docs[endpoint] = self.docs.labels(**self.labels, endpoint=endpoint)
        return c

    def add_collector(self, collector: Collector) -> None:
        """Metrics read at scrape time (:class:`ScrapeCollector`)."""
        self.registry.register(collector)

    def user_summary(self, name: str, documentation: str) -> Any:
        """An Executor's own timing metric ``name`` (a Summary, labels: the replica's and the endpoint)."""
        with self._user_lock:
            summary = self._user.get(name)
            if summary is None:
                try:
                    summary = Summary(name, documentation, tuple(self.labels) + ('endpoint',),
                                      registry=self.registry)
                except ValueError as e:
                    raise ValueError(f'monitor(name={name!r}): {e}; pick another name') from None
                self._user[name] = summary
            return summary

    def exposition(self) -> bytes:
        """The text Prometheus scrapes."""
        return generate_latest(self.registry)


# ----------------------------------------------------------------------------- scrape-time metrics

Family = Any
Reader = Callable[[], Iterable[Family]]


class ScrapeCollector(Collector):
    """Metrics computed when Prometheus scrapes, from ``readers`` (each yields metric families)."""

    def __init__(self, readers: Iterable[Reader]):
        self.readers = list(readers)

    def collect(self) -> Iterator[Family]:
        for read in self.readers:
            try:
                yield from read()
            except Exception:   # a reader racing the process's own threads: skip it this scrape
                continue


def gauge(name: str, doc: str, labels: Dict[str, str], value: Optional[float]) -> List[Family]:
    """One gauge sample, or none when ``value`` is None (absent, never a made-up zero)."""
    if value is None:
        return []
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), float(value))
    return [g]


def process_reader(labels: Dict[str, str]) -> Reader:
    """CPU % and RSS of this process, from :func:`runtime.telemetry.process_telemetry` (sampled each second)."""
    def read() -> Iterable[Family]:
        from runtime.telemetry import process_telemetry
        snap = process_telemetry()
        yield from gauge('orchestra_process_cpu_percent', 'CPU of this process, percent of one core (psutil)',
                         labels, snap.get('cpu_percent'))
        yield from gauge('orchestra_process_resident_memory_bytes', 'resident set size of this process', labels,
                         snap.get('rss_bytes'))
    return read


def gpu_reader(labels: Dict[str, str], devices: Optional[str]) -> Reader:
    """Utilisation and memory of each GPU this process was given (``CUDA_VISIBLE_DEVICES``), from NVML.

    No GPU given, or no NVML: no samples at all (absent metrics, not zeros)."""
    given = [d.strip() for d in (devices or '').split(',') if d.strip()]

    def read() -> Iterable[Family]:
        if not given:
            return
        from runtime.gpu import gpu_snapshot
        from runtime.telemetry import _names_gpu
        snap = gpu_snapshot()
        names = list(labels) + ['device']
        util = GaugeMetricFamily('orchestra_gpu_utilization_percent', 'GPU utilisation (NVML), per device given',
                                 labels=names)
        used = GaugeMetricFamily('orchestra_gpu_memory_used_bytes', 'GPU memory in use (NVML)', labels=names)
        total = GaugeMetricFamily('orchestra_gpu_memory_total_bytes', 'GPU memory (NVML)', labels=names)
        found = False
        for g in snap.get('gpus') or []:
            if not any(_names_gpu(d, g) for d in given):
                continue
            values = list(labels.values()) + [str(g.get('index'))]
            for family, key in ((util, 'utilization'), (used, 'memory_used'), (total, 'memory_total')):
                if g.get(key) is not None:
                    family.add_metric(values, float(g[key]))
                    found = True
        if found:
            yield from (util, used, total)
    return read


def raft_reader(labels: Dict[str, str], status: Callable[[], Optional[Dict[str, Any]]]) -> Reader:
    """RAFT role, term, commit index, applied index and log lag, from the node's ``status()``."""
    def read() -> Iterable[Family]:
        st = status()
        if not st:
            return
        role = st.get('role') or 'starting'
        r = GaugeMetricFamily('orchestra_raft_role', 'RAFT role of this replica: 1 for the current one',
                              labels=list(labels) + ['role'])
        for name in RAFT_ROLES + (() if role in RAFT_ROLES else (role,)):
            r.add_metric(list(labels.values()) + [name], 1.0 if name == role else 0.0)
        yield r
        commit, applied = st.get('commit_index'), st.get('applied_index')
        yield from gauge('orchestra_raft_term', 'RAFT term', labels, st.get('term'))
        yield from gauge('orchestra_raft_commit_index', 'RAFT commit index known to this replica', labels, commit)
        yield from gauge('orchestra_raft_applied_index', 'RAFT log index applied to this replica', labels, applied)
        if commit is not None and applied is not None:
            yield from gauge('orchestra_raft_log_lag', 'entries committed but not yet applied here', labels,
                             max(0, commit - applied))
    return read


def batch_reader(labels: Dict[str, str], batchers: Callable[[], Dict[str, Any]]) -> Reader:
    """Dynamic batch sizes (requests per Executor call), per batched endpoint, from the batchers' own counts."""
    def read() -> Iterable[Family]:
        table = batchers()
        if not table:
            return
        h = HistogramMetricFamily('orchestra_replica_batch_size',
                                  'requests per Executor call of a dynamically batched endpoint',
                                  labels=list(labels) + ['endpoint'])
        for endpoint, b in list(table.items()):
            sizes = dict(b.stats.sizes)
            buckets, total = [], 0
            for bound in BATCH_BUCKETS:
                total = sum(n for size, n in sizes.items() if size <= bound)
                buckets.append((str(float(bound)), float(total)))
            buckets.append(('+Inf', float(b.stats.batches)))
            h.add_metric(list(labels.values()) + [endpoint], buckets, float(b.stats.requests))
        yield h
    return read


def in_flight_reader(labels: Dict[str, str], in_flight: Callable[[], int], role: str) -> Reader:
    """Requests in this process now."""
    def read() -> Iterable[Family]:
        yield from gauge(f'orchestra_{role}_in_flight', f'requests in this {role} now', labels, in_flight())
    return read


def routing_reader(gateway_labels: Dict[str, str], nodes: Callable[[], Dict[str, Any]]) -> Reader:
    """The gateway's view of each replica: in flight, sent, in rotation; per shard: queue depth, retries,
    replicas taken out of rotation. ``nodes()``: the gateway's nodes (``runtime.gateway.Node``)."""
    def read() -> Iterable[Family]:
        base = list(gateway_labels)
        rep = base + ['executor', 'shard', 'replica']
        shard_labels = base + ['executor', 'shard']
        in_flight = GaugeMetricFamily('orchestra_gateway_replica_in_flight',
                                      'requests the gateway has in flight at each replica', labels=rep)
        sent = CounterMetricFamily('orchestra_gateway_replica_sent', 'requests the gateway sent to each replica',
                                   labels=rep)
        healthy = GaugeMetricFamily('orchestra_gateway_replica_in_rotation',
                                    '1 while the replica takes requests, 0 while out of rotation', labels=rep)
        queue = GaugeMetricFamily('orchestra_gateway_queue_depth',
                                  'requests waiting at the gateway for a replica of the shard', labels=shard_labels)
        retries = CounterMetricFamily('orchestra_gateway_retries',
                                      'requests retried on another replica after losing theirs', labels=shard_labels)
        taken_out = CounterMetricFamily('orchestra_gateway_replicas_out_of_rotation',
                                        'times a replica of the shard was taken out of rotation',
                                        labels=shard_labels)
        values = list(gateway_labels.values())
        for node_name, node in nodes().items():
            for i, shard in enumerate(node.shards):
                s = values + [node_name, str(i)]
                queue.add_metric(s, float(shard.queue_depth))
                retries.add_metric(s, float(shard.retries))
                taken_out.add_metric(s, float(shard.taken_out))
                for r in list(shard.replicas):
                    labels = s + [r.name]
                    in_flight.add_metric(labels, float(r.in_flight))
                    sent.add_metric(labels, float(r.sent))
                    healthy.add_metric(labels, 1.0 if r.healthy else 0.0)
        yield from (in_flight, sent, healthy, queue, retries, taken_out)
    return read


# ----------------------------------------------------------------------------- the endpoint

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 - the stdlib's signature
        pass


class MetricsServer:
    """``/metrics`` of a registry over HTTP, in a daemon thread; anything else is 404, anything but
    GET/HEAD 405. :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        app = make_wsgi_app(registry)

        def only_metrics(environ: Dict[str, Any], start_response: Callable) -> Any:
            if environ.get('PATH_INFO') != METRICS_PATH:
                start_response('404 Not Found', [('Content-Type', 'text/plain')])
                return [f'only {METRICS_PATH} is served here\n'.encode()]
            if environ.get('REQUEST_METHOD') not in ('GET', 'HEAD'):
                start_response('405 Method Not Allowed', [('Allow', 'GET, HEAD')])
                return [b'read-only\n']
            return app(environ, start_response)

        class Server(ThreadingWSGIServer):
            address_family = _family(host)

        self.httpd = make_server(host, port, only_metrics, server_class=Server, handler_class=_QuietHandler)
        self.host = host
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.2},
                                       daemon=True, name=f'metrics-{self.port}')
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=2)


def _family(host: str) -> int:
    import socket
    return socket.AF_INET6 if ':' in host else socket.AF_INET


def serve_metrics(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Start ``/metrics`` for ``metrics`` on ``host:port`` (0: the OS picks); a port in use raises naming it."""
    try:
        return MetricsServer(metrics.registry, host, port)
    except OSError as e:
        raise OSError(f'port_monitoring={port}: cannot listen on {host}:{port} for /metrics ({e.strerror or e})') \
            from None


# ----------------------------------------------------------------------------- Executors' own metrics

_current: Optional[Metrics] = None
_endpoint = threading.local()


def install(metrics: Optional[Metrics]) -> None:
    """Make ``metrics`` this process's: what Executors' ``monitor`` use (:func:`current`)."""
    global _current
    _current = metrics


def call_observer(metrics: Metrics) -> Callable[[str, Any], Any]:
    """What a replica sets as :data:`runtime.executor.call_observer`: each Executor call counts its
    documents and names its endpoint (the ``endpoint`` label of Executors' own metrics)."""
    return functools.partial(_observe_call, metrics)


@contextlib.contextmanager
def _observe_call(metrics: Metrics, endpoint: str, docs: Any) -> Iterator[None]:
    try:
        n = len(docs)
    except TypeError:
        n = 1
    metrics.docs_of(endpoint).inc(n)
    with calling_endpoint(endpoint):
        yield


def current() -> Optional[Metrics]:
    """This process's :class:`Metrics`, or None when monitoring is off."""
    return _current


@contextlib.contextmanager
def calling_endpoint(endpoint: str) -> Iterator[None]:
    """Which endpoint the Executor thread is running (the ``endpoint`` label of user metrics)."""
    previous = getattr(_endpoint, 'name', '')
    _endpoint.name = endpoint
    try:
        yield
    finally:
        _endpoint.name = previous


@contextlib.contextmanager
def timed(name: str, documentation: str) -> Iterator[None]:
    """Time the block into the Summary ``name``; nothing when monitoring is off (what ``Executor.monitor`` is)."""
    metrics = current()
    if metrics is None:
        yield
        return
    summary = metrics.user_summary(name, documentation).labels(**metrics.labels,
                                                               endpoint=getattr(_endpoint, 'name', ''))
    with summary.time():
        yield


def monitor(name: Optional[str] = None, documentation: Optional[str] = None) -> Callable[[Callable], Callable]:
    """Jina's ``@monitor``: time each call of a method into a Summary (default name: the method's).

    >>> class Enc:
    ...     @monitor(name='embed_seconds', documentation='time to embed')
    ...     def embed(self, docs): return docs
    >>> Enc().embed([1])
    [1]
    """
    def decorate(fn: Callable) -> Callable:
        metric = name or f'{fn.__name__}_seconds'
        doc = documentation or f'seconds spent in {fn.__qualname__}'

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with timed(metric, doc):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


def replica_labels(executor: str, replica: int, shard: int) -> Dict[str, str]:
    """The constant labels of a replica's metrics."""
    return {'executor': executor, 'replica': str(replica), 'shard': str(shard)}


def scrape_targets(status: Dict[str, Any]) -> List[Tuple[str, Dict[str, str]]]:
    """``(host:port, labels)`` of every metrics endpoint in a ``status()`` (gateway first)."""
    out: List[Tuple[str, Dict[str, str]]] = []
    gw = status.get('gateway') or {}
    host = (status.get('address') or '127.0.0.1:0').rsplit(':', 1)[0]
    if gw.get('metrics_port'):
        out.append((f'{_connect_host(host)}:{gw["metrics_port"]}', {'component': 'gateway'}))
    for r in status.get('replicas') or []:
        if r.get('metrics_port'):
            rhost = (r.get('address') or '127.0.0.1:0').rsplit(':', 1)[0]
            labels = {'component': 'replica', 'process': r['name']}
            out.append((f'{_connect_host(rhost)}:{r["metrics_port"]}', labels))
    return out


def _connect_host(host: str) -> str:
    return '127.0.0.1' if host in ('0.0.0.0', '', '::') else host
