"""The gateway's HTTP door (runtime/doors): real servers, real clients (httpx, curl), Deployments and
Flows (sharded, replicated, stateful); 4xx answers name what is wrong and the service keeps serving."""
import json
import shutil
import subprocess

import httpx
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from runtime.args import check_protocol, protocol_ports
from runtime.deployment import Deployment
from runtime.flow import Flow
from tests.sample_executors import KV, Failing, Upper


def test_protocol_and_port_lists_are_checked():
    assert check_protocol('HTTP', 'protocol') == 'http'
    assert protocol_ports(['grpc', 'websocket'], [5555, 5556]) == (['grpc', 'websocket'], [5555, 5556])
    with pytest.raises(ValueError, match=r"protocol='udp': allowed: 'grpc', 'http', 'websocket'"):
        Deployment(protocol='udp')
    with pytest.raises(ValueError, match='each protocol at most once'):
        Deployment(protocol=['http', 'http'])
    with pytest.raises(ValueError, match='one port per protocol'):
        Deployment(protocol=['grpc', 'http'], port=[5555])
    with pytest.raises(ValueError, match='its own port'):
        Deployment(protocol=['grpc', 'http'], port=[5555, 5555])


def post(url, body, **kw):
    return httpx.post(url, json=body, timeout=30, **kw)


