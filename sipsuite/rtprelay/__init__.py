"""The RTP relay (rtp-relay): RTPProxy's job on Twisted.

The core here is sans-IO: ports.py allocates relay port pairs, rtp.py reads
the few header fields latching needs, session.py holds a call and decides
where each of its packets goes, table.py holds the calls and answers the
control commands.  The Twisted layer (UDP
ports, control server, expiry timer) sits on top of it.
"""

from sipsuite.rtprelay.ports import PortAllocator, PortsExhausted
from sipsuite.rtprelay.rtp import rtcp_ssrc, rtp_header
from sipsuite.rtprelay.session import Leg, Session
from sipsuite.rtprelay.table import Draining, SessionTable, TableStats, bridge_interfaces

__all__ = [
    "Draining",
    "Leg",
    "PortAllocator",
    "PortsExhausted",
    "Session",
    "SessionTable",
    "TableStats",
    "bridge_interfaces",
    "rtcp_ssrc",
    "rtp_header",
]
