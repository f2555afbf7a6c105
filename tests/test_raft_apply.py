"""The applier (runtime/raft/apply.py) in process: committed entries posted as pysyncobj's thread
would, a stand-in worker server (a real thread pool, a recording endpoint), real Bodies and
Snapshots on a temporary folder; no sockets, no child processes."""
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from runtime.raft.apply import Applier
from runtime.raft.bodies import Bodies
from runtime.raft.decisions import Apply, ApplyLedger, Mark
from runtime.raft.durable import Trace
from runtime.raft.payloads import _digest
from runtime.raft.records import Record
from runtime.raft.snapshots import Snapshots, SnapshotStore


class Server:
    """What the applier uses of the worker's server: its Executor thread, endpoints, status pipe."""

    def __init__(self, pool=None):
        self.pool = pool or ThreadPoolExecutor(1)
        self.applied = []
        self.reports = []
        self.endpoints = self

    def lookup(self, name):
        return name

    def run_endpoint(self, ep, params, body):
        self.applied.append((ep, bytes(body)))
        return {'ok': True, 'n': len(self.applied)}, b''

    def report(self, **event):
        self.reports.append(event)

    @property
    def mark(self):
        """An ApplyingMark stand-in: what the owner would read, in order."""
        server = self

        class Mark:
            def set(self, index, endpoint):
                server.reports.append({'event': 'applying', 'index': index, 'endpoint': endpoint})

            def clear(self):
                server.reports.append({'event': 'applied'})
        return Mark()


def rec(n, body=b'doc', origin=0):
    return Record(f'{n:032x}', '/index', '{}', len(body), _digest(body), origin, body)


def run(tmp_path, script, skipped=(), pool=None):
    async def main():
        server, ledger = Server(pool), ApplyLedger(skipped=skipped)
        bodies = Bodies('kv/rep-0', '', [], str(tmp_path / 'payloads'))
        snapshots = Snapshots('kv/rep-0', SnapshotStore(str(tmp_path / 'snapshots')), None, server.pool, ledger,
                              bodies, [], trailing_logs=0, restore_on_start=True, on_covered=lambda i: None)
        applier = Applier('kv/rep-0', 0, [], ledger, bodies, snapshots, server, Trace('kv/rep-0', folder=''),
                          server.mark)
        loop = asyncio.get_running_loop()
        for part in (bodies, snapshots, applier):
            part.start(loop)
        try:
            return await script(applier, ledger, server, bodies)
        finally:
            await applier.close(RuntimeError('closed'))
            await bodies.close()
            server.pool.shutdown()
    return asyncio.run(main())


def test_entries_are_applied_in_log_order_and_each_write_gets_its_reply(tmp_path):
    async def script(applier, ledger, server, bodies):
        waits = [applier.expect(rec(k).rid) for k in range(3)]
        applier.post(Apply(1, [rec(0), rec(1)]))
        applier.post(Mark(1))
        applier.post(Apply(2, [rec(2)]))
        replies = await asyncio.wait_for(asyncio.gather(*waits), 10)
        return replies, server.applied, ledger.applied_index, ledger.writes_applied
    replies, applied, index, count = run(tmp_path, script)
    assert [h['n'] for h, _ in replies] == [1, 2, 3]
    assert len(applied) == 3 and (index, count) == (2, 3)


def test_a_retried_write_committed_twice_is_applied_once_and_told_so(tmp_path):
    async def script(applier, ledger, server, bodies):
        first = applier.expect(rec(7).rid)
        applier.post(Apply(1, [rec(7)]))
        await asyncio.wait_for(first, 10)
        again = applier.expect(rec(7).rid)
        applier.post(Apply(2, [rec(7)]))
        return await asyncio.wait_for(again, 10), len(server.applied)
    (header, _), calls = run(tmp_path, script)
    assert header.get('duplicate') is True and calls == 1


def test_a_poison_entry_in_the_skip_list_answers_an_error_and_calls_nothing(tmp_path):
    async def script(applier, ledger, server, bodies):
        poisoned, fine = applier.expect(rec(1).rid), applier.expect(rec(2).rid)
        applier.post(Apply(5, [rec(1)]))
        applier.post(Apply(6, [rec(2)]))
        return await asyncio.wait_for(asyncio.gather(poisoned, fine), 10), server, ledger
    ((bad, _), (good, _)), server, ledger = run(tmp_path, script, skipped={5})
    assert not bad['ok'] and 'skipped by the operator' in bad['error']['message']
    assert good['ok'] and len(server.applied) == 1 and ledger.writes_skipped == 1
    assert [e['index'] for e in server.reports if e['event'] == 'applying'] == [6]   # the owner hears the entry


def test_a_large_body_comes_from_the_store_and_a_missing_one_waits_for_its_origin(tmp_path):
    big = os.urandom(5000)

    async def script(applier, ledger, server, bodies):
        local = Record('a' * 32, '/index', '{}', len(big), _digest(big), 0)        # ours: stored before proposing
        await bodies.store(local.rid, big, local.digest)
        late = Record('b' * 32, '/index', '{}', len(big), _digest(big), 1)         # a peer's: its push comes late
        waits = [applier.expect(local.rid), applier.expect(late.rid)]
        applier.post(Apply(1, [local, late]))
        await asyncio.sleep(0.01)
        await bodies.store(late.rid, big, late.digest)
        bodies.arrived(late.rid)
        await asyncio.wait_for(asyncio.gather(*waits), 10)
        return server.applied
    assert run(tmp_path, script) == [('/index', big), ('/index', big)]


def test_closing_fails_the_writes_still_waiting(tmp_path):
    async def script(applier, ledger, server, bodies):
        waiting = applier.expect(rec(1).rid)
        await applier.close(RuntimeError('kv/rep-0 is shutting down'))
        try:
            await waiting
        except RuntimeError as e:
            return str(e)
    assert run(tmp_path, script) == 'kv/rep-0 is shutting down'


def test_messages_posted_from_another_thread_arrive_in_order_at_most_one_wakeup_each(tmp_path):
    """pysyncobj's thread posts through ``post_from_thread``; the worker's ``ExecutorThread`` runs the batches."""
    from runtime.executor_thread import ExecutorThread

    import threading

    async def script(applier, ledger, server, bodies):
        loop = asyncio.get_running_loop()
        wakeups = []
        real = loop.call_soon_threadsafe

        def counting(callback, *args):
            wakeups.append(callback)
            return real(callback, *args)
        loop.call_soon_threadsafe = counting   # this loop only, for this test
        n = 300
        waits = [applier.expect(rec(k).rid) for k in range(n)]

        def pysyncobj_thread():   # posts as pysyncobj's thread does: one Apply per entry, then a Mark
            for k in range(n):
                applier.post_from_thread(Apply(k + 1, [rec(k)]))
            applier.post_from_thread(Mark(n))
        t = threading.Thread(target=pysyncobj_thread)
        t.start()
        replies = await asyncio.wait_for(asyncio.gather(*waits), 20)
        t.join(5)
        del loop.call_soon_threadsafe
        taken = [w for w in wakeups if getattr(w, '__name__', '') == '_take_handoff']
        return replies, ledger.applied_index, len(taken)
    replies, index, taken = run(tmp_path, script, pool=ExecutorThread('executor'))
    assert [h['n'] for h, _ in replies] == list(range(1, 301))   # in log order, each once
    assert index == 300
    assert 1 <= taken <= 300   # one wake-up per handoff, never more than one per message
