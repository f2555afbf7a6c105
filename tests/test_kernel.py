"""Real Jupyter kernels: nothing a notebook started survives the kernel; interrupt spares services."""
from __future__ import annotations

import json
import os
import queue
import textwrap
import time

import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

from conftest import pid_gone, wait_until

TESTS = os.path.dirname(os.path.abspath(__file__))

START = textwrap.dedent('''\
    %load_ext orchestra_nb
    dep = %orchestra up --uses sample_executors:Upper --name kern --replicas 2
    st = dep.status()
    print('PIDS', json.dumps([r['pid'] for r in st['replicas']] + [st['gateway']['pid']]))
''')


def pids_from(text: str) -> list:
    for line in text.splitlines():
        if line.startswith('PIDS '):
            return json.loads(line[5:])
    raise AssertionError(f'the notebook printed no PIDS line; it printed:\n{text}')


def test_notebook_run_by_nbclient_leaves_nothing_after_kernel_shutdown():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('import json'),
                nbformat.v4.new_code_cell(START),
                nbformat.v4.new_code_cell('from docarray.documents import TextDoc\n'
                                          'print((await dep.apost("/upper", TextDoc(text="top-level await"))).text)'),
                nbformat.v4.new_code_cell('print(dep.post("/upper", TextDoc(text="sync in a running loop")).text)'),
                nbformat.v4.new_code_cell(textwrap.dedent('''\
                    bg = %orchestra up --uses sample_executors:Upper --name bg --no-wait
                    import time
                    from orchestra_nb.registry import REGISTRY
                    entry, t0 = REGISTRY.get('bg'), time.monotonic()
                    while entry.state == 'starting' and time.monotonic() - t0 < 60:
                        time.sleep(0.1)
                    procs = [r.process for r in bg.nodes[0].replicas] + [bg.gateway]
                    print('BG', entry.state, json.dumps([p.pid for p in procs]))
                    ''')),
                nbformat.v4.new_code_cell('%orchestra status')]
    client = NotebookClient(nb, timeout=120, kernel_name='python3', resources={'metadata': {'path': TESTS}})
    client.execute()  # starts the kernel, runs every cell, shuts the kernel down (gracefully)
    text = ''.join(o.get('text', '') for c in nb.cells for o in c.get('outputs', []))
    pids = pids_from(text)
    assert len(pids) == 3
    assert "['TOP-LEVEL AWAIT']" in text and "['SYNC IN A RUNNING LOOP']" in text
    bg_line = next(line for line in text.splitlines() if line.startswith('BG '))
    assert bg_line.split()[1] == 'running', bg_line
    pids += json.loads(bg_line.split(' ', 2)[2])
    progress = [o for o in nb.cells[4].outputs if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    assert progress, 'a --no-wait start shows its progress as a widget'
    overview = nb.cells[5].outputs[0]['data']
    assert '<table' in overview['text/html'] and 'bg' in overview['text/plain'] and 'kern' in overview['text/plain']
    wait_until(lambda: all(pid_gone(p) for p in pids), 15, f'replicas {pids} to exit after the kernel shut down')


class Kernel:
    """A kernel driven message by message (for interrupts and restarts)."""

    def __init__(self):
        self.km = KernelManager(kernel_name='python3')
        self.km.start_kernel(cwd=TESTS)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> tuple:
        """Execute ``code``; -> (reply content, printed text)."""
        out = []

        def hook(msg):
            if msg['msg_type'] == 'stream':
                out.append(msg['content']['text'])
            elif msg['msg_type'] == 'error':
                out.append('\n'.join(msg['content']['traceback']))
        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply['content'], ''.join(out)

    def close(self):
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel():
    k = Kernel()
    yield k
    k.close()


def test_interrupt_stops_the_cell_not_the_services_and_restart_stops_them(kernel):
    reply, text = kernel.run('import json\n' + START)
    assert reply['status'] == 'ok', text
    pids = pids_from(text)

    msg_id = kernel.kc.execute('import time\nfor _ in range(600): time.sleep(0.1)')
    deadline = time.monotonic() + 30
    while True:  # wait until the cell runs, then press "interrupt"
        assert time.monotonic() < deadline, 'the long cell never started'
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg['parent_header'].get('msg_id') == msg_id and msg['msg_type'] == 'execute_input':
            break
    time.sleep(0.3)
    kernel.km.interrupt_kernel()
    reply = kernel.kc.get_shell_msg(timeout=30)
    while reply['parent_header'].get('msg_id') != msg_id:
        reply = kernel.kc.get_shell_msg(timeout=30)
    assert reply['content']['status'] == 'error' and reply['content']['ename'] == 'KeyboardInterrupt'

    assert not any(pid_gone(p) for p in pids), 'the interrupt reached the replicas'
    reply, text = kernel.run('from docarray.documents import TextDoc\n'
                             'print(dep.post("/upper", TextDoc(text="still here")).text)')
    assert reply['status'] == 'ok' and "['STILL HERE']" in text, text

    kernel.km.restart_kernel(now=False)
    wait_until(lambda: all(pid_gone(p) for p in pids), 15, f'replicas {pids} to exit after a kernel restart')
    kernel.kc.wait_for_ready(timeout=60)
    reply, text = kernel.run('print("fresh kernel")')
    assert 'fresh kernel' in text


def test_a_killed_kernel_takes_its_replicas_along(kernel):
    reply, text = kernel.run('import json\n' + START)
    assert reply['status'] == 'ok', text
    pids = pids_from(text)
    kernel.km.shutdown_kernel(now=True)  # SIGKILL: no atexit; the lifeline pipes close
    wait_until(lambda: all(pid_gone(p) for p in pids), 15, f'replicas {pids} to exit after the kernel was killed')
