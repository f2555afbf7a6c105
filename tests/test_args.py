"""One argument schema (runtime/args.py): every entry point accepts the same arguments and checks
them the same way; `uses` is resolved in one place (runtime/uses.py); no import cycles."""
import ast
import inspect
import os
import re

import pytest

from runtime import args as schema
from runtime import config, uses
from runtime.args import DEPLOYMENT_ARGS, FLOW_ARGS, arg_names, flag_names
from runtime.deployment import Deployment
from runtime.flow import Flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOYMENT = set(arg_names(DEPLOYMENT_ARGS))
FLOW = set(arg_names(FLOW_ARGS))


def keyword_params(func):
    return [p for p in inspect.signature(func).parameters.values()
            if p.name != 'self' and p.kind is not inspect.Parameter.VAR_KEYWORD]


def subparser(parser, command):
    sub = next(a for a in parser._actions if a.__class__.__name__ == '_SubParsersAction')
    return sub.choices[command]


def valid_keys(yaml_text):
    """The keys a config section accepts, as its unknown-key error lists them."""
    with pytest.raises(config.ConfigError) as info:
        config.load_spec(yaml_text)
    listed = re.search(r'\(valid in .*?: ([a-z_, ]*)\)$', str(info.value))
    assert listed, str(info.value)
    return set(listed.group(1).split(', '))


# ----------------------------------------------------------------------------- the same argument set

def test_constructor_signatures_are_the_schema():
    """Spelled out for editors; same names, order and defaults as runtime/args.py."""
    for cls, args in ((Deployment, DEPLOYMENT_ARGS), (Flow, FLOW_ARGS)):
        params = keyword_params(cls.__init__)
        assert [p.name for p in params] == list(arg_names(args)), cls
        assert {p.name: p.default for p in params} == schema.defaults(args), cls


def test_yaml_accepts_the_schema():
    assert valid_keys('jtype: Deployment\nbogus: 1\n') == DEPLOYMENT
    assert valid_keys('jtype: Flow\nexecutors:\n  - bogus: 1\n') == DEPLOYMENT
    # a Flow's `with:` also takes a Deployment's arguments: the defaults of its Executors (as Jina)
    assert valid_keys('jtype: Flow\nwith: {bogus: 1}\nexecutors: []\n') == FLOW | set(arg_names(schema.FLOW_WIDE_ARGS))


def test_cli_flags_are_the_schema():
    from runtime.cli import build_parser
    parser = build_parser()
    # --uses of `orchestra deployment` also takes a config file; needs is for Flows only
    assert set(flag_names(subparser(parser, 'deployment'))) == DEPLOYMENT - {'needs'}
    assert set(flag_names(subparser(parser, 'flow'))) == FLOW | {'uses'}
    assert set(flag_names(subparser(parser, 'executor'))) <= DEPLOYMENT


def test_magic_flags_are_the_schema():
    pytest.importorskip('IPython')
    from orchestra_nb.magics import PARSERS
    assert set(flag_names(PARSERS['up'])) == (DEPLOYMENT - {'needs'}) | {'file', 'no_wait'}


def test_cli_and_magic_parse_flags_alike():
    pytest.importorskip('IPython')
    from orchestra_nb.magics import PARSERS, UP_ARGS
    from runtime.cli import SERVE_DEPLOYMENT_ARGS, build_parser
    argv = ['--uses', 'x:Y', '--replicas', '3', '--stateful', '--peer-ports', '12345,12346,12347',
            '--env', 'A=1', '--polling', '{"/search": "ALL"}', '--timeout-ready', '5', '--no-reduce',
            '--uses-with', '{"dim": 4}', '--port', '5555']
    cli = build_parser().parse_args(['deployment'] + argv)
    magic = PARSERS['up'].parse_args(argv)
    assert UP_ARGS == SERVE_DEPLOYMENT_ARGS
    values = schema.flag_values(cli, SERVE_DEPLOYMENT_ARGS)
    assert values == schema.flag_values(magic, UP_ARGS) == {
        'replicas': 3, 'stateful': True, 'peer_ports': [12345, 12346, 12347], 'env': {'A': '1'},
        'polling': {'/search': 'ALL'}, 'timeout_ready': 5.0, 'no_reduce': True, 'uses_with': {'dim': 4},
        'port': 5555}


