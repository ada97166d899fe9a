"""Quiet-hours window maths: across midnight, in any time zone, around DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.dispatch.quiet_hours import QuietHours, parse_clock, zone_of

REGIONS = ("Europe/", "America/", "Asia/", "Australia/")
SPECIAL = ["UTC", "Pacific/Chatham", "Asia/Kathmandu", "Australia/Lord_Howe"]
ZONES = [*sorted(z for z in available_timezones() if z.startswith(REGIONS))[:200], *SPECIAL]

clock_times = st.times().map(lambda t: t.replace(microsecond=0))
instants = st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000 - 1)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def local_time(at_ms: int, zone: ZoneInfo) -> time:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(zone).time()


def test_parse_clock_accepts_minutes_and_seconds() -> None:
    assert parse_clock("21:00") == time(21, 0)
    assert parse_clock("07:05:09") == time(7, 5, 9)
    for bad in ("7", "25:00", "12:60", "aa:bb", "1:2:3:4", ""):
        with pytest.raises(ValueError):
            parse_clock(bad)


def test_window_across_midnight() -> None:
    q = QuietHours.parse("21:00", "08:00")
    utc = ZoneInfo("UTC")
    assert q.contains(time(23, 0)) and q.contains(time(3, 0)) and q.contains(time(21, 0))
    assert not q.contains(time(8, 0)) and not q.contains(time(12, 0))
    evening = ms(datetime(2026, 3, 2, 22, 30, tzinfo=UTC))
    assert q.release_at(evening, utc) == ms(datetime(2026, 3, 3, 8, 0, tzinfo=UTC))
    night = ms(datetime(2026, 3, 3, 2, 0, tzinfo=UTC))
    assert q.release_at(night, utc) == ms(datetime(2026, 3, 3, 8, 0, tzinfo=UTC))
    assert q.release_at(ms(datetime(2026, 3, 3, 9, 0, tzinfo=UTC)), utc) is None


def test_customer_time_zone_decides() -> None:
    q = QuietHours.parse("21:00", "08:00")
    # 20:30 UTC is 05:30 next day in Tokyo (quiet) and 15:30 in New York (not quiet).
    at = ms(datetime(2026, 6, 1, 20, 30, tzinfo=UTC))
    assert q.release_at(at, ZoneInfo("America/New_York")) is None
    assert q.release_at(at, ZoneInfo("Asia/Tokyo")) == ms(datetime(2026, 6, 1, 23, 0, tzinfo=UTC))


def test_spring_forward_gap() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    q = QuietHours.parse("01:00", "02:30")  # 02:30 does not exist on 2026-03-29
    at = ms(datetime(2026, 3, 29, 1, 30, tzinfo=berlin))
    release = q.release_at(at, berlin)
    assert release is not None and release > at
    assert not q.contains(local_time(release, berlin))


def test_equal_bounds_mean_no_quiet_hours() -> None:
    q = QuietHours.parse("00:00", "00:00")
    assert q.empty and q.release_at(ms(datetime(2026, 1, 1, tzinfo=UTC)), ZoneInfo("UTC")) is None


def test_unknown_zone_falls_back() -> None:
    assert zone_of("Mars/Olympus", "Europe/Paris").key == "Europe/Paris"
    assert zone_of(None, "nope").key == "UTC"


@given(start=clock_times, end=clock_times, at=instants, zone=st.sampled_from(ZONES))
def test_release_is_after_now_outside_the_window_and_within_a_day(
    start: time, end: time, at: int, zone: str
) -> None:
    q = QuietHours(start, end)
    tz = ZoneInfo(zone)
    release = q.release_at(at, tz)
    if release is None:
        assert not q.contains(local_time(at, tz))
        return
    assert q.contains(local_time(at, tz))
    assert at < release <= at + ms_of(timedelta(hours=26))
    assert not q.contains(local_time(release, tz)) or release == at + 1


@given(start=clock_times, end=clock_times, at=instants)
def test_fixed_offset_release_is_exactly_the_opening(start: time, end: time, at: int) -> None:
    """Without DST the window opens exactly at ``end``: one second earlier is still quiet."""
    q = QuietHours(start, end)
    utc = ZoneInfo("UTC")
    release = q.release_at(at, utc)
    if release is None:
        return
    assert local_time(release, utc) == end
    assert q.contains(local_time(release - 1000, utc))


def ms_of(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)
