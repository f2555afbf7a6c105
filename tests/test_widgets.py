"""Dashboard and ControlPanel: widget values change as the deployment works."""
from __future__ import annotations

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import pid_gone, wait_until
from orchestra_nb import Dashboard, Deployment, Executor, requests
from orchestra_nb.dashboard import gpus_html, processes_html, raft_html
from orchestra_nb.registry import REGISTRY
from orchestra_nb.widgets import ControlPanel
from sample_executors import KV


class Tagger(Executor):
    @requests(on='/tag')
    def tag(self, docs, **kwargs):
        for d in docs:
            d.text = f'tagged-{self.runtime_args.replica_id}'

    @requests(on='/other')
    def other(self, docs, **kwargs):
        return docs


def test_dashboard_values_move_after_requests():
    with Deployment(name='dash', uses=Tagger, replicas=2) as dep:
        dash = Dashboard(dep, interval=0.2)
        try:
            assert isinstance(dash, Dashboard) and 'orchestra-dashboard' in dash._dom_classes
            wait_until(lambda: dash.values['refreshes'] >= 1 and dash.distribution.value, 20,
                       'the first dashboard refresh')
            before_png, before_series = dash.distribution.value, dash.latency.value
            assert dash.values['requests'] == {'dash/rep-0': 0, 'dash/rep-1': 0}
            assert '0 requests' in dash.header.value and '2/2 replicas ready' in dash.header.value

            dep.post('/tag', DocList[TextDoc]([TextDoc() for _ in range(20)]), request_size=1, prefetch=4)
            dep.post('/other', DocList[TextDoc]([TextDoc() for _ in range(6)]), request_size=1)

            wait_until(lambda: sum(dash.values['requests'].values()) == 26, 20,
                       'the dashboard to count 26 requests')
            counts = dash.values['requests']
            assert counts['dash/rep-0'] > 0 and counts['dash/rep-1'] > 0
            wait_until(lambda: dash.distribution.value != before_png, 10, 'the distribution chart to change')
            wait_until(lambda: dash.latency.value != before_series, 10, 'the latency chart to change')
            assert dash.distribution.value[:8] == b'\x89PNG\r\n\x1a\n'
            wait_until(lambda: '26 requests' in dash.header.value, 10, 'the header to show 26 requests')
            assert dash.values['p50_ms'] is not None and dash.values['p99_ms'] >= dash.values['p50_ms']
            assert 'not stateful' in dash.raft.value
            assert 'dash/rep-0' not in dash.processes.value or 'rep-0' in dash.processes.value
            assert dash.gpus.value  # a table, or a one-line note without a GPU
            assert dash.running
        finally:
            dash.close()
        assert not dash.running


def test_dashboard_of_a_stateful_deployment_shows_writes_everywhere_and_reads_once(tmp_path):
    with Deployment(name='sdash', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path)) as dep:
        dash = Dashboard(dep, interval=0.2)
        try:
            docs = DocList[TextDoc]([TextDoc(id=f'k{i}', text=f'v{i}') for i in range(6)])
            dep.post('/index', docs, request_size=2)          # 3 writes: applied by every replica
            out = dep.post('/get', DocList[TextDoc]([TextDoc(id=f'k{i}') for i in range(4)]), request_size=1)
            assert out.text == ['v0', 'v1', 'v2', 'v3']        # 4 reads: each served by one replica
            names = ['sdash/rep-0', 'sdash/rep-1', 'sdash/rep-2']

            def settled():
                w, r = dash.values.get('writes_applied') or {}, dash.values.get('reads') or {}
                return (len(w) == 3 and len(set(w.values())) == 1 and min(w.values()) >= 3
                        and sum(r.values()) == 4)
            wait_until(settled, 30, 'the dashboard to show 3 writes on every replica and 4 reads in all')
            assert sorted(dash.values['writes_applied']) == names
            assert 'leader' in dash.raft.value and 'follower' in dash.raft.value
            assert dash.raft.value.count('<tr>') == 3
        finally:
            dash.close()