def test_control_panel_fields_are_schema_arguments():
    pytest.importorskip('ipywidgets')
    from orchestra_nb.widgets import PANEL_ARGS, ControlPanel
    panel = ControlPanel(namespace={}, refresh_interval=60)
    try:
        assert list(panel.fields) == list(arg_names(PANEL_ARGS))
        assert set(panel.fields) <= DEPLOYMENT
        kwargs = panel.deployment_kwargs()
        assert set(kwargs) <= DEPLOYMENT and kwargs['replicas'] == panel.replicas.value
        assert panel.fields['replicas'].tooltip == schema.by_name(DEPLOYMENT_ARGS)['replicas'].help
    finally:
        panel.close()


def test_every_argument_is_accepted_by_deployment_and_flow_add():
    Deployment(**schema.defaults(DEPLOYMENT_ARGS))
    Flow(**schema.defaults(FLOW_ARGS))
    for name, default in schema.defaults(DEPLOYMENT_ARGS).items():
        if name not in ('name', 'needs'):
            Flow().add(**{name: default})
    with pytest.raises(ValueError, match="unknown argument 'replica'; did you mean 'replicas'"):
        Flow().add(replica=2)


def test_args_are_well_formed():
    for args in (DEPLOYMENT_ARGS, FLOW_ARGS):
        assert len(set(arg_names(args))) == len(args)
        for a in args:
            assert a.help and a.say and a.types and a.form in schema.FORMS, a
            assert a.default is None or a.accepts_type(a.default) or isinstance(a.default, float), a
    with pytest.raises(ValueError, match="form='bogus'"):
        schema.Arg('x', None, 'help', (str,), 'a string', form='bogus')


# ----------------------------------------------------------------------------- the same checks

BAD = [
    ('timeout_ready', True), ('timeout_ready', 0), ('timeout_ready', 'soon'),
    ('replicas', True), ('replicas', 0), ('shards', False),
    ('max_in_flight_per_replica', True), ('max_in_flight_per_replica', 0),
    ('blas_threads', True), ('stateful', 'yes'), ('stream_logs', 1), ('name', 'a/b'), ('name', ''),
    ('read_consistency', 'sometimes'), ('uses_with', [1]), ('env', ['A=1']),
]


@pytest.mark.parametrize('name, value', BAD)
def test_a_bad_value_is_refused_by_every_entry_point(name, value):
    import yaml
    with pytest.raises(ValueError, match=name):
        Deployment(**{name: value})
    with pytest.raises(ValueError, match=name):
        Flow().add(**{name: value})
    if name in FLOW:
        with pytest.raises(ValueError, match=name):
            Flow(**{name: value})
        with pytest.raises(config.ConfigError, match=name):
            Flow.load_config(yaml.safe_dump({'jtype': 'Flow', 'with': {name: value}, 'executors': []}))
    with pytest.raises(config.ConfigError, match=name):
        Deployment.load_config(yaml.safe_dump({'jtype': 'Deployment', name: value}))
    with pytest.raises(config.ConfigError, match=name):
        Flow.load_config(yaml.safe_dump({'jtype': 'Flow', 'executors': [{'name': 'e', name: value}]}))


def test_timeout_ready_true_is_refused_everywhere():
    for make in (lambda: Deployment(timeout_ready=True), lambda: Flow(timeout_ready=True),
                 lambda: Deployment.load_config('jtype: Deployment\ntimeout_ready: true\n'),
                 lambda: Flow.load_config('jtype: Flow\nwith: {timeout_ready: true}\nexecutors: []\n')):
        with pytest.raises(ValueError, match='timeout_ready'):
            make()


@pytest.mark.parametrize('prefix', uses.HUB_PREFIXES)
def test_every_hub_prefix_is_refused_everywhere(prefix):
    ref = f'{prefix}jina-ai/CLIPEncoder'
    with pytest.raises(ValueError, match='hub references are not supported'):
        Deployment(uses=ref)
    with pytest.raises(config.ConfigError, match='hub references are not supported'):
        config.load_spec(f'jtype: Deployment\nuses: {ref}\n')
    with pytest.raises(uses.ExecutorLoadError, match='hub references are not supported'):
        uses.load_executor_class(ref)
    with pytest.raises(ValueError, match='hub references are not supported'):
        uses.resolve_uses({'jtype': ref})


