"""Unit tests of the VR checks (`gateway.dicom.vr`): the VRs the gateway writes, and each endpoint's date and time
rule, with the messages the endpoints' error bodies carry."""

from __future__ import annotations

import pytest

from gateway.dicom import vr


@pytest.mark.parametrize(("check", "value", "stored"), [
    (vr.ae, " NGV ", "NGV"),
    (vr.cs, "CT", "CT"),
    (vr.sh, "ACC1", "ACC1"),
    (vr.lo, "x" * 64, "x" * 64),
    (vr.pn, "ROSSI^MARIO", "ROSSI^MARIO"),
    (vr.pn, "A^B=C^D=E^F", "A^B=C^D=E^F"),
    (vr.da, "20000229", "20000229"),
    (vr.tm, "120000", "120000"),
    (vr.tm, "235960.123456", "235960.123456"),  # PS3.5: second 60 for a leap second
    (vr.ui, "1.2.840.10008.1.2", "1.2.840.10008.1.2"),
])
def test_a_valid_value_is_stored_as_returned(check: object, value: str, stored: str) -> None:
    assert callable(check)
    assert check(value) == stored


@pytest.mark.parametrize(("check", "value"), [
    (vr.ae, "   "),
    (vr.ae, "NGVÉ"),
    (vr.ae, "A" * 17),
    (vr.cs, "ct"),
    (vr.sh, "A\\B"),
    (vr.sh, "x" * 17),
    (vr.lo, "tab\there"),
    (vr.pn, "A=B=C=D"),
    (vr.pn, "A^B^C^D^E^F"),
    (vr.da, "20010229"),
    (vr.da, "2000-01-01"),
    (vr.da, "\uff12\uff10\uff10\uff10\uff10\uff11\uff10\uff11"),  # full-width digits
    (vr.tm, "240000"),
    (vr.tm, "126000"),
    (vr.tm, "120061"),
    (vr.tm, "1200"),
    (vr.ui, "1.02.3"),
    (vr.ui, "1." + "1" * 64),
])
def test_an_invalid_value_is_a_vr_error(check: object, value: str) -> None:
    assert callable(check)
    with pytest.raises(vr.VrError):
        check(value)


def test_us_takes_16_bits_and_an_allowed_set() -> None:
    assert vr.us(65535) == 65535
    assert vr.us(2, frozenset({1, 2})) == 2
    for value, allowed in ((65536, None), (-1, None), (3, frozenset({1, 2}))):
        with pytest.raises(vr.VrError):
            vr.us(value, allowed)


# Each endpoint's date and time rule, all in gateway.dicom.vr (issue 12): what it takes, what it makes of it, and
# what it refuses with which message (the messages are those of the endpoints' error bodies).
@pytest.mark.parametrize(("check", "value", "stored"), [
    (vr.da_or_range, "20240101-", "20240101-"),  # /exams StudyDate: as given
    (vr.optional_da, None, None),  # callback StudyDate, PatientBirthDate: unknown
    (vr.optional_da, "", ""),
    (vr.optional_da, "20000229", "20000229"),
    (vr.loose_da, "2024-02-29", "20240229"),  # workitem dates
    (vr.loose_da, "20240229", "20240229"),
    (vr.loose_da_range, "2024-01-01-2024-02-01", ("20240101", "20240201")),  # GET /workitems start date
    (vr.loose_da_range, "20240101-", ("20240101", "")),
    (vr.loose_da_range, "-2024-02-01", ("", "20240201")),
    (vr.loose_da_range, "2024-01-01", ("20240101", "20240101")),
    (vr.loose_tm, "0930", "093000"),  # workitem start time
    (vr.loose_tm, "09:30", "093000"),
    (vr.loose_tm, "09:30:15.5", "093015.5"),
    (vr.loose_tm, "235959.123456", "235959.123456"),
    (vr.optional_tm_shape, "12", "12"),  # callback StudyTime: the shape only, as sent
    (vr.optional_tm_shape, "999999.1", "999999.1"),
    (vr.optional_tm_shape, "", ""),
    (vr.optional_tm_shape, None, None),
])
def test_each_endpoints_date_or_time_is_taken(check: object, value: str | None, stored: object) -> None:
    assert callable(check)
    assert check(value) == stored


