"""Merging shard and branch results: reduce by id, concatenation, encoded bodies, results."""
from docarray import DocList

from runtime.codec import decode_docs, encode_docs
from runtime.merging import concat_docs, merge_bodies, merge_results, reduce_docs
from topology_executors import Match, Query


def _shards():
    a = DocList[Query]([Query(id='1', owner='a', shard_seen=[0], scores={'x': 0.0},
                              matches=DocList[Match]([Match(text='a')]))])
    b = DocList[Query]([Query(id='1', owner='b', shard_seen=[1], scores={'x': 1.0, 'y': 1.0},
                              matches=DocList[Match]([Match(text='b')])),
                        Query(id='2', owner='b2')])
    return a, b


def test_reduce_docs_unit_rules():
    a, b = _shards()
    merged = reduce_docs([a, b])
    assert [d.id for d in merged] == ['1', '2']
    assert merged[0].owner == 'a' and merged[0].shard_seen == [0, 1] and merged[0].matches.text == ['a', 'b']
    assert merged[0].scores == {'x': 0.0, 'y': 1.0}     # dicts merged, the lowest shard's keys win
    assert len(concat_docs([a, b])) == 3
    assert reduce_docs([]) is None and concat_docs([None]) is None


def test_merge_bodies_reduces_or_concatenates_encoded_doclists():
    a, b = _shards()
    reduced = decode_docs(merge_bodies([encode_docs(a), encode_docs(b)]), Query)
    assert [d.id for d in reduced] == ['1', '2'] and reduced[0].matches.text == ['a', 'b']
    concatenated = decode_docs(merge_bodies([encode_docs(a), encode_docs(b)], reduce=False), Query)
    assert concatenated.owner == ['a', 'b', 'b2']


def test_merge_results_later_keys_win():
    assert merge_results([{'results': {'a': 1, 'b': 1}}, {'ok': True}, {'results': {'b': 2}}]) == {'a': 1, 'b': 2}
    assert merge_results([{'ok': True}, {'results': {}}]) is None
