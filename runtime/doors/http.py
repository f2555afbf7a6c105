"""The HTTP door: Jina's HTTP gateway API (FastAPI) onto the gateway's routing entry.

Routes (docs/http.md):

- ``POST /<endpoint>`` for each endpoint the Executors serve, body ``{"data": [...], "parameters":
  {...}, "header": {...}}`` validated with the endpoint's input doc class (built from the JSON
  schema its replicas report); reply ``{"data": [...], "parameters": {...}, "header": {...}}``.
  Any other path is served too when an Executor has a bare ``@requests`` (JSON objects of any shape).
- ``POST /post`` with ``execEndpoint`` in the body (Jina's generic route).
- ``GET /`` and ``GET /dry_run``: health (503 while a shard has no live replica); ``GET /status``:
  the gateway's Info; ``GET /docs``, ``GET /openapi.json``: the OpenAPI page, from the schemas.

Bad JSON, a field of the wrong type or an unknown endpoint is a 4xx naming what is wrong; an
Executor failure is 499 (as Jina) with its message; the gateway keeps serving.
"""
import json
from typing import Any, Dict, List, Optional, Union

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from runtime.doors import Route
from runtime.doors.messages import (Catalog, DoorError, as_rows, build_docs, input_class, json_bytes, reply_json,
                                    request_frame)
from runtime.doors.schemas import EndpointSchema, doc_class


# no `from __future__ import annotations` here: FastAPI reads the handlers' annotations as classes


def _error_response(e: DoorError) -> Any:
    return JSONResponse({'detail': e.detail}, status_code=e.status)


def _reply(payload: Dict[str, Any]) -> Any:
    return Response(json_bytes(payload), media_type='application/json')


def _is_json(scope: Dict[str, Any]) -> bool:
    """Whether the request says its body is JSON (FastAPI reads a body of another type as no body)."""
    for key, value in scope.get('headers', ()):
        if key == b'content-type':
            return value.split(b';')[0].strip().lower() in (b'application/json', b'') or value.endswith(b'+json')
    return True


