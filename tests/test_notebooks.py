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
        '05-external-yaml-cli.ipynb', '06-scaling-out.ipynb', '07-http.ipynb', '08-monitoring.ipynb'}

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
    probe = nbformat.v4.new_code_cell(LEFTOVER + '\n' + extra)
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


def frames(nb) -> list:
    """Every frozen Dashboard frame in the saved outputs: (header, {replica: requests},
    RAFT rows as (replica, role, writes applied))."""
    out = []
    for cell in nb.cells:
        for o in cell.get('outputs', []):
            data = o.get('data', {})
            plain = data.get('text/plain', '')
            if 'image/png' not in data or '\n\nprocesses\n' not in plain:
                continue
            header, *sections = plain.split('\n\n')
            procs = next(s for s in sections if s.startswith('processes\n')).splitlines()[2:]
            counts = {line.split()[0]: int(line.split()[4]) for line in procs if '/rep-' in line.split()[0]}
            raft = next((s for s in sections if s.startswith('RAFT\n')), '').splitlines()[2:]
            out.append((header, counts, [(f'{header.split()[1]}/{line.split()[0]}', line.split()[1],
                                          int(line.split()[-1])) for line in raft]))
    return out


def no_stuck_bars(nb) -> None:
    """No output anywhere is a progress bar at 0 % (a widget saved before it moved)."""
    for cell in nb.cells:
        for o in cell.get('outputs', []):
            plain = o.get('data', {}).get('text/plain', '') if 'data' in o else o.get('text', '')
            assert not re.search(r'(^|\s)0%\|', plain), plain


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
    kill = tagged(nb, 'kill')     # the supervisor's note: one informational line, no stderr block
    assert not [o for o in kill['outputs'] if o.get('name') == 'stderr'], kill['outputs']
    notes = [o['data']['text/plain'] for o in kill['outputs']
             if o.get('data', {}).get('text/plain', '').startswith('ⓘ')]
    assert len(notes) == 1 and 'died' in notes[0], kill['outputs']
    # the frozen frames say what the notebook printed: the first after its distribution, the second
    # after the restart cell's distribution
    shown = frames(nb)
    assert len(shown) == 2, shown
    printed = [{m[0]: int(m[1]) for m in re.findall(r'^(\S+/rep-\d)\s+\w+\s+\d+\s+(\d+)$', text(c), re.M)}
               for c in nb.cells if 'distribution(dep' in ''.join(c.get('source', ''))]
    assert shown[0][1] == {k: v for k, v in printed[0].items()} and sum(printed[0].values()) == 40, (shown, printed)
    assert shown[1][1] == printed[-1], (shown, printed)
    for header, _, _ in shown:
        assert 'running at' in header and 'stopped at' not in header, header


def check_02(nb, probe):
    table = text(tagged(nb, 'polling-table'))
    rows = re.findall(r"^(replicas=2|shards=2)\s+(ALL|ANY)\s+(\d+)\s+\['hello'\]", table, re.M)
    assert {(t, p): int(n) for t, p, n in rows} == {    # Jina's table: calls of the Executor body
        ('replicas=2', 'ALL'): 1, ('replicas=2', 'ANY'): 1, ('shards=2', 'ALL'): 2, ('shards=2', 'ANY'): 1}, table
    policies = text(tagged(nb, 'polling-dict'))
    rows = {label.strip(): [int(x) for x in ns.split()]
            for label, ns in re.findall(r'^(.*?)((?:\s+\d+){3})$', policies, re.M)}
    assert rows == {"{'/custom': 'ALL', '*': 'ANY'}": [3, 1, 1],   # '*' beats the /search default
                    "{'/index': 'ANY', '*': 'ALL'}": [3, 3, 1],
                    'None (the defaults)': [1, 3, 1]}, policies
    reduced = re.findall(r'^(q\d): (\d+) matches from shards \[(.*)\], shards_seen \[0, 1\]$',
                         text(tagged(nb, 'reduce')), re.M)
    assert [q for q, _, _ in reduced] == ['q0', 'q1'], reduced        # one doc per id, input order
    for _, n, shards in reduced:
        order = [int(x) for x in shards.split(',')]
        assert int(n) == 6 and order == sorted(order) and set(order) == {0, 1}   # every shard, shard order
    assert "('q0', [0], 3), ('q0', [1], 3)" in text(tagged(nb, 'no-reduce'))


