"""YAML configs: round trips, every kind of bad YAML, ${{ ENV.VAR }}, py_modules."""
import textwrap

import pytest
from docarray.documents import TextDoc

from orchestra_nb import Deployment, Executor, Flow, requests
from runtime import config
from runtime.flow import load

EXEC_PY = '''
from docarray.documents import TextDoc
from orchestra_nb import Executor, requests


class Suffix(Executor):
    def __init__(self, suffix='!', **kwargs):
        super().__init__(**kwargs)
        self.suffix = suffix

    @requests
    def run(self, docs, **kwargs):
        for d in docs:
            d.text = (d.text or '') + self.suffix
'''


def write(path, text: str):
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


@pytest.fixture
def execs(tmp_path):
    """A py_modules file with a unique module name (modules are cached per process)."""
    name = f'suffix_{tmp_path.name.replace("-", "_")}'
    (tmp_path / f'{name}.py').write_text(EXEC_PY)
    return f'{name}.py'


# -- round trips ----------------------------------------------------------------------------------

def test_deployment_round_trip(tmp_path, execs, monkeypatch):
    monkeypatch.setenv('N_REPLICAS', '2')
    path = write(tmp_path / 'dep.yaml', f'''
        jtype: Deployment
        with:
          name: suffixer
          uses: Suffix
          py_modules: [{execs}]
          uses_with: {{suffix: '?'}}
          replicas: ${{{{ ENV.N_REPLICAS }}}}
          shards: 2
          polling: {{/custom: ALL, '*': ANY}}
          env: {{OMP_NUM_THREADS: 1}}
          timeout_ready: 30
          workspace: ws
        ''')
    spec = config.load_spec(path)
    assert spec['with']['replicas'] == 2                       # a whole ${{ }} reads as a YAML scalar
    assert spec['with']['env'] == {'OMP_NUM_THREADS': '1'}
    assert spec['with']['py_modules'] == [str(tmp_path / execs)]
    dep = Deployment.load_config(path)
    assert isinstance(dep, Deployment)
    assert (dep.name, dep.replicas, dep.shards, dep.uses.__name__) == ('suffixer', 2, 2, 'Suffix')
    assert dep.polling.mode('/custom') == 'ALL' and dep.polling.mode('/search') == 'ANY'
    assert config.to_spec(dep) == spec
    out = tmp_path / 'saved' / 'again.yaml'
    out.parent.mkdir()
    dep.save_config(str(out))
    assert f'../{execs}' in out.read_text()                    # paths stay relative to the file
    assert config.load_spec(str(out)) == spec


def test_top_level_arguments_and_python_built_deployment_round_trip(tmp_path):
    path = write(tmp_path / 'd.yaml', '''
        jtype: Deployment
        uses: topology_executors:Append
        replicas: 3
        stateful: false
        ''')
    spec = config.load_spec(path)
    assert spec == {'jtype': 'Deployment', 'with': {'uses': 'topology_executors:Append', 'replicas': 3}}
    from topology_executors import Append
    dep = Deployment(uses=Append, replicas=3)
    dep.save_config(str(tmp_path / 'py.yaml'))
    assert config.load_spec(str(tmp_path / 'py.yaml')) == spec


def test_flow_round_trip(tmp_path, execs):
    path = write(tmp_path / 'flow.yaml', f'''
        jtype: Flow
        version: '1'
        with:
          port: 0
          name: pipeline
        executors:
          - name: first
            uses:
              jtype: Suffix
              with: {{suffix: '-1'}}
              py_modules: [{execs}]
          - name: second
            uses: topology_executors:Append
            uses_with: {{tag: two}}
            replicas: 2
          - name: side
            uses: {{jtype: Suffix, with: {{suffix: '-s'}}, metas: {{py_modules: {execs}}}}}
            needs: gateway
          - name: joiner
            needs: [second, side]
        ''')
    spec = config.load_spec(path)
    assert [e['name'] for e in spec['executors']] == ['first', 'second', 'side', 'joiner']
    assert 'needs' not in spec['executors'][1]                # the default: the one before
    f = Flow.load_config(path)
    assert isinstance(f, Flow) and f.name == 'pipeline'
    assert [(e.name, e.needs, e.is_join) for e in f.entries] == [
        ('first', ['gateway'], False), ('second', ['first'], False), ('side', ['gateway'], False),
        ('joiner', ['second', 'side'], True)]
    assert config.to_spec(f) == spec
    f.save_config(str(tmp_path / 'saved.yaml'))
    assert config.load_spec(str(tmp_path / 'saved.yaml')) == spec


