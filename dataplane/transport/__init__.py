"""Transports: where batches come from and go to (UDP underlay, memory, overlay sockets)."""
