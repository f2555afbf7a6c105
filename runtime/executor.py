"""Executors: classes whose methods serve endpoints over docarray ``DocList``s.

A user subclasses :class:`Executor` and marks methods with :func:`requests`
(which endpoint) and, for methods that change state, :func:`write`::

    class Indexer(Executor):
        @requests(on='/index')
        @write
        def index(self, docs: DocList[TextDoc], **kwargs):
            ...

The replica process (``runtime.worker``) builds the Executor and asks its
:class:`EndpointTable` which method serves an endpoint; every caller of an endpoint
(one request, a dynamic batch, a committed RAFT write) goes through
:func:`call_endpoint` and :func:`normalise_result`. This module knows neither the
transport (gRPC) nor consensus (RAFT).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

DEFAULT_ENDPOINT = '__default__'

_ENDPOINTS_ATTR = '_orchestra_endpoints'
_WRITE_ATTR = '_orchestra_write'
_BATCHING_ATTR = '_orchestra_dynamic_batching'
_SCHEMAS_ATTR = '_orchestra_schemas'   # (request_schema, response_schema) of @requests


class UnknownEndpointError(LookupError):
    """No method of the Executor serves the requested endpoint."""


def requests(func: Optional[Callable] = None, *, on: Union[str, Sequence[str], None] = None,
             request_schema: Optional[type] = None, response_schema: Optional[type] = None):
    """Mark a method as serving one or more endpoints.

    ``@requests(on='/index')``, ``@requests(on=['/a', '/b'])``, or bare ``@requests``
    for the default endpoint (every endpoint no other method claims). ``request_schema`` /
    ``response_schema`` (Jina's): the ``DocList[X]`` the docs are decoded as / sent back as,
    instead of the annotations of ``docs`` and of the return value.

    The method's signature is checked here, when the class is defined (as Jina does): a
    ``TypeError`` names the method and the parameter that cannot work (see :func:`check_signature`).

    >>> class E(Executor):
    ...     @requests(on='/x')
    ...     def x(self, docs, **kwargs): ...
    """
    if on is None:
        endpoints = [DEFAULT_ENDPOINT]
    elif isinstance(on, str):
        endpoints = [on]
    elif isinstance(on, (list, tuple)) and all(isinstance(e, str) for e in on):
        endpoints = list(on)
    else:
        raise TypeError(f'requests(on=...) takes an endpoint string or a list of them, got {on!r}')
    for e in endpoints:
        if e != DEFAULT_ENDPOINT and not e.startswith('/'):
            raise ValueError(f'endpoint {e!r} must start with "/" (e.g. "/index")')
    for what, schema in (('request_schema', request_schema), ('response_schema', response_schema)):
        if schema is not None and not _is_doclist_class(schema):
            raise TypeError(f'requests({what}={schema!r}): must be a DocList[X] class, e.g. DocList[TextDoc]')

    def mark(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f'@requests decorates a method, got {fn!r}')
        check_signature(fn, request_schema is not None, response_schema is not None)
        existing = list(getattr(fn, _ENDPOINTS_ATTR, []))
        setattr(fn, _ENDPOINTS_ATTR, existing + [e for e in endpoints if e not in existing])
        if request_schema is not None or response_schema is not None:
            setattr(fn, _SCHEMAS_ATTR, (request_schema, response_schema))
        return fn

    if func is not None:  # bare @requests
        return mark(func)
    return mark


#: the keywords an endpoint method is called with (Jina's); a method names those it wants, or takes **kwargs
CALL_KEYWORDS = ('docs', 'parameters', 'docs_matrix', 'docs_map', 'tracing_context')


def check_signature(fn: Callable, has_request_schema: bool = False, has_response_schema: bool = False) -> None:
    """Refuse an endpoint method that cannot be called as an endpoint, naming the method and parameter.

    Refused, as Jina refuses them: a parameter without a default that is not one of
    :data:`CALL_KEYWORDS`; a ``doc`` parameter (Jina's single-document streaming endpoints, not
    supported here); ``docs`` annotated with a class that is not a ``DocList`` (``docs: TextDoc``:
    write ``DocList[TextDoc]``); a return annotated with a doc class (``-> TextDoc``). Unlike Jina,
    a method that names only some of the keywords and takes no ``**kwargs`` is accepted: it gets
    the ones it names.

    >>> def f(self, docs, k): ...
    >>> check_signature(f)
    Traceback (most recent call last):
    TypeError: endpoint method f: parameter 'k' is not one an endpoint is called with ...
    """
    name = getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))
    target = inspect.unwrap(fn)
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return
    if params and params[0].name == 'self':
        params = params[1:]
    allowed = ', '.join(CALL_KEYWORDS)
    for p in params:
        if p.name == 'doc':
            raise TypeError(f"endpoint method {name}: parameter 'doc' is for Jina's single-document streaming "
                            f'endpoints, which are not supported here; take docs: DocList[...] instead')
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f'endpoint method {name}: parameter {p.name!r} is positional-only; endpoints are '
                            f'called with keywords ({allowed})')
        if (p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and p.name not in CALL_KEYWORDS and p.default is inspect.Parameter.empty):
            raise TypeError(f'endpoint method {name}: parameter {p.name!r} is not one an endpoint is called with '
                            f'({allowed}); give it a default, or take **kwargs')
    hints = _resolved_hints(target)
    docs_ann = hints.get('docs')
    if not has_request_schema and _is_doc_class(docs_ann):
        raise TypeError(f"endpoint method {name}: parameter 'docs' is annotated {docs_ann.__name__}, not a DocList; "
                        f'write docs: DocList[{docs_ann.__name__}]')
    ret = hints.get('return')
    if not has_response_schema and _is_doc_class(ret):
        raise TypeError(f'endpoint method {name}: the return is annotated {ret.__name__}, a single doc; an '
                        f'endpoint returns DocList[{ret.__name__}] (or a dict, or None)')


def _is_doclist_class(obj: Any) -> bool:
    """``DocList``, ``DocList[X]`` (a typing alias in docarray 0.41) or a subclass of DocList."""
    import typing
    from docarray import DocList
    origin = typing.get_origin(obj) or obj
    return isinstance(origin, type) and issubclass(origin, DocList)


def _is_doc_class(obj: Any) -> bool:
    if not isinstance(obj, type):
        return False
    from docarray import BaseDoc, DocList
    return isinstance(obj, type) and issubclass(obj, BaseDoc) and not issubclass(obj, DocList)


def write(func: Callable) -> Callable:
    """Mark an endpoint method as changing the Executor's state.

    In a ``stateful=True`` Deployment, calls to it are ordered through the RAFT
    log and applied by every replica; elsewhere the mark changes nothing.
    """
    setattr(func, _WRITE_ATTR, True)
    return func


def is_write(func: Callable) -> bool:
    return bool(getattr(func, _WRITE_ATTR, False))


@dataclass
class RuntimeArgs:
    """Where this Executor instance runs (``self.runtime_args``)."""
    name: str = 'executor'
    replica_id: int = 0
    shard_id: int = 0
    shards: int = 1
    replicas: int = 1
    workspace: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, item):  # unknown runtime args read as None, like Jina's namespace
        if item.startswith('__'):
            raise AttributeError(item)
        return self.extra.get(item)


@dataclass
class Endpoint:
    """One served endpoint: the bound method and what it declares."""
    name: str
    method: Callable
    is_write: bool
    input_type: Any = None       # doc class from `docs: DocList[X]`, or None
    output_type: Any = None      # doc class from `-> DocList[X]`, or None
    is_async: bool = False
    accepts: Optional[frozenset] = None   # keyword names it takes; None: it takes **kwargs
    batching: Optional[Dict[str, Any]] = None
    parameters_model: Any = None  # a pydantic model from `parameters: Model`: parameters arrive as one


def _doc_type_of(annotation: Any) -> Any:
    """``DocList[TextDoc]`` -> ``TextDoc``; anything else -> None."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return None
    doc_type = getattr(annotation, 'doc_type', None)
    try:
        from docarray import BaseDoc
    except ImportError:  # pragma: no cover - docarray is a dependency
        return None
    if isinstance(doc_type, type) and issubclass(doc_type, BaseDoc) and doc_type is not BaseDoc:
        return doc_type
    if isinstance(annotation, type) and issubclass(annotation, BaseDoc) and annotation is not BaseDoc:
        return annotation
    return None


def _describe(name: str, fn: Callable, bound: Callable) -> Endpoint:
    try:
        hints = _resolved_hints(fn)
    except Exception:
        hints = {}
    sig = inspect.signature(fn)
    params = sig.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepts = None if takes_kwargs else frozenset(k for k in params if k != 'self')
    input_ann = hints.get('docs', params['docs'].annotation if 'docs' in params else None)
    request_schema, response_schema = getattr(fn, _SCHEMAS_ATTR, (None, None))
    return Endpoint(
        name=name, method=bound, is_write=is_write(fn),
        input_type=_doc_type_of(request_schema or input_ann),
        output_type=_doc_type_of(response_schema or hints.get('return')),
        is_async=inspect.iscoroutinefunction(fn), accepts=accepts,
        batching=getattr(fn, _BATCHING_ATTR, None),
        parameters_model=_pydantic_model_of(hints.get('parameters')),
    )


def _pydantic_model_of(annotation: Any) -> Any:
    """``parameters: Model`` (or ``Optional[Model]``) -> Model, when Model is a pydantic model; else None."""
    import typing
    try:
        from pydantic import BaseModel
    except ImportError:  # pragma: no cover - pydantic is a dependency
        return None
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _resolved_hints(fn: Callable) -> Dict[str, Any]:
    import typing
    try:
        return typing.get_type_hints(fn)
    except Exception:
        # postponed annotations naming classes local to a function: fall back to raw ones
        return {k: v for k, v in getattr(fn, '__annotations__', {}).items() if not isinstance(v, str)}


def _json_schema(doc_type: Any) -> Optional[Dict[str, Any]]:
    """A doc class's JSON schema (pydantic's), or None for an untyped endpoint or one pydantic cannot describe."""
    if doc_type is None:
        return None
    try:
        return doc_type.model_json_schema()
    except Exception:   # a field type without a JSON schema: the HTTP door treats the endpoint as untyped
        return None


class EndpointTable:
    """Maps endpoint names to the Executor methods that serve them."""

    def __init__(self, executor: 'Executor'):
        self._by_name: Dict[str, Endpoint] = {}
        self._described: Optional[Dict[str, Dict[str, Any]]] = None
        seen = set()
        for klass in type(executor).__mro__:
            for attr, fn in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)  # a subclass override hides the parent's endpoints
                for endpoint in getattr(fn, _ENDPOINTS_ATTR, ()):
                    if endpoint not in self._by_name:
                        self._by_name[endpoint] = _describe(endpoint, fn, getattr(executor, attr))

    @property
    def names(self) -> List[str]:
        """Served endpoint names; ``'__default__'`` when a bare ``@requests`` exists."""
        return sorted(self._by_name)

    def describe(self) -> Dict[str, Dict[str, Any]]:
        """endpoint -> ``{'write', 'input', 'output', 'input_fields', 'output_fields', 'input_schema',
        'output_schema'}``, computed once (Info asks often): the doc classes' names; their fields, which
        a Flow's schema check compares (runtime/schemas.py); their JSON schemas (None: untyped), which
        the gateway's HTTP door builds its request models and OpenAPI page from (docs/http.md). JSON
        only: nothing is pickled."""
        if self._described is None:
            from runtime.schemas import schema_fields
            self._described = {n: {'write': e.is_write,
                                   'input': getattr(e.input_type, '__name__', None),
                                   'output': getattr(e.output_type, '__name__', None),
                                   'input_fields': schema_fields(e.input_type),
                                   'output_fields': schema_fields(e.output_type),
                                   'input_schema': _json_schema(e.input_type),
                                   'output_schema': _json_schema(e.output_type)}
                               for n, e in self._by_name.items()}
        return self._described

    def lookup(self, endpoint: str) -> Endpoint:
        found = self._by_name.get(endpoint) or self._by_name.get(DEFAULT_ENDPOINT)
        if found is None:
            known = ', '.join(repr(n) for n in self.names) or 'none'
            raise UnknownEndpointError(
                f'no method serves endpoint {endpoint!r}; endpoints served: {known}')
        return found