def test_http_door_serves_a_replicated_deployment_beside_grpc():
    with Deployment(uses=Upper, replicas=2, protocol=['grpc', 'http']) as dep:
        url = dep.addresses['http']
        assert set(dep.ports) == {'grpc', 'http'} and url.startswith('http://127.0.0.1:')
        assert url in repr(dep) and dep.status()['addresses'] == dep.addresses
        r = post(f'{url}/upper', {'data': [{'text': 'hi'}, {'text': 'yo', 'id': 'b'}], 'parameters': {'k': 1}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d['text'] for d in body['data']] == ['HI', 'YO'] and body['data'][1]['id'] == 'b'
        assert body['parameters'] == {'k': 1} and body['header']['execEndpoint'] == '/upper'
        # one doc (not a list) is accepted, as Jina does; /post names the endpoint in the body
        assert post(f'{url}/upper', {'data': {'text': 'one'}}).json()['data'][0]['text'] == 'ONE'
        r = post(f'{url}/post', {'execEndpoint': '/upper', 'data': [{'text': 'p'}]})
        assert r.json()['data'][0]['text'] == 'P'
        # the notebook's post (gRPC) is unchanged
        assert dep.post('/upper', TextDoc(text='g'))[0].text == 'G'
        assert httpx.get(f'{url}/').json()['ready'] is True
        assert httpx.get(f'{url}/dry_run').json() == {'code': 0, 'description': ''}
        assert httpx.get(f'{url}/status').json()['nodes']['executor']['shards'][0][0]['healthy'] is True


def test_bad_requests_are_4xx_naming_the_field_and_the_service_keeps_serving():
    with Deployment(uses=Failing, protocol='http') as fail, Deployment(uses=Upper, protocol='http') as dep:
        url = dep.addresses['http']
        r = post(f'{url}/upper', {'data': [{'text': 3}]})
        assert r.status_code == 422 and any(e['loc'][-1] == 'text' for e in r.json()['detail']), r.text
        r = httpx.post(f'{url}/upper', content=b'{"data": [', headers={'content-type': 'application/json'})
        assert r.status_code == 422 and 'json' in r.text.lower(), r.text
        r = post(f'{url}/nope', {'data': []})
        assert r.status_code == 404 and "'/nope'" in r.json()['detail'] and '/upper' in r.json()['detail']
        r = httpx.post(f'{url}/nope', content=b'not json')
        assert r.status_code == 400 and 'not valid JSON' in r.json()['detail']
        r = post(f'{url}/post', {'data': []})
        assert r.status_code == 422 and 'execEndpoint' in r.text
        r = post(f'{url}/upper', {'data': [{'text': 'x'}], 'parameters': [1]})
        assert r.status_code == 422 and 'parameters' in r.text
        # an Executor failure: 499 with its message (as Jina); the replica keeps serving
        furl = fail.addresses['http']
        r = post(f'{furl}/boom', {'data': [{'text': 'x'}]})
        assert r.status_code == 499 and 'exploded on purpose' in r.json()['detail'], r.text
        assert post(f'{furl}/ok', {'data': [{'text': 'x'}]}).status_code == 200
        assert post(f'{url}/upper', {'data': [{'text': 'still'}]}).json()['data'][0]['text'] == 'STILL'


@pytest.mark.skipif(shutil.which('curl') is None, reason='needs curl')
def test_curl_posts_to_the_http_door():
    with Deployment(uses=Upper, protocol=['http', 'grpc']) as dep:
        out = subprocess.run(['curl', '-sS', '--max-time', '30', '-X', 'POST', f'{dep.addresses["http"]}/upper',
                              '-H', 'Content-Type: application/json', '-d', '{"data": [{"text": "curl"}]}'],
                             capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(out.stdout)['data'][0]['text'] == 'CURL'
        assert dep.port == dep.ports['http']   # the first door is `port`


def test_openapi_document_is_valid_and_generated_from_the_schemas():
    from openapi_spec_validator import validate
    with Deployment(uses=Upper, protocol='http') as dep:
        url = dep.addresses['http']
        spec = httpx.get(f'{url}/openapi.json', timeout=30).json()
        validate(spec)
        assert {'/upper', '/post', '/', '/dry_run', '/status'} <= set(spec['paths'])
        body_ref = spec['paths']['/upper']['post']['requestBody']['content']['application/json']['schema']['$ref']
        model = spec['components']['schemas'][body_ref.rsplit('/', 1)[1]]
        assert set(model['properties']) == {'data', 'parameters', 'header'}
        assert 'text' in spec['components']['schemas']['TextDoc']['properties']
        page = httpx.get(f'{url}/docs', timeout=30)
        assert page.status_code == 200 and 'swagger' in page.text.lower()


def test_http_door_of_a_sharded_replicated_flow():
    flow = (Flow(protocol=['http', 'grpc'])
            .add(name='up', uses=Upper, replicas=2)
            .add(name='kv', uses=KV, shards=2, polling={'/ids': 'ALL', '*': 'ANY'}))
    with flow:
        url = flow.addresses['http']
        r = post(f'{url}/upper', {'data': [{'text': 'a', 'id': '1'}, {'text': 'b', 'id': '2'}]})
        assert r.status_code == 200 and [d['text'] for d in r.json()['data']] == ['A', 'B'], r.text
        r = post(f'{url}/index', {'data': [{'text': 'x', 'id': '1'}, {'text': 'y', 'id': '2'}]})
        assert r.status_code == 200, r.text
        ids = post(f'{url}/ids', {'data': []}).json()['data']
        assert {d['id'] for d in ids} == {'1', '2'}
        assert flow.post('/upper', TextDoc(text='z'))[0].text == 'Z'


def test_http_door_of_a_stateful_deployment(tmp_path):
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=str(tmp_path),
                    protocol=['grpc', 'http']) as dep:
        url = dep.addresses['http']
        r = post(f'{url}/index', {'data': [{'text': 'kept', 'id': 'k1'}]})
        assert r.status_code == 200, r.text
        got = post(f'{url}/get', {'data': [{'id': 'k1'}]}).json()['data']
        assert got[0]['text'] == 'kept'
        assert [d.id for d in dep.post('/ids', TextDoc(), consistency='strong')] == ['k1']


# ----------------------------------------------------------------------------- the WebSocket door

def test_websocket_door_streams_json_and_frames_in_order():
    import asyncio

    import websockets

    from runtime import protocol
    from runtime.codec import decode_docs, encode_docs
    with Deployment(uses=Upper, replicas=2, protocol=['websocket', 'grpc']) as dep:
        url = dep.addresses['websocket']
        assert url.startswith('ws://') and dep.port == dep.ports['websocket']

        async def talk():
            async with websockets.connect(url + '/', open_timeout=10) as ws:
                for i in range(5):   # streamed: every request sent before the first reply is read
                    await ws.send(json.dumps({'execEndpoint': '/upper', 'data': [{'text': f'j{i}'}]}))
                texts = [json.loads(await asyncio.wait_for(ws.recv(), 30))['data'][0]['text'] for _ in range(5)]
                await ws.send('{not json')
                bad = json.loads(await asyncio.wait_for(ws.recv(), 30))
                await ws.send(json.dumps({'execEndpoint': '/upper', 'data': [{'text': 7}]}))
                wrong = json.loads(await asyncio.wait_for(ws.recv(), 30))
                frames = [protocol.pack({'endpoint': '/upper'}, encode_docs(DocList[TextDoc]([TextDoc(text=f'b{i}')])))
                          for i in range(8)]
                for f in frames:
                    await ws.send(f)
                replies = [protocol.unpack(await asyncio.wait_for(ws.recv(), 30)) for _ in frames]
                await ws.send(b'garbage')
                garbage, _ = protocol.unpack(await asyncio.wait_for(ws.recv(), 30))
                return texts, bad, wrong, replies, garbage

        texts, bad, wrong, replies, garbage = asyncio.run(talk())
        assert texts == [f'J{i}' for i in range(5)]
        assert bad['status'] == 400 and 'not valid JSON' in bad['detail']
        assert wrong['status'] == 422 and any(e['loc'][-1] == 'text' for e in wrong['detail'])
        assert [decode_docs(bytes(b), TextDoc)[0].text for _, b in replies] == [f'B{i}' for i in range(8)]
        assert {h['replica'] for h, _ in replies} == {'executor/rep-0', 'executor/rep-1'}
        assert garbage['ok'] is False and garbage['error']['type'] == 'ProtocolError'
        assert dep.post('/upper', TextDoc(text='after'))[0].text == 'AFTER'   # still serving


# ----------------------------------------------------------------------------- TLS and host, as on gRPC

def test_tls_and_host_rules_apply_to_the_doors(tmp_path):
    import warnings

    from runtime.client import Client
    from runtime.exposure import ExposedWarning
    from runtime.processes import ChildFailedError
    from tests.test_security import _self_signed
    cert, key = _self_signed(tmp_path)
    with Deployment(uses=Upper, protocol=['http', 'websocket'], tls_cert=cert, tls_key=key) as dep:
        url = dep.addresses['http']
        assert url.startswith('https://') and dep.addresses['websocket'].startswith('wss://')
        import ssl
        r = httpx.post(f'{url}/upper', json={'data': [{'text': 'tls'}]}, timeout=30,
                       verify=ssl.create_default_context(cafile=cert))
        assert r.json()['data'][0]['text'] == 'TLS'
        with pytest.raises(httpx.ConnectError):   # the self-signed certificate is not trusted by default
            httpx.post(f'{url}/upper', json={'data': []}, timeout=30)
        for p in ('http', 'websocket'):
            c = Client(port=dep.ports[p], protocol=p, tls=True, ca=cert)
            assert c.post('/upper', TextDoc(text='c'))[0].text == 'C', p
            c.close()
        busy = dep.ports['http']
        with pytest.raises(ChildFailedError, match=f'127.0.0.1:{busy}: the port is already in use'):
            Deployment(uses=Upper, protocol='http', port=busy, timeout_ready=20).start()   # named, as on gRPC
    with pytest.warns(ExposedWarning, match=r'\(http; request plane'):
        with Deployment(uses=Upper, protocol=['grpc', 'http'], host='0.0.0.0') as dep:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                assert httpx.post(f'http://127.0.0.1:{dep.ports["http"]}/upper',
                                  json={'data': [{'text': 'any'}]}, timeout=30).status_code == 200


def test_exported_gateway_command_opens_every_door():
    """``orchestra gateway --protocol http grpc --port 0 0`` (what exported containers run) serves both doors."""
    import os
    import re
    import signal
    import sys
    with Deployment(uses=Upper) as dep:
        graph = {'name': 'gw', 'stages': [{'name': 'executor', 'shards': [[dep.stages[0].shards[0][0].address]]}]}
        proc = subprocess.Popen([sys.executable, '-m', 'runtime.cli', 'gateway', '--graph', json.dumps(graph),
                                 '--host', '127.0.0.1', '--port', '0', '0', '--protocol', 'http', 'grpc'],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            line = ''
            for line in proc.stdout:   # the first line that says ready (the process prints little else)
                if 'ready on' in line:
                    break
            ports = dict(re.findall(r'(\w+) port (\d+)', line))
            assert set(ports) == {'http', 'grpc'}, line
            r = post(f'http://127.0.0.1:{ports["http"]}/upper', {'data': [{'text': 'exported'}]})
            assert r.json()['data'][0]['text'] == 'EXPORTED', r.text
            from runtime.client import Client
            c = Client(port=int(ports['grpc']))
            assert c.post('/upper', TextDoc(text='g'))[0].text == 'G'
            c.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)


def test_a_killed_gateway_comes_back_with_every_door_on_its_port():
    from conftest import wait_until

    def http_answers(url):
        try:
            return post(f'{url}/upper', {'data': [{'text': 'x'}]}).status_code == 200
        except httpx.HTTPError:
            return False

    with Deployment(uses=Upper, protocol=['http', 'grpc']) as dep:
        ports, old_pid = dict(dep.ports), dep.gateway.pid
        url = dep.addresses['http']
        assert http_answers(url)
        dep.gateway.kill()
        wait_until(lambda: dep.gateway.pid != old_pid and http_answers(url), 60,
                   'the restarted gateway to answer on its HTTP port')
        assert dep.ports == ports
        assert dep.post('/upper', TextDoc(text='back'))[0].text == 'BACK'


def test_a_bare_requests_serves_every_path_with_its_schema():
    from tests.topology_executors import Append
    with Deployment(uses=Append, uses_with={'tag': 't'}, protocol='http') as dep:
        url = dep.addresses['http']
        r = post(f'{url}/any/path', {'data': [{'text': 'a'}]})
        assert r.status_code == 200 and r.json()['data'][0]['text'] == 'a-t', r.text
        r = post(f'{url}/other', {'data': [{'text': ['not', 'a', 'string']}]})
        assert r.status_code == 422 and r.json()['detail'][0]['loc'] == ['body', 'data', 0, 'text'], r.text


def test_protocols_and_ports_from_yaml_round_trip(tmp_path):
    from runtime import config
    dep = Deployment.load_config('jtype: Deployment\nwith:\n  protocol: [grpc, HTTP]\n  port: [5555, 5556]\n')
    assert (dep.protocols, dep.ports) == (['grpc', 'http'], {'grpc': 5555, 'http': 5556})
    assert config.to_spec(dep)['with']['protocol'] == ['grpc', 'http']
    dep.save_config(str(tmp_path / 'd.yml'))
    again = Deployment.load_config(str(tmp_path / 'd.yml'))
    assert (again.protocols, again._port_arg) == (['grpc', 'http'], [5555, 5556])
    flow = Flow.load_config('jtype: Flow\nwith:\n  protocol: websocket\nexecutors:\n  - name: a\n')
    assert flow.protocols == ['websocket'] and flow.ports == {'websocket': None}


def test_hostile_http_bodies_get_4xx_never_5xx():
    """Random bytes and random JSON at typed, generic and unknown routes: always an answer below 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                               st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)
    bodies = st.one_of(st.binary(max_size=200),
                       json_values.map(lambda v: json.dumps(v).encode()),
                       st.fixed_dictionaries({'data': json_values}, optional={'parameters': json_values,
                                                                              'execEndpoint': json_values})
                       .map(lambda v: json.dumps(v).encode()))
    with Deployment(uses=Upper, protocol='http') as dep, httpx.Client(base_url=dep.addresses['http'],
                                                                       timeout=30) as http:
        seen = set()

        @settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.sampled_from(['/upper', '/post', '/nope']), bodies)
        def check(path, body):
            r = http.post(path, content=body, headers={'content-type': 'application/json'})
            assert r.status_code < 500, (path, body, r.status_code, r.text)
            seen.add(r.status_code)

        check()
        assert seen & {400, 404, 422}, seen
        assert http.post('/upper', json={'data': [{'text': 'ok'}]}).json()['data'][0]['text'] == 'OK'
