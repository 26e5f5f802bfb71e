"""Typing stub for dataplane._group (see _group.pyx)."""

from dataplane._batch import PacketBatch

def group(batch: PacketBatch, keys: object | None = ...) -> dict[int, PacketBatch]: ...
