"""``uses``: one table for every entry point, resolved in the owner before any process starts."""
from __future__ import annotations

import psutil
import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from runtime import config, uses
from runtime.cli import _deployment_spec, build_parser, main
from runtime.deployment import Deployment
from runtime.flow import Flow
from runtime.uses import BUILTIN_EXECUTORS, UsesError


@pytest.fixture(scope='module')
def ip():
    shell = start_ipython() or get_ipython()
    shell.run_cell('%load_ext orchestra_nb', store_history=False)
    return shell


def children() -> set:
    """This process's child pids (the fork server, started at import, is among them already)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def cli_deployment(value: str) -> Deployment:
    """What ``orchestra deployment --uses VALUE`` builds (without serving it)."""
    args = build_parser().parse_args(['deployment', '--uses', value])
    return Deployment.from_spec(_deployment_spec(args))


@pytest.mark.parametrize('short', sorted(BUILTIN_EXECUTORS))
def test_every_builtin_is_accepted_by_every_entry_point(short, ip):
    from orchestra_nb.magics import notebook_uses
    from orchestra_nb.widgets import ControlPanel
    expected = BUILTIN_EXECUTORS[short]
    panel = ControlPanel(namespace={})
    try:
        offered = [v for _, v in panel.executor.options]
        assert short in offered           # the panel offers the short name...
        panel.executor.value = short
        from_panel = Deployment(**panel.deployment_kwargs())   # ...which Up passes to Deployment
    finally:
        panel.close()
    made = {
        'code': Deployment(uses=short),
        'Flow.add': Flow().add(name='x', uses=short)['x'],
        'YAML': Deployment.load_config(f'jtype: Deployment\nwith:\n  uses: {short}\n'),
        'Flow YAML': Flow.load_config(f'jtype: Flow\nexecutors:\n  - name: x\n    uses: {short}\n')['x'],
        'CLI': cli_deployment(short),
        'ControlPanel': from_panel,
    }
    for where, dep in made.items():
        assert dep.uses == expected, where
        assert uses.uses_label(dep.uses) == short, where    # the card and status say `echo`
    assert notebook_uses(short, {}) == expected              # the magic
    dep = ip.run_cell(f'%orchestra up --uses {short} --no-wait --replicas 1', store_history=False)
    try:
        assert dep.success and dep.result.uses == expected
    finally:
        from orchestra_nb.registry import REGISTRY
        REGISTRY.close_all()


def test_the_card_and_status_line_say_the_short_name():
    dep = Deployment(uses='echo', replicas=2)
    assert 'uses echo, replicas=2' in dep._repr_html_()
    assert 'runtime.executors' not in dep._repr_html_()


@pytest.mark.parametrize('value, hint', [
    ('Ekko', "did you mean 'echo'?"),
    ('exact_n', "did you mean 'exact_nn'?"),
    ('runtime.executors.echo:Ekho', "did you mean 'Echo'?"),
    ('no_such_package.mod:Thing', "cannot import module 'no_such_package.mod'"),
])
def test_a_wrong_uses_is_one_line_before_any_process_starts(value, hint, tmp_path, capsys, ip):
    before = children()
    with pytest.raises(UsesError) as info:                                   # code
        Deployment(uses=value, replicas=3).start()
    assert hint in str(info.value) and '\n' not in str(info.value)
    assert f'uses={value!r}' in str(info.value)
    assert info.value._render_traceback_() == [f'UsesError: {info.value}']  # one line in IPython
    (tmp_path / 'd.yaml').write_text(f'jtype: Deployment\nwith:\n  uses: {value}\n  replicas: 2\n')
    with pytest.raises(ValueError, match=hint.replace('?', r'\?')):          # YAML
        Deployment.load_config(str(tmp_path / 'd.yaml'))
    capsys.readouterr()
    assert main(['deployment', '--uses', value, '--replicas', '2']) == 2     # CLI
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hint in err[0], err
    res = ip.run_cell(f'%orchestra up --uses {value} --replicas 2', store_history=False)   # magic
    assert isinstance(res.error_in_exec, UsageError)
    assert hint in str(res.error_in_exec).splitlines()[0]
    assert children() == before, 'a process was started for a uses that cannot load'


def test_the_magic_suggests_notebook_classes_too(ip):
    ip.run_cell('from orchestra_nb import Executor\nclass t_Indexer(Executor):\n    pass\n', store_history=False)
    try:
        res = ip.run_cell('%orchestra up --uses t_Indexr', store_history=False)
        first = str(res.error_in_exec).splitlines()[0]
        assert 'not a class defined in this notebook' in first and "did you mean 't_Indexer'?" in first
    finally:
        ip.user_ns.pop('t_Indexer', None)


def test_a_hub_reference_and_a_non_executor_are_refused():
    with pytest.raises(ValueError, match='hub references are not supported'):
        Deployment(uses='jinaai://jina-ai/Foo')
    with pytest.raises(UsesError, match='not an Executor subclass'):
        Deployment(uses='collections:OrderedDict')
    with pytest.raises(UsesError, match='not an orchestra_nb.Executor subclass'):
        Deployment(uses=dict)


# -- no abbreviations ---------------------------------------------------------------------------
def test_the_cli_takes_no_abbreviation_and_suggests_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(['deployment', '--uses', 'echo', '--replica', '3'])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --replica 3; did you mean '--replicas'?" in err
    with pytest.raises(SystemExit):
        main(['deployment', '--uses', 'echo', '--read-consistency', 'stron'])
    assert "did you mean 'strong'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['deploy', '--uses', 'echo'])
    assert "did you mean 'deployment'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['ping', '127.0.0.1:1', '--time', '1'])   # --timeout abbreviated
    assert "did you mean '--timeout'?" in capsys.readouterr().err


@pytest.mark.parametrize('line, message', [
    ('%orchestra up --uses echo --replica 3', "--replica 3; did you mean '--replicas'?"),
    ('%orchestra up --uses echo --shard 2', "did you mean '--shards'?"),
    ('%orchestra logs x --rep 1', "did you mean '--replica'?"),
    ('%orchestra dashboard x --int 1', "did you mean '--interval'?"),
    ('%orchestra up --uses echo --read-consistency stron', "did you mean 'strong'?"),
    ('%orchestra stauts', "unknown command 'stauts'; did you mean 'status'?"),
    ('%orchestra bench --doc 10', "unexpected keyword argument 'doc'; did you mean 'docs'?"),
])
def test_the_magic_takes_no_abbreviation(ip, line, message):
    res = ip.run_cell(line, store_history=False)
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    assert message in str(res.error_in_exec).splitlines()[0]


def test_every_parser_refuses_abbreviations():
    from orchestra_nb.magics import PARSERS
    parsers = list(PARSERS.values()) + [build_parser()]
    for p in parsers:
        assert p.allow_abbrev is False, p.prog
    sub = [a for a in build_parser()._actions if a.__class__.__name__ == '_SubParsersAction'][0]
    assert all(p.allow_abbrev is False for p in sub.choices.values())


def test_normalize_keeps_a_builtin_short_name_for_the_config():
    spec = config.load_spec('jtype: Deployment\nwith:\n  uses: echo\n')
    assert spec['with']['uses'] == 'echo'


def test_no_parser_in_the_repository_takes_abbreviations():
    """Every argparse parser is a StrictParser or says allow_abbrev=False (benchmarks too)."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder, _, names in os.walk(root):
        if any(part.startswith('.') or part in ('venv', 'node_modules') for part in folder[len(root):].split(os.sep)):
            continue
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                text = open(path, encoding='utf-8').read()
                for m in re.finditer(r'ArgumentParser\((?!allow_abbrev=False)', text):
                    offenders.append(f'{os.path.relpath(path, root)}: {text[m.start():m.start() + 60]!r}')
    assert offenders == [], offenders
