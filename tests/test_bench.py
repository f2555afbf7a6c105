"""The QPS comparison: setups syntax, result structure, correctness checks, JSON, plots, CLI."""
import argparse
import json

import pytest

from runtime.bench import BenchResult, Setup, add_arguments, parse_setups, run_from_args

TINY = dict(docs=300, queries=20, dim=16, concurrency=8, progress=False)


def test_setups_syntax():
    s = parse_setups('1, 3s, 1b, 2sb16')
    assert [(x.replicas, x.stateful, x.batching and x.batching['max_batch_size']) for x in s] == \
        [(1, False, None), (3, True, None), (1, False, 32), (2, True, 16)]
    assert [x.name for x in s] == ['replicas=1', 'replicas=3 RAFT', 'replicas=1 batch32', 'replicas=2 RAFT batch16']
    js = parse_setups('[{"replicas": 2, "batching": {"max_batch_size": 4}, "name": "two"}, {"replicas": 1}]')
    assert js[0] == Setup(replicas=2, batching={'max_batch_size': 4, 'max_wait_ms': 2.0}, name='two')
    assert parse_setups(None)[1].stateful
    assert [x.name for x in parse_setups('1,1')] == ['replicas=1 #1', 'replicas=1 #2']
    for bad, match in (('x', 'expected'), ('0', 'replicas'), ('', 'empty'), ('[{"replica": 1}]', 'unknown keys'),
                       ('[1', 'JSON')):
        with pytest.raises(ValueError, match=match):
            parse_setups(bad)


def test_compare_structure_checks_json_and_views(tmp_path):
    from orchestra_nb.bench import NotebookBenchResult, compare, save_plot
    result = compare(setups='1,2,1b', **TINY)
    assert isinstance(result, NotebookBenchResult) and result.ok, result
    one, two, batched = result.setups
    for s in result.setups:
        assert s.error is None
        assert s.index_seconds > 0 and s.search_qps > 0 and 0 < s.p50_ms <= s.p99_ms
    assert one.checks['same_count'] is True and one.checks['top_match'] is True
    assert one.per_replica['bench/rep-0'] == {'reads': 20, 'writes': 3, 'docs': 300}
    # stateless replicas hold disjoint parts: the counts add up, the top-match check does not apply
    assert two.checks['same_count'] is None and two.checks['top_match'] is None
    assert sum(r['docs'] for r in two.per_replica.values()) == 300
    assert sum(r['reads'] for r in two.per_replica.values()) == 20
    assert batched.checks['top_match'] is True and batched.per_replica['bench/rep-0']['batches'] >= 1

    data = json.loads(result.to_json())
    assert set(data) >= {'setups', 'machine', 'workload'}
    for key in ('name', 'replicas', 'stateful', 'index_seconds', 'search_qps', 'p50_ms', 'p99_ms', 'per_replica'):
        assert key in data['setups'][0]
    assert data['machine']['cpus'] >= 1 and data['workload']['docs'] == 300
    assert BenchResult.from_dict(data).table() == result.table()

    text = str(result)
    assert 'replicas=1 batch32' in text and 'search QPS' in text
    assert '<table' in result._repr_html_() and 'replicas=2' in result._repr_html_()
    replicas = result._repr_html_().split('class="orchestra-bench-replicas"')[1]  # a table, one row per replica
    assert replicas.count('<tr>') == 1 + sum(len(s.per_replica) for s in result.setups)
    assert '>reads</th>' in replicas and '>bench/rep-1</td>' in replicas
    from matplotlib.figure import Figure
    fig = result.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    png = tmp_path / 'bench.png'
    save_plot(result, str(png))
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_run_from_args_writes_json_and_plot(tmp_path, capsys):
    from orchestra_nb.bench import save_plot
    parser = add_arguments(argparse.ArgumentParser(allow_abbrev=False))
    out, png = tmp_path / 'out.json', tmp_path / 'out.png'
    args = parser.parse_args(['--docs', '200', '--queries', '10', '--dim', '8', '--setups', '1',
                              '--json', str(out), '--plot', str(png), '--no-progress'])
    assert run_from_args(args, plotter=save_plot) == 0
    data = json.loads(out.read_text())
    assert [s['name'] for s in data['setups']] == ['replicas=1'] and data['setups'][0]['search_qps'] > 0
    assert png.exists() and 'search QPS' in capsys.readouterr().out

    no_plotter = parser.parse_args(['--setups', '1', '--plot', str(png)])
    assert run_from_args(no_plotter) == 2
    assert '--plot needs a plotter' in capsys.readouterr().err
    assert run_from_args(parser.parse_args(['--setups', '1q'])) == 2


def test_runtime_bench_imports_no_notebook_packages():
    import subprocess
    import sys
    code = ('import sys, runtime.bench, runtime.batching, runtime.executors.exact_nn; '
            'bad = [m for m in ("matplotlib", "ipywidgets", "IPython") if m in sys.modules]; '
            'print(bad); sys.exit(1 if bad else 0)')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0


def test_stateful_setup_replicas_hold_the_same_docs():
    from runtime.bench import compare
    result = compare(setups='3s', **TINY)
    (s,) = result.setups
    assert s.error is None, s.error
    assert s.checks['same_count'] is True and s.checks['top_match'] is True
    assert [r['docs'] for r in s.per_replica.values()] == [300, 300, 300]
    assert s.replicated_seconds >= s.index_seconds
