"""The toolkit's own asyncio loop, run in a daemon thread.

Every sync call (``Deployment.post``, ``Client.post``...) submits its coroutine
here and waits, so it works the same in a script and inside a notebook whose
loop is already running -- and the notebook's loop is never patched. Async
variants (``apost``) await the same coroutine from whatever loop the caller is in.

    >>> run_sync(asyncio.sleep(0, 'done'), timeout=1, what='a nap')
    'done'
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, Optional, TypeVar

T = TypeVar('T')

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None


class RequestCancelled(KeyboardInterrupt):
    """A sync call interrupted (Ctrl-C, the notebook's interrupt button): the request was
    cancelled, the services keep running. Shown as its one-line message, not as a traceback
    through this loop's internals (``_render_traceback_`` is what IPython shows)."""

    def _render_traceback_(self) -> list:
        return [f'KeyboardInterrupt: {self}']


def background_loop() -> asyncio.AbstractEventLoop:
    """The toolkit's loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run():
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name='orchestra-loop', daemon=True).start()
            ready.wait(5)
            _loop = loop
        return _loop


def _in_background_loop() -> bool:
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def run_sync(coro: Coroutine[Any, Any, T], timeout: Optional[float] = None, what: str = 'an operation') -> T:
    """Run ``coro`` on the toolkit's loop and wait for its result.

    Raises ``TimeoutError`` naming ``what`` when ``timeout`` seconds pass.
    """
    if _in_background_loop():
        coro.close()
        raise RuntimeError('a sync orchestra call was made from inside the toolkit loop; use the async variant')
    fut = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise TimeoutError(f'timed out after {timeout:.1f} s waiting for {what}') from None
    except KeyboardInterrupt:
        fut.cancel()  # the interrupt button stops the cell, not the services
        raise


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the toolkit's loop from any other loop (top-level await in a notebook)."""
    if _in_background_loop():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, background_loop()))