def test_one_builtin_table():
    pytest.importorskip('ipywidgets')
    from orchestra_nb.magics import notebook_uses
    from orchestra_nb.widgets import BUILTINS
    from runtime import bench
    for short, spec in uses.BUILTIN_EXECUTORS.items():
        assert notebook_uses(short, {}) == spec
        assert uses.load_executor_class(spec).__name__ == spec.rsplit(':', 1)[-1]
    assert set(BUILTINS.values()) == set(uses.BUILTIN_EXECUTORS)   # the panel offers the short names
    assert Deployment().uses == uses.DEFAULT_USES
    assert bench.DEFAULT_USES in uses.BUILTIN_EXECUTORS.values()


# ----------------------------------------------------------------------------- one place each

def _sources():
    for pkg in ('runtime', 'orchestra_nb'):
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith('.py'):
                    path = os.path.join(folder, f)
                    with open(path, encoding='utf-8') as fh:
                        yield os.path.relpath(path, ROOT), fh.read()


def test_uses_resolution_lives_in_one_module():
    defined = {}
    for path, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name in (
                    'resolve_uses', 'load_executor_class', 'find_class', 'import_py_module'):
                defined.setdefault(node.name, []).append(path)
        if "'jinaai://'" in text or "'runtime.executors.echo:Echo'" in text:
            defined.setdefault('literals', []).append(path)
    assert defined == {name: [os.path.join('runtime', 'uses.py')] for name in defined}


def _imports(path, text):
    """Modules ``path`` imports (in functions too; not under ``if TYPE_CHECKING:``)."""
    skip = set()
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f'{node.module}.{a.name}' for a in node.names)
    return out


def test_no_import_cycle_through_the_config_modules():
    modules = {}
    for path, text in _sources():
        name = path[:-3].replace(os.sep, '.')
        modules[name.removesuffix('.__init__')] = text
    graph = {m: {i for i in _imports(m, t) if i in modules and i != m} for m, t in modules.items()}
    watched = {f'runtime.{m}' for m in ('args', 'uses', 'yamlio', 'config', 'deployment', 'flow', 'cli')}

    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for n in graph.get(m, ()):
                if n == goal:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    cycles = [m for m in sorted(watched) if reaches(m, m)]
    assert not cycles, f'import cycles through {cycles}'
    # one direction: Deployment and Flow read and write configs; runtime.config builds no objects
    assert not {'runtime.deployment', 'runtime.flow'} & graph['runtime.config']


# ----------------------------------------------------------------------------- Jina's arguments

def test_jina_tables_do_not_overlap_the_schema():
    """A name is declared once: implemented (an Arg), refused, accepted as is, or translated
    (constructors); implemented or refused (post: compression is post's, not a Deployment's)."""
    ours = DEPLOYMENT | FLOW | set(arg_names(schema.FLOW_ADD_ARGS))
    tables = [set(schema.JINA_ONLY), set(schema.JINA_ACCEPTED), set(schema.JINA_TRANSLATED)]
    for table in tables:
        assert not table & ours, table & ours
    assert not set(schema.JINA_POST_ONLY) & set(arg_names(schema.POST_ARGS))
    assert not (tables[0] & tables[1]) and not (tables[0] & tables[2]) and not (tables[1] & tables[2])