def test_dashboard_panels_from_status_records():
    """The RAFT, process and GPU panels render whatever a status record carries."""
    status = {'name': 'd', 'gateway': {'pid': 1, 'cpu_percent': 3.0, 'rss_bytes': 50 << 20, 'requests': {}},
              'replicas': [
                  {'name': 'd/rep-0', 'pid': 2, 'cpu_percent': 55.5, 'rss_bytes': 80 << 20,
                   'raft': {'role': 'leader', 'term': 3, 'commit_index': 10, 'applied_index': 10,
                            'writes_applied': 7}},
                  {'name': 'd/rep-1', 'pid': 3, 'raft': {'role': 'follower', 'term': 3, 'commit_index': 10,
                                                        'applied_index': 9, 'writes_applied': 6}}],
              'gpus': {'available': True, 'note': None, 'assignment': {'d/rep-0': '0'},
                       'gpus': [{'index': 0, 'name': 'H100', 'utilization': 40, 'memory_used': 1 << 30,
                                 'memory_total': 80 << 30, 'replicas': ['d/rep-0']}]}}
    raft = raft_html(status)
    assert 'leader' in raft and 'follower' in raft and '>7<' in raft and '>9<' in raft
    procs = processes_html(status)
    assert '56%' in procs and '80.0 MiB' in procs and 'gateway' in procs
    gpus = gpus_html(status)
    assert 'H100' in gpus and '40%' in gpus and 'rep-0' in gpus and '80.0 GiB' in gpus
    note = gpus_html({'gpus': {'available': False, 'note': 'no NVIDIA GPU found (NVML: missing)', 'gpus': []}})
    assert 'no NVIDIA GPU found' in note
    assert 'not reported' in processes_html({'replicas': [{'name': 'x'}]})


