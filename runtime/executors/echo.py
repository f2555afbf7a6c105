"""The Executor a Deployment runs when ``uses`` is omitted: returns docs unchanged."""
from runtime.executor import Executor, requests


class Echo(Executor):
    """Serves every endpoint by returning its input docs."""

    @requests
    def echo(self, docs, **kwargs):
        return docs
