"""JupyterLab in headless Chromium: a Dashboard renders and updates; a ControlPanel manages a
deployment started by ``%orchestra up`` (lists it, scales it, stops it); the tutorial
``notebooks/01-replicas.ipynb`` runs with Run All, its Dashboard shows every replica, and nothing
is left running after it.

Screenshots go to the test's tmp dir, and also to ``$ORCHESTRA_SCREENSHOTS`` when set
(``ORCHESTRA_SCREENSHOTS=docs/images`` refreshes the pictures in the docs and README)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import nbformat
import psutil
import pytest

from conftest import free_port, pid_gone, wait_until

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is absent: install Debian's chromium package (.ci/apt-packages.txt)"),
]

NOTEBOOK = [
    '''import json, threading
from docarray import DocList
from docarray.documents import TextDoc
from orchestra_nb import Deployment, Executor, requests

class Web(Executor):
    @requests(on='/web')
    def web(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        return docs

dep = Deployment(name='web', uses=Web, replicas=2)
dep.start()
st = dep.status()
with open('pids.json', 'w') as f:
    json.dump([r['pid'] for r in st['replicas']] + [st['gateway']['pid']], f)''',
    '''from orchestra_nb import Dashboard
dash = Dashboard(dep)
dash''',
    '''stop = threading.Event()
def load():  # traffic in the background: the kernel stays idle while the dashboard moves
    while not stop.wait(0.05):
        dep.post('/web', DocList[TextDoc]([TextDoc(text='x')] * 4), request_size=1)
threading.Thread(target=load, daemon=True).start()''',
]


PANEL_NOTEBOOK = [
    'import json\n%load_ext orchestra_nb\nviamagic = %orchestra up --uses echo --name viamagic --replicas 2',
    'from orchestra_nb import ControlPanel\npanel = ControlPanel()\npanel',
]

KERNEL_UP = '''() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                       return !!(w && w.sessionContext && w.sessionContext.session
                                 && w.sessionContext.session.kernel); }'''


def keep_screenshot(path) -> None:
    """Copy a screenshot to $ORCHESTRA_SCREENSHOTS (e.g. docs/images) when set."""
    where = os.environ.get('ORCHESTRA_SCREENSHOTS')
    if where:
        os.makedirs(where, exist_ok=True)
        shutil.copy(str(path), os.path.join(where, os.path.basename(str(path))))


def open_notebook(p, base: str, tmp_path, name: str):
    """Chromium on JupyterLab's page for notebook ``name``, once its kernel is up; -> (context, page)."""
    ctx = p.chromium.launch_persistent_context(str(tmp_path / 'chromium-profile'), executable_path=CHROMIUM,
                                               headless=True, args=CHROMIUM_ARGS,
                                               viewport={'width': 1400, 'height': 1000})
    page = ctx.pages[0] if ctx.pages else ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(f'{base}/lab/tree/{name}')
    page.wait_for_function(KERNEL_UP)
    return ctx, page


