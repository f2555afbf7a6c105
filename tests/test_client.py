"""Client.post takes Jina's keywords with Jina's meaning, refuses the ones it does not support with
the reason, and refuses unknown ones naming the closest valid keyword (it used to ignore them and
answer wrongly: post(target_executor='p1') ran every Executor)."""
import inspect

import pytest
from docarray import DocList
from docarray.documents import TextDoc
from pydantic import BaseModel

from orchestra_nb import Client, Deployment, Executor, Flow, requests
from runtime import args as schema
from runtime.client import RemoteError, Response, parameters_dict


class Tag(Executor):
    """Appends its name (uses_with) to each doc's text; /boom fails on a doc whose text is 'boom'."""

    def __init__(self, tag='x', **kwargs):
        self.tag = tag

    @requests
    def tag_docs(self, docs: DocList[TextDoc], parameters: dict, **kwargs) -> DocList[TextDoc]:
        for d in docs:
            if d.text == 'boom':
                raise ValueError('boom doc')
            d.text = (d.text or '') + self.tag + str(parameters.get('suffix', ''))
        return docs


def test_signature_is_the_schema():
    names = [p.name for p in inspect.signature(Client.post).parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert names == ['self', 'on', 'inputs'] + list(schema.arg_names(schema.POST_ARGS))
    params = inspect.signature(Client.post).parameters
    assert {a.name: params[a.name].default for a in schema.POST_ARGS} == schema.defaults(schema.POST_ARGS)


@pytest.mark.parametrize('key', sorted(schema.JINA_POST_ONLY))
def test_refused_jina_keywords_say_why(key):
    with pytest.raises(ValueError) as info:
        Client(port=1).post('/x', TextDoc(), **{key: True})
    assert key in str(info.value) and schema.JINA_POST_ONLY[key] in str(info.value)


@pytest.mark.parametrize('key, closest', [('target_executr', 'target_executor'), ('paramters', 'parameters'),
                                          ('request_sze', 'request_size'), ('on_don', 'on_done')])
def test_unknown_keywords_name_the_closest(key, closest):
    with pytest.raises(ValueError, match=f"unknown argument '{key}'; did you mean '{closest}'"):
        Client(port=1).post('/x', TextDoc(), **{key: 1})


@pytest.mark.parametrize('kw, message', [
    (dict(target_executor='('), 'not a valid regular expression'),
    (dict(request_size='3'), 'request_size='),
    (dict(on_done=3), 'on_done=3: must be a function'),
    (dict(compression='zip'), "compression='zip': allowed"),
    (dict(max_attempts=0), 'max_attempts=0'),
    (dict(parameters=[1]), 'parameters=[1]: must be a dict or a pydantic model'),
    (dict(return_type=int), 'return_type='),
])
def test_bad_values_are_named(kw, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('[', r'\[')):
        Client(port=1).post('/x', TextDoc(), **kw)


def test_parameters_dict_takes_a_pydantic_model():
    class P(BaseModel):
        k: int = 3
    assert parameters_dict(P()) == {'k': 3}
    assert parameters_dict(None) == {}


def test_target_executor_runs_only_the_matching_executors():
    f = (Flow().add(name='p1', uses=Tag, uses_with={'tag': '1'})
         .add(name='p2', uses=Tag, uses_with={'tag': '2'})
         .add(name='q', uses=Tag, uses_with={'tag': 'q'}))
    with f:
        assert f.post('/x', TextDoc(text='')).text == ['12q']
        assert f.post('/x', TextDoc(text=''), target_executor='p1').text == ['1']
        assert f.post('/x', TextDoc(text=''), target_executor='p').text == ['12']   # re.match, as in Jina
        assert f.post('/x', TextDoc(text=''), target_executor='q|p2').text == ['2q']
        with pytest.raises(RemoteError, match="target_executor='nope' matches no Executor"):
            f.post('/x', TextDoc(text=''), target_executor='nope')
        # the shortcuts take the same keywords
        assert f.search(TextDoc(text=''), target_executor='q').text == ['q']
        # Jina's Executor-specific parameters: 'name__key', and parameters[name]
        assert f.post('/x', TextDoc(text=''), parameters={'suffix': '.', 'p1__suffix': '!', 'q': {'suffix': '?'}}
                      ).text == ['1!2.q?']


def test_keywords_on_a_deployment():
    docs = DocList[TextDoc]([TextDoc(text=str(i)) for i in range(5)])
    with Deployment(uses=Tag, uses_with={'tag': '-'}) as dep:
        client = Client(port=dep.port)
        # request_size <= 0: all inputs in one request (Jina)
        seen = []
        assert dep.post('/x', docs, request_size=0, on_done=seen.append) is None
        assert len(seen) == 1 and seen[0].docs.text == [f'{i}-' for i in range(5)]
        assert seen[0].data.docs.text == seen[0].docs.text    # Jina's spelling
        # on_always sees every response; on_error gets (response, exception) and nothing raises
        bad = DocList[TextDoc]([TextDoc(text='ok'), TextDoc(text='boom'), TextDoc(text='ok2')])
        always, errors = [], []
        client.post('/x', bad, request_size=1, on_always=always.append,
                    on_error=lambda resp, exc: errors.append((resp.docs.text, type(exc).__name__)))
        assert len(always) == 3 and errors == [(['boom'], 'RemoteError')]
        # continue_on_error: the others' docs come back
        assert client.post('/x', bad, request_size=1, continue_on_error=True).text == ['ok-', 'ok2-']
        with pytest.raises(RemoteError, match='boom doc'):
            client.post('/x', bad, request_size=1)
        # return_type: a doc class returns one doc alone; DocList[X] a DocList
        one = client.post('/x', TextDoc(text='a'), return_type=TextDoc)
        assert isinstance(one, TextDoc) and one.text == 'a-'
        assert isinstance(client.post('/x', TextDoc(text='a'), return_type=DocList[TextDoc]), DocList)
        # inputs may be a function returning the docs; parameters a pydantic model
        class Suffix(BaseModel):
            suffix: str = '!'
        assert client.post('/x', lambda: [TextDoc(text='f')], parameters=Suffix()).text == ['f-!']
        # Jina's transport keywords are taken
        assert client.post('/x', docs, compression='Gzip', stream=False, results_in_order=True,
                           show_progress=True, backoff_multiplier=2.0).text == [f'{i}-' for i in range(5)]
        # the CRUD shortcuts, on the Deployment and the Client
        assert dep.index(TextDoc(text='i')).text == ['i-']
        assert client.update(TextDoc(text='u')).text == ['u-']
        assert client.delete(inputs=TextDoc(text='d')).text == ['d-']
        assert isinstance(Response(docs).parameters, dict)
        assert client.is_flow_ready() and not Client(port=1).is_flow_ready(timeout=0.2)   # Jina's name


@pytest.mark.parametrize('key', sorted(schema.JINA_CLIENT_ONLY))
def test_client_refuses_jinas_constructor_keywords_saying_why(key):
    with pytest.raises(ValueError) as info:
        Client(port=1, **{key: True})
    assert schema.JINA_CLIENT_ONLY[key] in str(info.value)


def test_client_keywords():
    assert Client(port=1, protocol='GRPC').protocol == 'grpc'
    assert Client(port=1, protocol='http').protocol == 'http'   # the gateway's HTTP door (tests/test_client_doors.py)
    with pytest.raises(ValueError, match="protocol='soap': allowed: 'grpc', 'http', 'websocket'"):
        Client(port=1, protocol='soap')
    with pytest.raises(ValueError, match="unknown argument 'prefech'; did you mean 'prefetch'"):
        Client(port=1, prefech=3)
    params = [p for p in inspect.signature(Client.__init__).parameters if p not in ('self', 'kwargs')]
    assert tuple(params) == schema.CLIENT_KEYWORDS
