"""What ``uses`` names, and how the Executor class is found.

    >>> resolve_uses('Indexer', py_modules=['executors.py'])      # doctest: +SKIP
    (<class 'executors.Indexer'>, None)
    >>> load_executor_class(BUILTIN_EXECUTORS['echo']).__name__
    'Echo'

``uses`` is a class, ``'package.module:Class'`` (or ``'package.module.Class'``),
a class name found in ``py_modules`` files, a nested ``{jtype, with,
py_modules}`` mapping, or the path of an Executor YAML (``jtype: ClassName``).
Jina Hub references (:data:`HUB_PREFIXES`) and container images are refused
with what to write instead.

* :func:`resolve_uses`: what a Deployment (or ``orchestra executor``) is given
  -> what its replicas load (a class or ``'pkg.mod:Class'``) and the merged
  ``uses_with``, checked in the owner before any process starts (built-in short
  names, :func:`resolve_name`, are the one table every entry point shares);
* :func:`uses_label`: what runs, as a card or a status line shows it (``echo``);
* :func:`load_executor_class`: ``'pkg.mod:Class'`` -> the class (in a replica);
* :func:`normalize_uses`: ``uses`` as a YAML config writes it -> its spec form;
* :func:`uses_reference`: a class -> what a YAML config can write for it.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from runtime.yamlio import ConfigError, Where, check_keys, plain, read, substitute_env

#: the Executors that ship with the runtime: short name -> 'module:Class'
BUILTIN_EXECUTORS = {'echo': 'runtime.executors.echo:Echo',
                     'exact_nn': 'runtime.executors.exact_nn:ExactNNSearch'}
#: what runs when ``uses`` is not given (Jina's default: docs pass through)
DEFAULT_USES = BUILTIN_EXECUTORS['echo']
#: Jina Hub references, refused with what to write instead
HUB_PREFIXES = ('jinaai://', 'jinahub://', 'jinahub+docker://', 'jinaai+docker://', 'jinahub+sandbox://')
YAML_SUFFIXES = ('.yml', '.yaml')
#: the keys of a nested ``uses: {jtype, with, py_modules, metas}`` mapping
USES_KEYS = ('jtype', 'with', 'py_modules', 'metas')


class ExecutorLoadError(ImportError):
    """``uses`` names a class that cannot be found or is not an Executor."""


class UsesError(ConfigError):
    """``uses`` names nothing that loads: one line saying what was tried and the closest matches.

    Raised in the owner, before any process starts. In IPython it shows as that one line
    (the ``_render_traceback_`` hook), not a traceback through the constructors.
    """

    def _render_traceback_(self) -> List[str]:
        return [f'{type(self).__name__}: {self}']


def uses_label(uses: Any) -> str:
    """What runs, as a reader writes it: ``'echo'`` for a built-in, a class's name, else the spec.

    >>> uses_label('runtime.executors.echo:Echo')
    'echo'
    """
    if isinstance(uses, type):
        return uses.__qualname__
    for short, spec in BUILTIN_EXECUTORS.items():
        if uses == spec:
            return short
    return str(uses)


def _suggest(name: str, candidates: Sequence[str]) -> str:
    """``"; did you mean 'echo'?"`` for the closest candidates (case-insensitive), or ''."""
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=2, cutoff=0.5)
    if not close:
        return ''
    return '; did you mean ' + ' or '.join(repr(lowered[c]) for c in close) + '?'


def check_importable(uses: str) -> str:
    """``'pkg.mod:Class'`` (or ``'pkg.mod.Class'``): import it here and check it is an Executor,
    so a wrong one fails in the owner with one line; returns ``uses``."""
    from runtime.executor import Executor
    module_name, sep, attr = uses.partition(':')
    if not sep:
        module_name, _, attr = uses.rpartition('.')
    if not module_name or not attr.isidentifier() or not all(p.isidentifier() for p in module_name.split('.')):
        raise UsesError(f"uses={uses!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsesError(f'uses={uses!r}: cannot import module {module_name!r} ({e})') from None
    cls = getattr(module, attr, None)
    if cls is None:
        found = [k for k, v in vars(module).items()
                 if isinstance(v, type) and issubclass(v, Executor) and v is not Executor]
        raise UsesError(f'uses={uses!r}: module {module_name!r} has no {attr!r}{_suggest(attr, found)} '
                        f'(its Executors: {", ".join(found) or "none"})')
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise UsesError(f'uses={uses!r} is a {type(cls).__name__}, not an Executor subclass')
    return uses


def resolve_name(uses: Any, namespace: Optional[Dict[str, type]] = None) -> Any:
    """``uses`` as a name -> what a replica loads, checked here; the one table of what every
    entry point (code, YAML, CLI, magic, ControlPanel) accepts.

    Tried in order: a class (kept), ``namespace`` (the notebook's Executor classes, by
    name or ``name.attr``), a built-in short name (:data:`BUILTIN_EXECUTORS`),
    ``'package.module:Class'`` / ``'package.module.Class'`` (imported here). Anything
    else raises :class:`UsesError`, one line naming what was tried and the closest matches.

    >>> resolve_name('echo')
    'runtime.executors.echo:Echo'
    >>> resolve_name('Ekko')   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    runtime.uses.UsesError: uses='Ekko': not a built-in (echo, exact_nn) nor ...; did you mean 'echo'?
    """
    if uses is None:
        return None
    if isinstance(uses, type):
        try:
            return load_executor_class(uses)
        except ExecutorLoadError as e:
            raise UsesError(str(e)) from None
    if not isinstance(uses, str):
        raise UsesError(f"uses={uses!r}: expected a class, a built-in name, 'package.module:Class' or a YAML path")
    spec = uses.strip()
    head, *rest = spec.split('.')
    if ':' not in spec and namespace and head in namespace:
        obj: Any = namespace[head]
        try:
            for attr in rest:
                obj = getattr(obj, attr)
        except AttributeError:
            raise UsesError(f'uses={spec!r}: {head!r} has no attribute path {".".join(rest)!r}') from None
        return resolve_name(obj)
    if spec in BUILTIN_EXECUTORS:
        return BUILTIN_EXECUTORS[spec]
    if ':' in spec or '.' in spec:
        return check_importable(spec)
    tried = 'not a class defined in this notebook, ' if namespace is not None else ''
    candidates = list(BUILTIN_EXECUTORS) + list(namespace or {})
    raise UsesError(f'uses={spec!r}: {tried}not a built-in ({", ".join(BUILTIN_EXECUTORS)}) nor '
                    f"'package.module:Class', and no py_modules to look in{_suggest(spec, candidates)}")


def is_hub_reference(uses: Any) -> bool:
    """``is_hub_reference('jinaai://jina-ai/CLIPEncoder') is True``."""
    return isinstance(uses, str) and uses.strip().startswith(HUB_PREFIXES)


def hub_message(uses: str) -> str:
    """Why a hub reference is refused, and what to write instead."""
    return (f'{uses.strip()!r} is a Jina Hub reference; hub references are not supported. Install the '
            "Executor's package and write uses: 'package.module:ClassName' (or pass the class itself), "
            "or put the class in a file and write uses: 'ClassName' with py_modules: ['file.py']")


def is_yaml_path(uses: Any) -> bool:
    return isinstance(uses, str) and uses.strip().lower().endswith(YAML_SUFFIXES)


# ----------------------------------------------------------------------------- loading a class

def load_executor_class(uses: Any) -> type:
    """``'pkg.mod:Class'`` (or ``'pkg.mod.Class'``) or a class -> the Executor class.

    >>> load_executor_class('runtime.executors.exact_nn:ExactNNSearch')  # doctest: +SKIP
    """
    from runtime.executor import Executor
    if isinstance(uses, type):
        cls = uses
    elif isinstance(uses, str):
        if is_hub_reference(uses):
            raise ExecutorLoadError(f'uses={uses!r}: {hub_message(uses)}')
        module_name, sep, attr = uses.partition(':')
        if not sep:
            module_name, _, attr = uses.rpartition('.')
        if not module_name or not attr:
            raise ExecutorLoadError(f"uses={uses!r}: expected 'package.module:ClassName'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ExecutorLoadError(f'uses={uses!r}: cannot import module {module_name!r}: {e}') from e
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise ExecutorLoadError(f'uses={uses!r}: module {module_name!r} has no attribute {attr!r}') from None
    else:
        raise ExecutorLoadError(f'uses must be an Executor class or "package.module:Class", got {uses!r}')
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ExecutorLoadError(f'uses={uses!r} is not an orchestra_nb.Executor subclass')
    return cls


def import_py_module(path: str):
    """Import a ``py_modules`` file by its name, its folder appended to ``sys.path``.

    Replicas are started with the owner's ``sys.path``, so they import it the same way.
    """
    path = os.path.abspath(path)
    folder, fname = os.path.split(path)
    stem = os.path.splitext(fname)[0]
    if not stem.isidentifier():
        raise ConfigError(f'py_modules file {path!r}: {stem!r} is not a valid module name; rename the file')
    existing = sys.modules.get(stem)
    if existing is not None:
        if os.path.abspath(getattr(existing, '__file__', '') or '') == path:
            return existing
        raise ConfigError(f'py_modules file {path!r}: a different module named {stem!r} is already '
                          f'imported (from {getattr(existing, "__file__", "?")}); rename the file')
    if folder not in sys.path:
        sys.path.append(folder)
    module = importlib.import_module(stem)
    if os.path.abspath(getattr(module, '__file__', '') or '') != path:
        raise ConfigError(f'py_modules file {path!r}: importing {stem!r} found {module.__file__} first; '
                          'rename the file')
    return module


def find_class(name: str, modules: Sequence[str]) -> type:
    """The Executor class ``name`` defined in one of the ``py_modules`` files."""
    from runtime.executor import Executor
    found = []
    for path in modules:
        module = import_py_module(path)
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, Executor):
            return cls
        found += [k for k, v in vars(module).items()
                  if isinstance(v, type) and issubclass(v, Executor) and v is not Executor]
    hint = _suggest(name, found)
    raise UsesError(f'uses={name!r}: no Executor class of that name in py_modules '
                      f'{[os.path.basename(m) for m in modules]}{hint} (found: {", ".join(found) or "none"})')


# ----------------------------------------------------------------------------- uses as configs write it

def py_module_paths(value: Any, where: Where, base: str) -> List[str]:
    """A ``py_modules`` value (a path or a list) -> absolute paths of files that exist."""
    paths = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise where.error(f'expected a file path or a list of file paths, got {value!r}')
    out = []
    for p in map(os.fspath, paths):
        full = os.path.normpath(os.path.join(base, os.path.expanduser(p)))
        if not os.path.isfile(full):
            raise where.error(f'py_modules file {p!r} does not exist (looked for {full})')
        out.append(full)
    return out


def normalize_uses(uses: Any, where: Where, base: str) -> Any:
    """Check ``uses`` and make its paths absolute (``None`` for the default Echo); hubs are refused here."""
    if uses is None:
        return None
    if isinstance(uses, str):
        u = uses.strip()
        if is_hub_reference(u):
            raise where.error(hub_message(u))
        if u.startswith('docker://'):
            raise where.error(f'{u!r}: container images are not supported; run the image yourself and '
                              'add it with external: true, host and port')
        if is_yaml_path(u):
            full = os.path.normpath(os.path.join(base, os.path.expanduser(u)))
            if not os.path.isfile(full):
                raise where.error(f'Executor config {u!r} does not exist (looked for {full})')
            return full
        if u == DEFAULT_USES:
            return None
        return u
    if isinstance(uses, dict):
        check_keys(uses, USES_KEYS, where, 'uses')
        jtype = uses.get('jtype')
        if not isinstance(jtype, str) or not jtype:
            raise where.at('jtype', uses).error(
                f'expected the Executor class name (or package.module:Class), got {jtype!r}')
        out: Dict[str, Any] = {'jtype': normalize_uses(jtype, where.at('jtype', uses), base)}
        with_ = uses.get('with')
        if with_ is not None:
            if not isinstance(with_, dict):
                raise where.at('with', uses).error(f'expected a mapping of constructor arguments, got {with_!r}')
            if with_:
                out['with'] = plain(with_)
        mods: List[str] = []
        if uses.get('py_modules') is not None:
            mods += py_module_paths(uses['py_modules'], where.at('py_modules', uses), base)
        metas = uses.get('metas')
        if metas is not None:
            mw = where.at('metas', uses)
            if not isinstance(metas, dict):
                raise mw.error(f'expected a mapping, got {metas!r}')
            check_keys(metas, ('py_modules',), mw, 'metas')
            if metas.get('py_modules') is not None:
                mods += py_module_paths(metas['py_modules'], mw.at('py_modules', metas), base)
        if mods:
            out['py_modules'] = mods
        return out
    if isinstance(uses, type):
        return uses
    raise where.error(f"expected 'package.module:Class', a class name, or a mapping, got {uses!r}")


def uses_reference(uses: Any) -> Any:
    """What a config writes for ``uses``: a string, a nested mapping, or None (the default Echo)."""
    if uses is None or uses == DEFAULT_USES:
        return None
    if isinstance(uses, type):
        module = getattr(uses, '__module__', '')
        qual = getattr(uses, '__qualname__', uses.__name__)
        if module in ('__main__', '') or '<locals>' in qual or module.startswith('__'):
            raise ValueError(
                f'cannot save uses={uses.__name__} to YAML: the class is defined in a notebook cell or '
                'script, which a config cannot name. Move it into a module and write '
                "uses='package.module:ClassName', or use uses=ClassName with py_modules=['file.py']")
        return f'{module}:{qual}'
    return uses


# ----------------------------------------------------------------------------- resolving

def resolve_uses(uses: Any, uses_with: Optional[dict] = None, py_modules: Any = None,
                 base: Optional[str] = None,
                 namespace: Optional[Dict[str, type]] = None) -> Tuple[Any, Optional[dict]]:
    """``uses`` as written -> (what a replica loads: a class or 'pkg.mod:Class', merged uses_with).

    Handles a class name found in ``py_modules``, a nested ``{jtype, with, py_modules}``
    mapping, the path of an Executor YAML (``jtype: ClassName``) and every name
    :func:`resolve_name` takes (built-ins, ``namespace`` classes, ``'pkg.mod:Class'``).
    ``uses_with`` overrides the nested ``with:``. Runs in the owner, before any process
    starts: a wrong ``uses`` raises :class:`UsesError` here.
    """
    base = base or os.getcwd()
    where = Where('uses')
    mods = py_module_paths(py_modules, Where('py_modules'), base) if py_modules else []
    if is_yaml_path(uses):
        data, label, ybase = read(os.path.join(base, uses.strip()))
        data = substitute_env(data, Where(label))
        if not isinstance(data, dict) or not isinstance(data.get('jtype'), str):
            raise ConfigError(f'{label}: an Executor config is a mapping with `jtype: ClassName`')
        if data['jtype'] in ('Deployment', 'Flow'):
            raise ConfigError(f'{label} is a jtype: {data["jtype"]} config, not an Executor config; '
                              f'use {data["jtype"]}.load_config({label!r})')
        check_keys(data, USES_KEYS, Where(label), 'an Executor config')
        uses = normalize_uses(data, Where(label), ybase)
    elif isinstance(uses, dict):
        uses = normalize_uses(uses, where, base)
    if isinstance(uses, dict):
        merged = dict(uses.get('with') or {})
        merged.update(uses_with or {})
        uses_with = merged
        mods = list(uses.get('py_modules') or []) + mods
        uses = uses['jtype']
    if is_hub_reference(uses):
        raise where.error(hub_message(uses))
    for m in mods:
        import_py_module(m)
    if isinstance(uses, str) and mods and uses.isidentifier() and uses not in (namespace or {}):
        if uses in BUILTIN_EXECUTORS:
            return BUILTIN_EXECUTORS[uses], uses_with
        return find_class(uses, mods), uses_with
    return resolve_name(uses, namespace), uses_with
