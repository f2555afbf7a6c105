"""%orchestra magics driven through a real IPython InteractiveShell."""
from __future__ import annotations

import textwrap

import pytest
from IPython.core.error import UsageError
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from conftest import pid_gone, wait_until
from orchestra_nb.magics import OrchestraError
from orchestra_nb.registry import REGISTRY


@pytest.fixture(scope='module')
def ip():
    shell = start_ipython() or get_ipython()  # one test shell per process (test_widgets may have started it)
    shell.run_cell('%load_ext orchestra_nb', store_history=False)
    yield shell


@pytest.fixture(autouse=True)
def clean_registry(ip):
    yield
    REGISTRY.close_all()
    for name in [n for n in ip.user_ns if n.startswith('t_')]:
        ip.user_ns.pop(name)


def run(ip, code: str):
    """Run a cell; return its result (raising what the cell raised)."""
    res = ip.run_cell(code, store_history=False)
    res.raise_error()
    return res.result


def run_failing(ip, code: str, capsys) -> tuple:
    """Run a cell that must fail; -> (exception, what the shell printed)."""
    capsys.readouterr()
    res = ip.run_cell(code, store_history=False)
    out = capsys.readouterr()
    assert not res.success, f'{code!r} should have failed'
    return res.error_in_exec, out.out + out.err


def pids(dep) -> list:
    return [r.process.pid for stage in dep.stages for r in stage.replicas] + [dep.gateway.pid]


def test_up_with_a_class_defined_in_the_shell_then_status_logs_scale_down(ip, capsys):
    run(ip, textwrap.dedent('''
        from docarray import DocList
        from docarray.documents import TextDoc
        from orchestra_nb import Executor, requests

        class t_Shout(Executor):
            @requests(on='/shout')
            def shout(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
                for d in docs:
                    d.text = d.text.upper() + '!'
                    print('shouting', d.text)
    '''))
    dep = run(ip, 't_dep = %orchestra up --uses t_Shout --name shout --replicas 2\nt_dep')
    assert dep is ip.user_ns['t_dep'] and dep._started and dep.replicas == 2
    out = capsys.readouterr().out
    assert 'shout/rep-0: starting' in out and 'shout/rep-1: ready' in out and 'shout: ready' in out
    assert run(ip, 't_dep.post("/shout", DocList[TextDoc]([TextDoc(text="hi")] * 4), request_size=1).text') \
        == ['HI!'] * 4

    run(ip, '%orchestra status')
    out = capsys.readouterr().out
    assert 'shout' in out and 'running' in out and 'Deployment' in out
    run(ip, '%orchestra status shout')
    out = capsys.readouterr().out
    assert 'shout/rep-0' in out and 'shout/rep-1' in out and 'shout/gateway' in out and 'ready' in out

    run(ip, '%orchestra logs shout --replica 0 -n 5')
    out = capsys.readouterr().out
    assert '==> shout/rep-0' in out and 'shout/rep-1 ' not in out

    old = pids(dep)
    run(ip, '%orchestra scale shout 3')
    assert 'shout: 2 -> 3 replicas' in capsys.readouterr().out
    assert [r['state'] for r in dep.status()['replicas']] == ['ready'] * 3
    assert run(ip, 'len(t_dep.post("/shout", DocList[TextDoc]([TextDoc(text="x")] * 9), request_size=1))') == 9
    assert sum(r['requests'].get('/shout', 0) for r in dep.status()['replicas']) == 4 + 9
    run(ip, '%orchestra scale shout 1')
    assert [r['name'] for r in dep.status()['replicas']] == ['shout/rep-0']
    assert run(ip, 't_dep.post("/shout", TextDoc(text="one")).text') == ['ONE!']

    run(ip, '%orchestra down shout')
    assert 'stopped: shout' in capsys.readouterr().out
    assert not dep._started and 'shout' not in REGISTRY.names()
    all_pids = old + [dep.stages[0].replicas[0].process.pid]
    wait_until(lambda: all(pid_gone(p) for p in all_pids), 10, 'every replica and the gateway to exit')


def test_up_module_class_no_wait_and_down_all(ip, capsys):
    dep = run(ip, 't_a = %orchestra up --uses sample_executors:Upper --no-wait\nt_a')
    assert 'in the background' in capsys.readouterr().out
    assert dep.name == 'upper'
    entry = REGISTRY.get('upper')
    wait_until(lambda: entry.state == 'running', 60, 'the background start to finish')
    assert set(entry.progress.values()) == {'ready'}
    run(ip, '%orchestra up --uses echo --name second')
    assert sorted(REGISTRY.names()) == ['second', 'upper']
    run(ip, '%orchestra down --all')
    out = capsys.readouterr().out
    assert 'stopped:' in out and 'upper' in out and 'second' in out
    assert REGISTRY.names() == [] and not dep._started