def test_flow_from_yaml_serves(tmp_path, execs):
    path = write(tmp_path / 'flow.yaml', f'''
        jtype: Flow
        executors:
          - uses: {{jtype: Suffix, with: {{suffix: '-a'}}, py_modules: [{execs}]}}
          - uses: Suffix
            py_modules: {execs}
            uses_with: {{suffix: '-b'}}
            replicas: 2
        ''')
    with Flow.load_config(path) as f:
        assert f.post('/', TextDoc(text='x')).text == ['x-a-b']
        assert [r['name'] for r in f.status()['replicas']] == ['executor0/rep-0', 'executor1/rep-0',
                                                              'executor1/rep-1']


def test_executor_yaml_as_uses(tmp_path, execs):
    write(tmp_path / 'suffix.yml', f'''
        jtype: Suffix
        with: {{suffix: '-yml'}}
        py_modules: [{execs}]
        ''')
    path = write(tmp_path / 'd.yaml', '''
        jtype: Deployment
        with: {uses: suffix.yml, uses_with: {suffix: '-override'}}
        ''')
    with Deployment.load_config(path) as dep:
        assert dep.post('/', TextDoc(text='x')).text == ['x-override']   # uses_with beats the file's with
    with Deployment(uses=str(tmp_path / 'suffix.yml')) as dep:
        assert dep.post('/', TextDoc(text='x')).text == ['x-yml']


def test_python_deployment_with_py_modules(tmp_path, execs):
    with Deployment(uses='Suffix', py_modules=[str(tmp_path / execs)], uses_with={'suffix': '-py'}) as dep:
        assert dep.post('/', TextDoc(text='x')).text == ['x-py']


def test_load_accepts_yaml_text_and_picks_the_kind():
    obj = load('jtype: Flow\nexecutors:\n  - name: only\n    uses: topology_executors:Append\n')
    assert isinstance(obj, Flow) and obj.entries[0].name == 'only'
    assert isinstance(load('jtype: Deployment\nreplicas: 2\n'), Deployment)


# -- bad configs --------------------------------------------------------------------------------

BAD = {
    'syntax': ('jtype: Deployment\nwith:\n  replicas: 2\n   shards: [1\n', r'YAML syntax error at line 4'),
    'unknown key': ('jtype: Deployment\nwith:\n  name: x\n  replicass: 2\n',
                    r"line 4: unknown key 'replicass'; did you mean 'replicas'\?"),
    'unknown top-level key': ('jtype: Deployment\nshard: 2\n', r"line 2: unknown key 'shard'; did you mean 'shards'\?"),
    'unknown flow executor key': ('jtype: Flow\nexecutors:\n  - name: a\n    polling_: ALL\n',
                                  r"line 4: executors\[0\]: unknown key 'polling_'; did you mean 'polling'\?"),
    'unknown flow with key': ('jtype: Flow\nwith:\n  prot: 1\nexecutors: []\n', r"line 3: .*unknown key 'prot'"),
    'wrong type': ('jtype: Deployment\nwith:\n  replicas: two\n',
                   r"line 3: replicas: expected an integer, got 'two' \(a string\)"),
    'bool is not int': ('jtype: Deployment\nreplicas: true\n', r'replicas: expected an integer, got True'),
    'wrong type in flow': ('jtype: Flow\nexecutors:\n  - name: a\n    env: [A]\n',
                           r"line 4: executors\[0\]\.env: expected a mapping, got \['A'\]"),
    'hub reference': ('jtype: Deployment\nuses: jinaai://jina-ai/CLIPEncoder\n',
                      r'line 2: uses: .*hub references are not supported.*package\.module:ClassName'),
    'install_requirements': ('jtype: Deployment\ninstall_requirements: true\n', r'hub Executors are not supported'),
    'missing env var': ('jtype: Deployment\nreplicas: ${{ ENV.ORCHESTRA_SURELY_UNSET }}\n',
                        r'line 2: replicas: .*ORCHESTRA_SURELY_UNSET is not set'),
    'no jtype': ('replicas: 2\n', r'missing `jtype:`'),
    'executor jtype': ('jtype: MyExecutor\n', r'is an Executor config, not a Deployment or Flow'),
    'duplicate key': ('jtype: Deployment\nreplicas: 1\nreplicas: 2\n', r"line 3: key 'replicas' appears twice"),
    'unknown needs': ('jtype: Flow\nexecutors:\n  - name: a\n    needs: b\n',
                      r"line 4: executors\[0\]\.needs: needs 'b', which is not an Executor listed before it"),
    'bad polling': ('jtype: Deployment\npolling: SOME\n', r"line 2: polling: polling='SOME' is not a polling mode"),
    'missing py_module': ('jtype: Deployment\nuses: X\npy_modules: [nope.py]\n',
                          r"py_modules file 'nope.py' does not exist"),
    'both places': ('jtype: Deployment\nreplicas: 2\nwith:\n  replicas: 3\n', r"'replicas' is given both"),
    'value check': ('jtype: Deployment\nreplicas: 0\n', r'replicas=0: must be an integer >= 1'),
    'not a mapping': ('- a\n- b\n', r'a config is a mapping'),
}


