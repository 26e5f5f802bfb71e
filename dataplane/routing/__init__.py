"""Routing: longest-prefix-match table, overlay routers (in/out) and the underlay router."""
