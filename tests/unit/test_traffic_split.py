"""Traffic splits as pure values: parsing (each error names its field) and picking."""

from __future__ import annotations

import pytest

from inferd.core.errors import InvalidField
from inferd.core.traffic import Revision, Split, parse_traffic, primary


def test_both_forms_parse_to_the_same_revisions() -> None:
    long = parse_traffic([{"version": 1, "weight": 90}, {"version": 2, "weight": 10}])
    short = parse_traffic({"1": 90, "2": 10})
    assert long == short == (Revision(1, 90), Revision(2, 10))
    assert primary(long) == 1 and primary((Revision(3, 50), Revision(2, 50))) == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"1": 90}, "traffic: weights must sum to 100 (they sum to 90)"),
        ({"0": 100}, "traffic[0].version: must be a version number"),
        ({"x": 100}, "traffic[0].version: must be a version number"),
        ([{"version": True, "weight": 100}], "traffic[0].version: must be a version number"),
        ([{"version": 1, "weight": 100.0}], "traffic[0].weight: must be an integer"),
        ([{"version": 1, "weight": -1}, {"version": 2, "weight": 101}], "traffic[0].weight"),
        ([{"version": 2, "weight": 50}, {"version": 2, "weight": 50}], "traffic[1].version"),
        ([{"version": 1}], "traffic[0].weight"),
        ([1], "traffic[0]: must be an object"),
        ([], "traffic: needs at least one revision"),
        ({str(v): 5 for v in range(1, 21)}, "traffic: at most 16 revisions"),
        ("1=100", "traffic: must be a list"),
    ],
)
def test_bad_splits_name_the_field(raw: object, message: str) -> None:
    with pytest.raises(InvalidField) as e:
        parse_traffic(raw)
    assert e.value.message.startswith(message), e.value.message


def test_pick_follows_the_weights_and_skips_weight_zero() -> None:
    split = Split.of({"1": 90, "2": 10, "3": 0})
    assert split.versions == ("1", "2") and split.primary == "1"
    draws = [i / 1000 for i in range(1000)]  # an even spread over [0, 1)
    picked = [split.pick(u) for u in draws]
    assert picked.count("1") == 900 and picked.count("2") == 100
    assert split.pick(0.0) == "1" and split.pick(0.999999) == "2"
    assert split.weights() == {"1": 90.0, "2": 10.0}
    # on a tie the lower version is the primary, whatever the order given
    assert (
        Split.of({"10": 50, "9": 50}).primary
        == "9"
        == str(primary(parse_traffic({"10": 50, "9": 50})))
    )


def test_a_split_needs_a_revision_that_takes_traffic() -> None:
    with pytest.raises(ValueError, match="weight above 0"):
        Split.of({"1": 0})
