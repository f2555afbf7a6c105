"""orchestra-nb: scale out docarray Executors from a notebook.

The public surface is listed here; everything else is internal.

    >>> from orchestra_nb import Executor, requests, write, Deployment, Flow, Client
"""
from runtime.batching import dynamic_batching
from runtime.client import Client, RemoteError
from runtime.deployment import Deployment
from runtime.executor import Executor, requests, write
from runtime.flow import Flow

__all__ = ['Executor', 'requests', 'write', 'dynamic_batching', 'Deployment', 'Flow', 'Client', 'RemoteError']
__version__ = '0.1.0'


# -- the notebook face: magics, widgets, rich views ---------------------------------------
# ``runtime`` never imports notebook packages, so its classes get their notebook views from
# here: Deployment/Flow gain ``_repr_html_``/``_repr_pretty_`` and ``.dashboard()``.
# IPython/ipywidgets are imported only when used, so replicas importing this package
# (an Executor module doing ``from orchestra_nb import Executor``) stay light.
from orchestra_nb import reprs as _reprs  # noqa: E402
from runtime.orchestration import Orchestration as _Orchestration  # noqa: E402

_reprs.attach()


def _dashboard(self, **kwargs):
    """A live :class:`orchestra_nb.dashboard.Dashboard` of this Deployment/Flow."""
    from orchestra_nb.dashboard import Dashboard
    return Dashboard(self, **kwargs)


_Orchestration.dashboard = _dashboard


def load_ipython_extension(ipython) -> None:
    """``%load_ext orchestra_nb``: the ``%orchestra`` magics."""
    from orchestra_nb.magics import load_ipython_extension as load
    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from orchestra_nb.magics import unload_ipython_extension as unload
    unload(ipython)


def __getattr__(name: str):
    """``ControlPanel``/``Dashboard`` load ipywidgets on first use."""
    if name == 'ControlPanel':
        from orchestra_nb.widgets import ControlPanel
        return ControlPanel
    if name == 'Dashboard':
        from orchestra_nb.dashboard import Dashboard
        return Dashboard
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


# -- the fork server: replicas start by forking a preloaded process (runtime/forkserver.py) ---
# Started now, in the background, so its imports (~0.4 s of CPU) are done by the time the
# notebook starts its first Deployment. Not in replicas (IN_CHILD), not with
# ORCHESTRA_FORKSERVER=0; costs this import a few ms (one fork/exec).
from runtime import forkserver as _forkserver  # noqa: E402

_forkserver.prewarm()
