"""Executors of the export tests; each test copies this file next to its Flow YAML under a
unique module name (``py_modules`` refuses two different files of one name in a process)."""
from docarray import DocList
from docarray.documents import TextDoc

from orchestra_nb import Executor, requests, write


class Encoder(Executor):
    """The GPU Executor of the tests (it needs no GPU): trims the texts of /index."""

    @requests(on='/index')
    def encode(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = d.text.strip()


class ShardIndex(Executor):
    """Sharded and stateless: /index keeps the docs it gets, /search says how many this shard holds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.docs = {}

    @requests(on='/index')
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            self.docs[d.id] = d.text

    @requests(on='/search')
    def search(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            d.text = f'found:{self.runtime_args.shard_id}:{len(self.docs)}'


class Store(Executor):
    """The RAFT Executor: /index is a @write, /ids lists every doc this replica holds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.docs = {}

    @requests(on='/index')
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            self.docs[d.id] = d.text

    @requests(on='/ids')
    def ids(self, **kwargs) -> DocList[TextDoc]:
        return DocList[TextDoc]([TextDoc(id=i, text=t) for i, t in sorted(self.docs.items())])