def test_cell_magic_yaml_body(ip, tmp_path):
    from runtime.deployment import Deployment
    if not hasattr(Deployment, 'load_config'):
        pytest.skip('runtime/config.py (Deployment.load_config) is not in this tree yet')
    dep = run(ip, textwrap.dedent('''\
        %%orchestra up
        jtype: Deployment
        with:
          name: fromyaml
          uses: sample_executors:Upper
          replicas: 2
    '''))
    assert dep.name == 'fromyaml' and dep._started
    assert [r['state'] for r in dep.status()['replicas']] == ['ready', 'ready']
    from docarray.documents import TextDoc
    assert dep.post('/upper', TextDoc(text='yaml')).text == ['YAML']
    assert 'fromyaml' in REGISTRY.names()


def test_scale_an_executor_of_a_flow(ip, capsys):
    flow = run(ip, textwrap.dedent('''\
        %%orchestra up
        jtype: Flow
        with:
          name: fscale
        executors:
          - name: upper
            uses: sample_executors:Upper
    '''))
    err, _ = run_failing(ip, '%orchestra scale fscale 2', capsys)
    assert 'name the Executor to scale with --executor E' in str(err)
    run(ip, '%orchestra scale fscale 2 --executor upper')
    assert flow['upper'].replicas == 2
    assert [r['state'] for r in flow.status()['replicas']] == ['ready', 'ready']


def test_cell_magic_resolves_a_class_defined_in_the_shell(ip):
    from runtime.deployment import Deployment
    if not hasattr(Deployment, 'load_config'):
        pytest.skip('runtime/config.py (Deployment.load_config) is not in this tree yet')
    run(ip, textwrap.dedent('''
        from docarray import DocList
        from docarray.documents import TextDoc
        from orchestra_nb import Executor, requests
        class t_Tagger(Executor):
            @requests
            def tag(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
                for d in docs:
                    d.text = 'tagged'
    '''))
    dep = run(ip, '%%orchestra up --name tagyaml\njtype: Deployment\nwith:\n  uses: t_Tagger\n')
    from docarray.documents import TextDoc
    assert dep.name == 'tagyaml' and dep.post('/any', TextDoc()).text == ['tagged']


@pytest.mark.parametrize('line, message', [
    ('%orchestra frobnicate', "unknown command 'frobnicate'"),
    ('%orchestra up', 'what should run?'),
    ('%orchestra up --uses NoSuchThing', "'NoSuchThing': not a class defined in this notebook"),
    ('%orchestra up --uses echo --replicas many', "invalid int value: 'many'"),
    ('%orchestra up --uses echo --replicas 0', 'replicas=0: must be an integer >= 1'),
    ('%orchestra up --uses echo --polling SOME', "polling='SOME' is not a polling mode"),
    ('%orchestra up --uses echo --uses-with {bad', 'not valid JSON'),
    ('%orchestra up --uses echo --bogus 1', 'unrecognized arguments: --bogus 1'),
    ('%orchestra up -f /nonexistent/x.yaml', 'no such file'),
    ('%orchestra status nobody', "nothing named 'nobody' is running in this kernel"),
    ('%orchestra scale nobody 2', "nothing named 'nobody'"),
    ('%orchestra scale', 'the following arguments are required: name, replicas'),
    ('%orchestra down', 'give NAME(s) or --all'),
    ('%orchestra logs', 'the following arguments are required: name'),
    ('%orchestra up "unclosed', 'cannot parse the arguments'),
    ('%%orchestra status\nbody', 'the cell magic is %%orchestra up'),
    ('%orchestra bench --bogus 1', "unexpected keyword argument 'bogus'"),
    ('%orchestra bench docs 5', "unexpected 'docs': options look like --key value"),
])
def test_bad_arguments_give_one_line_and_the_usage(ip, capsys, line, message):
    err, printed = run_failing(ip, line, capsys)
    assert isinstance(err, UsageError), err
    first, *rest = str(err).splitlines()
    assert message in first
    assert rest and rest[0].startswith('usage: %orchestra')
    assert 'Traceback' not in printed and 'File "' not in printed
    assert f'UsageError: {first}' in printed


