"""Unit tests of the query-parameter helpers (`gateway.edge.params`) that the route tests reach only indirectly."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from gateway.edge.params import (
    date_or_range,
    instant_parameter,
    integer_parameter,
    is_small_integer,
    optional_patient_id,
    single,
)
from gateway.errors import BadRequest


@pytest.mark.parametrize("value", ["20240101", "20240101-20241231", "20240101-", "-20241231"])
def test_a_date_or_range_is_taken_as_given(value: str) -> None:
    assert date_or_range("StudyDate", value) == value


@pytest.mark.parametrize("value", ["", "-", "2024", "20241301", "20241231-20240101", "20240101-2024", "--"])
def test_a_bad_date_or_range_is_400_naming_the_parameter(value: str) -> None:
    with pytest.raises(BadRequest) as raised:
        date_or_range("StudyDate", value)
    assert raised.value.details == {"parameter": "StudyDate"}


@pytest.mark.parametrize(("raw", "small"), [("0", True), ("123456789", True), ("1234567890", False), ("²", False),
                                             ("-1", False), ("", False), ("1 ", False)])
def test_is_small_integer(raw: str, small: bool) -> None:
    assert is_small_integer(raw) is small


def test_integer_parameter_bounds_and_default() -> None:
    assert integer_parameter(QueryParams(""), "limit", 100, 1, 200) == 100
    assert integer_parameter(QueryParams("limit=200"), "limit", 100, 1, 200) == 200
    for query in ("limit=0", "limit=201", "limit=abc", "limit=1&limit=2"):
        with pytest.raises(BadRequest):
            integer_parameter(QueryParams(query), "limit", 100, 1, 200)


def test_single_refuses_a_repeated_parameter() -> None:
    assert single(QueryParams("a=1"), "a") == "1"
    assert single(QueryParams(""), "a") is None
    with pytest.raises(BadRequest):
        single(QueryParams("a=1&a=1"), "a")


def test_the_patient_id_spellings_must_agree() -> None:
    assert optional_patient_id(QueryParams("patientID=P1&PatientId=P1"), "PatientId") == "P1"
    assert optional_patient_id(QueryParams(""), "PatientId") is None
    with pytest.raises(BadRequest):
        optional_patient_id(QueryParams("patientID=P1&PatientId=P2"), "PatientId")
    with pytest.raises(BadRequest):
        optional_patient_id(QueryParams("PatientId=P*"), "PatientId")


def test_an_instant_is_iso_8601_in_utc_unless_it_names_an_offset() -> None:
    assert instant_parameter(QueryParams(""), "since") is None
    assert instant_parameter(QueryParams("since=2026-11-22T10:00:00Z"), "since") == 1795341600.0
    assert instant_parameter(QueryParams("since=2026-11-22T10:00:00"), "since") == 1795341600.0
    assert instant_parameter(QueryParams("since=2026-11-22T11:00:00%2B01:00"), "since") == 1795341600.0
    assert instant_parameter(QueryParams("since=2026-11-22"), "since") == 1795305600.0
    for query in ("since=yesterday", "since=1&since=2"):
        with pytest.raises(BadRequest) as raised:
            instant_parameter(QueryParams(query), "since")
        assert raised.value.details == {"parameter": "since"}
