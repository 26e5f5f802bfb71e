"""Typing stub for dataplane.filter._packet (see _packet.pyx)."""

import array

from typing_extensions import disjoint_base

from dataplane._batch import PacketBatch

_FamilySpec = tuple[
    array.array[int],
    array.array[int],
    array.array[int],
    array.array[int],
    array.array[int],
    array.array[int],
    array.array[int],
    array.array[int],
]

@disjoint_base
class CompiledRules:
    def __init__(
        self,
        nrules: int,
        nwords: int,
        proto_bits: array.array[int],
        bits: array.array[int],
        ent_rule: array.array[int],
        ent_first: array.array[int],
        ent_last: array.array[int],
        v4: _FamilySpec,
        v6: _FamilySpec,
    ) -> None: ...
    @property
    def nrules(self) -> int: ...
    def segment_counts(self) -> tuple[int, int, int, int]: ...

@disjoint_base
class FilterCore:
    rules: CompiledRules
    def __init__(
        self, max_flows: int, flow_timeout: float, seed: int, rules: CompiledRules
    ) -> None: ...
    def set_rules(self, rules: CompiledRules) -> None: ...
    @property
    def max_flows(self) -> int: ...
    @property
    def flow_timeout(self) -> float: ...
    def clear_flows(self) -> None: ...
    def flow_count(self, now: float) -> int: ...
    def check_inbound(self, batch: PacketBatch, now: float) -> int: ...
    def record_outbound(self, batch: PacketBatch, now: float) -> int: ...
    def flows(self, now: float) -> list[tuple[int, int, int, int, int, int]]: ...
