"""Client(protocol='grpc'|'http'|'websocket') against real gateways: same results on every door,
Deployments and Flows, errors named, host URLs in Jina's form (runtime/client_doors.py)."""
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from runtime.client import Client, RemoteError
from runtime.deployment import Deployment
from runtime.flow import Flow
from tests.sample_executors import Upper

PROTOCOLS = ['grpc', 'http', 'websocket']


def test_client_speaks_every_door_of_a_deployment():
    docs = DocList[TextDoc]([TextDoc(id=str(i), text=f't{i}') for i in range(45)])
    with Deployment(uses=Upper, replicas=2, protocol=PROTOCOLS) as dep:
        for p in PROTOCOLS:
            c = Client(port=dep.ports[p], protocol=p)
            try:
                out = c.post('/upper', docs, request_size=4, parameters={'x': 1})
                assert [d.text for d in out] == [f'T{i}' for i in range(45)], p
                assert [d.id for d in out] == [str(i) for i in range(45)], p
                assert isinstance(out[0], TextDoc) and c.is_ready(), p
                with pytest.raises(RemoteError, match='/nope'):
                    c.post('/nope', TextDoc(text='x'))
                assert c.post('/upper', TextDoc(text='again'))[0].text == 'AGAIN', p
            finally:
                c.close()


def test_client_takes_jina_style_urls_and_refuses_contradictions():
    c = Client(host='http://127.0.0.1:8080')
    assert (c.protocol, c.port, c.address) == ('http', 8080, 'http://127.0.0.1:8080')
    assert Client(host='wss://example.org', port=443).tls is True
    assert Client(host='grpc://127.0.0.1', port=5).protocol == 'grpc'
    with pytest.raises(ValueError, match="says 'http' but protocol='websocket'"):
        Client(host='http://h:1', protocol='websocket')
    with pytest.raises(ValueError, match="protocol='udp'"):
        Client(port=1, protocol='udp')
    with pytest.raises(ValueError, match='one protocol'):
        Client(port=1, protocol=['grpc', 'http'])


@pytest.mark.parametrize('protocol', ['http', 'websocket'])
def test_client_on_a_flow_door(protocol):
    flow = Flow(protocol=[protocol]).add(name='a', uses=Upper, shards=2, polling='ALL').add(name='b', uses=Upper)
    with flow:
        c = Client(port=flow.port, protocol=protocol)
        try:
            out = c.post('/upper', DocList[TextDoc]([TextDoc(id='1', text='a'), TextDoc(id='2', text='b')]))
            assert [(d.id, d.text) for d in out] == [('1', 'A'), ('2', 'B')]
        finally:
            c.close()
