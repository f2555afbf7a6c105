"""Chained Executors must agree on their docs' schemas (Jina checks it when a Flow starts)."""
import pytest
from docarray import BaseDoc, DocList
from docarray.documents import TextDoc

from orchestra_nb import Executor, Flow, requests
from runtime.schemas import schema_errors, schema_fields


class Num(BaseDoc):
    value: int = 0


class Word(BaseDoc):
    value: str = ''


def test_schema_fields():
    assert schema_fields(Num) == {'id': None, 'value': 'integer'}   # id: anyOf, no one type
    assert schema_fields(None) is None


@pytest.mark.parametrize('b_takes, errors', [
    ({'/x': {'input_fields': {'id': 'string', 'value': 'integer'}}}, 0),    # the same fields
    ({'/x': {'input_fields': {'id': 'string', 'value': 'string'}}}, 1),     # a type differs
    ({'/x': {'input_fields': {'id': 'string'}}}, 1),                        # a field is missing
    ({'__default__': {'input_fields': {'id': 'string'}}}, 1),               # b's default endpoint takes it
    ({'/x': {'input_fields': None}}, 0),                                    # b does not declare: not checked
    ({'/y': {'input_fields': {'id': 'string'}}}, 0),                        # b does not serve /x
])
def test_schema_errors(b_takes, errors):
    endpoints = {'a': {'/x': {'output_fields': {'id': 'string', 'value': 'integer'}}}, 'b': b_takes}
    assert len(schema_errors({'a': ['gateway'], 'b': ['a']}, endpoints)) == errors


class MakesNum(Executor):
    @requests(on='/x')
    def f(self, docs: DocList[TextDoc], **kwargs) -> DocList[Num]:
        return DocList[Num]([Num(value=len(d.text or '')) for d in docs])


class TakesWord(Executor):
    @requests(on='/x')
    def f(self, docs: DocList[Word], **kwargs) -> DocList[Word]:
        return docs


class TakesNum(Executor):
    @requests(on='/x')
    def f(self, docs: DocList[Num], **kwargs) -> DocList[Num]:
        for d in docs:
            d.value += 1
        return docs


def test_a_flow_with_disagreeing_executors_does_not_start():
    f = Flow().add(name='a', uses=MakesNum).add(name='b', uses=TakesWord)
    with pytest.raises(ValueError, match=r"'a' -> 'b' on '/x': 'a' returns \{id: any, value: integer\}, "
                                         r"'b' takes \{id: any, value: string\}"):
        f.start()
    assert not f.running
    ok = Flow().add(name='a', uses=MakesNum).add(name='b', uses=TakesNum)
    with ok:
        assert ok.post('/x', TextDoc(text='abc'), return_type=DocList[Num]).value == [4]
