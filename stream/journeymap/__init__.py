"""The journey map's stream shell: the analytics agent, its table, alerts and views.

The pure part (aggregates, impact, alerts, the report) is ``stream.analytics``.
"""
