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
    with pytest.raises(ConfigError, match="evaluate.mixed_precision must be no, bf16 or auto"):
        build_config({"evaluate": {"mixed_precision": "fp16"}})
    assert build_config({"evaluate": {"mixed_precision": False}}).evaluate.mixed_precision == "no"  # YAML 1.1 `no`


def test_repository_params_yaml_loads():
    cfg = load_config("params.yaml")
    assert cfg.profile == "demo"
    assert cfg.promote.max_retention_drop == 0.005 and cfg.promote.skip_rate_min == 0.40


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


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


def test_question_lm_loss_is_refused_under_several_processes():
    from safe.config import ConfigError, build_config

    assert build_config({"profile": "demo"}).base_vl.question_lm_weight == 1.0
    with pytest.raises(ConfigError, match="base_vl.question_lm_weight.*accelerate.num_processes: 1"):
        build_config({"profile": "demo", "accelerate": {"num_processes": 2}})
    build_config({"profile": "demo", "accelerate": {"num_processes": 2}, "base_vl": {"question_lm_weight": 0}})


# What safe/config.py's PROFILE_DEFAULTS held when the profiles moved to profiles/*.yaml: the files must load to the
# same values. A profile changed on purpose changes here too (and gets a docs/EXPERIMENTS.md entry).
PROFILE_DEFAULTS_WHEN_MOVED = {
    "tiny": {
        "data": {"size": 400, "image_size": 32, "speech": False},
        "model": {"audio_encoder": "whisper-random:64x2"},
        "base_vl": {"epochs": 4, "batch_size": 64, "lr": 1e-3, "target_val_acc": 0.6, "vision_pretrain_epochs": 5},
        "stage_a": {"steps": 80, "eval_every": 40, "fisher_batches": 2},
        "stage_b": {"steps": 200},
        "stage_c": {"epochs": 100},
        "evaluate": {"bootstrap": 200, "latency_examples": 8},
    },
    "demo": {
        "data": {"size": 4000, "image_size": 32, "test_size": 2000},
        "model": {"audio_encoder": "whisper-tiny.en", "vision_hidden": 96, "vision_layers": 3, "text_hidden": 128,
                  "text_layers": 3, "text_intermediate": 256, "fusion_layers": [-3, -2, -1], "lora_rank": 32,
                  "fusion_gate_floor": 0.7,  # docs/EXPERIMENTS.md#gate-floor
                  "fusion_gate_reads": "words"},  # docs/EXPERIMENTS.md#grounding
        "base_vl": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "vision_pretrain_epochs": 40,
                    "question_lm_weight": 1.0,  # docs/EXPERIMENTS.md#question-lm
                    "subword_dropout": 0.1},  # docs/EXPERIMENTS.md#subword-dropout
        "stage_a": {"steps": 1600, "eval_every": 100,  # docs/EXPERIMENTS.md#gate-reads-words
                    "retention_flip_tolerance": 0.02},  # docs/EXPERIMENTS.md#stage-a-flip-tolerance
        "stage_b": {"steps": 800},
    },
    "smol": {
        "data": {"size": 4000, "image_size": 32, "test_size": 1200},  # docs/EXPERIMENTS.md#smol-gate-floor
        "model": {"language_model": "smollm2-135m-instruct", "language_model_trainable": "norms",
                  "audio_encoder": "whisper-tiny.en", "vision_hidden": 96, "vision_layers": 3, "vision_heads": 4,
                  "patch_size": 16, "fusion_layers": [-3, -2, -1], "lora_rank": 32,  # docs/EXPERIMENTS.md#smol-patch16
                  "fusion_gate_floor": 0.7},  # docs/EXPERIMENTS.md#smol-gate-floor
        "base_vl": {"epochs": 5, "batch_size": 16, "lr": 3e-3, "derived_questions": False,
                    "vision_pretrain_epochs": 40},  # docs/EXPERIMENTS.md#smol-five-epochs
        "stage_a": {"steps": 160, "retention_flip_tolerance": 0.02, "batch_size": 16, "eval_every": 40,
                    "fisher_batches": 2},
        "stage_b": {"steps": 800},
        "evaluate": {"bootstrap": 500, "latency_examples": 16, "mixed_precision": "auto"},
    },
    "llava": {
        "data": {"source": "manifest", "manifest": "data/ingested/manifest.jsonl", "image_size": 336},
        "model": {"base_vl": "llava-hf/llava-1.5-7b-hf", "audio_encoder": "clap:laion/clap-htsat-unfused",
                  "fusion_layers": [-8, -4, -1], "fusion_heads": 32, "lora_rank": 16, "dtype": "bfloat16",
                  "projector_hidden": 2048, "activation_checkpointing": True},
        "stage_a": {"batch_size": 8},
    },
}


@pytest.mark.parametrize("profile", ["tiny", "demo", "smol", "llava"])
def test_profile_files_hold_what_profile_defaults_held(profile):
    from safe.config import SECTIONS, profile_defaults

    loaded = profile_defaults(profile)
    # every section but accelerate is present (dvc.yaml reads each stage's sections; DVC fails on a missing one)
    assert set(loaded) == set(SECTIONS) - {"accelerate"}
    assert {k: v for k, v in loaded.items() if v} == PROFILE_DEFAULTS_WHEN_MOVED[profile]
    # and the built config has exactly those values where the profile sets them
    cfg = build_config({"profile": profile})
    for section, values in PROFILE_DEFAULTS_WHEN_MOVED[profile].items():
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{profile}: {section}.{key}"


def test_params_yaml_overrides_match_the_dataclass_defaults_where_every_profile_runs_them():
    """A dataclass default is what runs: params.yaml does not silently override it with another value for every
    profile (Stage A's learning rates, KL weight and retention tolerance used to be the rejected values)."""
    from ruamel.yaml import YAML

    from safe.config import SECTIONS

    params = YAML(typ="safe", pure=True).load(open("params.yaml"))
    for section, values in params.items():
        if section == "profile":
            continue
        default = SECTIONS[section]()
        for key, value in values.items():
            got = getattr(default, key)
            got = list(got) if isinstance(got, tuple) else got
            if value is False and key == "mixed_precision":
                value = "no"
            assert got == value, f"params.yaml {section}.{key}: {value!r} but the dataclass default is {got!r}"


def test_thresholds_live_once():
    """PromoteConfig holds the spec's thresholds; params.yaml and criteria.Thresholds agree with it."""
    import dataclasses

    from safe.config import PromoteConfig
    from safe.eval.criteria import Thresholds

    promote = PromoteConfig()
    assert dataclasses.asdict(load_config("params.yaml").promote) == dataclasses.asdict(promote)
    assert Thresholds() == Thresholds.from_config(promote)


def test_a_project_profiles_folder_takes_precedence(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text("stage_b:\n  steps: 7\n")
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.stage_b.steps == 7 and cfg.data.size == 600  # the dataclass default: this tiny.yaml sets no size
    (tmp_path / "profiles" / "tiny.yaml").write_text("stage_b:\n  stepz: 7\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "profiles" / "tiny.yaml").write_text("accelerate:\n  num_processes: 2\n")
    with pytest.raises(ConfigError, match="unknown section 'accelerate'"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("profile: demo\n")
    with pytest.raises(ConfigError, match="profile file not found"):
        load_config(tmp_path / "params.yaml")
