"""In-store POS producer: CSV / JSON Lines transaction exports -> ``touchpoints``.

Where a shop-floor event enters the engine. One module per layer, top to bottom:

- :mod:`.cli`: ``journey pos`` (options, signals, the one-line report).
- :mod:`.producer`: :class:`PosProducer` publishes rows in batches and, once
  the broker has acknowledged a batch, records how far it got, so a restart
  resends nothing that was acknowledged; malformed rows go to a reject file.
- :mod:`.checkpoint`: the checkpoint file and what identifies a file in it.
- :mod:`.reader`: CSV or JSON Lines bytes -> rows numbered by physical line,
  with the byte offset after each.
- :mod:`.rows`, pure: one export row -> one validated touchpoint, or the reason not.

A re-sent row carries the same ``event_id`` (``pos:{store}:{register}:{receipt}:
{sale|refund}``), so anything sent twice after a crash between the broker's
acknowledgement and the checkpoint write is dropped by the ingest dedupe.

Import from the modules: the package itself loads none of them, so the pure
ones are used without a Kafka client.
"""
