"""Replica-to-replica messages over gRPC (``Control``), authenticated by the Deployment's secret
(checked before the frame is read: :func:`runtime.server.authenticated`).

``_PeerMessages`` (a part of ``Consensus``) answers peers' ``control`` calls (``put_payloads``,
``get_payload``, ``get_snapshot``, ``status``) and proposes, when it leads, the records a peer's
push carried. The bodies themselves go to :class:`runtime.raft.bodies.Bodies` (stored here,
pushed to peers). Relies on the ``Consensus`` attributes (declared in :mod:`runtime.raft.state`)
and :mod:`runtime.protocol`.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from runtime import protocol
from runtime.raft.common import Outcome, _short
from runtime.raft.settings import PeerAddress
from runtime.raft.payloads import _check_rid
from runtime.raft.records import RECORD_FIELDS, Record

if TYPE_CHECKING:   # a part of Consensus: its attributes (see runtime.raft.state for why not at run time)
    from runtime.raft.state import ConsensusState as _Base
else:
    _Base = object


class _PeerMessages(_Base):
    """``Consensus``'s side of replica-to-replica calls: answering peers."""

    async def control(self, header: Dict[str, Any], body: bytes) -> bytes:
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
                    stores.append(self.bodies.store(rid, bytes(view[offset:offset + size]), str(digest)))
                    offset += size
                    self.bodies.arrived(rid)
                results = await asyncio.gather(*stores, return_exceptions=True)
                errors = [None if not isinstance(r, BaseException) else _short(r) for r in results]
                outcomes = await self._propose_for_peer(items, header.get('records'), errors)
                return protocol.pack({'ok': True, 'errors': errors if any(errors) else None, 'outcomes': outcomes})
            if op == 'get_payload':
                rid = _check_rid(header.get('rid'))
                data = self.bodies.cached(rid)
                if data is None:
                    data = await asyncio.to_thread(self.bodies.get, rid)
                if data is None:
                    return protocol.pack({'ok': False, 'missing': True})
                data = bytes(data)
                return protocol.pack({'ok': True}, data)
            if op == 'get_snapshot':
                return await self.snapshots.serve(header)
            if op == 'status':
                return protocol.pack({'ok': True, 'status': self.status()})
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
        node = self.node
        leading = node is not None and self._proposer is not None and not self._closing and node.is_leader()
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
                proposals[k] = self._proposer.submit(rec)
        if proposals:
            for k, err in zip(proposals, await asyncio.gather(*proposals.values())):
                outcomes[k] = err
        return outcomes

    def _leader_peer(self) -> Optional[PeerAddress]:
        """The peer that leads now, as our node sees it (None: we lead, or no leader)."""
        node = self.node
        try:
            addr = node.leader_address() if node is not None else None
        except Exception:
            return None
        return next((p for p in self.peers if p.raft == addr), None)
