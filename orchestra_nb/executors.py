"""Executors shipped with orchestra-nb.

    >>> from orchestra_nb.executors import ExactNNSearch, QueryDoc
    >>> Deployment(uses=ExactNNSearch, replicas=3, stateful=True, workspace='./raft')  # doctest: +SKIP

``uses='orchestra_nb.executors:ExactNNSearch'`` works too.
"""
from runtime.executors.exact_nn import ExactNNSearch, QueryDoc

__all__ = ['ExactNNSearch', 'QueryDoc']
