"""The journey map: stage visits aggregated into flows, touchpoint impact and alerts.

Pure code (no Faust, Kafka, Redis or clock): :mod:`.aggregate` keeps mergeable
counts of the visits the journey rules emit, :mod:`.report` turns them into the
map, :mod:`.offline` runs an event log through both (``journey report``).
"""
