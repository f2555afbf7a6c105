"""Replays Binder's install in a fresh virtual environment and runs notebooks/00-index.ipynb there.

repo2docker (mybinder.org) does, from a clone of the repository: Python from binder/runtime.txt,
``pip install -r binder/requirements.txt``, then ``binder/postBuild`` (``pip install .``).
Here: ``python -m venv`` (no system site-packages) with this interpreter (3.11, as runtime.txt
says), the same two steps on a copy of the repository's files (tracked and untracked, not
ignored: what a clone would hold, plus work in progress), then nbclient *inside that venv*
executes the index notebook with the venv's own kernel, away from this checkout (no PYTHONPATH),
so it imports the installed orchestra-nb.

Cost: dominated by pip installing ~120 packages. Measured on 2 busy cores, wheels from the
local index and pip's cache warm: 65 s (venv 3 s, requirements 53 s, postBuild 5 s, notebook
3 s); with pip's cache cold the requirements step took 69 s. The run prints its own figures
(``pytest -s``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run by the venv's Python: execute the notebook with nbclient and the venv's kernel, then report
# which Python and which orchestra_nb the kernel used.
RUNNER = r'''
import json, os, sys
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
nb.cells.append(nbformat.v4.new_code_cell(
    "import sys as _s, json as _j, orchestra_nb as _o\n"
    "print('KERNEL ' + _j.dumps({'prefix': _s.prefix, 'module': _o.__file__}))"))
NotebookClient(nb, timeout=180, kernel_name='python3',
               resources={'metadata': {'path': os.path.dirname(path)}}).execute()
texts = []
for cell in nb.cells:
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'error':
            raise SystemExit(f"error in cell: {cell.source[:200]}\n{o.get('ename')}: {o.get('evalue')}")
        texts.append(o.get('text', '') or o.get('data', {}).get('text/plain', ''))
print('\n'.join(texts))
'''


def _repo_files() -> list:
    out = subprocess.run(['git', '-C', ROOT, 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return [f for f in out.split('\0') if f and os.path.isfile(os.path.join(ROOT, f))]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_binder_install_runs_the_index_notebook(tmp_path):
    runtime = open(os.path.join(ROOT, 'binder', 'runtime.txt')).read().strip()
    assert runtime == f'python-{sys.version_info[0]}.{sys.version_info[1]}', \
        f'binder/runtime.txt says {runtime}; this test runs Python {sys.version.split()[0]}'

    repo = tmp_path / 'repo'                   # a clone's files, so pip's in-tree build leaves ROOT alone
    for f in _repo_files():
        os.makedirs(repo / os.path.dirname(f), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), repo / f)

    venv = tmp_path / 'venv'
    bindir = venv / 'bin'
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
    env.update(PATH=f'{bindir}{os.pathsep}{env.get("PATH", "")}', VIRTUAL_ENV=str(venv),
               ORCHESTRA_TUTORIAL_SMALL='1')
    times = {}

    def step(name, cmd, timeout, **kw):
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout, **kw)
        times[name] = time.monotonic() - t0
        assert proc.returncode == 0, f'{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
        return proc.stdout

    # the base interpreter of this one (sys.executable may itself be a venv's)
    base = getattr(sys, '_base_executable', sys.executable)
    step('venv', [base, '-m', 'venv', str(venv)], 120)
    assert 'include-system-site-packages = false' in (venv / 'pyvenv.cfg').read_text()
    step('requirements', [str(bindir / 'python'), '-m', 'pip', 'install', '-q', '-r', 'binder/requirements.txt'], 900)
    step('postBuild', ['bash', 'binder/postBuild'], 300)
    out = step('00-index', [str(bindir / 'python'), '-c', RUNNER, str(repo / 'notebooks' / '00-index.ipynb')],
               300)
    print('binder replay, seconds: ' + ', '.join(f'{k} {v:.0f}' for k, v in times.items()))

    assert re.findall(r'HELLO \d', out) == [f'HELLO {i}' for i in range(4)], out
    kernel = json.loads(re.search(r'^KERNEL (.*)$', out, re.M).group(1))
    assert os.path.realpath(kernel['prefix']) == os.path.realpath(venv), kernel       # the venv's kernel ...
    assert os.path.realpath(kernel['module']).startswith(os.path.realpath(venv)), kernel  # ... and its install
