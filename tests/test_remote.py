"""runtime.remote and the Dashboard attached by address to a gateway another process tree started."""
import os
import subprocess
import sys
import textwrap

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import wait_until
from orchestra_nb import Client, Dashboard
from runtime.remote import RemoteGateway, SecretRequired

SECRET = 'a-test-secret-of-the-remote-deployment-0123456789'

_OWNER = textwrap.dedent('''
    import sys
    from runtime.deployment import Deployment
    dep = Deployment(name='far', uses='sample_executors:KV', replicas=3, stateful=True, workspace=sys.argv[1],
                     secret=sys.argv[2], monitoring=True).start()
    print(dep.port, flush=True)
    sys.stdin.read()      # lifeline: the test closes stdin, the Deployment stops
    dep.close()
''')


@pytest.fixture
def remote_deployment(tmp_path):
    """A stateful Deployment started by another process (its own process tree); yields its gateway port."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.path.dirname(__file__),
                                                      os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.Popen([sys.executable, '-c', _OWNER, str(tmp_path / 'ws'), SECRET], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f'the owner process did not start its Deployment: {line!r}'
        yield int(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_remote_status_and_dashboard_by_address(remote_deployment):
    port = remote_deployment
    client = Client(port=port)
    docs = DocList[TextDoc]([TextDoc(id=f'k{i}', text=f'v{i}') for i in range(6)])
    client.post('/index', docs, request_size=2)                                      # 3 writes
    client.post('/get', DocList[TextDoc]([TextDoc(id=f'k{i}') for i in range(4)]), request_size=1)   # 4 reads

    with pytest.raises(SecretRequired, match="only with the Deployment's secret"):
        RemoteGateway(f'127.0.0.1:{port}').status()
    with pytest.raises(SecretRequired, match='missing or wrong'):
        Dashboard(f'127.0.0.1:{port}', secret='not-the-secret-but-long-enough-0123456789')

    gw = RemoteGateway(client, secret=SECRET)
    st = gw.status()
    assert gw.name == 'far' and st['name'] == 'far' and len(st['replicas']) == 3
    assert all(r['state'] == 'ready' and r['metrics_port'] for r in st['replicas'])
    assert st['gateway']['metrics_port']

    dash = Dashboard(f'127.0.0.1:{port}', secret=SECRET, interval=0.2)
    try:
        def settled():
            w, r = dash.values.get('writes_applied') or {}, dash.values.get('reads') or {}
            return len(w) == 3 and set(w.values()) == {3} and sum(r.values()) == 4
        wait_until(settled, 30, 'the remote dashboard to show 3 writes on every replica and 4 reads in all')
        wait_until(lambda: 'leader' in dash.raft.value and dash.raft.value.count('follower') == 2, 10,
                   'the RAFT table to show one leader and two followers')
        assert 'RemoteGateway' in dash.header.value and '3/3 replicas ready' in dash.header.value
    finally:
        dash.close()


def test_control_panel_attaches_its_dashboard_to_a_gateway_by_address(remote_deployment):
    from orchestra_nb.widgets import ControlPanel
    port = remote_deployment
    Client(port=port).post('/index', DocList[TextDoc]([TextDoc(id='p', text='q')]))
    panel = ControlPanel(namespace={}, refresh_interval=60)
    try:
        panel.attach(f'127.0.0.1:{port}', secret='not-the-secret-but-long-enough-0123456789')
        assert panel.dashboard is None and 'missing or wrong' in panel.last_error   # one line, nothing shown
        panel.attach_address.value = f'127.0.0.1:{port}'
        panel.attach_secret.value = SECRET
        panel.attach_button.click()
        assert panel.last_error is None, panel.last_error
        dash = panel.dashboard
        assert isinstance(dash.obj, RemoteGateway) and panel.dashboard_box.children == (dash,)
        wait_until(lambda: 'leader' in dash.raft.value and dash.raft.value.count('follower') == 2, 30,
                   'the attached Dashboard to show the far RAFT leader and two followers')
        panel.toggle_dashboard()   # the Dashboard button hides it
        assert panel.dashboard is None and panel.dashboard_box.children == ()
    finally:
        panel.close()