@pytest.mark.parametrize('key', sorted(schema.JINA_ONLY))
def test_refused_jina_arguments_say_why_everywhere(key):
    """Deployment(...), Flow.add(...), Flow(...), YAML and the CLI refuse each with the same reason."""
    from runtime.cli import build_parser
    reason = schema.JINA_ONLY[key]
    for make in (lambda: Deployment(**{key: True}), lambda: Flow().add(**{key: True}),
                 lambda: Flow(**{key: True})):
        with pytest.raises(ValueError) as info:
            make()
        assert reason in str(info.value) and key in str(info.value)
    with pytest.raises(config.ConfigError) as info:
        config.load_spec(f'jtype: Deployment\n{key}: true\n')
    assert reason in str(info.value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(['deployment', '--uses', 'x:Y', '--' + key.replace('_', '-'), 'x'])


def test_refused_jina_flags_say_why(capsys):
    from runtime.cli import main
    with pytest.raises(SystemExit):
        main(['deployment', '--uses', 'x:Y', '--install-requirements'])
    assert schema.JINA_ONLY['install_requirements'] in capsys.readouterr().err


@pytest.mark.parametrize('key', sorted(schema.JINA_ACCEPTED))
def test_accepted_jina_arguments(key):
    ok_value = {'native': True, 'deployment_role': None, 'copy_flow': False}[key]
    Deployment(**{key: ok_value})
    Flow().add(**{key: ok_value})
    with pytest.raises(ValueError, match=f'{key}=.*is not supported'):
        Deployment(**{key: 'bad'})


def test_monitoring_is_an_argument():
    dep = Deployment(monitoring=True, port_monitoring=0)
    assert dep.monitoring is True and dep.run_plan().gateway.monitoring
    assert all(r.spec.monitoring for r in dep.run_plan().stages[0].shards[0])
    with pytest.raises(ValueError, match="monitoring='yes': must be True or False"):
        Deployment(monitoring='yes')
    with pytest.raises(ValueError, match='port_monitoring=70000'):
        Deployment(port_monitoring=70000)
    flow = Flow(monitoring=True).add(name='a').add(name='b', monitoring=False, port_monitoring=9999)
    assert flow['a'].monitoring and not flow['b'].monitoring
    with pytest.raises(ValueError, match='a fixed metrics port needs exactly one replica'):
        Flow().add(name='c', replicas=2, port_monitoring=9999)


def test_translated_jina_arguments(tmp_path):
    (tmp_path / 'mod.py').write_text('')
    dep = Deployment(volumes=[f'{tmp_path}:/workspace'], uses_metas={'py_modules': [str(tmp_path / 'mod.py')]})
    assert dep.workspace == str(tmp_path) and dep.py_modules == [str(tmp_path / 'mod.py')]
    yml = tmp_path / 'dep.yml'
    yml.write_text(f'jtype: Deployment\nvolumes: {tmp_path}\nuses_metas: {{py_modules: [mod.py]}}\n')
    spec = config.load_spec(str(yml))
    assert spec['with']['workspace'] == str(tmp_path) and spec['with']['py_modules'] == [str(tmp_path / 'mod.py')]
    with pytest.raises(ValueError, match='one folder'):
        Deployment(volumes=['/a', '/b'])
    with pytest.raises(ValueError, match='keep one'):
        Deployment(volumes='/a', workspace='/b')
    with pytest.raises(ValueError, match='uses_metas='):
        Deployment(uses_metas={'bogus': 1})


def test_every_jina_argument_has_a_decision():
    """docs/jina-compatibility.md lists every public argument of Jina 3.34's Deployment, Flow, Flow.add,
    Client/post and @requests, each with its decision; each is implemented or in one of the tables."""
    from runtime.client import Client
    page = open(os.path.join(ROOT, 'docs', 'jina-compatibility.md')).read()
    rows = dict(re.findall(r'^\| `([a-z_]+)` \| ([^|]+) \|', page, flags=re.M))
    assert rows, 'no rows found'
    post = set(inspect.signature(Client.post).parameters) - {'self', 'kwargs'}
    decided = (DEPLOYMENT | FLOW | post | set(arg_names(schema.FLOW_ADD_ARGS)) | set(schema.JINA_ONLY)
               | set(schema.JINA_ACCEPTED) | set(schema.JINA_TRANSLATED) | set(schema.JINA_POST_ONLY)
               | {'request_schema', 'response_schema', 'protocol', 'port', 'needs', 'copy_flow'})
    undecided = sorted(set(rows) - decided)
    assert not undecided, f'rows of the page with no implementation or table entry: {undecided}'
    tables = (set(schema.JINA_ONLY) | set(schema.JINA_POST_ONLY) | set(schema.JINA_ACCEPTED)
              | set(schema.JINA_TRANSLATED) | set(schema.JINA_CLIENT_ONLY) | set(schema.FLOW_JINA_ONLY))
    assert not sorted(tables - set(rows)), 'table entries without their row in the page'


def test_magic_refuses_jina_flags_with_the_reason():
    pytest.importorskip('IPython')
    from orchestra_nb.magics import PARSERS, _ArgError
    with pytest.raises(_ArgError, match=re.escape(schema.JINA_ONLY['gpus'])):
        PARSERS['up'].parse_args(['--uses', 'x:Y', '--gpus', 'all'])
