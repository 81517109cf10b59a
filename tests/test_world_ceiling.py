"""The task ceiling of a world split: what captions state, and the expected R@1 of a perfect reader."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dualprompt.world.captions import DOWNSTREAM_TEMPLATES, downstream_description
from dualprompt.world.ceiling import ceiling, mentioned, split_ceiling
from dualprompt.world.corpus import WorldConfig, build_world
from dualprompt.world.spec import ObjectSpec

ALL = {"shape": 1.0, "color": 1.0, "shade": 1.0, "pattern": 1.0, "size": 1.0, "position": 1.0,
       "background": 1.0}


@pytest.mark.parametrize("wording", range(len(DOWNSTREAM_TEMPLATES)))
def test_mentioned_reads_every_instance_attribute_of_every_template(wording):
    rng = np.random.default_rng(wording)
    for shade, size, position, background in [("light", "small", "left", "night"),
                                              ("dark", "large", "center", "stone"),
                                              ("dark", "small", "bottom", "sky")]:
        obj = ObjectSpec("star", "red", shade, "striped", size, position, background)
        openings = set()
        for _ in range(6):
            said = downstream_description(obj, "creature", wording, rng, ALL)
            assert mentioned(said) == {"shade": shade, "size": size, "position": position,
                                       "background": background}, said
            silent = downstream_description(obj, "creature", wording, rng, {k: 0.0 for k in ALL})
            assert mentioned(silent) == {}, silent
            openings |= {said.split()[0], silent.split()[0]}
        assert len(openings) == 2  # the family's two templates open differently: both were read


def _write(tmp_path, shown: dict, captions: dict) -> None:
    records = {k: {"file_name": f"{k}.png", "class_name": shown[k]["class_name"],
                   "positive": f"This is a photo of {shown[k]['class_name']}.{captions[k]}",
                   "negative": []} for k in captions}
    (tmp_path / "test.json").write_text(json.dumps(records))
    (tmp_path / "attributes.json").write_text(json.dumps(shown))


def _shown(class_name, shade, size="large", background="sky", position="center"):
    return {"class_name": class_name, "shade": shade, "size": size, "background": background,
            "position": position}


def test_ceiling_counts_images_a_caption_cannot_tell_apart(tmp_path):
    shown = {"a": _shown("Varlin", "light"), "b": _shown("Varlin", "light", position="left"),
             "c": _shown("Skipi", "light")}
    same = "The light red creature looks large."
    _write(tmp_path, shown, {"a": same, "b": same, "c": same})
    # a and b differ only by position, which no caption states: each of their captions (and
    # images) has two equally good matches; c's class name sets it apart
    assert split_ceiling(tmp_path, "test") == pytest.approx({"i2t_R@1": 200 / 3, "t2i_R@1": 200 / 3})

    # a caption stating b's position separates the pair in both directions
    _write(tmp_path, shown, {"a": same, "b": "The light red creature looks large toward the left.",
                             "c": same})
    assert split_ceiling(tmp_path, "test") == pytest.approx({"i2t_R@1": 100 * (1 + 1 / 2 + 1) / 3,
                                                           "t2i_R@1": 100 * (1 / 2 + 1 + 1) / 3})
    # i2t: image a matches caption a only (caption b says left); image b matches both a and b
    # t2i: caption a matches images a and b; caption b only image b


def test_ceiling_names_the_file_of_a_caption_without_its_class(tmp_path):
    _write(tmp_path, {"a": _shown("Varlin", "dark")}, {"a": "The dark red creature."})
    records = json.loads((tmp_path / "test.json").read_text())
    records["a"]["positive"] = "A dark red creature."
    (tmp_path / "test.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"test\.json \[a\]"):
        split_ceiling(tmp_path, "test")


def test_ceiling_of_a_built_world_is_a_recall_and_averages_domains(tmp_path):
    config = WorldConfig(domains=("critters", "craft"), train_per_domain=4, val_per_domain=4,
                         test_per_domain=24)
    build_world(tmp_path, config)
    per_domain = [split_ceiling(tmp_path / d, "test") for d in config.domains]
    for c in per_domain:
        assert 100 / 24 <= c["t2i_R@1"] <= 100 and 100 / 24 <= c["i2t_R@1"] <= 100
    both = ceiling(tmp_path, list(config.domains))
    assert both["i2t_R@1"] == pytest.approx((per_domain[0]["i2t_R@1"] + per_domain[1]["i2t_R@1"]) / 2)
    # the same images with captions that state every attribute: each caption matches a subset
    # of what it matched before, so the ceiling can only rise
    build_world(tmp_path / "all", replace(config, mention_probs=ALL))
    assert ceiling(tmp_path / "all", ["critters"])["t2i_R@1"] >= per_domain[0]["t2i_R@1"]
