"""orchestra-nb: scale out docarray Executors from a notebook.

The public surface is listed here; everything else is internal.

    >>> from orchestra_nb import Executor, requests, write, Deployment, Flow, Client
"""
from runtime.batching import dynamic_batching
from runtime.client import Client, RemoteError
from runtime.deployment import Deployment
from runtime.executor import Executor, requests, write

__all__ = ['Executor', 'requests', 'write', 'dynamic_batching', 'Deployment', 'Client', 'RemoteError']
__version__ = '0.1.0'
