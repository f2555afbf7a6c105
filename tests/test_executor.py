"""Endpoint methods are checked when the class is defined (a TypeError naming the method and the
parameter), @requests takes Jina's request_schema/response_schema, and a `parameters: Model`
annotation gives the method a pydantic model instance."""
from typing import Optional

import pytest
from docarray import BaseDoc, DocList
from docarray.documents import TextDoc
from pydantic import BaseModel

from orchestra_nb import Client, Deployment, Executor, requests
from runtime.client import RemoteError
from runtime.executor import EndpointTable, call_endpoint


def define(body):
    """Define an Executor class whose one method is ``body`` (decorated with @requests)."""
    return type('E', (Executor,), {'f': requests(on='/f')(body)})


@pytest.mark.parametrize('method, message', [
    (lambda self, docs, k: None, "parameter 'k' is not one an endpoint is called with"),
    (lambda self, doc, **kwargs: None, "parameter 'doc' is for Jina's single-document streaming"),
    (lambda self, docs, /, **kwargs: None, "parameter 'docs' is positional-only"),
])
def test_bad_parameters_are_refused_at_definition(method, message):
    with pytest.raises(TypeError, match=message):
        define(method)


def test_bad_annotations_are_refused_at_definition():
    with pytest.raises(TypeError, match=r"f: parameter 'docs' is annotated TextDoc, not a DocList; "
                                        r'write docs: DocList\[TextDoc\]'):
        class A(Executor):
            @requests
            def f(self, docs: TextDoc, **kwargs): ...
    with pytest.raises(TypeError, match=r'the return is annotated TextDoc, a single doc'):
        class B(Executor):
            @requests
            def f(self, docs: DocList[TextDoc], **kwargs) -> TextDoc: ...
    with pytest.raises(TypeError, match=r'request_schema=.*must be a DocList'):
        requests(request_schema=TextDoc)


def test_what_jina_passes_is_accepted():
    class Fine(Executor):
        @requests(on='/a')
        def a(self, docs: DocList[TextDoc], parameters: dict, docs_matrix=None, **kwargs) -> DocList[TextDoc]: ...

        @requests(on='/b')
        def b(self, docs, parameters, extra=3): ...   # a default: never passed, fine

        @requests(on='/c')
        def c(self, **kwargs) -> dict: ...
    assert EndpointTable(Fine()).names == ['/a', '/b', '/c']


class In(BaseDoc):
    text: str = ''


class Out(BaseDoc):
    text: str = ''
    length: int = 0


class Params(BaseModel):
    factor: int = 1
    label: Optional[str] = None


class Schemas(Executor):
    @requests(on='/len', request_schema=DocList[In], response_schema=DocList[Out])
    def length(self, docs, parameters: Params, **kwargs):
        assert isinstance(parameters, Params)   # a model, as in Jina
        return DocList[Out]([Out(text=d.text, length=len(d.text) * parameters.factor) for d in docs])


def test_schemas_and_pydantic_parameters_in_process():
    ep = EndpointTable(Schemas()).lookup('/len')
    assert (ep.input_type, ep.output_type, ep.parameters_model) == (In, Out, Params)
    out = call_endpoint(ep, DocList[In]([In(text='abc')]), {'factor': 2, '__results__': {}})
    assert out.length == [6]


def test_schemas_and_pydantic_parameters_served():
    with Deployment(uses=Schemas) as dep:
        c = Client(port=dep.port)
        out = c.post('/len', DocList[In]([In(text='ab')]), parameters=Params(factor=3), return_type=DocList[Out])
        assert out.length == [6]
        assert dep.post('/len', In(text='abcd'), parameters={'factor': 1}, return_type=DocList[Out]).length == [4]
        with pytest.raises(RemoteError, match='factor'):   # the model's validation error names the field
            c.post('/len', In(text='x'), parameters={'factor': 'many'})
        c.close()
