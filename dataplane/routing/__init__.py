"""Routing: longest-prefix-match table, overlay routers (in/out) and the underlay router.

``_lpm.LpmTable`` is the table; ``overlay`` maps destinations to WireGuard peers,
loopback transports or drops (outbound) and to overlay transports (inbound);
``underlay`` maps peers to (underlay transport, endpoint) and handles roaming.
"""
