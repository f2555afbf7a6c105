"""Beyond one machine: Docker Compose and Kubernetes exports of a Deployment or Flow.

    >>> flow.to_docker_compose_yaml('out/docker-compose.yml')      # doctest: +SKIP
    >>> flow.to_kubernetes_yaml('out/k8s', k8s_namespace='search')  # doctest: +SKIP

Modules:

- :mod:`runtime.export.plan`: the process plan both exports (and the containers) derive from
  the local run's own plan (``Orchestration._plan()``), container paths, the secret, commands.
- :mod:`runtime.export.compose`: one service per replica (``docker-compose.yml``).
- :mod:`runtime.export.kubernetes`: Deployments/StatefulSets, headless Services, a ConfigMap,
  a Secret.
- :mod:`runtime.export.serve`: what runs inside a container: ``orchestra replica`` and
  ``orchestra gateway`` (with DNS re-resolution of headless Services).

Guide: ``docs/scaling-out.md``.
"""
from runtime.export.plan import DEFAULT_IMAGE, ExportError

__all__ = ['DEFAULT_IMAGE', 'ExportError', 'to_docker_compose_yaml', 'to_kubernetes_yaml']


def to_docker_compose_yaml(obj, output_path: str, network_name=None, image: str = DEFAULT_IMAGE, **kwargs) -> str:
    """Write ``obj`` (a Deployment or Flow) as a Docker Compose file; returns its path."""
    from runtime.export.compose import write_compose
    return write_compose(obj, output_path, network_name=network_name, image=image, **kwargs)


def to_kubernetes_yaml(obj, output_base_path: str, k8s_namespace=None, image: str = DEFAULT_IMAGE,
                       **kwargs) -> list:
    """Write ``obj`` (a Deployment or Flow) as Kubernetes manifests; returns the files written."""
    from runtime.export.kubernetes import write_kubernetes
    return write_kubernetes(obj, output_base_path, k8s_namespace=k8s_namespace, image=image, **kwargs)
