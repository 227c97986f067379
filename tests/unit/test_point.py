"""A trial's identity (issue 22): the typed Point, its one codec to and from the stored form, and the method group's
full and head options, which train the same points as the older lora.full_finetune / lora.head_only."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from rank_sweep.config import CONF_DIR, FULL, HEAD, Point, build_config, run_point, trial_config
from rank_sweep.config.point import decode, encode, from_claim, to_claim


@pytest.mark.parametrize("point", [
    Point("Wq,Wv", 4, 1), Point("Wq", 1, 0, lr=3e-3), Point("Wq", 64, 2, kind="screen"), Point("Wq", 8, 0, kind="screened"),
    Point.full(0), Point.full(1, lr=5e-5), Point.head(0), Point.reference("ia3", 0, 0, lr=1e-2),
    Point.reference("prompt_tuning", 20, 3), Point("Wq", 4, 0, lr=1.2e-3, extra=(("alpha_k", 2.5),))])
def test_the_codec_round_trips_every_kind_of_point(point):
    stored = encode(point)
    assert decode(stored["targets"], stored["r"], stored["seed"], stored["values"]) == point
    assert from_claim(to_claim(point, speculative=False)) == point


def test_the_stored_form_is_what_earlier_versions_wrote():
    assert encode(Point.full(0))["targets"] == FULL and encode(Point.head(0))["targets"] == HEAD
    assert encode(Point("Wq", 1, 0, lr=3e-3))["values"] == (("lr", 3e-3),)
    assert from_claim({"targets": "Wq", "r": 8, "seed": 0, "screen": True, "speculative": False}).kind == "screen"
    assert decode("ia3", 0, 0).method == "ia3" and decode("Wq,Wv", 2, 0).method == "lora"


def test_labels_and_the_learning_rate_as_identity():
    assert Point("Wq,Wv", 4, 0).label == "Wq,Wv r=4" and Point.full(0).label == "full"
    assert Point("Wq", 1, 0, lr=0.003).label == "Wq r=1 lr=0.003" and Point.head(0).label == "head only"
    assert Point("Wq", 1, 0, lr=1e-3 * 9) == Point("Wq", 1, 0, lr=9e-3)  # one lr, however it was computed
    assert Point("Wq", 1, 0).config == Point("Wq", 1, 5).config != Point("Wq", 1, 0, lr=3e-3).config


@pytest.mark.parametrize("new, old", [("method=full", "lora.full_finetune=true"), ("method=head", "lora.head_only=true")])
def test_the_method_group_trains_full_and_head_as_the_older_keys_do(new, old):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        a, b = (build_config(compose("config", overrides=[o])) for o in (new, old))
    assert run_point(a) == run_point(b) and run_point(a).method == new.split("=")[1]
    assert run_point(trial_config(a, run_point(a))) == run_point(a)


def test_the_older_spelling_is_read_as_the_method_option_with_a_note():
    from rank_sweep.commands.overrides import check_overrides

    assert check_overrides(["lora.full_finetune=true"], "config") == (
        ["method=full"], ["lora.full_finetune=true read as method=full"])
    assert check_overrides(["lora.head_only=true"], "config")[0] == ["method=head"]
    assert check_overrides(["lora.head_only=false"], "config") == (["lora.head_only=false"], [])
    # beside another method it stays as written, so the trial refuses the pair in one line
    assert check_overrides(["method=ia3", "lora.full_finetune=true"], "config")[0] == [
        "method=ia3", "lora.full_finetune=true"]