def executor_parameters(parameters: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The parameters Executor ``name`` sees, as Jina gives them: ``'name__key'`` is ``key`` for
    ``name`` only (dropped for the others), and ``parameters[name]`` (a dict) is merged in.

    >>> executor_parameters({'k': 1, 'enc__k': 2, 'idx__k': 3, 'enc': {'j': 4}}, 'enc')
    {'k': 2, 'enc': {'j': 4}, 'j': 4}
    """
    if not parameters or not any('__' in k.strip('_') or k == name for k in parameters):
        return parameters
    out = dict(parameters)
    for key, value in parameters.items():
        if '__' in key and not key.startswith('__') and not key.endswith('__'):
            del out[key]
            *owner, plain = key.split('__')
            if ''.join(owner) == name:
                out[plain] = value
    if isinstance(parameters.get(name), dict):
        out.update(parameters[name])
    return out


#: with monitoring on, a context manager factory ``(endpoint, docs)`` wrapped around each Executor call
#: (set by :func:`runtime.metrics.install`: documents counted, the endpoint of Executors' own metrics)
call_observer: Optional[Callable[[str, Any], ContextManager[None]]] = None


def call_endpoint(ep: Endpoint, docs: Any, parameters: dict) -> Any:
    """Call the endpoint's method as Jina does and return what it returned.

    The method gets ``docs``, ``parameters``, ``docs_matrix``, ``docs_map`` and
    ``tracing_context`` as keywords (only those it names, unless it takes ``**kwargs``);
    a coroutine it returns is run to completion here (on the caller's thread, which has
    no running event loop: the replica's Executor thread).

    >>> ep = EndpointTable(echo_executor).lookup('/echo')   # doctest: +SKIP
    >>> call_endpoint(ep, docs, {})                          # doctest: +SKIP
    """
    observer = call_observer
    if observer is not None:
        with observer(ep.name, docs):
            return _call_method(ep, docs, parameters)
    return _call_method(ep, docs, parameters)


def _call_method(ep: Endpoint, docs: Any, parameters: dict) -> Any:
    accepts = ep.accepts
    if ep.parameters_model is not None and isinstance(parameters, dict):   # Jina: the method gets a model
        parameters = ep.parameters_model(**{k: v for k, v in parameters.items() if k != '__results__'})
    if accepts is None:
        result = ep.method(docs=docs, parameters=parameters, docs_matrix=None, docs_map=None,
                           tracing_context=None)
    else:
        kwargs = {'docs': docs, 'parameters': parameters, 'docs_matrix': None, 'docs_map': None,
                  'tracing_context': None}
        result = ep.method(**{k: v for k, v in kwargs.items() if k in accepts})
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return result


def normalise_result(result: Any, docs: Any, endpoint: str) -> Tuple[Optional[Dict[str, Any]], Any]:
    """What an endpoint returned -> ``(results dict or None, DocList to send back)``.

    ``None``: the (mutated) input ``docs``; a dict: ``docs``, with the dict as the
    request's results; one doc: a DocList of it; a list or tuple of docs: a DocList.
    Anything else raises ``TypeError`` naming ``endpoint``.

    >>> normalise_result(None, docs, '/x')           # doctest: +SKIP
    (None, docs)
    >>> normalise_result({'n': 1}, docs, '/x')       # doctest: +SKIP
    ({'n': 1}, docs)
    """
    if result is None:
        return None, docs
    BaseDoc, DocList = _docarray_classes or _load_docarray_classes()
    if isinstance(result, DocList):
        return None, result
    if isinstance(result, dict):
        return result, docs
    if isinstance(result, BaseDoc):
        return None, DocList[type(result)]([result])
    if isinstance(result, (list, tuple)):
        return None, DocList(result)
    raise TypeError(f'endpoint {endpoint!r} returned {type(result).__name__}; '
                    'return a DocList, a dict, or None')


# (BaseDoc, DocList), imported on first use: importing this module does not import docarray
_docarray_classes: Optional[Tuple[type, type]] = None


def _load_docarray_classes() -> Tuple[type, type]:
    global _docarray_classes
    from docarray import BaseDoc, DocList
    _docarray_classes = (BaseDoc, DocList)
    return _docarray_classes


# The replica process sets these before building the Executor, so that
# ``self.runtime_args`` exists even before (and without) ``super().__init__``.
_pending_runtime_args: Optional[RuntimeArgs] = None


class Executor:
    """Base class of every Executor.

    ``super().__init__(**kwargs)`` is optional: ``self.runtime_args``,
    ``self.logger`` and ``self.workspace`` are set before ``__init__`` runs.

    >>> class Echo(Executor):
    ...     @requests
    ...     def echo(self, docs, **kwargs):
    ...         return docs
    """

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        args_ = kwargs.get('runtime_args') or _pending_runtime_args or RuntimeArgs(name=cls.__name__)
        if isinstance(args_, dict):
            args_ = RuntimeArgs(**args_)
        self.runtime_args = args_
        self.logger = logging.getLogger(_logger_name(args_))
        self._workspace_root = kwargs.get('workspace') or args_.workspace
        return self

    def __init__(self, metas: Optional[dict] = None, requests: Optional[dict] = None,
                 runtime_args: Optional[Union[RuntimeArgs, dict]] = None,
                 workspace: Optional[str] = None, dynamic_batching: Optional[dict] = None,
                 **kwargs):
        # The arguments Jina passes are accepted and need nothing here: __new__ did the work.
        pass

    @property
    def workspace(self) -> str:
        """This replica's own folder: ``<workspace>/<name>/shard-<s>/rep-<r>`` (created on use)."""
        ra = self.runtime_args
        root = self._workspace_root or os.path.join(tempfile.gettempdir(), 'orchestra-workspace')
        path = os.path.join(root, ra.name.replace('/', '_'), f'shard-{ra.shard_id}', f'rep-{ra.replica_id}')
        os.makedirs(path, exist_ok=True)
        return path

    # -- state hooks used by RAFT snapshots (override for large or special state) --
    def snapshot(self, path: str) -> None:
        """Write this Executor's state to ``path``. Default: its own attributes, pickled with
        cloudpickle, so that state holding classes made at run time (docarray's
        ``InMemoryExactNNIndex[TextDoc]``, which plain pickle refuses) saves too."""
        import cloudpickle
        state = {k: v for k, v in vars(self).items() if k not in _NOT_STATE}
        with open(path, 'wb') as f:
            cloudpickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, path: str) -> None:
        """Load the state :meth:`snapshot` wrote (a local file this replica wrote itself)."""
        with open(path, 'rb') as f:
            state = pickle.load(f)
        vars(self).update(state)

    def close(self) -> None:
        """Called once when the replica stops; override to release resources."""

    def monitor(self, name: str, documentation: str) -> ContextManager[None]:
        """Jina's ``self.monitor``: time a block into the Prometheus Summary ``name`` (labels: executor,
        replica, shard, endpoint); nothing when monitoring is off. See docs/monitoring.md.

        >>> with self.monitor('embed_seconds', 'time spent embedding'):   # doctest: +SKIP
        ...     vectors = model(texts)
        """
        from runtime.metrics import timed
        return timed(name, documentation)


_NOT_STATE = {'runtime_args', 'logger', '_workspace_root'}


def _logger_name(ra: RuntimeArgs) -> str:
    if ra.shards > 1:
        return f'{ra.name}/shard-{ra.shard_id}/rep-{ra.replica_id}'
    return f'{ra.name}/rep-{ra.replica_id}'


def build_executor(cls: type, uses_with: Optional[dict], runtime_args: RuntimeArgs) -> Executor:
    """Instantiate ``cls(**uses_with)`` with its runtime args in place."""
    global _pending_runtime_args
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise TypeError(f'uses must be an Executor subclass, got {cls!r}')
    _pending_runtime_args = runtime_args
    try:
        return cls(**(uses_with or {}))
    finally:
        _pending_runtime_args = None
