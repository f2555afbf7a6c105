"""A Prometheus scrape config for a running Deployment or Flow (``monitoring=True``).

``dep.prometheus_config()`` returns the YAML text; ``prometheus --config.file=FILE`` scrapes
the gateway and every replica at their ``/metrics`` (ports from ``status()``). Each target
carries the labels ``component`` (gateway or replica), ``process`` (a replica's name) and
``orchestra`` (the Deployment's name). docs/monitoring.md has the PromQL.

    >>> print(scrape_config('enc', [('127.0.0.1:9100', {'component': 'gateway'})], '5s'))  # doctest: +ELLIPSIS
    global:
      scrape_interval: 5s
    ...
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import yaml

from runtime.metrics import METRICS_PATH


def scrape_config(name: str, targets: List[Tuple[str, Dict[str, str]]], scrape_interval: str = '5s') -> str:
    """Prometheus YAML scraping ``targets`` (``(host:port, labels)``; one static group each)."""
    if not targets:
        raise ValueError(f'{name!r}: no metrics endpoint to scrape; start it with monitoring=True')
    groups = [{'targets': [address], 'labels': dict(labels, orchestra=name)} for address, labels in targets]
    config = {'global': {'scrape_interval': scrape_interval, 'evaluation_interval': scrape_interval},
              'scrape_configs': [{'job_name': name.replace('/', '_'), 'metrics_path': METRICS_PATH,
                                  'static_configs': groups}]}
    return yaml.safe_dump(config, sort_keys=False)
