"""The one backoff policy: the schedules each retrying place had before keep their waits."""

from __future__ import annotations

from itertools import islice

import pytest

from nst_daemon.backoff import PATIENT, Backoff


def test_a_listed_schedule_is_used_in_order_and_its_last_wait_repeats() -> None:
    redelivery = Backoff((5, 15, 60, 300))
    assert [redelivery.delay(n) for n in range(1, 7)] == [5, 15, 60, 300, 300, 300]
    assert redelivery.delay(0) == 5  # no failure counted yet is treated as the first
    assert list(islice(PATIENT.waits(), 7)) == [1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0]


def test_exponential_doubles_up_to_its_cap_as_the_download_retry_did() -> None:
    download = Backoff.exponential(1.0, 30.0)
    assert [download.delay(n) for n in range(1, 9)] == [min(2 ** (n - 1), 30.0) for n in range(1, 9)]


def test_retry_after_lengthens_a_wait_up_to_its_cap_and_never_shortens_it() -> None:
    honoured = Backoff.exponential(1.0, 30.0, max_retry_after=60.0)
    assert honoured.delay(1, retry_after=12.0) == 12.0
    assert honoured.delay(1, retry_after=3600.0) == 60.0
    assert honoured.delay(5, retry_after=0.5) == 16.0
    assert Backoff((2.0,)).delay(1, retry_after=12.0) == 2.0  # not honoured unless asked for


@pytest.mark.parametrize("delays", [(), (1.0, -1.0)])
def test_a_schedule_without_waits_or_with_a_negative_one_is_refused(delays: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="at least one wait"):
        Backoff(delays)