def http_app(gateway: Any, route: Route) -> Any:
    """The FastAPI app of ``gateway``'s HTTP door; ``route(frame) -> reply frame`` serves each request."""
    catalog = Catalog(gateway)
    app = FastAPI(title=f'{gateway.name}', version='1',
                  description='Endpoints of the Executors behind this gateway (orchestra-nb); '
                              'request and reply shapes as in Jina\'s HTTP gateway.')

    async def answer(endpoint: str, schema: Optional[EndpointSchema], data: Any, parameters: Any,
                     header: Any) -> Any:
        rows = as_rows(data)
        try:
            docs = build_docs(input_class(schema, rows), rows)
            frame, request_id = request_frame(endpoint, docs, parameters, header if isinstance(header, dict) else None)
            return _reply(reply_json(await route(frame), parameters, endpoint, request_id))
        except DoorError as e:
            return _error_response(e)

    async def answer_untyped(endpoint: str, body: Any) -> Any:
        """A request whose body FastAPI did not validate (``/post``, an endpoint served by a bare @requests)."""
        if not isinstance(body, dict) or 'data' not in body and 'parameters' not in body:
            return _error_response(DoorError(422, [{'loc': ['body'], 'msg': 'the body is a JSON object with '
                                                    '"data" (a list of documents) and optional "parameters"',
                                                    'type': 'missing'}]))
        endpoints, default, complete = catalog.snapshot()
        if not complete and endpoint not in endpoints and default is None:   # just started: the replicas'
            endpoints, default, complete = await catalog.wait()                # first Info is on its way
        schema = endpoints.get(endpoint) or default
        if schema is None:
            if not complete:
                return _error_response(DoorError(503, 'the Executors have not reported their endpoints yet'))
            known = ', '.join(sorted(endpoints)) or 'none'
            return _error_response(DoorError(404, f'no Executor serves endpoint {endpoint!r}; endpoints: {known}'))
        return await answer(endpoint, schema, body.get('data'), body.get('parameters'), body.get('header'))

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw) if raw else {}
        except ValueError as e:
            raise DoorError(400, f'the body is not valid JSON: {e}') from None

    built: Dict[str, Any] = {'key': None}
    #: path -> (schema, body model) of each endpoint route, served by the fast path below
    fast: Dict[str, Any] = {}

    def add_endpoint_route(schema: EndpointSchema) -> None:
        name = schema.name.strip('/').replace('/', '_') or 'root'
        doc_in = doc_class(schema.input_schema) if schema.input_schema else Dict[str, Any]
        doc_out = doc_class(schema.output_schema) if schema.output_schema else Dict[str, Any]
        common = dict(parameters=(Optional[Dict[str, Any]], None), header=(Optional[Dict[str, Any]], None))
        input_model = pydantic.create_model(f'{name}_input_model', data=(Union[List[doc_in], doc_in], ...),
                                            **common)
        output_model = pydantic.create_model(f'{name}_output_model', data=(List[doc_out], ...), **common)

        async def post(body: input_model) -> Any:   # type: ignore[valid-type]
            return await answer(schema.name, schema, body.data, body.parameters, body.header)

        fast['/' + schema.name.strip('/')] = (schema, input_model)
        app.add_api_route('/' + schema.name.strip('/'), post, methods=['POST'], summary=f'Endpoint {schema.name}',
                          response_model=None, responses={200: {'model': output_model},
                                                          422: {'description': 'a field of the wrong type'},
                                                          499: {'description': 'the Executor failed'}},
                          name=f'endpoint {schema.name}', tags=['endpoints'])

    async def learn_routes(wait: bool) -> None:
        endpoints, default, complete = await catalog.wait() if wait else catalog.snapshot()
        key = (tuple(sorted(endpoints)), default is not None, complete)
        if key == built['key']:
            return
        static = [r for r in app.router.routes if not getattr(r, 'name', '').startswith('endpoint ')]
        app.router.routes[:] = static
        fast.clear()
        for schema in endpoints.values():
            add_endpoint_route(schema)
        dynamic = [r for r in app.router.routes if getattr(r, 'name', '').startswith('endpoint ')]
        catch_all = [r for r in static if getattr(r, 'name', '') == 'any endpoint']
        app.router.routes[:] = dynamic + [r for r in static if r not in catch_all] + catch_all
        app.openapi_schema = None
        built['key'] = key

    async def read_body(receive: Any) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message['type'] == 'http.disconnect':
                raise ConnectionError('the client went away')
            chunks.append(message.get('body', b''))
            if not message.get('more_body'):
                return b''.join(chunks)

    async def fast_post(path: str, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        """``POST /<endpoint>`` without FastAPI's per-request machinery: the body is parsed and validated
        by pydantic in one step (``model_validate_json``); answers and errors are the same as the route's."""
        schema, input_model = fast[path]
        raw = await read_body(receive)
        try:
            body = input_model.model_validate_json(raw)
        except pydantic.ValidationError as e:
            detail = [{'loc': ['body', *e_['loc']], 'msg': e_['msg'], 'type': e_['type']} for e_ in e.errors()]
            response = JSONResponse({'detail': detail}, status_code=422)
        else:
            response = await answer(schema.name, schema, body.data, body.parameters, body.header)
        await response(scope, receive, send)

    class Front:
        """Before a request, add the routes of endpoints the replicas reported since the last one;
        serve ``POST /<endpoint>`` (JSON) on the fast path, everything else through FastAPI."""

        def __init__(self, inner: Any):
            self.inner = inner

        async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
            if scope['type'] == 'http':
                if not (built['key'] and built['key'][2]):
                    await learn_routes(wait=scope.get('path') in ('/openapi.json', '/docs'))
                if scope.get('method') == 'POST' and scope.get('path') in fast and _is_json(scope):
                    try:
                        return await fast_post(scope['path'], scope, receive, send)
                    except ConnectionError:
                        return
            await self.inner(scope, receive, send)

    app.add_middleware(Front)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        detail = [{'loc': list(e.get('loc', ())), 'msg': e.get('msg', ''), 'type': e.get('type', '')}
                  for e in exc.errors()]
        return JSONResponse({'detail': detail}, status_code=422)

    async def gateway_info() -> Dict[str, Any]:
        return json.loads(await gateway.info(b'', None))

    def down_shards(info: Dict[str, Any]) -> List[str]:
        down = []
        for name, stage in info.get('nodes', {}).items():
            for i, shard in enumerate(stage.get('shards', [])):
                if not any(r.get('healthy') for r in shard):
                    down.append(f'{name}/shard-{i}' if len(stage['shards']) > 1 else name)
        return down

    @app.get('/', summary='Health: 200 when every shard has a live replica', tags=['health'])
    async def health() -> Any:
        down = down_shards(await gateway_info())
        body = {'ready': not down, 'name': gateway.name, **({'down': down} if down else {})}
        return JSONResponse(body, status_code=503 if down else 200)

    @app.get('/dry_run', summary='Readiness of every Executor (Jina\'s route)', tags=['health'])
    async def dry_run() -> Any:
        down = down_shards(await gateway_info())
        if down:
            return JSONResponse({'code': 1, 'description': f'no live replica in {", ".join(down)}'},
                                status_code=503)
        return {'code': 0, 'description': ''}

    @app.get('/status', summary='The gateway\'s Info: stages, replicas, counters', tags=['health'])
    async def status() -> Any:
        return await gateway_info()

    @app.post('/post', summary='Any endpoint, named by execEndpoint (Jina\'s generic route)', tags=['endpoints'])
    async def generic(request: Request) -> Any:
        try:
            body = await read_json(request)
        except DoorError as e:
            return _error_response(e)
        endpoint = body.get('execEndpoint') or body.get('exec_endpoint') if isinstance(body, dict) else None
        if not isinstance(endpoint, str) or not endpoint.startswith('/'):
            return _error_response(DoorError(422, [{'loc': ['body', 'execEndpoint'], 'msg': 'the endpoint to call, '
                                                    'a string starting with "/", e.g. "/index"', 'type': 'missing'}]))
        return await answer_untyped(endpoint, body)

    @app.post('/{endpoint:path}', name='any endpoint', include_in_schema=False)
    async def any_endpoint(endpoint: str, request: Request) -> Any:
        try:
            body = await read_json(request)
        except DoorError as e:
            return _error_response(e)
        return await answer_untyped('/' + endpoint, body)

    return app