def test_control_panel_up_scale_down():
    class PanelEcho(Executor):
        @requests
        def echo(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
            return docs

    panel = ControlPanel(namespace={'PanelEcho': PanelEcho, 'not_a_class': 3}, refresh_interval=0.2)
    try:
        labels = [label for label, _ in panel.executor.options]
        assert labels[0] == 'PanelEcho (notebook)' and 'echo (built-in)' in labels
        assert not panel.up_button.disabled and panel.down_button.disabled and panel.scale_button.disabled
        assert panel.target.options == (('(nothing running)', None),)
        panel.name.value = 'panel'
        panel.replicas.value = 2
        disabled_log = []
        panel.executor.observe(lambda change: disabled_log.append(change['new']), 'disabled')
        panel.up_button.click()
        assert panel.wait_idle(60), 'Up did not finish within 60 s'
        assert panel.last_error is None, panel.last_error
        assert disabled_log == [True, False]  # the controls were disabled while Up ran
        dep = panel.deployment
        assert dep is not None and dep.running and dep.replicas == 2 and 'panel' in REGISTRY.names()
        assert panel.target.value == 'panel' and REGISTRY.get('panel').source == 'panel'
        assert not panel.up_button.disabled and not panel.down_button.disabled and not panel.executor.disabled
        wait_until(lambda: 'panel/rep-1' in panel.status.value, 10, 'the status table to list rep-1')
        wait_until(lambda: '<pre' in panel.log_view.value, 10, 'the log tail')

        panel.up_button.click()  # the same name again: refused before anything starts
        panel.wait_idle(10)
        assert "'panel' is already running in this kernel (started by a ControlPanel)" in panel.last_error
        assert panel.deployment is dep and [e.obj for e in REGISTRY.entries()] == [dep]

        panel.scale(3)
        assert panel.wait_idle(60)
        assert panel.last_error is None, panel.last_error
        wait_until(lambda: 'panel/rep-2' in panel.status.value, 10, 'the status table to list rep-2')
        assert dep.post('/x', TextDoc(text='hi')).text == ['hi']

        pids = [r.process.pid for r in dep.stages[0].replicas] + [dep.gateway.pid]
        panel.down_button.click()
        assert panel.wait_idle(60)
        assert not dep.running and 'panel' not in REGISTRY.names()
        wait_until(lambda: all(pid_gone(p) for p in pids), 10, 'the panel deployment to exit')
        assert not panel.up_button.disabled and panel.down_button.disabled and panel.target.value is None
        wait_until(lambda: 'stopped: ' in panel.status.value and 'panel' in panel.status.value, 10,
                   'the panel to say what stopped')
    finally:
        panel.close()
        REGISTRY.close_all()


def test_control_panel_shows_a_failed_start():
    panel = ControlPanel(namespace={}, refresh_interval=0.5)
    try:
        panel.executor.options = [('broken', 'sample_executors:BrokenInit')]
        panel.executor.value = 'sample_executors:BrokenInit'
        panel.replicas.value = 1
        panel.up()
        assert panel.wait_idle(60)
        assert 'init failed on purpose' in panel.last_error
        assert 'init failed on purpose' in panel.message.value and 'c62828' in panel.message.value
        assert panel.deployment is None and not panel.up_button.disabled
    finally:
        panel.close()
        REGISTRY.close_all()


def test_dashboard_refuses_a_non_orchestration():
    with pytest.raises(TypeError, match="a Deployment, a Flow, a gateway address 'host:port' or a Client"):
        Dashboard(object())


def test_a_newer_dashboard_of_the_same_deployment_takes_over():
    with Deployment(name='twice', uses=Tagger) as dep:
        first = Dashboard(dep, interval=0.2)
        second = Dashboard(dep, interval=0.2)
        try:
            assert second.running and not first.running
            assert 'a newer dashboard' in first.header.value
            third = Dashboard(dep, interval=0.2, replace=False)
            assert second.running and third.running
            third.close()
        finally:
            first.close()
            second.close()


def test_control_panel_manages_what_was_started_elsewhere():
    """Deployments started by %orchestra up and in code are listed, scaled, stopped and shown."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    ip = start_ipython() or get_ipython()  # one test shell per process (test_magics uses it too)
    ip.run_cell('%load_ext orchestra_nb', store_history=False)
    panel = ControlPanel(namespace={}, refresh_interval=0.2)
    code_dep = Deployment(name='incode', uses='sample_executors:Upper')
    try:
        assert panel.deployment is None and panel.scale_button.disabled
        res = ip.run_cell('t_viamagic = %orchestra up --uses sample_executors:Upper --name viamagic',
                          store_history=False)
        res.raise_error()
        magic_dep = ip.user_ns['t_viamagic']
        wait_until(lambda: panel.target.value == 'viamagic', 10, 'the panel to list viamagic')
        assert 'viamagic (Deployment)' in [label for label, _ in panel.target.options]
        assert panel.deployment is magic_dep and panel.replicas.value == 1
        assert not panel.scale_button.disabled and not panel.down_button.disabled
        wait_until(lambda: 'viamagic/rep-0' in panel.status.value, 10, 'the status of viamagic')

        panel.name.value = 'viamagic'  # the name is taken by the magic's deployment: refused up front
        panel.up()
        assert panel.wait_idle(30)
        assert "'viamagic' is already running in this kernel (started by %orchestra up)" in panel.last_error

        panel.scale(2)
        assert panel.wait_idle(60) and panel.last_error is None, panel.last_error
        assert magic_dep.replicas == 2
        wait_until(lambda: 'viamagic/rep-1' in panel.status.value, 10, 'the status table to list rep-1')

        panel.toggle_dashboard()
        dash = panel.dashboard
        assert dash is not None and dash.obj is magic_dep and panel.dashboard_box.children == (dash,)
        wait_until(lambda: dash.values['refreshes'] >= 1, 20, 'the dashboard in the panel to refresh')
        panel.toggle_dashboard()
        assert panel.dashboard is None and not dash.running

        with code_dep:  # started in code: listed too, and gone from the list once the block ends
            wait_until(lambda: 'incode' in panel.running_names(), 10, 'the panel to list incode')
            assert REGISTRY.get('incode').source == 'code'
            panel.select('incode')
            assert panel.deployment is code_dep
        wait_until(lambda: 'incode' not in panel.running_names(), 10, 'the panel to drop incode')
        assert panel.target.value == 'viamagic'

        pids = [r.process.pid for r in magic_dep.stages[0].replicas] + [magic_dep.gateway.pid]
        panel.down()
        assert panel.wait_idle(60) and panel.last_error is None, panel.last_error
        assert not magic_dep.running and REGISTRY.names() == []
        wait_until(lambda: all(pid_gone(p) for p in pids), 10, 'viamagic to exit')
        assert panel.deployment is None and panel.down_button.disabled
        ip.run_cell('%orchestra status', store_history=False)
    finally:
        panel.close()
        code_dep.close()
        REGISTRY.close_all()
        ip.user_ns.pop('t_viamagic', None)


def test_a_stopped_dashboard_leaves_its_last_frame():
    with Deployment(name='frozen', uses=Tagger) as dep:
        dash = Dashboard(dep, interval=0.2)
        dash._displayed = True  # as if shown: freezing then updates the display (no-op outside IPython)
        dep.post('/tag', DocList[TextDoc]([TextDoc() for _ in range(3)]), request_size=1)
        wait_until(lambda: '3 requests' in dash.header.value, 20, 'the dashboard to count 3 requests')
    # the deployment stopped: its dashboard froze, in the thread that closed it
    assert dash.snapshot_bundle is not None and not dash.running
    png = dash.snapshot_bundle['image/png']
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    text = dash.snapshot_bundle['text/plain']
    assert 'frozen stopped' in text and 'frozen/rep-0' in text and '3 requests' in text
    dash.close()


def test_a_frozen_frame_is_one_fresh_complete_reading(tmp_path):
    """No waiting for the refresh thread: the frame is read when it freezes, with the RAFT panel,
    one leader, and counts that add up to what was sent."""
    with Deployment(name='fresh', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path)) as dep:
        dash = Dashboard(dep, interval=60)      # its thread reads once, before any request
        dash._displayed = True
        wait_until(lambda: dash.values['refreshes'] >= 1, 20, 'the first refresh')
        dep.post('/index', DocList[TextDoc]([TextDoc(id=f'k{i}', text='v') for i in range(6)]), request_size=2)
        dep.post('/get', DocList[TextDoc]([TextDoc(id=f'k{i}') for i in range(4)]), request_size=1)
        sent = 3 + 4
    text = dash.snapshot_bundle['text/plain']
    header, *sections = text.split('\n\n')
    assert f'{sent} requests' in header and 'stopped at' in header and 'running' not in header
    raft = next(s for s in sections if s.startswith('RAFT\n')).splitlines()[2:]
    assert len(raft) == 3 and sum(' leader ' in f' {line} ' for line in raft) == 1
    procs = next(s for s in sections if s.startswith('processes\n')).splitlines()[2:]
    per_replica = [int(line.split()[4]) for line in procs if '/rep-' in line]
    assert sum(per_replica) == sent
    dash.close()


def test_a_frozen_png_has_every_panel_and_a_wrapped_header():
    from orchestra_nb.dashboard import render_snapshot, render_distribution
    import io
    import matplotlib.image as mpimg
    chart = render_distribution({'names': ['rep-0'], 'series': {'/a': [3]}, 'stacked': True})
    header = 'Deployment x stopped at 08:41:03 · ' + ' · '.join(f'part {i}' for i in range(40))
    one = mpimg.imread(io.BytesIO(render_snapshot('short', [chart], [('RAFT', 'a\nb')])), format='png')
    two = mpimg.imread(io.BytesIO(render_snapshot(header, [chart], [('RAFT', 'a\nb')])), format='png')
    assert two.shape[0] > one.shape[0] and two.shape[1] == one.shape[1]   # wrapped, not cut off


def test_a_closed_control_panel_leaves_a_picture_of_itself():
    panel = ControlPanel(namespace={'Tagger': Tagger}, refresh_interval=0.2)
    panel._displayed = True          # as if shown: closing then updates the display
    try:
        panel.name.value = 'pictured'
        panel.up()
        assert panel.wait_idle(90)
        assert panel.last_error is None, panel.last_error
    finally:
        panel.close()
        REGISTRY.close_all()
    bundle = panel.picture_bundle
    assert bundle is not None and 'ControlPanel' in bundle['text/html']
    assert 'Running: <b>pictured</b>' in bundle['text/html'] and 'pictured/rep-0' in bundle['text/html']
    assert 'Executor: Tagger (notebook)' in bundle['text/plain'] and 'running: pictured' in bundle['text/plain']
    assert repr(panel).startswith('ControlPanel (running:')


def test_control_panel_starts_a_deployment_with_monitoring_when_ticked():
    import urllib.request
    panel = ControlPanel(namespace={}, refresh_interval=60)
    try:
        assert panel.deployment_kwargs()['monitoring'] is False   # unticked: off, like the schema's default
        panel.executor.value = 'echo'
        panel.name.value = 'panel-metrics'
        panel.monitoring.value = True
        panel.up_button.click()
        assert panel.wait_idle(60), 'Up did not finish within 60 s'
        assert panel.last_error is None, panel.last_error
        dep = panel.deployment
        assert dep.monitoring is True
        port = dep.status()['gateway']['metrics_port']
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as r:
            assert r.status == 200
        panel.down_button.click()
        assert panel.wait_idle(60)
    finally:
        panel.close()
        REGISTRY.close_all()
