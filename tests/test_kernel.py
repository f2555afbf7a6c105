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
                    procs = [r.process for r in bg.stages[0].replicas] + [bg.gateway]
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

    def message(self, msg_id: str, msg_type: str, what: str, timeout: float = 30) -> dict:
        """The next ``msg_type`` message for request ``msg_id`` (``execute_reply`` from the shell
        channel, any other type from iopub); fails naming ``what`` after ``timeout`` s."""
        get = self.kc.get_shell_msg if msg_type == 'execute_reply' else self.kc.get_iopub_msg
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f'timed out after {timeout} s waiting for {what}'
            try:
                msg = get(timeout=1)
            except queue.Empty:
                continue
            if msg['parent_header'].get('msg_id') == msg_id and msg['msg_type'] == msg_type:
                return msg

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
    kernel.message(msg_id, 'execute_input', 'the long cell to start')   # then press "interrupt"
    time.sleep(0.3)
    kernel.km.interrupt_kernel()
    reply = kernel.message(msg_id, 'execute_reply', 'the interrupted cell to reply')
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


def test_interrupting_a_post_shows_one_line_and_the_deployment_keeps_running(kernel):
    reply, text = kernel.run(textwrap.dedent('''\
        %load_ext orchestra_nb
        from docarray.documents import TextDoc
        slow = %orchestra up --uses sample_executors:WhoAmI --name slow --uses-with '{"slow_replicas": [0], "delay": 4}'
        '''))
    assert reply['status'] == 'ok', text
    msg_id = kernel.kc.execute('slow.post("/who", TextDoc(text="x"))')
    kernel.message(msg_id, 'execute_input', 'the post cell to start')   # then "interrupt" while post waits
    time.sleep(0.5)
    kernel.km.interrupt_kernel()
    error = kernel.message(msg_id, 'error', 'the error the notebook shows for the interrupted cell')['content']
    shown = '\n'.join(error['traceback'])
    assert shown == "KeyboardInterrupt: slow.post('/who') was cancelled; Deployment 'slow' is still running", shown
    # its reply first: a cell sent before it may still be aborted (stop_on_error)
    kernel.message(msg_id, 'execute_reply', 'the interrupted cell to reply')
    for _ in range(3):  # ipykernel aborts what arrives while it still clears the failed cell's queue
        reply, text = kernel.run('print(slow.running, len(slow.post("/who", TextDoc(text="y"))))')
        if reply['status'] != 'aborted':
            break
        time.sleep(0.5)
    assert reply['status'] == 'ok' and 'True 1' in text, text
    kernel.run('%orchestra down --all')


def test_a_closed_dashboard_is_saved_as_an_image(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent('''\
                    from docarray.documents import TextDoc
                    from orchestra_nb import Dashboard, Deployment
                    dep = Deployment(name='saved', uses='sample_executors:Upper', replicas=2).start()
                    other = Deployment(name='other', uses='sample_executors:Upper').start()''')),
                nbformat.v4.new_code_cell('dash = Dashboard(dep, interval=0.2)\ndash'),
                nbformat.v4.new_code_cell('Dashboard(other, interval=0.2)'),
                nbformat.v4.new_code_cell(textwrap.dedent('''\
                    import time
                    dep.post('/upper', [TextDoc(text='x')] * 5, request_size=1)
                    t0 = time.monotonic()
                    while '5 requests' not in dash.header.value and time.monotonic() - t0 < 30:
                        time.sleep(0.1)
                    dash.refresh()''')),
                nbformat.v4.new_code_cell('dash.close()'),
                nbformat.v4.new_code_cell('other.close()\ndep.close()')]
    client = NotebookClient(nb, timeout=120, kernel_name='python3', resources={'metadata': {'path': TESTS}})
    client.execute()
    nbformat.write(nb, str(tmp_path / 'saved.ipynb'))
    saved = nbformat.read(str(tmp_path / 'saved.ipynb'), as_version=4)
    for cell, name in ((saved.cells[1], 'saved'), (saved.cells[2], 'other')):  # closed / its deployment stopped
        data = [o for o in cell.outputs if o.get('output_type') in ('display_data', 'execute_result')]
        assert len(data) == 1, cell.outputs
        bundle = data[0]['data']
        assert 'application/vnd.jupyter.widget-view+json' not in bundle, f'{name}: still the live widget'
        assert 'image/png' in bundle, bundle.keys()
        import base64
        assert base64.b64decode(bundle['image/png'])[:8] == b'\x89PNG\r\n\x1a\n'
        assert f'Deployment {name}' in bundle['text/plain'] and f'{name}/rep-0' in bundle['text/plain']
    assert '5 requests' in saved.cells[1].outputs[0]['data']['text/plain']