def test_a_failing_executor_shows_its_log_tail_not_a_traceback(ip, capsys):
    err, printed = run_failing(ip, '%orchestra up --uses sample_executors:BrokenInit --name broken', capsys)
    assert isinstance(err, OrchestraError)
    assert 'broken/rep-0' in str(err) and 'init failed on purpose' in str(err)
    assert 'last lines of' in printed and 'OrchestraError:' in printed
    assert 'Traceback (most recent call last)' not in printed.split('last lines of')[0]
    assert 'broken/rep-0: failed' in printed
    assert 'broken' not in REGISTRY.names()


def test_help_and_a_taken_name(ip, capsys):
    assert run(ip, '%orchestra') is None
    out = capsys.readouterr().out
    assert '%orchestra up --uses EXEC' in out and '%orchestra scale NAME N' in out
    info = ip.object_inspect('%orchestra')  # what `%orchestra?` shows
    assert info['found'] and '%orchestra up --uses EXEC' in info['docstring']
    assert '<no docstring>' not in info['docstring']
    capsys.readouterr()
    run(ip, '%orchestra?')
    assert '%orchestra scale NAME N' in capsys.readouterr().out
    run(ip, '%orchestra up --uses echo --name taken')
    err, printed = run_failing(ip, '%orchestra up --uses echo --name taken', capsys)
    assert isinstance(err, UsageError) and "'taken' is already running in this kernel" in str(err)


def test_a_name_taken_in_code_is_refused_and_status_lists_it(ip, capsys):
    from runtime.deployment import Deployment
    with Deployment(name='coded', uses='sample_executors:Upper') as dep:
        err, _ = run_failing(ip, '%orchestra up --uses echo --name coded', capsys)
        assert isinstance(err, UsageError)
        assert "'coded' is already running in this kernel (started in code)" in str(err)
        run(ip, '%orchestra status')
        out = capsys.readouterr().out
        assert 'coded' in out and 'running' in out and 'code' in out
        assert run(ip, '%orchestra up --uses echo').name == 'echo'  # a free default name still starts
    assert not dep.running


def test_status_says_what_stopped(ip, capsys):
    run(ip, '%orchestra up --uses echo --name first')
    run(ip, '%orchestra up --uses echo --name second')
    run(ip, '%orchestra down first')
    capsys.readouterr()
    run(ip, '%orchestra status')
    out = capsys.readouterr().out
    assert 'second' in out and 'stopped: ' in out and 'first' in out.split('stopped: ')[1]
    run(ip, '%orchestra down --all')
    capsys.readouterr()
    run(ip, '%orchestra status')
    out = capsys.readouterr().out
    assert out.startswith('nothing running; stopped: ') and 'first' in out and 'second' in out
    assert 'nothing started' not in out
    err, _ = run_failing(ip, '%orchestra status first', capsys)
    assert "nothing named 'first' is running" in str(err) and 'stopped: ' in str(err)


def test_scale_refuses_a_stateful_deployment(ip, tmp_path):
    from runtime.deployment import Deployment
    dep = Deployment(name='raftish', uses='sample_executors:Upper', replicas=3, stateful=True,
                     workspace=str(tmp_path))
    with pytest.raises(ValueError, match='stateful'):
        dep.scale(4)


def test_rich_reprs(ip):
    from runtime.deployment import Deployment
    dep = Deployment(name='reprs', uses='sample_executors:Upper', replicas=2)
    html = dep._repr_html_()
    assert 'reprs' in html and 'stopped' in html and 'replicas=2' in html
    assert "<Deployment 'reprs' replicas=2 stopped>" in ip.display_formatter.format(dep)[0]['text/plain']
    with dep:
        html = dep._repr_html_()
        assert 'reprs/rep-1' in html and 'reprs/gateway' in html and 'running' in html
        text = ip.display_formatter.format(dep)[0]['text/plain']
        assert text.startswith("<Deployment 'reprs' replicas=2 running")
        assert 'reprs/rep-0' in text and 'ready' in text


def test_await_apost_at_top_level(ip):
    run(ip, 't_d = %orchestra up --uses sample_executors:Upper --name aw')
    out = run(ip, 'from docarray.documents import TextDoc\n(await t_d.apost("/upper", TextDoc(text="async"))).text')
    assert out == ['ASYNC']


def test_bench_delegates_to_the_benchmark(ip):
    res = run(ip, '%orchestra bench --docs 300 --queries 5 --dim 16 --setups 1 --progress False')
    assert [s.ok for s in res.setups] == [True]
    assert 'replicas=1' in ip.display_formatter.format(res)[0]['text/plain']
