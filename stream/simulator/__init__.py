"""Simulated customers for ``journey simulate``, the demo, the benchmark and the tests.

- :mod:`~stream.simulator.shoppers`: one shopper's events, clock and cart;
- :mod:`~stream.simulator.personas`: the usual personas and :func:`generate`;
- :mod:`~stream.simulator.journey_map`: journey-map shoppers with planted effects;
- :mod:`~stream.simulator.formats`: Segment calls, POS rows, the JSON Lines log;
- :mod:`~stream.simulator.publish`: :func:`produce` to the ``touchpoints`` topic;
- :mod:`~stream.simulator.cli`: the ``journey simulate`` command.
"""

from stream.simulator.cli import build_parser, main
from stream.simulator.formats import to_pos_row, to_segment, write_jsonl
from stream.simulator.journey_map import MAP_PERSONAS, Incident
from stream.simulator.personas import DEFAULT_START_MS, PERSONAS, generate
from stream.simulator.publish import produce

__all__ = [
    "DEFAULT_START_MS",
    "MAP_PERSONAS",
    "PERSONAS",
    "Incident",
    "build_parser",
    "generate",
    "main",
    "produce",
    "to_pos_row",
    "to_segment",
    "write_jsonl",
]
