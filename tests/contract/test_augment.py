"""One image augmentation vocabulary: presets, keys and validation shared by every image backbone."""

from __future__ import annotations

import pytest

from tlkit.plugin import AUGMENT_KEYS, AUGMENT_PRESETS, AUTO_AUGMENT_POLICIES, ConfigError, parse_augment


def test_presets_and_none() -> None:
    assert parse_augment(None) == parse_augment("default") == AUGMENT_PRESETS["default"]
    assert parse_augment("none") is None
    assert parse_augment("light")["scale"] == (0.7, 1.0)
    for policy in AUTO_AUGMENT_POLICIES:
        assert parse_augment(policy)["auto_augment"] == policy
    options = parse_augment("default")
    options["hflip"] = 0.0  # a copy: the preset itself is unchanged
    assert AUGMENT_PRESETS["default"]["hflip"] == 0.5


def test_a_dict_applies_over_the_default() -> None:
    assert parse_augment({"re_prob": 0.25}) == {**AUGMENT_PRESETS["default"], "re_prob": 0.25}
    assert set(AUGMENT_KEYS) >= set(AUGMENT_PRESETS["randaugment"])


def test_errors_name_the_parameter_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown augment policy 'heavy'; use none, default, light") as info:
        parse_augment("heavy")
    assert info.value.param == "augment" and info.value.for_flag("--augment").startswith("unknown --augment policy")
    with pytest.raises(ConfigError, match=r"unknown augment option\(s\) blur; use scale"):
        parse_augment({"blur": 1})
    with pytest.raises(ConfigError, match="unknown auto_augment 'rand-m9'"):
        parse_augment({"auto_augment": "rand-m9"})


def test_a_backend_may_accept_more() -> None:
    def timm_like(text: str) -> bool:
        return text.startswith("rand-")

    assert parse_augment("rand-m9", backend_policy=timm_like)["auto_augment"] == "rand-m9"
    assert parse_augment(
        {"auto_augment": "rand-m9", "re_mode": "pixel"}, extra_keys=["re_mode"], backend_policy=timm_like
    )
    with pytest.raises(ConfigError, match="a policy string of the backbone's library"):
        parse_augment("heavy", backend_policy=timm_like)
