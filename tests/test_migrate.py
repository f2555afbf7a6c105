"""`orchestra migrate`: a Jina project's imports rewritten with libcst, then run here for real.

The Executors of Jina's scale-out page run with only their imports changed (the page's code,
with fixed ports replaced by free ones, `d.block()` by requests, 100000 docs by 50 and the
client's `time.sleep(2)` "for the data to be replicated" by a strongly consistent read); a small
Jina project with a Flow YAML is migrated and served."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import free_ports
from runtime.cli import main
from runtime.migrate import check_yaml, migrate_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(path, cwd, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, path], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- the rewrite itself ------------------------------------------------------------------------

@pytest.mark.parametrize('jina, ours', [
    ('from jina import Executor, requests, Flow, Deployment, Client\n',
     'from orchestra_nb import Executor, requests, Flow, Deployment, Client\n'),
    ('from jina.serve.executors.decorators import write, requests\n', 'from orchestra_nb import write, requests\n'),
    ('from jina.serve.executors import BaseExecutor\n', 'from orchestra_nb import Executor as BaseExecutor\n'),
    ('from jina import Flow as F  # a comment\n', 'from orchestra_nb import Flow as F  # a comment\n'),
    ('import jina\nf = jina.Flow()\nw = jina.serve.executors.decorators.write\n',
     'import orchestra_nb\nf = orchestra_nb.Flow()\nw = orchestra_nb.write\n'),
    ('import jina as j\nd = j.Deployment()\n', 'import orchestra_nb as j\nd = j.Deployment()\n'),
    ('from jina import (\n    Flow,\n    Executor,\n)\n', 'from orchestra_nb import (\n    Flow,\n    Executor,\n)\n'),
    ('import os, jina\n', 'import os, orchestra_nb\n'),
    ('from jinax import Flow\ns = "from jina import Flow"\n', 'from jinax import Flow\ns = "from jina import Flow"\n'),
])
def test_python_rewrites(jina, ours):
    assert migrate_python(jina)[0] == ours


def test_what_has_no_counterpart_is_left_and_reported():
    code, notes = migrate_python("from jina import Flow, DocumentArray\nf = Flow().add(uses='jinahub://X')\n"
                                 'import jina\nd = jina.Document()\n', 'p.py')
    assert code.splitlines()[:2] == ['from orchestra_nb import Flow', 'from jina import DocumentArray']
    text = '\n'.join(map(str, notes))
    assert 'p.py:1: DocumentArray (from jina) is left as it was: docarray v1' in text
    assert "p.py:2: 'jinahub://X' is a Jina Hub reference" in text
    assert 'p.py:4: jina.Document is left as it was' in text


def test_yaml_is_kept_and_checked():
    notes = check_yaml('jtype: Flow\nexecutors:\n  - uses: jinahub://CLIPEncoder\n    install_requirements: true\n'
                       '    replicas: 5\n', 'flow.yml')
    assert [(n.line, n.message.split(':')[0]) for n in notes] == [(3, 'uses'), (4, 'install_requirements')]


# -- Jina's scale-out page, its imports changed ------------------------------------------------

STATEFUL = '''
from jina import Deployment, Executor, requests
from jina.serve.executors.decorators import write
from docarray import DocList
from docarray.documents import TextDoc


class MyStateStatefulExecutor(Executor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._docs_dict = {}

    @requests(on=['/index'])
    @write
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for doc in docs:
            self._docs_dict[doc.id] = doc

    @requests(on=['/search'])
    def search(self,  docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        for doc in docs:
            self.logger.debug(f'Searching against {len(self._docs_dict)} documents')
            doc.text = self._docs_dict[doc.id].text


d = Deployment(name='stateful_executor',
               uses=MyStateStatefulExecutor,
               replicas=3,
               stateful=True,
               workspace='./raft',
               peer_ports=PEER_PORTS)
with d:
    d.post('/index', DocList[TextDoc]([TextDoc(id=f'd{i}', text=f'doc {i}') for i in range(5)]))
    out = d.post('/search', DocList[TextDoc]([TextDoc(id='d3')]), consistency='strong')
    print('found:', out.text)
'''

EXACT_NN = '''
from jina import Deployment, Executor, requests, Client
from jina.serve.executors.decorators import write
from docarray import DocList
from docarray.documents import TextDoc
from docarray.index.backends.in_memory import InMemoryExactNNIndex
import numpy as np


class QueryDoc(TextDoc):
    matches: DocList[TextDoc] = DocList[TextDoc]()


class ExactNNSearch(Executor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._index = InMemoryExactNNIndex[TextDoc]()

    @requests(on=['/index'])
    @write # I add write decorator to indicate that calling this endpoint updates the inner state
    def index(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        self.logger.info(f'Indexing Document in index with {len(self._index)} documents indexed')
        self._index.index(docs)

    @requests(on=['/search'])
    def search(self,  docs: DocList[QueryDoc], **kwargs) -> DocList[QueryDoc]:
        self.logger.info(f'Searching Document in index with {len(self._index)} documents indexed')
        for query in docs:
            docs, scores = self._index.find(query, search_field='embedding', limit=100)
            query.matches = docs


d = Deployment(name='indexer',
               port=PORT,
               uses=ExactNNSearch,
               workspace='./raft',
               replicas=3,
               stateful=True,
               peer_ports=PEER_PORTS)
with d:
    c = Client(port=PORT)
    index_docs = DocList[TextDoc](
        [TextDoc(text=f'I am document {i}', embedding=np.random.rand(128)) for i in range(50)])
    c.post(on='/index', inputs=index_docs, request_size=10)
    search_da = DocList[QueryDoc](
        [QueryDoc(text=f'I am document {i}', embedding=np.random.rand(128)) for i in range(3)])
    responses = c.post(on='/search', inputs=search_da, request_size=1, return_type=DocList[QueryDoc],
                       consistency='strong')
    print('matches:', [len(res.matches) for res in responses])
'''

POLLING = '''
from jina import Deployment, Executor, requests
from docarray import DocList
from docarray.documents import TextDoc

class MyExec(Executor):

    @requests
    def foo(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
        print(f'inside: {docs.text}')

dep = (
    Deployment(uses=MyExec, replicas=2, polling='ANY')
    .needs_all()
)

with dep:
    r = dep.post('/', TextDoc(text='hello'), return_type=DocList[TextDoc])
    print(f'return: {r.text}')
'''


@pytest.mark.parametrize('name, source, expected', [
    ('stateful.py', STATEFUL, "found: ['doc 3']"),
    ('exact_nn.py', EXACT_NN, 'matches: [50, 50, 50]'),
    ('polling.py', POLLING, "return: ['hello']"),
])
def test_scale_out_examples_run_after_migrate(tmp_path, capsys, name, source, expected):
    port, *peers = free_ports(4)
    path = tmp_path / name
    path.write_text(source.replace('PEER_PORTS', repr(peers)).replace('PORT', str(port)))
    assert main(['migrate', str(path)]) == 0          # a dry run: a diff, nothing written
    diff = capsys.readouterr().out
    assert '-from jina import Deployment' in diff and '+from orchestra_nb import Deployment' in diff
    assert 'from jina import' in path.read_text()
    assert main(['migrate', '--write', str(tmp_path)]) == 0
    migrated = path.read_text()
    assert 'jina' not in migrated.replace('orchestra_nb', '')
    done = run_python(str(path), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout


# -- a small Jina project with a Flow YAML ------------------------------------------------------

def test_a_jina_project_with_a_flow_yaml(tmp_path, capsys):
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'executors.py').write_text(textwrap.dedent('''
        import jina
        from jina import Executor, requests
        from docarray import DocList
        from docarray.documents import TextDoc


        class Upper(Executor):
            @requests(on='/run')
            def upper(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
                for d in docs:
                    d.text = d.text.upper()


        class Exclaim(jina.Executor):
            @jina.requests
            def exclaim(self, docs: DocList[TextDoc], parameters: dict, **kwargs) -> DocList[TextDoc]:
                for d in docs:
                    d.text += parameters.get('mark', '!')
        '''))
    (project / 'flow.yml').write_text(textwrap.dedent('''
        jtype: Flow
        with:
          replicas: 2
        executors:
          - name: upper
            uses: Upper
            py_modules: [executors.py]
          - name: exclaim
            uses: Exclaim
            py_modules: [executors.py]
            replicas: 1
        '''))
    (project / 'hub.yml').write_text('jtype: Flow\nexecutors:\n  - uses: jinaai://jina-ai/CLIPEncoder\n'
                                     '    install_requirements: true\n')
    (project / 'main.py').write_text(textwrap.dedent('''
        from jina import Flow
        from docarray import DocList
        from docarray.documents import TextDoc

        f = Flow.load_config('flow.yml')
        with f:
            docs = f.post('/run', DocList[TextDoc]([TextDoc(text='hi'), TextDoc(text='yo')]),
                          parameters={'mark': '?'})
            print('texts:', docs.text, [e.deployment.replicas for e in f.entries])
        '''))
    yaml_before = (project / 'flow.yml').read_text()
    assert main(['migrate', str(project)]) == 0
    out, err = capsys.readouterr()
    assert '+from orchestra_nb import Executor, requests' in out and '+import orchestra_nb' in out
    assert 'hub.yml:3: uses: \'jinaai://jina-ai/CLIPEncoder\' is a Jina Hub reference' in err
    assert 'hub.yml:4: install_requirements: refused here' in err
    assert 'would rewrite 2 file(s)' in err
    assert main(['migrate', '--write', str(project)]) == 0
    assert (project / 'flow.yml').read_text() == yaml_before   # YAML is kept: ours reads it
    done = run_python('main.py', project)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "texts: ['HI?', 'YO?'] [2, 1]" in done.stdout


def test_missing_paths_and_bad_python(tmp_path, capsys):
    (tmp_path / 'bad.py').write_text('from jina import (\n')
    assert main(['migrate', str(tmp_path / 'nope'), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert 'nope: no such file or folder' in err and 'bad.py: not valid Python' in err