@pytest.mark.parametrize('case', list(BAD), ids=list(BAD))
def test_bad_yaml_gets_a_clear_error(tmp_path, case):
    text, match = BAD[case]
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load(str(path))
    assert str(path) in str(info.value)


def test_class_name_not_in_py_modules_suggests_the_closest(tmp_path, execs):
    path = write(tmp_path / 'd.yaml', f'jtype: Deployment\nuses: Sufix\npy_modules: [{execs}]\n')
    with pytest.raises(ValueError, match=r"uses='Sufix': no Executor class .* did you mean 'Suffix'\?"):
        Deployment.load_config(path)


def test_wrong_loader_for_the_kind(tmp_path):
    path = write(tmp_path / 'f.yaml', 'jtype: Flow\nexecutors: []\n')
    with pytest.raises(ValueError, match='is a jtype: Flow config; use Flow.load_config'):
        Deployment.load_config(path)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        Flow.load_config(str(tmp_path / 'missing.yaml'))


def test_env_substitution_inside_text(tmp_path, monkeypatch):
    monkeypatch.setenv('ORCH_PREFIX', 'team')
    monkeypatch.setenv('ORCH_FLAG', 'true')
    path = write(tmp_path / 'd.yaml', '''
        jtype: Deployment
        name: ${{ ENV.ORCH_PREFIX }}-indexer
        stateful: ${{ ENV.ORCH_FLAG }}
        env: {WHO: 'x-${{ ENV.ORCH_PREFIX }}-y'}
        ''')
    spec = config.load_spec(path)['with']
    assert spec['name'] == 'team-indexer' and spec['env'] == {'WHO': 'x-team-y'}
    assert spec['stateful'] is True


def test_saving_a_notebook_class_says_what_to_do(tmp_path):
    class InCell(Executor):
        @requests
        def run(self, docs, **kwargs):
            pass

    with pytest.raises(ValueError, match='defined in a notebook cell or script'):
        Deployment(uses=InCell).save_config(str(tmp_path / 'x.yaml'))


def test_flow_wide_arguments_and_floating_round_trip(tmp_path):
    """A Flow YAML's `with:` takes a Deployment's arguments as the defaults of its Executors (as Jina);
    an Executor that differs keeps its own value, even the schema's default; `floating: true` too."""
    path = tmp_path / 'flow.yml'
    path.write_text(textwrap.dedent('''
        jtype: Flow
        with:
          replicas: 2
          env: {A: '1'}
        executors:
          - name: a
          - name: b
            replicas: 1
            env: {B: '2'}
          - name: rec
            floating: true
          - name: c
        '''))
    flow = Flow.load_config(str(path))
    assert [(e.name, e.deployment.replicas, e.floating) for e in flow.entries] == [
        ('a', 2, False), ('b', 1, False), ('rec', 2, True), ('c', 2, False)]
    assert flow['b'].env == {'A': '1', 'B': '2'}
    assert flow.entries[3].needs == ['b']           # chained after the Executor before the floating one
    spec = config.load_spec(str(path))
    saved = tmp_path / 'saved.yml'
    flow.save_config(str(saved))
    assert config.load_spec(str(saved)) == config.to_spec(flow)
    assert spec['with'] == {'replicas': 2, 'env': {'A': '1'}}
    with pytest.raises(config.ConfigError, match="line 3: .*unknown key 'replica'; did you mean 'replicas'"):
        config.load_spec('jtype: Flow\nwith:\n  replica: 2\nexecutors: []\n')