def http(url: str, method: str = 'GET', timeout: float = 5.0):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path, request):
    """A token-less JupyterLab on 127.0.0.1 serving ``tmp_path``; stopped (kernels first) at the end.

    Indirect parametrization adds variables to the server's (and so the kernels') environment."""
    root = tmp_path / 'root'
    root.mkdir()
    port = free_port()
    env = dict(os.environ, **getattr(request, 'param', {}), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / 'settings'),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / 'workspaces'),
               JUPYTER_RUNTIME_DIR=str(tmp_path / 'runtime'), JUPYTER_CONFIG_DIR=str(tmp_path / 'config'))
    notify = tmp_path / 'settings' / '@jupyterlab' / 'apputils-extension'
    notify.mkdir(parents=True)  # no "would you like news?" toast over the screenshot
    (notify / 'notification.jupyterlab-settings').write_text('{"fetchNews": "false", "checkForUpdates": false}')
    log = open(tmp_path / 'lab.log', 'wb')
    server = subprocess.Popen(
        [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.allow_root=True',
         '--IdentityProvider.token=', '--ServerApp.password=', '--ServerApp.ip=127.0.0.1',
         f'--ServerApp.port={port}', '--ServerApp.port_retries=0', f'--ServerApp.root_dir={root}',
         '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=None', '--ServerApp.disable_check_xsrf=True',
         '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    base = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                log_tail = (tmp_path / 'lab.log').read_text()[-3000:]
                pytest.fail(f'JupyterLab exited with {server.returncode}:\n{log_tail}')
            try:
                http(f'{base}/api/status', timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f'JupyterLab did not answer within 60 s:\n{(tmp_path / "lab.log").read_text()[-3000:]}')
                time.sleep(0.3)
        yield base, root
    finally:
        try:
            for k in http(f'{base}/api/kernels') or []:
                http(f'{base}/api/kernels/{k["id"]}', method='DELETE', timeout=30)
        except OSError:
            pass
        server.send_signal(signal.SIGINT)  # jupyter asks to confirm on the first ^C; a second one stops it
        time.sleep(0.5)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


def test_dashboard_renders_and_updates_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    base, root = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK], metadata={
        'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}})
    nbformat.write(nb, str(root / 'dash.ipynb'))
    shot = tmp_path / 'dashboard.png'
    with sync_playwright() as p:
        ctx, page = open_notebook(p, base, tmp_path, 'dash.ipynb')
        try:
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            header = page.locator('.orchestra-dashboard .orchestra-dashboard-header')
            try:
                header.wait_for(state='visible')
            except Exception:
                page.screenshot(path=str(tmp_path / 'failure.png'))
                pytest.fail('the Dashboard did not render within 60 s; the notebook shows:\n'
                            + page.locator('.jp-Notebook').inner_text()[-3000:])

            def requests_shown() -> int:
                m = re.search(r'(\d+) requests', header.inner_text())
                return int(m.group(1)) if m else -1

            first = None
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:  # the numbers move while the kernel is idle
                n = requests_shown()
                if n > 0 and first is None:
                    first = n
                if first is not None and n > first:
                    break
                page.wait_for_timeout(250)
            else:
                pytest.fail(f'the dashboard header never showed growing request counts: {header.inner_text()!r}')
            assert '2/2 replicas ready' in header.inner_text()
            page.wait_for_function(
                '''() => { const imgs = document.querySelectorAll('.orchestra-dashboard img');
                           return imgs.length >= 2 && [...imgs].every(i => i.naturalWidth > 0); }''')
            assert 'not stateful' in page.locator('.orchestra-dashboard').inner_text()
            page.locator('.orchestra-dashboard').screenshot(path=str(shot))
        finally:
            ctx.close()
    assert shot.exists() and shot.stat().st_size > 1000
    keep_screenshot(shot)
    pids = json.loads((root / 'pids.json').read_text())
    assert len(pids) == 3
    lab_gone = pids  # checked after the fixture shut the kernel down, below
    # the fixture's teardown deletes the kernel; wait here on a fresh request to be sure
    for k in http(f'{base}/api/kernels') or []:
        http(f'{base}/api/kernels/{k["id"]}', method='DELETE', timeout=30)
    wait_until(lambda: all(pid_gone(p) for p in lab_gone), 20, f'the notebook replicas {pids} to exit')


def test_control_panel_manages_a_deployment_started_by_the_magic(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    base, root = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in PANEL_NOTEBOOK], metadata={
        'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}})
    nbformat.write(nb, str(root / 'panel.ipynb'))
    shot = tmp_path / 'controlpanel.png'
    with sync_playwright() as p:
        ctx, page = open_notebook(p, base, tmp_path, 'panel.ipynb')
        try:
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            panel = page.locator('.orchestra-control-panel')
            status = panel.locator('.orchestra-panel-status')
            try:
                panel.wait_for(state='visible')
                page.wait_for_function(  # it lists the magic's deployment and shows its replicas
                    '''() => { const s = document.querySelector('.orchestra-panel-running select');
                               const t = document.querySelector('.orchestra-panel-status');
                               return !!(s && s.selectedOptions.length
                                         && s.selectedOptions[0].text.includes('viamagic')
                                         && t && t.innerText.includes('viamagic/rep-1')); }''')
            except Exception:
                page.screenshot(path=str(tmp_path / 'failure.png'))
                pytest.fail('the ControlPanel did not list viamagic; the notebook shows:\n'
                            + page.locator('.jp-Notebook').inner_text()[-3000:])
            assert not panel.locator('button.orchestra-panel-scale').is_disabled()
            assert not panel.locator('button.orchestra-panel-down').is_disabled()

            replicas = panel.locator('.orchestra-panel-replicas input')
            replicas.fill('3')
            replicas.press('Enter')
            panel.locator('button.orchestra-panel-scale').click()
            page.wait_for_function("() => document.querySelector('.orchestra-panel-status').innerText"
                                   ".includes('viamagic/rep-2')")
            page.wait_for_function("() => !document.querySelector('button.orchestra-panel-down').disabled")
            assert '3 replicas' in panel.locator('.orchestra-panel-message').inner_text()
            panel.screenshot(path=str(shot))

            panel.locator('button.orchestra-panel-down').click()
            page.wait_for_function("() => document.querySelector('.orchestra-panel-status').innerText"
                                   ".includes('nothing running')")
            assert 'viamagic' in status.inner_text()   # "nothing running; stopped: viamagic"
            assert panel.locator('button.orchestra-panel-down').is_disabled()
        finally:
            ctx.close()
    assert shot.exists() and shot.stat().st_size > 1000
    keep_screenshot(shot)


TUTORIAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'notebooks',
                        '01-replicas.ipynb')

# The live Dashboard of the tutorial's `uneven` deployment once it shows all three replicas, each
# with requests: the header counts every request the tutorial sent to `uneven` (two posts of N, N
# from "N of N requests answered", and the restart cell's make_docs(k)) with 3/3 ready, the process
# table names rep-0..2 (each with its CPU bar), both charts have loaded. -> its text, else false.
# textContent, not innerText: JupyterLab skips rendering off-screen cells (content-visibility).
UNEVEN_LIVE = r'''() => {
    const code = window.jupyterapp.shell.currentWidget.content.widgets.filter(c => c.model.type === 'code');
    const tagged = t => code.find(c => (c.model.getMetadata('tags') || []).includes(t));
    const n = tagged('kill').outputArea.node.textContent.match(/(\d+) of \1 requests answered/);
    const k = tagged('restart').model.sharedModel.getSource().match(/make_docs\((\d+)\)/);
    if (!n || !k) return false;
    const total = 2 * +n[1] + +k[1];
    for (const d of document.querySelectorAll('.orchestra-dashboard')) {
        const h = d.querySelector('.orchestra-dashboard-header');
        const head = h ? h.textContent : '';
        const m = head.match(/(\d+) requests/);
        if (!head.includes('uneven') || !head.includes('3/3 replicas ready') || !m || +m[1] < total) continue;
        const names = [...d.querySelectorAll('table tr')].map(r => (r.cells[0] || {}).textContent || '');
        if (!['rep-0', 'rep-1', 'rep-2'].every(n => names.includes(n))) continue;
        const imgs = d.querySelectorAll('img');
        if (imgs.length >= 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0)) return d.textContent;
    }
    return false;
}'''

# Where a run stands: 'error' (a cell raised; JupyterLab stops there), 'done' (the code cell
# ``back`` from the end has its execution count, no cell is running and the kernel is idle), else false.
RUN_STATE = '''(back) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const code = panel.content.widgets.filter(c => c.model.type === 'code');
    for (const c of code)
        for (let i = 0; i < c.model.outputs.length; i++)
            if (c.model.outputs.get(i).type === 'error') return 'error';
    const last = code[code.length - back];
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const running = code.some(c => c.model.executionState === 'running');
    return last.model.executionCount !== null && !running && kernel && kernel.status === 'idle' ? 'done' : false;
}'''

# Per code cell: its source, the text its outputs show, and the MIME types of its outputs.
CELLS = '''() => window.jupyterapp.shell.currentWidget.content.widgets
    .filter(c => c.model.type === 'code')
    .map(c => ({source: c.model.sharedModel.getSource(), text: c.outputArea.node.textContent,
                tags: c.model.getMetadata('tags') || [],
                mimes: Array.from({length: c.model.outputs.length},
                                  (_, i) => Object.keys(c.model.outputs.get(i).data || {}))}))'''


def lab_server(base: str) -> psutil.Process:
    """The JupyterLab process of the ``lab`` fixture serving ``base`` (a child of this process)."""
    port = base.rsplit(':', 1)[1]
    for p in psutil.Process().children():
        try:
            if f'--ServerApp.port={port}' in p.cmdline():
                return p
        except psutil.Error:
            pass
    pytest.fail(f'no JupyterLab process for {base}')


def kernel_leftovers(server: psutil.Process) -> list:
    """Processes under the lab server's kernels, but for each kernel's own fork server (a direct
    child running zygote_main, which lives as long as the kernel): what a notebook left running."""
    out = []
    for kernel in server.children():
        try:
            for p in kernel.children(recursive=True):
                try:
                    cmd = ' '.join(p.cmdline())
                    if p.ppid() == kernel.pid and 'zygote_main' in cmd:
                        continue
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out.append(f'pid {p.pid} ({cmd[:100]})')
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize('lab', [{'ORCHESTRA_TUTORIAL_SMALL': '1'}], indirect=True, ids=['small'])
def test_replicas_tutorial_runs_in_jupyterlab_and_its_dashboard_shows_every_replica(lab, tmp_path):
    # Run > Run All Above Selected Cell with the last cell (the clean-up) selected, then the last cell
    # by itself: the live Dashboard of `uneven` waits for the test in between. (With Run All it is
    # live for about three seconds: the last cell closes it and leaves a PNG of its last frame.)
    from playwright.sync_api import sync_playwright
    base, root = lab
    shutil.copy(TUTORIAL, str(root / '01-replicas.ipynb'))
    shot = tmp_path / 'replicas-dashboard.png'
    with sync_playwright() as p:
        ctx, page = open_notebook(p, base, tmp_path, '01-replicas.ipynb')

        def fail(why: str):
            page.screenshot(path=str(tmp_path / 'failure.png'))
            cells = page.evaluate(CELLS)
            pytest.fail(f'{why}; the outputs so far:\n'
                        + '\n'.join(f'[{i}] {c["text"][-600:]}' for i, c in enumerate(cells) if c['text'])[-4000:])

        def run_menu(item: str):
            try:
                page.locator('.lm-MenuBar-item', has_text=re.compile(r'^Run$')).click()
                page.locator('.lm-Menu-item', has=page.locator('.lm-Menu-itemLabel',
                                                               has_text=re.compile(f'^{re.escape(item)}$'))).click()
            except Exception as e:
                fail(f'Run > {item}: {type(e).__name__}: {e}')

        def wait_run(back: int, what: str):
            try:
                page.wait_for_function(RUN_STATE, arg=back, timeout=240_000, polling=250)
            except Exception:
                fail(f'{what} did not finish within 240 s')
            if page.evaluate(RUN_STATE, back) == 'error':
                fail(f'{what}: a cell of the tutorial raised')

        try:
            page.wait_for_function(  # JupyterLab attaches the cells of a notebook it opens a few at a time
                '''() => { const nb = window.jupyterapp.shell.currentWidget.content;
                           return nb.widgets.length > 0
                                  && nb.node.querySelectorAll('.jp-Cell').length === nb.widgets.length; }''')
            page.locator('.jp-Notebook .jp-Cell').last.locator('.jp-InputPrompt').click()   # select the clean-up
            assert page.evaluate('() => { const nb = window.jupyterapp.shell.currentWidget.content;'
                                 '        return nb.activeCellIndex === nb.widgets.length - 1; }')
            run_menu('Run All Above Selected Cell')
            wait_run(2, 'Run All Above Selected Cell')
            try:
                shown = page.wait_for_function(UNEVEN_LIVE, timeout=60_000, polling=250).json_value()
                page.locator('.orchestra-dashboard', has=page.locator('.orchestra-dashboard-header',
                                                                      has_text='uneven')
                             ).screenshot(path=str(shot))
            except Exception as e:
                fail(f'no live Dashboard of "uneven" showing rep-0..2 with both charts ({type(e).__name__})')
            run_menu('Run Selected Cell and Do not Advance')    # the clean-up: dash.close(), dep.close()
            wait_run(1, 'the last cell')
            cells = page.evaluate(CELLS)
            assert not page.locator('.orchestra-dashboard').count()    # closed: no live widget is left
        finally:
            ctx.close()

    assert 'Deployment' in shown and 'uneven' in shown and 'not stateful' in shown, shown
    assert shot.exists() and shot.stat().st_size > 1000
    keep_screenshot(shot)

    # the distribution tables the tutorial printed list every replica
    def rows(cell_text: str, name: str) -> list:
        return sorted(re.findall(rf'^({name}/rep-\d)\s+(?:slow|normal)\s+\d+\s+\d+$', cell_text, re.M))

    everything = '\n'.join(c['text'] for c in cells)
    assert rows(everything, 'workers') == ['workers/rep-0', 'workers/rep-1', 'workers/rep-2'], everything
    tagged = [c for c in cells if 'distribution' in c['tags']]
    assert len(tagged) == 1
    assert rows(tagged[0]['text'], 'uneven') == ['uneven/rep-0', 'uneven/rep-1', 'uneven/rep-2'], tagged[0]['text']
    assert '40 of 40 requests answered' in everything                      # N_DOCS when small: the env got through
    # both Dashboards were closed by the tutorial: each output is now a static last frame (a PNG)
    dashboards = [c for c in cells if c['source'].rstrip().endswith('dash')]
    assert len(dashboards) == 2, [c['source'] for c in cells]
    for c in dashboards:
        assert any('image/png' in m for m in c['mimes']), c['mimes']

    # the tutorial closed everything it started; then the kernel's shutdown takes its fork server along
    server = lab_server(base)
    deadline = time.monotonic() + 20
    while kernel_leftovers(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernel_leftovers(server) == []
    kernels = http(f'{base}/api/kernels') or []
    assert len(kernels) == 1
    http(f'{base}/api/kernels/{kernels[0]["id"]}', method='DELETE', timeout=30)
    def nothing_under_lab() -> bool:
        try:
            return all(c.status() == psutil.STATUS_ZOMBIE for c in server.children(recursive=True))
        except psutil.NoSuchProcess:       # one exited while we looked: look again
            return False

    wait_until(nothing_under_lab, 30, 'the kernel and everything under the lab server to exit', interval=0.2)


# -- a literal Run All, saved and reopened: what the saved notebook shows is the truth -------------
#: tutorial -> the screenshot of what its reopened page shows (docs/images/ with ORCHESTRA_SCREENSHOTS)
SAVED = {'01-replicas.ipynb': 'replicas-frame.png',          # the frozen frames count what was printed
         '03-stateful-raft.ipynb': 'raft-frame.png',         # the RAFT panel with one leader; finished progress
         '05-external-yaml-cli.ipynb': 'controlpanel-picture.png'}   # the closed ControlPanel's picture
#: what JupyterLab writes into a notebook's metadata on opening it; the stored tutorials carry it
#: already (tests/test_notebooks.py checks the files), so opening one leaves a clone clean
STABLE_METADATA = ('kernelspec', 'language_info')


@pytest.mark.parametrize('lab', [{'ORCHESTRA_TUTORIAL_SMALL': '1'}], indirect=True, ids=['small'])
@pytest.mark.parametrize('name', list(SAVED))
def test_run_all_save_reopen_shows_the_truth(lab, tmp_path, name):
    """Run > Run All Cells, File > Save, shut the kernel down, reopen: the saved outputs are checked
    by the same checks as the nbclient run (tests/test_notebooks.py), and the reopened page shows
    pictures (PNG frames, the panel's picture), no widget placeholder and no 0 % bar."""
    from playwright.sync_api import sync_playwright

    from test_notebooks import CHECKS, frames, no_stuck_bars
    base, root = lab
    source = os.path.join(os.path.dirname(TUTORIAL), name)
    shutil.copy(source, str(root / name))
    shot = tmp_path / SAVED[name]
    with sync_playwright() as p:
        ctx, page = open_notebook(p, base, tmp_path, name)
        try:
            def fail(why: str):
                page.screenshot(path=str(tmp_path / 'failure.png'))
                cells = page.evaluate(CELLS)
                pytest.fail(f'{name}: {why}; the outputs so far:\n'
                            + '\n'.join(f'[{i}] {c["text"][-600:]}' for i, c in enumerate(cells) if c['text'])[-4000:])

            page.wait_for_function(
                '''() => { const nb = window.jupyterapp.shell.currentWidget.content;
                           return nb.widgets.length > 0
                                  && nb.node.querySelectorAll('.jp-Cell').length === nb.widgets.length; }''')
            page.locator('.lm-MenuBar-item', has_text=re.compile(r'^Run$')).click()
            page.locator('.lm-Menu-item', has=page.locator('.lm-Menu-itemLabel',
                                                           has_text=re.compile(r'^Run All Cells$'))).click()
            try:
                page.wait_for_function(RUN_STATE, arg=1, timeout=300_000, polling=500)
            except Exception:
                fail('Run All Cells did not finish within 300 s')
            if page.evaluate(RUN_STATE, 1) == 'error':
                fail('a cell raised')
            page.locator('.lm-MenuBar-item', has_text=re.compile(r'^File$')).click()
            page.locator('.lm-Menu-item', has=page.locator('.lm-Menu-itemLabel',
                                                           has_text=re.compile(r'^Save Notebook$'))).click()
            page.wait_for_function('() => !window.jupyterapp.shell.currentWidget.context.model.dirty')
            for k in http(f'{base}/api/kernels') or []:          # reopen as a reader would: no kernel state left
                http(f'{base}/api/kernels/{k["id"]}', method='DELETE', timeout=30)
            page.goto(f'{base}/lab/tree/{name}')
            page.wait_for_function('() => document.querySelectorAll(".jp-OutputArea-output").length > 0')
            page.wait_for_timeout(1500)
            shown = page.locator('.jp-Notebook').inner_text()
            assert 'Error displaying widget' not in shown and 'model not found' not in shown, shown[-2000:]
            assert not re.search(r'(^|\s)0%\|', shown), shown[-2000:]
            if name.startswith('05'):
                # JupyterLab attaches the cells of a long notebook as they scroll into view
                page.evaluate('''async () => { const nb = window.jupyterapp.shell.currentWidget.content;
                                               await nb.scrollToCell(nb.widgets[nb.widgets.length - 1]); }''')
                picture = page.locator('.orchestra-control-panel-picture')
                picture.wait_for(state='attached', timeout=30_000)
                assert picture.count() == 1
                picture.scroll_into_view_if_needed()
                assert 'ControlPanel' in picture.text_content()   # textContent: off-screen cells are not laid out
                picture.screenshot(path=str(shot))
            else:
                frame = page.locator('.jp-OutputArea-output img').first
                frame.wait_for(state='attached', timeout=30_000)
                frame.scroll_into_view_if_needed()
                frame.screenshot(path=str(shot))
        finally:
            ctx.close()
    saved = nbformat.read(str(root / name), as_version=4)
    CHECKS[name](saved, '')                  # what the nbclient run checks, on the file JupyterLab saved
    no_stuck_bars(saved)
    if name.startswith('01') or name.startswith('03'):
        assert frames(saved), 'no frozen Dashboard frame was saved'
    stored = nbformat.read(source, as_version=4)
    for key in STABLE_METADATA:   # opening and saving changed nothing a clone would see as dirty
        got = {k: v for k, v in saved.metadata.get(key, {}).items() if k != 'version'}
        want = {k: v for k, v in stored.metadata.get(key, {}).items() if k != 'version'}
        assert got == want, (key, got, want)
    assert shot.exists() and shot.stat().st_size > 1000
    keep_screenshot(shot)
