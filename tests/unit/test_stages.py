"""Stage models: the shipped TOML files load, rules match, bad models are refused."""

from __future__ import annotations

import copy
import tomllib
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from stream.contract import Touchpoint
from stream.journey.stages import DAY_MS, StageModel, load_model, parse_model
from tests.builders import touchpoint

STAGES_DIR = Path(__file__).resolve().parents[2] / "stream" / "defaults" / "stages"

#: A touchpoint of type ``type_`` with ``props``.
tp = partial(touchpoint, "e", anon="a")


@pytest.fixture(scope="module")
def five() -> StageModel:
    return load_model("five-stage", STAGES_DIR)


@pytest.fixture(scope="module")
def stdc() -> StageModel:
    return load_model("see-think-do-care", STAGES_DIR)


def test_five_stage_model_loads(five: StageModel) -> None:
    assert five.name == "five-stage"
    assert five.stages == ("awareness", "consideration", "decision", "purchase", "loyalty")
    assert five.initial == "awareness"
    assert five.purchase_stage == "purchase"
    assert five.loyalty_stage == "loyalty"
    assert five.repeat_purchase_within_ms == 90 * DAY_MS
    assert five.engagement_types == {"email_click", "store_visit"}
    assert five.engagement_within_ms == 30 * DAY_MS
    assert five.lapse_stage == "lapsed"
    assert five.lapse_after_ms == 90 * DAY_MS
    assert five.lapse_from == {"purchase", "loyalty"}
    assert not five.allow_regression
    assert five.new_cycle_after_purchase
    assert five.all_stages == (*five.stages, "lapsed")
    assert five.purchase_types == {"purchase", "pos_purchase"}


def test_see_think_do_care_model_loads(stdc: StageModel) -> None:
    assert stdc.name == "see-think-do-care"
    assert stdc.stages == ("see", "think", "do", "care")
    assert stdc.purchase_stage == "care"
    assert stdc.loyalty_stage is None
    assert not stdc.new_cycle_after_purchase
    assert stdc.lapse_stage == "lapsed"
    assert stdc.lapse_after_ms == 180 * DAY_MS
    assert stdc.lapse_from == {"care"}
    assert stdc.all_stages == ("see", "think", "do", "care", "lapsed")


def test_load_model_by_explicit_path(five: StageModel) -> None:
    assert load_model(str(STAGES_DIR / "five-stage.toml"), STAGES_DIR) == five


def test_rank_puts_lapse_below_the_funnel(five: StageModel) -> None:
    assert [five.rank(s) for s in five.all_stages] == [0, 1, 2, 3, 4, -1]


@pytest.mark.parametrize(
    ("event", "stage"),
    [
        (tp("page_view", page_type="pricing"), "decision"),
        (tp("page_view", page_type="checkout"), "decision"),
        (tp("page_view", page_type="blog"), "awareness"),
        (tp("page_view"), "awareness"),
        (tp("page_view", page_type=["pricing"]), "awareness"),  # unhashable: no match, no crash
        (tp("product_view", sku="s"), "consideration"),
        (tp("search", query="mug"), "consideration"),
        (tp("add_to_cart", sku="s"), "decision"),
        (tp("checkout_started"), "decision"),
        (tp("purchase"), "purchase"),
        (tp("pos_purchase"), "purchase"),
        (tp("unsubscribe"), None),
        (tp("return"), None),
        (tp("webinar_attended"), None),
    ],
)
def test_five_stage_rules(five: StageModel, event: Touchpoint, stage: str | None) -> None:
    assert five.stage_for(event) == stage


@pytest.mark.parametrize(
    ("event", "stage"),
    [
        (tp("page_view", page_type="demo"), "do"),
        (tp("page_view", page_type="home"), "see"),
        (tp("email_open"), "see"),
        (tp("product_view"), "think"),
        (tp("add_to_cart"), "do"),
        (tp("purchase"), "care"),
        (tp("support_contact"), "care"),
    ],
)
def test_see_think_do_care_rules(stdc: StageModel, event: Touchpoint, stage: str) -> None:
    assert stdc.stage_for(event) == stage


def test_first_matching_rule_wins() -> None:
    model = parse_model(
        {
            "stages": ["a", "b"],
            "purchase_stage": "b",
            "rules": [
                {"stage": "b", "types": ["x"], "properties": {"k": "v", "n": [1, 2]}},
                {"stage": "a", "types": ["x"]},
            ],
        }
    )
    assert model.stage_for(tp("x", k="v", n=2)) == "b"
    assert model.stage_for(tp("x", k="v", n=3)) == "a"  # every property must match
    assert model.stage_for(tp("x", n=1)) == "a"
    assert model.name == "<model>"
    assert model.initial == "a"


def minimal() -> dict[str, Any]:
    with (STAGES_DIR / "five-stage.toml").open("rb") as fh:
        return tomllib.load(fh)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d["rules"].append({"stage": "delight", "types": ["x"]}), "undefined stage"),
        (lambda d: d["rules"].append({"stage": "decision", "types": []}), "has no types"),
        (lambda d: d["lapse"].update(stage="purchase"), "lapse stage must not be a funnel stage"),
        (lambda d: d.update(stages=["awareness", "awareness", "purchase"]), "distinct"),
        (lambda d: d.update(stages=["awareness"]), "at least two"),
        (lambda d: d.update(initial="nowhere"), "initial"),
        (lambda d: d.update(purchase_stage="nowhere"), "purchase_stage"),
        (lambda d: d.pop("purchase_stage"), "purchase_stage"),
        (lambda d: d["loyalty"].update(stage="vip"), "loyalty stage"),
        (lambda d: d["lapse"].update({"from": ["purchase", "gone"]}), "lapse.from"),
    ],
)
def test_parse_model_rejects_broken_models(change: Any, words: str) -> None:
    data = copy.deepcopy(minimal())
    change(data)
    with pytest.raises(ValueError, match=words) as info:
        parse_model(data, "broken.toml")
    assert "broken.toml" in str(info.value)


def test_unmodified_shipped_model_parses_the_same(five: StageModel) -> None:
    assert parse_model(minimal(), "x") == five
