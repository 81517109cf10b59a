import pytest

from dualprompt import PromptConfig, SubcategoryQuery


@pytest.mark.parametrize("kwargs, field", [
    ({"attribute_length": -1}, "attribute_length"),
    ({"subcategory_length": -2}, "subcategory_length"),
    ({"visual_length": -1}, "visual_length"),
    ({"text_depth": 0}, "text_depth"),
    ({"visual_depth": 0}, "visual_depth"),
    ({"subcategory_pool_size": 0}, "subcategory_pool_size"),
    ({"subcategory_temperature": 0.0}, "subcategory_temperature"),
    ({"subcategory_query_depth_fraction": 0.0}, "subcategory_query_depth_fraction"),
    ({"subcategory_query_depth_fraction": 1.5}, "subcategory_query_depth_fraction"),
    ({"init_std": -0.1}, "init_std"),
    ({"attribute_init": "  "}, "attribute_init"),
    ({"coupled": True, "visual_length": 0}, "coupled"),
    ({"coupled": True, "visual_length": 3, "attribute_length": 4}, "visual_length"),
    ({"coupled": True, "visual_depth": 3, "text_depth": 2, "visual_length": 4}, "visual_depth"),
])
def test_invalid_fields_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"PromptConfig\.{field}\b"):
        PromptConfig(**kwargs)


def test_subcategory_query_accepts_strings_and_rejects_unknown():
    assert PromptConfig(subcategory_query="tokens").subcategory_query is SubcategoryQuery.TOKENS
    with pytest.raises(ValueError):
        PromptConfig(subcategory_query="labels")


@pytest.mark.parametrize("kwargs, field, layers", [
    ({"text_depth": 4}, "text_depth", (3, 12)),
    ({"visual_depth": 13}, "visual_depth", (12, 12)),
])
def test_depth_larger_than_tower(kwargs, field, layers):
    with pytest.raises(ValueError, match=rf"PromptConfig\.{field} is \d+ but the \w+ tower has"):
        PromptConfig(**kwargs).check_model(*layers, context_length=77)


def test_prompt_lengths_must_leave_room_for_a_caption():
    PromptConfig(attribute_length=70, subcategory_length=4, attribute_init=None).check_model(
        12, 12, 77)  # 74 prompts + SOS + 1 token + EOT = 77: fits
    with pytest.raises(ValueError, match="leave no room for a caption"):
        PromptConfig(attribute_length=71, subcategory_length=4).check_model(12, 12, 77)


def test_switched_off_groups_skip_their_depth_checks():
    PromptConfig(attribute_length=0, subcategory_length=0, text_depth=50).check_model(3, 3, 77)


def test_round_trip_dict_and_unknown_keys():
    cfg = PromptConfig(attribute_length=2, subcategory_query="tokens", coupled=False)
    assert PromptConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        PromptConfig.from_dict({"n_ctx": 4})


@pytest.mark.parametrize("fraction, layers, depth", [(0.75, 12, 9), (0.75, 3, 3), (0.75, 24, 18),
                                                     (1.0, 12, 12), (0.1, 3, 1)])
def test_a_depth_fraction_fits_any_tower(fraction, layers, depth):
    config = PromptConfig(text_depth_fraction=fraction, visual_depth_fraction=fraction)
    resolved = config.for_model(layers, layers)
    assert (resolved.text_depth, resolved.visual_depth) == (depth, depth)
    assert resolved.text_depth_fraction is None and config.text_depth == 1  # a copy


def test_a_depth_fraction_out_of_range_names_the_field():
    with pytest.raises(ValueError, match="visual_depth_fraction must be null or in"):
        PromptConfig(visual_depth_fraction=1.5)


def test_a_depth_and_a_fraction_together_are_refused():
    with pytest.raises(ValueError, match="text_depth_fraction is 0.75 and text_depth is 9"):
        PromptConfig(text_depth=9, text_depth_fraction=0.75)


def test_coupled_depth_fractions_fit_towers_of_different_depths():
    config = PromptConfig(attribute_length=2, visual_length=2, subcategory_length=0,
                          coupled=True, text_depth_fraction=0.75, visual_depth_fraction=0.75)
    resolved = config.for_model(12, 24)  # ViT-L/14: 12 text layers, 24 image layers
    assert (resolved.text_depth, resolved.visual_depth) == (9, 9)