def check_03(nb, probe):
    def table(tag):
        return re.findall(r'^(stateful_executor/rep-\d)\s+(leader|follower)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$',
                          text(tagged(nb, tag)), re.M)
    rows = table('writes-and-reads')
    assert len(rows) == 3 and sorted(r[1] for r in rows) == ['follower', 'follower', 'leader'], rows
    assert {int(r[4]) for r in rows} == {30 // 5}, rows              # every replica applied every write
    assert sum(int(r[5]) for r in rows) == 6, rows                   # each of the 6 reads reached one replica
    out = text(tagged(nb, 'leader'))
    old = re.search(r'killed the leader (\S+) \(pid (\d+), term (\d+)\)', out)
    new = re.search(r'new leader (\S+) \(pid (\d+), term (\d+)\)', out)
    assert old and new, out
    assert new.group(2) != old.group(2) and int(new.group(3)) > int(old.group(3)), out
    rows = table('after-election')
    assert len(rows) == 3 and [r[1] for r in rows].count('leader') == 1, rows
    assert {int(r[4]) for r in rows} == {30 // 5 + 1} and len({r[3] for r in rows}) == 1, rows  # caught up
    assert '35 of 35 documents found after the restart' in text(tagged(nb, 'restarted'))
    bench = text(tagged(nb, 'bench'))
    assert 'replicas=1' in bench and 'replicas=3 RAFT' in bench, bench
    assert '✓ setups: 2/2 setups' in bench, bench                  # finished progress, shown finished
    no_stuck_bars(nb)
    (header, counts, raft), = frames(nb)                             # the frame: a fresh, settled reading...
    assert [role for _, role, _ in raft].count('leader') == 1 and len(raft) == 3, raft
    assert {(name, role, int(w)) for name, role, _, _, w, _ in rows} == set(raft), (rows, raft)   # ...as printed
    assert images(tagged(nb, 'plot')) == 1                           # `result.plot();` shows the figure once


def check_04(nb, probe):
    state = json.loads(re.search(r'^STATE (.*)$', probe, re.M).group(1))
    total, uuids, n = state['TOTAL'], state['UUIDS'], state['REPLICAS']
    if state['SIMULATED']:
        assert 'simulating 4 with CUDA_TOTAL_DEVICES=4' in text(tagged(nb, 'gpus'))
        assert state['CUDA_TOTAL_DEVICES'] is None                  # the last cell undid the simulation
    expected = {'RR': [str(i % total) for i in range(n)],
                'RR0:2': [str(list(range(total))[0:2][i % len(list(range(total))[0:2])]) for i in range(n)],
                'RR' + ','.join(uuids): [uuids[i % len(uuids)] for i in range(n)]}
    if total >= 4:
        expected['RR1,3'] = [['1', '3'][i % 2] for i in range(n)]
    assert state['placements'] == expected, state
    shown = text(tagged(nb, 'gpu-table'))                            # ... and the printed table says so
    for spec, devices in expected.items():
        cells = [d if len(d) <= 8 else d[:8] + '…' for d in devices]
        label = spec if len(spec) <= 22 else spec[:21] + '…'
        assert re.search(r'^' + re.escape(label) + r'\s+' + r'\s+'.join(map(re.escape, cells)) + r'$', shown, re.M), \
            (spec, shown)
    if state['SIMULATED']:
        assert "assignment: {'enc/rep-0': '0', 'enc/rep-1': '1'}" in text(tagged(nb, 'gpu-status'))


def check_05(nb, probe):
    out = text(tagged(nb, 'external'))
    rows = re.findall(r'^(remote/rep-\d)\s+127\.0\.0\.1:(\d+)\s+external=True\s+ready\s+pid (\d+)$', out, re.M)
    assert [r[0] for r in rows] == ['remote/rep-0', 'remote/rep-1'], out
    started = re.search(r'external replicas: pids \[(\d+), (\d+)\] on ports \[(\d+), (\d+)\]', text(
        next(c for c in nb.cells if 'external replicas: pids' in text(c))))
    assert [(r[1], r[2]) for r in rows] == [(started.group(3), started.group(1)), (started.group(4), started.group(2))]
    yaml = text(tagged(nb, 'yaml'))      # one line, not a wall of 30 answers
    assert re.search(r'^6 answers: HELLO 0! \(pid \d+\) … HELLO 5! \(pid \d+\)$', yaml, re.M), yaml
    cli = text(tagged(nb, 'cli'))
    assert '6 answers from' in cli and 'orchestra deployment exited with 0' in cli, cli
    panel = text(tagged(nb, 'panel'))
    assert "['ready', 'ready']" in panel and 'stopped' in panel, panel
    pictures = [o for c in nb.cells for o in c.get('outputs', [])
                if o.get('data', {}).get('text/plain', '').startswith('ControlPanel, closed at')]
    assert len(pictures) == 1 and 'orchestra-control-panel-picture' in pictures[0]['data']['text/html'], pictures


def check_06(nb, probe):
    local = text(tagged(nb, 'local'))
    assert 'the Flow answered: 6 of 6 documents indexed' in local, local        # N_DOCS when small
    assert '/count: 6 documents on replica' in local, local                      # the RAFT Store holds them all
    roles = re.findall(r'^store/rep-\d\s+(leader|follower)\s+writes applied: \d+', local, re.M)
    assert sorted(roles) == ['follower', 'follower', 'leader'], local
    assert "'search' closed: running=False" in local, local
    compose = text(tagged(nb, 'compose'))
    services = re.findall(r'^(\S+)\s+(?:\w+ shard \d rep \d|gateway, publishes \S+)\s+(.*?)\s+search-secret$',
                          compose, re.M)
    assert [svc for svc, rest in services] == [                        # one per replica + the gateway
        'tagger-shard-0-rep-0', 'tagger-shard-1-rep-0', 'store-rep-0', 'store-rep-1', 'store-rep-2', 'gateway'], compose
    peers = 'store-rep-0 store-rep-1 store-rep-2'
    assert [rest.split()[:3] == peers.split() for svc, rest in services] == [False, False, True, True, True, False]
    assert 'volumes: store-rep-0-workspace store-rep-1-workspace store-rep-2-workspace' in compose, compose
    assert 'secrets: search-secret (file ./search-secret, mode 600)' in compose, compose
    k8s = {(kind, name): rest.strip() for kind, name, rest in
           re.findall(r'^\S+\.yml +(\w+) +(\S+) *(.*)$', text(tagged(nb, 'kubernetes')), re.M)}
    assert 'podManagementPolicy=Parallel serviceName=store-headless' in k8s[('StatefulSet', 'store')], k8s
    assert k8s[('Service', 'store-headless')] == 'headless (clusterIP=None) publishNotReadyAddresses', k8s
    for s in (0, 1):                                                  # a Deployment + headless Service per shard
        assert k8s[('Deployment', f'tagger-shard-{s}')] == 'replicas=1', k8s
        assert k8s[('Service', f'tagger-shard-{s}-headless')] == 'headless (clusterIP=None)', k8s
    assert ('Deployment', 'gateway') in k8s and k8s[('Service', 'gateway')] == 'ClusterIP', k8s
    assert k8s[('Secret', 'search-secret')] == 'type=Opaque, file mode 600', k8s
    assert k8s[('ConfigMap', 'search-config')] == 'data: orchestra.yml, execs.py', k8s
    assert len(k8s) == 11, k8s
    cli = text(tagged(nb, 'cli'))
    for line in ('orchestra export docker-compose exited with 0', 'orchestra export kubernetes exited with 0',
                 'same services as the Python export: True', 'same manifests as the Python export: True'):
        assert line in cli, cli


def check_07(nb, probe):
    start = text(tagged(nb, 'start'))
    assert re.search(r"\{'grpc': '127\.0\.0\.1:\d+', 'http': 'http://127\.0\.0\.1:\d+'\}", start), start
    curl = text(tagged(nb, 'curl'))
    assert re.findall(r'^HELLO \d!$', curl, re.M) == [f'HELLO {i}!' for i in range(3)], curl   # N_DOCS when small
    assert "header: /shout {'code': 0, 'description': ''}" in curl, curl
    paths = text(tagged(nb, 'openapi'))
    for line in (r'POST\s+/shout\s+Endpoint /shout', r'GET\s+/dry_run', r'POST\s+/post', r'/docs: 200'):
        assert re.search(line, paths), (line, paths)
    assert 'TextDoc fields: id, text, url, embedding, bytes_' in paths or 'TextDoc fields:' in paths, paths
    errors = text(tagged(nb, 'errors'))
    assert "422 [('text', 'Input should be a valid string')]" in errors, errors
    assert "404 no Executor serves endpoint '/whisper'; endpoints: /shout" in errors, errors
    assert 'still serving: OK' in errors, errors
    clients = text(tagged(nb, 'clients'))
    assert "'HELLO 0?'" in clients and 'same answers over gRPC and HTTP: True' in clients, clients
    assert "'web' closed: running=False" in text(tagged(nb, 'close'))


def check_08(nb, probe):
    assert 'its gateway at 127.0.0.1:' in text(tagged(nb, 'owner'))
    assert '3 writes and 4 reads answered' in text(tagged(nb, 'traffic'))       # N_DOCS 6, N_READS 4 when small
    assert "SecretRequired: the gateway at 127.0.0.1:" in text(tagged(nb, 'wrong-secret'))
    values = text(tagged(nb, 'values'))
    writes = re.search(r'writes applied per replica: (\{.*\})', values).group(1)
    assert set(re.findall(r"'store/rep-\d': (\d+)", writes)) == {'3'}, values    # every replica applied the 3
    reads = re.search(r'reads served per replica: +(\{.*\})', values).group(1)
    assert sum(int(n) for n in re.findall(r': (\d+)', reads)) == 4, values        # each read on one replica
    metrics = text(tagged(nb, 'metrics'))
    assert metrics.count('orchestra_raft_role{') == 3 and 'role="leader"' in metrics, metrics
    assert metrics.count('store_index_seconds_count{') == 3, metrics              # the Executor's own metric
    prom = text(tagged(nb, 'prometheus'))
    if 'not installed' not in prom:
        assert "sum(orchestra_gateway_requests_total)  ->  [('', '7')]" in prom, prom
        assert "count(count_values(\"index\", orchestra_raft_applied_index))  ->  [('', '1')]" in prom, prom
        assert "sum(orchestra_raft_role{role=\"leader\"})  ->  [('', '1')]" in prom, prom
    assert 'the other process exited with 0' in text(tagged(nb, 'close'))
    assert images(tagged(nb, 'dashboard')) == 1   # the last frame, left by dash.close()


EXTRA = {'04-gpus.ipynb': "print('STATE ' + _json.dumps({'TOTAL': TOTAL, 'UUIDS': UUIDS, 'REPLICAS': REPLICAS, "
                          "'SIMULATED': SIMULATED, 'placements': placements, "
                          "'CUDA_TOTAL_DEVICES': __import__('os').environ.get('CUDA_TOTAL_DEVICES')}))"}


CHECKS = {'00-index.ipynb': check_00, '01-replicas.ipynb': check_01, '02-shards-and-polling.ipynb': check_02,
          '03-stateful-raft.ipynb': check_03,
          '04-gpus.ipynb': check_04,
          '05-external-yaml-cli.ipynb': check_05,
          '06-scaling-out.ipynb': check_06,
          '07-http.ipynb': check_07,
          '08-monitoring.ipynb': check_08}


def _params():
    for p in NOTEBOOKS:
        name = os.path.basename(p)
        yield pytest.param(p, id=name, marks=[pytest.mark.slow] if name in SLOW else [])


@pytest.mark.parametrize('path', list(_params()))
def test_tutorial_runs_shows_what_it_says_and_leaves_nothing_running(path, monkeypatch):
    nb, probe = run_notebook(path, monkeypatch, EXTRA.get(os.path.basename(path), ''))
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


PLOT_SETUP = """
from orchestra_nb.bench import NotebookBenchResult, SetupResult
result = NotebookBenchResult(
    [SetupResult('replicas=1', 1, False, None, 1, index_seconds=1.0, search_qps=50.0, per_replica={'r0': {'reads': 9}}),
     SetupResult('replicas=3 RAFT', 3, True, None, 1, index_seconds=2.0, replicated_seconds=2.5, search_qps=80.0,
                 per_replica={'a': {'reads': 3}, 'b': {'reads': 3}, 'c': {'reads': 3}})],
    {'docs': 100, 'dim': 8, 'queries': 9}, {'cpus': 2})
"""


def test_bench_plot_shows_its_figure_once_in_a_kernel():
    """``result.plot();`` (the tutorial's line) shows the figure; so does ``result.plot()`` -- once."""
    cells = {'setup': PLOT_SETUP, 'semicolon': 'result.plot();', 'bare': 'result.plot()',
             'assigned': 'fig = result.plot()\nprint(type(fig).__mro__[1].__name__, len(fig.axes))',
             'later': 'fig', 'quiet': 'quiet = result.plot(show=False)'}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in cells.values()])
    NotebookClient(nb, timeout=120, kernel_name='python3').execute()
    shown = dict(zip(cells, nb.cells))
    assert [images(shown[k]) for k in ('semicolon', 'bare', 'assigned', 'later', 'quiet')] == [1, 1, 1, 1, 0]
    assert 'Figure 3' in text(shown['assigned'])                         # it still returns the Figure
    assert not [o for c in nb.cells for o in c.outputs if o.get('output_type') == 'error']


