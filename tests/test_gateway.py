"""The gateway's graph: what routing computes once (inline nodes, frame forwarding, skipping)."""
import pytest

from runtime.gateway import GATEWAY, Graph, Stage
from runtime.specs import StageSpec


def _graph(*edges, floating=()):
    """``('a', ['gateway']), ('b', ['a'])`` -> a Graph of nodes without replicas (no processes)."""
    return Graph({name: Stage(StageSpec(name=name, needs=tuple(needs), shards=((),)), 4) for name, needs in edges},
                 set(floating))


def test_one_node_runs_inline_and_does_not_skip_unknown_endpoints():
    g = _graph(('dep', [GATEWAY]))
    assert g.order == ['dep'] and g.leaves == ['dep'] and g.inline == {'dep': True}
    assert g.skips_unknown is False and g.served == 1


def test_a_straight_chain_runs_every_node_inline():
    g = _graph(('a', [GATEWAY]), ('b', ['a']), ('c', ['b']))
    assert g.order == ['a', 'b', 'c'] and g.leaves == ['c']
    assert all(g.inline.values()) and g.skips_unknown is True


def test_only_the_branches_of_a_fork_run_as_tasks():
    g = _graph(('a', [GATEWAY]), ('b', ['a']), ('c', ['a']), ('d', ['c']), ('j', ['b', 'd']))
    assert g.inline == {'a': True, 'b': False, 'c': False, 'd': False, 'j': True}
    assert g.leaves == ['j']
    two_leaves = _graph(('a', [GATEWAY]), ('b', [GATEWAY]))
    assert two_leaves.leaves == ['a', 'b'] and not any(two_leaves.inline.values())


@pytest.mark.parametrize('edges, match', [
    ((('a', ['nowhere']),), "'a' needs 'nowhere', which is not in the graph"),
    ((('a', ['b']), ('b', ['a'])), 'the graph has a cycle: a -> b -> a'),
])
def test_bad_graphs_are_refused_naming_the_node(edges, match):
    with pytest.raises(ValueError, match=match):
        _graph(*edges)


def test_a_floating_node_is_no_leaf_and_never_inline():
    g = _graph(('a', [GATEWAY]), ('f', ['a']), ('b', ['a']), floating={'f'})
    assert g.leaves == ['b'] and g.floating == {'f'}
    assert g.inline == {'a': True, 'f': False, 'b': False}
