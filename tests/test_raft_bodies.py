"""runtime/raft/bodies.py in process: bodies stored in the workspace, awaited from their origin,
and the majority a body needs before its record is proposed (no sockets, no child processes)."""
import asyncio

import pytest

from runtime.raft.bodies import Bodies
from runtime.raft.common import RaftNotReady
from runtime.raft.payloads import _digest
from runtime.raft.pushers import _PushResult
from runtime.raft.settings import PeerAddress

PEERS = [PeerAddress(1, 'kv/rep-1', '127.0.0.1:1', '127.0.0.1:2'),
         PeerAddress(2, 'kv/rep-2', '127.0.0.1:3', '127.0.0.1:4')]
RID = 'a' * 32


def run(coro_fn, tmp_path, peers=PEERS):
    async def main():
        bodies = Bodies('kv/rep-0', 'secret', peers, str(tmp_path / 'payloads'), durable=True)
        bodies.start(asyncio.get_running_loop())
        try:
            return await coro_fn(bodies)
        finally:
            await bodies.close()
    return asyncio.run(main())


def done(result):
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(result)
    return fut


def test_a_stored_body_is_on_disk_and_survives_a_restart(tmp_path):
    async def store(bodies):
        await bodies.store(RID, b'body', _digest(b'body'))
        await bodies.store(RID, b'body', _digest(b'body'))   # twice: stored once
        return len(bodies), bodies.cached_with_digest(RID)
    assert run(store, tmp_path) == (1, (b'body', _digest(b'body')))

    async def read(bodies):
        return await asyncio.to_thread(bodies.get, RID)
    assert run(read, tmp_path) == b'body'


def test_waiting_for_a_body_from_its_origin_ends_when_it_arrives(tmp_path):
    async def wait(bodies):
        waiter = asyncio.ensure_future(bodies.wait_for_arrival(RID, 30.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        bodies.arrived(RID)   # a peer's push brought it
        await asyncio.wait_for(waiter, 5.0)
        await bodies.wait_for_arrival('b' * 32, 0.01)   # never comes: returns after the timeout
        return True
    assert run(wait, tmp_path)


def test_one_peer_of_two_makes_a_majority(tmp_path):
    async def majority(bodies):
        deadline = asyncio.get_running_loop().time() + 5
        pending = asyncio.get_running_loop().create_future()   # the other peer never answers
        await bodies.majority({'kv/rep-1': done(_PushResult(True, '', None)), 'kv/rep-2': pending}, deadline)
        return True
    assert run(majority, tmp_path)


def test_no_majority_says_why(tmp_path):
    async def majority(bodies):
        deadline = asyncio.get_running_loop().time() + 5
        await bodies.majority({'kv/rep-1': done(_PushResult(False, 'kv/rep-1: disk full', None)),
                               'kv/rep-2': done(_PushResult(False, 'kv/rep-2: UNAVAILABLE', None))}, deadline)
    with pytest.raises(RaftNotReady, match=r'1 of 3\)') as e:
        run(majority, tmp_path)
    assert 'kv/rep-1: disk full' in str(e.value) and 'kv/rep-2: UNAVAILABLE' in str(e.value)


def test_no_answer_by_the_deadline_is_no_majority(tmp_path):
    async def majority(bodies):
        loop = asyncio.get_running_loop()
        await bodies.majority({'kv/rep-1': loop.create_future(), 'kv/rep-2': loop.create_future()},
                              loop.time() + 0.05)
    with pytest.raises(RaftNotReady, match='timed out'):
        run(majority, tmp_path)
