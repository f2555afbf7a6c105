"""Executors the shard/polling/Flow/config tests start by name (``uses='topology_executors:Counting'``)."""
from typing import List

from docarray import BaseDoc, DocList
from docarray.documents import TextDoc

from orchestra_nb import Executor, requests


class Counting(Executor):
    """Appends one line per call (``shard:replica:texts``) to the file ``path``: the test counts calls."""

    def __init__(self, path: str = '', **kwargs):
        super().__init__(**kwargs)
        self.path = path

    @requests
    def foo(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        with open(self.path, 'a') as f:
            f.write(f'{self.runtime_args.shard_id}:{self.runtime_args.replica_id}:{docs.text}\n')


def calls(path) -> List[str]:
    """The lines :class:`Counting` wrote (one per Executor call)."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class Match(BaseDoc):
    text: str = ''
    shard: int = -1


class Query(BaseDoc):
    text: str = ''
    shard_seen: List[int] = []
    matches: DocList[Match] = DocList[Match]()
    scores: dict = {}
    owner: str = ''


class ShardedSearch(Executor):
    """Each shard answers every query with two matches of its own and marks what it saw."""

    @requests(on='/search')
    def search(self, docs: DocList[Query], **kwargs) -> DocList[Query]:
        s = self.runtime_args.shard_id
        for q in docs:
            q.matches = DocList[Match]([Match(text=f's{s}-m{i}', shard=s) for i in range(2)])
            q.shard_seen = [s]
            q.scores = {f'shard{s}': float(s)}
            q.owner = f'shard{s}'


class ShardedStore(Executor):
    """A sharded index: /index keeps the docs it gets, /search returns every doc it holds."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.docs = {}

    @requests(on='/index')
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for d in docs:
            self.docs[d.id] = TextDoc(id=d.id, text=f'{d.text}@{self.runtime_args.shard_id}')

    @requests(on='/search')
    def search(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        return DocList[TextDoc](list(self.docs.values()))


class Trail(BaseDoc):
    text: str = ''
    trail: List[str] = []


class Append(Executor):
    """Appends ``tag`` to each doc's text and trail (a Flow test sees the path docs took)."""

    def __init__(self, tag: str = 'x', **kwargs):
        super().__init__(**kwargs)
        self.tag = tag

    @requests
    def append(self, docs: DocList[Trail], **kwargs) -> DocList[Trail]:
        for d in docs:
            d.text = f'{d.text}-{self.tag}'
            d.trail = list(d.trail) + [self.tag]


class OnlyUpper(Executor):
    """Serves /upper only (a Flow passes other endpoints through it)."""

    @requests(on='/upper')
    def upper(self, docs: DocList[Trail], **kwargs) -> DocList[Trail]:
        for d in docs:
            d.text = d.text.upper()
            d.trail = list(d.trail) + ['upper']
