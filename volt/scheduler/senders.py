"""Is a node's message from that node? The subject says who sent it.

The bus lets a node publish only under its own ``volt.node.<node_id>.`` prefix
(``wire/permissions.py``), so the subject a message arrived on names its sender.
A body naming another node is forged (or a bug) and is dropped before it can
count: a heartbeat for someone else, or someone else's attestation evidence.
"""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from prometheus_client import Counter

from volt.wire import subjects

log = logging.getLogger(__name__)

FORGED = Counter("volt_scheduler_forged_node_messages_total",
                 "Node messages dropped because their body named another node than their subject")


def sent_by(msg: Msg, node_id: str) -> bool:
    """True when ``msg`` came on ``node_id``'s own subjects."""
    if subjects.node_of(msg.subject) == node_id:
        return True
    FORGED.inc()
    log.warning("message for another node dropped",
                extra={"node_id": node_id, "subject_node": subjects.node_of(msg.subject)})
    return False
