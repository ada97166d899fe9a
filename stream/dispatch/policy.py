"""The pure decision before a send: may this trigger go now, later, or never?

The dispatcher runs its checks in this order, each for a reason:

1. idempotency claim (Redis, in ``guards``): first, so a re-delivered trigger
   is answered ``deduplicated`` and never reaches a second decision or send;
2. erasure (:func:`screen`): a trigger of a journey erased after its event
   (``journey forget``) is never sent;
3. consent (:func:`screen`): an unsubscribe or a suppression entry blocks for
   good; it is never delayed, whatever the hour;
4. purchase (:func:`screen`): an abandonment whose customer bought after the
   wait started is cancelled, never delayed (the email would arrive after the order);
5. reachability (:func:`screen`): no address, nothing to send or to delay;
6. quiet hours (:func:`screen`): only a sendable trigger waits for the window
   to open, and it is screened again (consent, purchase) when released;
7. frequency cap (Redis, atomic, in ``guards``): last before the send, so a
   slot is only taken by an email that actually goes now; a delayed trigger
   does not hold a slot overnight, and a failed send gives its slot back;
8. control group (:mod:`stream.triggers.holdout`, in ``dispatcher``): a
   customer the rule holds out has passed every check above (the cap only
   read, no slot taken) and ends ``held_out`` instead of being sent, so the
   treated and the control customers differ in the send alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.dispatch import outcomes
from stream.dispatch.quiet_hours import QuietHours, zone_of
from stream.triggers.trigger import ABANDONMENT, Trigger


@dataclass(frozen=True, slots=True)
class CustomerSignals:
    """What Redis knows about the customer when the send is decided."""

    unsubscribed: bool = False
    suppressed: bool = False
    #: Event time (epoch ms) of the latest purchase seen on ``touchpoints.resolved``.
    purchased_at: int | None = None
    #: When the customer's journey was erased (epoch ms), if it was.
    erased_at: int | None = None


@dataclass(frozen=True, slots=True)
class Screen:
    """A decision other than "go on": an outcome, why, and for a delay when to retry."""

    outcome: str
    reason: str
    release_at: int | None = None


def screen(
    trigger: Trigger,
    signals: CustomerSignals,
    now_ms: int,
    quiet: QuietHours,
    default_timezone: str,
    needs_email: bool = True,
) -> Screen | None:
    """None when the trigger may be sent now (subject to the frequency cap).

    ``needs_email``: the rule sends email (a webhook-only rule needs no address).
    """
    if signals.erased_at is not None and trigger.event_at <= signals.erased_at:
        return Screen(outcomes.ERASED, "the customer's journey was erased after this event")
    if signals.unsubscribed:
        return Screen(outcomes.SUPPRESSED_CONSENT, "customer unsubscribed")
    if signals.suppressed:
        return Screen(outcomes.SUPPRESSED_CONSENT, "on the suppression list")
    if (
        trigger.kind == ABANDONMENT
        and signals.purchased_at is not None
        and signals.purchased_at > trigger.event_at
    ):
        return Screen(
            outcomes.CANCELLED_PURCHASED,
            f"purchase at {signals.purchased_at} after the wait began at {trigger.event_at}",
        )
    if needs_email and not trigger.email:
        return Screen(outcomes.UNREACHABLE, "no email address")
    zone = zone_of(trigger.timezone, default_timezone)
    release = quiet.release_at(now_ms, zone)
    if release is not None:
        return Screen(outcomes.DELAYED_QUIET_HOURS, f"quiet hours in {zone.key}", release)
    return None
