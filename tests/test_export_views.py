"""What an export wrote, as a table (runtime/export/views.py): the rows come from the files."""
from __future__ import annotations

from runtime.export.views import ComposeSummary, KubernetesSummary, export_summary
from runtime.flow import Flow


def flow() -> Flow:
    return (Flow(name='views').add(name='tagger', uses='echo', shards=2)
            .add(name='store', uses='exact_nn', replicas=3, stateful=True))


def test_compose_summary_has_a_row_per_service_and_never_wraps_a_cell(tmp_path):
    path = flow().to_docker_compose_yaml(str(tmp_path / 'deploy' / 'docker-compose.yml'))
    view = export_summary(path)
    assert isinstance(view, ComposeSummary)
    assert [r[0] for r in view.rows] == ['tagger-shard-0-rep-0', 'tagger-shard-1-rep-0', 'store-rep-0',
                                         'store-rep-1', 'store-rep-2', 'gateway']
    assert view.rows[2][2] == 'store-rep-0 store-rep-1 store-rep-2'        # RAFT peers by service name
    assert any(n.startswith('secrets: views-secret (file ./views-secret, mode 600)') for n in view.notes)
    html = view._repr_html_()
    assert html.count('white-space: nowrap') == len(view.head) + sum(len(r) for r in view.rows)
    text = repr(view)
    assert text.splitlines()[0].split() == ['service', 'runs', 'RAFT', 'peers', 'volumes', 'secrets']


def test_kubernetes_summary_has_a_row_per_manifest(tmp_path):
    files = flow().to_kubernetes_yaml(str(tmp_path / 'k8s'), k8s_namespace='views')
    view = export_summary(files)
    assert isinstance(view, KubernetesSummary)
    kinds = {(r[1], r[2]): r[3] for r in view.rows}
    assert 'podManagementPolicy=Parallel' in kinds[('StatefulSet', 'store')]
    assert kinds[('Deployment', 'tagger-shard-0')] == 'replicas=1'
    assert kinds[('Secret', 'views-secret')] == 'type=Opaque, file mode 600'
    assert '<table>' in view._repr_html_() and 'StatefulSet' in repr(view)
