"""ExecutorThread: one thread, calls in order and one at a time, errors and cancellation."""
import asyncio
import threading
import time

import pytest

from runtime.executor_thread import ExecutorThread


def test_calls_run_in_order_one_at_a_time_on_one_thread():
    thread = ExecutorThread('t')
    seen, running, overlap = [], [0], []

    def work(i):
        running[0] += 1
        overlap.append(running[0])
        time.sleep(0.001)
        seen.append((i, threading.current_thread().name))
        running[0] -= 1
        return i * 2

    async def main():
        loop = asyncio.get_running_loop()
        # the fast way in and run_in_executor (the batcher, the RAFT applier) share the one thread
        futures = [thread.run(work, i) if i % 2 else loop.run_in_executor(thread, work, i) for i in range(20)]
        return await asyncio.gather(*futures)

    try:
        assert asyncio.run(main()) == [i * 2 for i in range(20)]
    finally:
        thread.shutdown()
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {'t'} and max(overlap) == 1


def test_an_exception_reaches_the_caller_and_the_thread_keeps_serving():
    thread = ExecutorThread()

    async def main():
        with pytest.raises(ZeroDivisionError):
            await thread.run(lambda: 1 / 0)
        return await thread.run(lambda: 'still here')

    try:
        assert asyncio.run(main()) == 'still here'
        assert thread.submit(lambda: 5).result(timeout=5) == 5
    finally:
        thread.shutdown()


def test_shutdown_cancels_queued_calls_and_refuses_new_ones():
    thread = ExecutorThread()
    gate = threading.Event()
    first = thread.submit(gate.wait, 5)
    deadline = time.monotonic() + 5
    while not first.running():   # the thread has taken it: only `queued` waits in the queue
        assert time.monotonic() < deadline, 'the thread never started the first call'
        time.sleep(0.001)
    queued = thread.submit(lambda: 'never')
    thread.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert first.result(timeout=5) is True
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match='after shutdown'):
        thread.submit(lambda: None)


def test_a_cancelled_await_does_not_break_the_thread():
    thread = ExecutorThread()

    async def main():
        slow = thread.run(time.sleep, 0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await thread.run(lambda: 'next')

    try:
        assert asyncio.run(main()) == 'next'
    finally:
        thread.shutdown()
