import pytest

from safe.config import ConfigError, build_config, load_config


def test_profiles_and_overrides():
    tiny = build_config({"profile": "tiny"})
    demo = build_config({"profile": "demo", "stage_a": {"steps": 7}})
    assert tiny.data.size < demo.data.size
    assert demo.stage_a.steps == 7
    assert demo.model.audio_encoder == "whisper-tiny.en"


def test_unknown_keys_raise_with_their_name():
    with pytest.raises(ConfigError, match="stage_a.lr_typo"):
        build_config({"stage_a": {"lr_typo": 1}})
    with pytest.raises(ConfigError, match="'stage_z'"):
        build_config({"stage_z": {}})
    with pytest.raises(ConfigError, match="profile"):
        build_config({"profile": "huge"})


def test_value_checks():
    with pytest.raises(ConfigError, match="token_budgets must start with 0"):
        build_config({"model": {"token_budgets": [4, 8]}})
    with pytest.raises(ConfigError, match="audio_ratio"):
        build_config({"stage_a": {"audio_ratio": 1.5}})


def test_repository_params_yaml_loads():
    cfg = load_config("params.yaml")
    assert cfg.profile == "demo"
    assert cfg.promote.max_retention_drop == 0.005 and cfg.promote.skip_rate_min == 0.40


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_word_copies_are_on_for_word_level_profiles_only():
    rates = {p: build_config({"profile": p}).stage_b.unknown_word_rate for p in ("tiny", "demo", "smol", "llava")}
    assert rates == {"tiny": 0.15, "demo": 0.15, "smol": 0.0, "llava": 0.0}
    with pytest.raises(ConfigError, match="unknown_word_rate"):
        build_config({"profile": "demo", "stage_b": {"unknown_word_rate": 1.0}})


def test_data_check_settings_and_sampling_weights():
    from safe.config import ConfigError, build_config

    data = build_config({"profile": "tiny", "data": {"sample_rates": [16000, 44100], "max_clip_seconds": 30,
                                                     "families": {"mydata": ["vl"]}, "source_weights": {"gqa": 2}}}).data
    assert data.sample_rates == (16000, 44100) and data.families == {"mydata": ("vl",)}
    assert data.source_weights == {"gqa": 2.0} and data.family_weights == {}
    assert build_config({"profile": "tiny"}).data.sample_rates is None  # default: any rate the loader resamples
    for bad, where in (({"sample_rates": [44.1]}, "data.sample_rates"), ({"families": {"x": "vl"}}, "data.families"),
                       ({"source_weights": {"gqa": -1}}, "data.source_weights"),
                       ({"min_answer_coverage": 2}, "data.min_answer_coverage"),
                       ({"max_clip_seconds": 0.01}, "data.max_clip_seconds")):
        with pytest.raises(ConfigError, match=where):
            build_config({"profile": "tiny", "data": bad})
