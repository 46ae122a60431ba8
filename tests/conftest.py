"""Shared fixtures: a tiny LLaVA built from config (CPU, seconds) and telemetry off for every test."""

from __future__ import annotations

import os

import pytest
from PIL import Image

for _key, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                     "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "1",
                     "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(_key, _value)

TINY_TEXTS = [
    "what color is the circle ?", "how many shapes are there ?", "how many beeps do you hear ?",
    "red blue green yellow one two three four yes no dog cat",
]


@pytest.fixture(scope="session")
def tiny_base():
    """A frozen BaseVLModel around a 2-layer LLaVA (hidden 32) with a word-level tokenizer."""
    from safe.config import build_config
    from safe.models.base_vl import BaseVLModel, build_llava, build_processor, build_word_tokenizer

    cfg = build_config({"profile": "tiny", "model": {
        "vision_hidden": 32, "text_hidden": 32, "text_intermediate": 64, "text_heads": 4, "fusion_heads": 4}}).model
    tokenizer = build_word_tokenizer(TINY_TEXTS)
    return BaseVLModel(build_llava(cfg, tokenizer, 32), build_processor(tokenizer, 32, 8))


@pytest.fixture()
def tiny_batch(tiny_base):
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), None, Image.new("RGB", (32, 32), (0, 0, 255))]
    questions = ["what color is the circle?", "how many beeps do you hear?", "how many shapes are there?"]
    return tiny_base.encode(questions, images, answers=["red", "two", "one"])