#: what JupyterLab 4 writes into a notebook's metadata when it opens one with the python3 kernel
#: (tests/test_browser.py checks a saved one against the stored files); `version` is the kernel's
JUPYTERLAB_METADATA = {
    'kernelspec': {'display_name': 'Python 3 (ipykernel)', 'language': 'python', 'name': 'python3'},
    'language_info': {'codemirror_mode': {'name': 'ipython', 'version': 3}, 'file_extension': '.py',
                      'mimetype': 'text/x-python', 'name': 'python', 'nbconvert_exporter': 'python',
                      'pygments_lexer': 'ipython3'},
}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_tutorials_are_stored_as_jupyterlab_saves_them(path):
    """Opening a tutorial must not make a fresh clone dirty: the stored file already has the
    metadata JupyterLab writes, no outputs, and JupyterLab's layout (nbformat's, indent 1)."""
    raw = open(path, encoding='utf-8').read()
    nb = json.loads(raw)
    info = dict(nb['metadata'].get('language_info', {}))
    assert isinstance(info.pop('version', None), str), nb['metadata']
    assert {'kernelspec': nb['metadata'].get('kernelspec'), 'language_info': info} == JUPYTERLAB_METADATA
    assert set(nb['metadata']) == set(JUPYTERLAB_METADATA), nb['metadata']
    assert (nb['nbformat'], nb['nbformat_minor']) == (4, 5) and all('id' in c for c in nb['cells'])
    for c in nb['cells']:
        if c['cell_type'] == 'code':
            assert c['outputs'] == [] and c['execution_count'] is None, c['source']
    assert raw == nbformat.writes(nbformat.reads(raw, as_version=4)) + '\n'