@pytest.mark.parametrize(("check", "value", "message"), [
    (vr.da, "20010229", "20010229 is not a calendar date"),
    (vr.da, "2001-02-2", "a date YYYYMMDD"),
    (vr.da_or_range, "-", "a date YYYYMMDD or a range A-B, A- or -B"),
    (vr.da_or_range, "20241312", "'20241312' is not a date YYYYMMDD"),
    (vr.da_or_range, "2024-01-01", "'2024' is not a date YYYYMMDD"),
    (vr.da_or_range, "20240102-20240101", "the range ends before it starts"),
    (vr.optional_da, "2024010", "a date YYYYMMDD"),
    (vr.optional_da, "\u00b2" * 8, "a date YYYYMMDD"),
    (vr.optional_da, "20241301", "not a real date"),
    (vr.loose_da, "2024-0101", "a date YYYYMMDD or YYYY-MM-DD"),
    (vr.loose_da, "2023-02-29", "2023-02-29 is not a calendar date"),
    (vr.loose_da_range, "2024-02-01-2024-01-01", "the range ends before it starts"),
    (vr.loose_da_range, "-", "a date YYYYMMDD or YYYY-MM-DD, or a range A-B, A- or -B of such dates"),
    (vr.loose_da_range, "2024-13-01", "2024-13-01 is not a calendar date"),
    (vr.tm, "1200", "a time HHMMSS or HHMMSS.FFFFFF"),
    (vr.tm, "126000", "126000 is not a time of day"),
    (vr.loose_tm, "12:00:60", "12:00:60 is not a time of day (00:00:00 to 23:59:59)"),
    (vr.loose_tm, "12:0000", "a time HHMMSS, HHMM, HH:MM:SS or HH:MM, with at most 6 digits of fractional seconds"),
    (vr.loose_tm, "12", "a time HHMMSS, HHMM, HH:MM:SS or HH:MM, with at most 6 digits of fractional seconds"),
    (vr.optional_tm_shape, "123", "a time HHMMSS[.FFFFFF]"),
    (vr.optional_tm_shape, "12:00", "a time HHMMSS[.FFFFFF]"),
    # Digits are ASCII 0-9: full-width and other Unicode digits (which `\d` and str.isdigit take) are refused.
    (vr.da, "\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11", "a date YYYYMMDD"),
    (vr.da_or_range, "\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11-",
     "'\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11' is not a date YYYYMMDD"),
    (vr.loose_da, "\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11", "a date YYYYMMDD or YYYY-MM-DD"),
    (vr.loose_da, "2024-\u0660\u0661-01", "a date YYYYMMDD or YYYY-MM-DD"),  # Arabic-Indic digits
    (vr.tm, "\uff11\uff12\uff10\uff10\uff10\uff10", "a time HHMMSS or HHMMSS.FFFFFF"),
    (vr.loose_tm, "\uff11\uff12:00",
     "a time HHMMSS, HHMM, HH:MM:SS or HH:MM, with at most 6 digits of fractional seconds"),
    (vr.optional_tm_shape, "\uff11\uff12", "a time HHMMSS[.FFFFFF]"),
])
def test_each_endpoints_date_or_time_refusal_says_why(check: object, value: str, message: str) -> None:
    assert callable(check)
    with pytest.raises(vr.VrError) as raised:
        check(value)
    assert str(raised.value) == message


def test_a_workitem_start_date_range_covers_whole_days() -> None:
    assert vr.day_range_dt("20240101", "20240102") == "20240101000000-20240102235959"
    assert vr.day_range_dt("20240101", "") == "20240101000000-"
    assert vr.day_range_dt("", "20240102") == "-20240102235959"
