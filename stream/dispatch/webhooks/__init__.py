"""The webhook channel: decided triggers POSTed, signed, to configured endpoints.

Where each job lives:

- ``signing``    the ``Journey-Signature`` header: HMAC-SHA256 over timestamp and body (pure)
- ``retry``      what a response means, backoff with full jitter, ``Retry-After`` (pure)
- ``breaker``    the per-endpoint circuit breaker's state machine (pure)
- ``endpoints``  endpoints from ``[webhooks]``, checked at start (pure)
- ``body``       the request body: the trigger and its personalisation
- ``sender``     one POST with aiohttp, its result classified
- ``outbox``     deliveries waiting in Redis (survive restarts, leased while in flight)
- ``delivery``   the loop: per-endpoint concurrency, breaker, retries, dead letters
"""
