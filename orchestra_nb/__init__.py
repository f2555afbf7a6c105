"""orchestra-nb: scale out docarray Executors from a notebook.

The public surface is listed here; everything else is internal.

    >>> from orchestra_nb import Executor, requests, write, Deployment, Flow, Client
"""
from typing import Any

from runtime.batching import dynamic_batching
from runtime.client import Client, RemoteError
from runtime.deployment import Deployment
from runtime.executor import Executor, requests, write
from runtime.flow import Flow
from runtime.metrics import monitor

__all__ = ['Executor', 'requests', 'write', 'dynamic_batching', 'monitor', 'Deployment', 'Flow', 'Client',
           'RemoteError']
__version__ = '0.1.0'


# -- the notebook face: magics and widgets -------------------------------------------------
# Deployment/Flow carry their own rich views (runtime/reprs.py). IPython/ipywidgets are
# imported only when used, so replicas importing this package (an Executor module doing
# ``from orchestra_nb import Executor``) stay light.
def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext orchestra_nb``: the ``%orchestra`` magics."""
    from orchestra_nb.magics import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext orchestra_nb``: remove the magics."""
    from orchestra_nb.magics import unload_ipython_extension as unload
    unload(ipython)


def __getattr__(name: str) -> Any:
    """``ControlPanel``/``Dashboard`` load ipywidgets on first use; ``export_summary`` (what an
    export wrote, as a table: runtime/export/views.py) loads on first use too."""
    if name == 'export_summary':
        from runtime.export.views import export_summary
        return export_summary
    if name == 'ControlPanel':
        from orchestra_nb.widgets import ControlPanel
        return ControlPanel
    if name == 'Dashboard':
        from orchestra_nb.dashboard import Dashboard
        return Dashboard
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# -- inside IPython (then imported already; replicas never have it): ------------------------
# the %orchestra magics are registered by the import, like ipyparallel's (so a tutorial run twice
# has no `%load_ext` and no "already loaded" notice; `%load_ext orchestra_nb` still works), and the
# runtime's warnings (a replica restarted) become one informational line in the cell.
import sys as _sys  # noqa: E402


def _in_ipython() -> None:
    from IPython import get_ipython
    shell = get_ipython()
    if shell is None:
        return
    from orchestra_nb.magics import load_ipython_extension as load
    from orchestra_nb.notes import install
    load(shell)
    install()


if 'IPython' in _sys.modules:
    _in_ipython()


# -- the fork server: replicas start by forking a preloaded process (runtime/forkserver.py) ---
# Started now, in the background, so its imports (~0.4 s of CPU) are done by the time the
# notebook starts its first Deployment. Not in replicas (IN_CHILD), not with
# ORCHESTRA_FORKSERVER=0; costs this import a few ms (one fork/exec).
from runtime import forkserver as _forkserver  # noqa: E402

_forkserver.prewarm()
