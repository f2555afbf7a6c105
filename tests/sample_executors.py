"""Executors the tests start by name (``uses='sample_executors:Upper'``)."""
import os
import time

from docarray import DocList
from docarray.documents import TextDoc

from orchestra_nb import Executor, monitor, requests, write


class Upper(Executor):
    @requests(on='/upper')
    def upper(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = d.text.upper()


class WhoAmI(Executor):
    """Tags each doc with the replica that served it; can be slow on chosen replicas."""

    def __init__(self, slow_replicas=(), delay=0.0, **kwargs):
        super().__init__(**kwargs)
        self.slow = self.runtime_args.replica_id in slow_replicas
        self.delay = delay

    @requests
    def who(self, docs: DocList[TextDoc], parameters: dict, **kwargs) -> DocList[TextDoc]:
        if self.slow:
            time.sleep(self.delay)
        for d in docs:
            d.text = f'{self.runtime_args.replica_id}:{os.getpid()}:{os.environ.get("CUDA_VISIBLE_DEVICES")}'
        return docs


class Failing(Executor):
    @requests(on='/boom')
    def boom(self, docs, **kwargs):
        raise ValueError('the executor exploded on purpose')

    @requests(on='/ok')
    def ok(self, docs, **kwargs):
        return docs


class BrokenInit(Executor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        raise RuntimeError('init failed on purpose')


class KV(Executor):
    """A key-value store with a @write endpoint (RAFT and dashboard tests read it back)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.kv = {}

    @requests(on='/index')
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            self.kv[d.id] = d.text

    @requests(on='/get')
    def get(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = self.kv.get(d.id, '<missing>')

    @requests(on='/ids')
    def ids(self, **kwargs) -> DocList[TextDoc]:
        return DocList[TextDoc]([TextDoc(id=k, text=v) for k, v in sorted(self.kv.items())])


class Poison(Executor):
    """Dies (``os._exit(1)``) on a doc whose text is 'poison'; echoes the rest, tagged with its replica."""

    @requests
    def serve(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        if any(d.text == 'poison' for d in docs):
            print('about to swallow the poison', flush=True)
            os._exit(1)
        for d in docs:
            d.text = f'{d.text}@{self.runtime_args.replica_id}'
        return docs


class PoisonKV(KV):
    """KV whose @write dies when applying a doc whose text is 'poison' (on every replica)."""

    @requests(on='/index')
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        if any(d.text == 'poison' for d in docs):
            print('applying the poison write', flush=True)
            os._exit(1)
        for d in docs:
            self.kv[d.id] = d.text


class DiesAtStartIf(Executor):
    """Exits in __init__ while the file named by env ORCHESTRA_TEST_DIE_FILE exists (a crash loop)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if os.path.exists(os.environ.get('ORCHESTRA_TEST_DIE_FILE', '/nonexistent')):
            print('refusing to start: the die file exists', flush=True)
            os._exit(3)

    @requests
    def serve(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        return docs


class MonitoredKV(KV):
    """KV with its own Prometheus metrics: ``self.monitor`` and ``@monitor`` (tests/test_metrics.py)."""

    @requests(on='/index')
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        with self.monitor('kv_index_seconds', 'time to store a request of docs'):
            self.store(docs)

    @monitor(name='kv_store_seconds', documentation='time in store()')
    def store(self, docs):
        for d in docs:
            self.kv[d.id] = d.text
