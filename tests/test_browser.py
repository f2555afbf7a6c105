"""JupyterLab in headless Chromium: a Dashboard renders and updates; a ControlPanel manages a
deployment started by ``%orchestra up`` (lists it, scales it, stops it).

Screenshots go to the test's tmp dir, and also to ``$ORCHESTRA_SCREENSHOTS`` when set
(``ORCHESTRA_SCREENSHOTS=docs/images`` refreshes the pictures in the docs and README)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from conftest import pid_gone, wait_until

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def http(url: str, method: str = 'GET', timeout: float = 5.0):
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture
def lab(tmp_path):
    """A token-less JupyterLab on 127.0.0.1 serving ``tmp_path``; stopped (kernels first) at the end."""
    root = tmp_path / 'root'
    root.mkdir()
    port = free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / 'settings'),
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
