"""Replica-to-replica messages over gRPC (``Control``), authenticated by the Deployment's secret
(checked before the frame is read: :func:`runtime.server.authenticated`).

``PeerControl`` (a part of ``Consensus``, with no state of its own) answers peers' ``control``
calls (``put_payloads``, ``get_payload``, ``get_snapshot``, ``status``) and proposes, when this
replica leads, the records a peer's push carried. The bodies themselves go to
:class:`runtime.raft.bodies.Bodies` (stored here, pushed to peers). Relies on :mod:`runtime.protocol`.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from runtime import protocol
from runtime.raft.common import Outcome, _short
from runtime.raft.payloads import _check_rid
from runtime.raft.records import RECORD_FIELDS, Record

if TYPE_CHECKING:
    from runtime.raft.bodies import Bodies
    from runtime.raft.snapshots import Snapshots


class PeerControl:
    """Answers the shard's other replicas (``Control`` calls; the server checked their secret).

    A part of ``Consensus``, given what it answers from: ``Bodies``, ``Snapshots``, the node's
    ``status()``, whether the node leads now (``leading()``) and how to propose a record
    (``propose(record) -> Future[Outcome]``, the proposer's ``submit``).
    """

    def __init__(self, name: str, bodies: 'Bodies', snapshots: 'Snapshots', status: Callable[[], Dict[str, Any]],
                 leading: Callable[[], bool], propose: Callable[[Record], 'asyncio.Future[Outcome]']):
        self.name = name
        self._bodies, self._snapshots = bodies, snapshots
        self._status, self._leading, self._propose = status, leading, propose

    async def answer(self, header: Dict[str, Any], body: bytes) -> bytes:
        """Requests from peer replicas (payloads, snapshots); the server checked their secret."""
        op = header.get('op')
        try:
            if op == 'put_payloads':   # a batch from one peer: [[rid, digest, size], ...] + the bodies
                items = header.get('items') or []
                view, offset, stores = memoryview(body), 0, []
                for rid, digest, size in items:
                    _check_rid(rid)
                    if not isinstance(size, int) or size < 0 or offset + size > len(view):
                        raise ValueError('put_payloads: the sizes do not match the body')
                    # the sender hashed the body it sends (the transport is reliable and authenticated):
                    # kept with the body, so nobody hashes it again
                    stores.append(self._bodies.store(rid, bytes(view[offset:offset + size]), str(digest)))
                    offset += size
                    self._bodies.arrived(rid)
                results = await asyncio.gather(*stores, return_exceptions=True)
                errors = [None if not isinstance(r, BaseException) else _short(r) for r in results]
                outcomes = await self._propose_for_peer(items, header.get('records'), errors)
                return protocol.pack({'ok': True, 'errors': errors if any(errors) else None, 'outcomes': outcomes})
            if op == 'get_payload':
                rid = _check_rid(header.get('rid'))
                data = self._bodies.cached(rid)
                if data is None:
                    data = await asyncio.to_thread(self._bodies.get, rid)
                if data is None:
                    return protocol.pack({'ok': False, 'missing': True})
                data = bytes(data)
                return protocol.pack({'ok': True}, data)
            if op == 'get_snapshot':
                return await self._snapshots.serve(header)
            if op == 'status':
                return protocol.pack({'ok': True, 'status': self._status()})
            raise ValueError(f"unknown RAFT control op {op!r}; allowed: 'put_payloads', 'get_payload', "
                             "'get_snapshot', 'status'")
        except Exception as e:
            return protocol.pack(protocol.error_header(e, self.name))

    async def _propose_for_peer(self, items: List[Any], records: Optional[List[Any]],
                                errors: List[Optional[str]]) -> Optional[List[Optional[Outcome]]]:
        """A peer's payloads came with their records: if we lead, propose those stored here
        (payload on the peer and here: a majority) -> pysyncobj's outcome per record."""
        if not records:
            return None
        outcomes: List[Optional[Outcome]] = [None] * len(items)
        leading = self._leading()
        proposals: Dict[int, asyncio.Future] = {}
        for k, wire in enumerate(records[:len(items)]):
            if wire is None:
                continue
            # a large write's record (no inline body), for the payload that came with it
            rec = Record.from_wire(wire) if isinstance(wire, list) and len(wire) == RECORD_FIELDS else None
            if errors[k] is not None or rec is None or rec.rid != items[k][0]:
                outcomes[k] = Outcome.REFUSED
            elif not leading:
                outcomes[k] = Outcome.NOT_LEADER   # the peer proposes it itself
            else:
                proposals[k] = self._propose(rec)
        if proposals:
            for k, err in zip(proposals, await asyncio.gather(*proposals.values())):
                outcomes[k] = err
        return outcomes
