"""Every tutorial in notebooks/ runs headless, top to bottom, in a real kernel (nbclient),
with ORCHESTRA_TUTORIAL_SMALL=1; then we check what it showed and that nothing is left running.

Cells the checks read carry a tag (cell metadata ``tags``), e.g. ``distribution``.
"""
from __future__ import annotations

import glob
import json
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))
SLOW = {'01-replicas.ipynb', '02-shards-and-polling.ipynb', '03-stateful-raft.ipynb', '04-gpus.ipynb',
        '05-external-yaml-cli.ipynb'}

# Run in the notebook's kernel after its last cell: every process the kernel started is gone, except
# its own fork server (runtime/forkserver.py, a direct child running zygote_main).
LEFTOVER = r'''
import json as _json, time as _time, psutil as _psutil
def _leftover():
    me = _psutil.Process()
    out = []
    for p in me.children(recursive=True):
        try:
            if p.ppid() == me.pid and 'zygote_main' in ' '.join(p.cmdline()):
                continue
            out.append([p.pid, ' '.join(p.cmdline())[:120]])
        except _psutil.NoSuchProcess:
            pass
    return out
_deadline = _time.monotonic() + 20
while _leftover() and _time.monotonic() < _deadline:
    _time.sleep(0.2)
print('LEFTOVER ' + _json.dumps(_leftover()))
'''


def run_notebook(path: str, monkeypatch, extra: str = '') -> tuple:
    """Execute every cell of ``path``, then LEFTOVER (and ``extra``) in the same kernel.

    Returns (executed notebook, text printed by the extra cells)."""
    monkeypatch.setenv('ORCHESTRA_TUTORIAL_SMALL', '1')      # the kernel inherits this environment
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=180, kernel_name='python3',
                            resources={'metadata': {'path': os.path.dirname(path)}})
    probe = nbformat.v4.new_code_cell(LEFTOVER + extra)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)     # raises CellExecutionError naming the cell that failed
        nb.cells.append(probe)                   # execute_cell stores the outputs in nb.cells[index]
        try:
            probe = client.execute_cell(probe, len(nb.cells) - 1)
        finally:
            nb.cells.pop()
    return nb, text(probe)


def text(cell) -> str:
    """Everything a code cell printed or returned, as text."""
    parts = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream':
            parts.append(o.get('text', ''))
        elif o.get('output_type') in ('execute_result', 'display_data'):
            parts.append(o.get('data', {}).get('text/plain', ''))
    return ''.join(parts)


def tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, f'expected one cell tagged {tag!r}, found {len(cells)}'
    return cells[0]


def images(cell) -> int:
    return sum(1 for o in cell.get('outputs', []) if 'image/png' in o.get('data', {}))


# -- what each tutorial must show ------------------------------------------------------------------

def check_00(nb, probe):
    out = text(tagged(nb, 'start'))
    assert [f'HELLO {i}' for i in range(4)] == re.findall(r'HELLO \d', out), out


def check_01(nb, probe):
    rows = re.findall(r'^(uneven/rep-\d)\s+(slow|normal)\s+\d+\s+(\d+)$', text(tagged(nb, 'distribution')), re.M)
    assert sorted(r[0] for r in rows) == ['uneven/rep-0', 'uneven/rep-1', 'uneven/rep-2'], rows
    counts = {name: int(n) for name, _, n in rows}
    assert sum(counts.values()) == 40                                  # N_DOCS when small
    assert [r[1] for r in rows if r[0] == 'uneven/rep-0'] == ['slow']
    assert counts['uneven/rep-0'] < min(counts['uneven/rep-1'], counts['uneven/rep-2']), counts  # idle first
    assert '40 of 40 requests answered' in text(tagged(nb, 'kill'))
    back = re.search(r'pid (\d+) killed, now pid (\d+) ready', text(tagged(nb, 'restart')))
    assert back and back.group(1) != back.group(2), text(tagged(nb, 'restart'))


CHECKS = {'00-index.ipynb': check_00, '01-replicas.ipynb': check_01}


def _params():
    for p in NOTEBOOKS:
        name = os.path.basename(p)
        yield pytest.param(p, id=name, marks=[pytest.mark.slow] if name in SLOW else [])


@pytest.mark.parametrize('path', list(_params()))
def test_tutorial_runs_shows_what_it_says_and_leaves_nothing_running(path, monkeypatch):
    nb, probe = run_notebook(path, monkeypatch)
    errors = [o for c in nb.cells for o in c.get('outputs', []) if o.get('output_type') == 'error']
    assert not errors, errors
    left = json.loads(re.search(r'^LEFTOVER (.*)$', probe, re.M).group(1))
    assert left == [], f'still running after the last cell: {left}'
    name = os.path.basename(path)
    assert name in CHECKS, f'{name}: add its checks to CHECKS'
    CHECKS[name](nb, probe)


def test_tutorials_do_not_assign_to_underscore():
    """``_`` is IPython's last result: a tutorial never uses it as a throwaway name."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == 'code':
                assert not re.search(r'^\s*_\s*=', cell.source, re.M), (os.path.basename(path), cell.source)


def test_tutorials_shrink_through_one_environment_variable():
    for path in NOTEBOOKS:
        if os.path.basename(path) == '00-index.ipynb':
            continue
        source = '\n'.join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == 'code')
        assert "os.environ.get('ORCHESTRA_TUTORIAL_SMALL'" in source, path
