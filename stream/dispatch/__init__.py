"""The follow-up dispatcher: triggers in, guarded emails and webhooks out.

Where each job lives:

- ``policy``       the pure decision before a send (consent, purchase, reachability,
                   quiet hours) and the order of the checks
- ``quiet_hours``  local-time quiet windows (pure)
- ``tokens``       signed tracking tokens for open/click/unsubscribe links (pure)
- ``render``       Jinja2 templates in ``config/templates`` -> subject, text, HTML
- ``message``      the MIME message: headers, tracking links and pixel
- ``guards``       the Redis side: idempotency claims, frequency caps, suppression
- ``schedule``     the Redis quiet-hours schedule (survives restarts, leased release)
- ``signals``      purchases and unsubscribes from ``touchpoints.resolved`` into Redis
- ``smtp``         sending through an SMTP relay
- ``webhooks``     the webhook channel: signed requests, retries, breaker, Redis outbox
- ``dispatcher``   the steps for one trigger, retries, outcomes and dead letters
- ``inflight``     triggers decided concurrently: bounded, one key in order, acks in order
- ``app``          the Faust shell: agents, timer, /metrics and /ready
"""
