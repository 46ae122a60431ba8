"""Deterministic synthetic audio-visual QA benchmark.

Every example has a rendered image (1-4 coloured shapes) and, depending on its family, an audio clip:

| family          | audio                           | question about          | needs_audio |
| --------------- | ------------------------------- | ----------------------- | ----------- |
| vl              | none                            | the image               | False       |
| vl_distractor   | an unrelated clip               | the image               | False       |
| audio           | animal / beeps / tone / sweep / speech | the audio        | True        |
| audio_visual    | beeps or animal                 | both                    | True        |
| audio_order     | two different sounds, in turn   | which sound came first  | True        |
| audio_sequence  | 12 sounds back to back, 2.4 s   | the first or second one | True        |
| silent_control  | near-silence                    | the audio (answer none) | True        |

`audio_order` needs time: its clip holds two short events (a beep, a hum, a whistle or an animal) one after the
other, and its answer is the name of the earlier one, so a pooled summary of the clip cannot tell it.
`audio_sequence` needs temporal detail: the first three of its 12 sounds differ and share the clip's first quarter,
so the coarse tokens (budget 4) cannot tell the first from the second; budget 8 adds the first twelfth, budget 12
the second. Its rows carry `audio_span`, where the asked sound plays (Stage A's grounding loss).

Audio-family examples carry an image too (a random scene the answer does not depend on), so the frozen
LLaVA-style base model always sees an image, as it would in deployment.

Determinism: each example draws from its own `numpy.random.default_rng([seed, index])`, split family
assignment from `default_rng([seed, split_code])`; nothing depends on wall-clock time, set order or
process scheduling. Media are written as 16-bit PCM WAV and metadata-free PNG, animal mp3s are decoded with
libsndfile/mpg123 (deterministic) and espeak-ng output is cached per (word, voice) variant, so the same seed
gives byte-identical files on the same machine.

Paraphrases: every question template has several training phrasings and two disjoint held-out pools
(`Phrasings`): one only validation questions use, one only test questions use (HELDOUT_SHARE of each split's
questions; `extras.paraphrase_heldout` says which). So every selection made on validation (early stopping, the
Stage B checkpoint, defaults) already sees questions phrased as training never phrased them (most held-out phrasings
have a word no training question has), without looking at test. Training has four to seven phrasings per template,
so a model trained from scratch learns the content words (shape, colour, beeps, hear), not one sentence per template
(docs/EXPERIMENTS.md#training-phrasings).
"""

from __future__ import annotations

import functools
import io
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageDraw
from tqdm import tqdm

from safe.data.manifest import SPLITS, ManifestRecord, write_manifest
from safe.data.media import write_png, write_wav
from safe.data.sounds import animal_recordings

SR = 16000
FAMILY_MIX = {"vl": 0.30, "vl_distractor": 0.25, "audio": 0.13, "audio_order": 0.08, "audio_visual": 0.07,
              "audio_sequence": 0.10, "silent_control": 0.07}
"""Share of each family in every split (sums to 1). `audio_order` and `audio_sequence` took their shares from the
other audio-dependent families, so the audio-dependent share is what it was before they existed."""
FAMILIES = tuple(FAMILY_MIX)
AUDIO_FAMILIES = ("audio", "audio_order", "audio_visual", "audio_sequence", "silent_control")
"""The families whose questions need the audio (`needs_audio`)."""
SPLIT_SHARES = {"train": 0.70, "val": 0.15, "test": 0.15}
HELDOUT_SHARE = 0.5
"""Share of validation questions phrased with a validation-only paraphrase, and of test questions with a test-only
one (`Phrasings`)."""

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230), "yellow": (240, 210, 30)}
BACKGROUNDS = ((255, 255, 255), (205, 205, 205), (128, 128, 128), (45, 45, 45))
NUMBER_WORDS = ("one", "two", "three", "four")
SPEECH_WORDS = ("apple", "river", "window", "garden", "rocket", "pencil", "doctor", "summer")
SPEECH_VOICES = (("en-us", 140, 40), ("en-us", 175, 65), ("en-gb", 150, 55), ("en-gb", 185, 35))
"""espeak-ng (voice, words per minute, pitch 0-99) variants; each word is synthesised once per variant."""
SILENT_ANSWER = "none"


class Phrasings(NamedTuple):
    """The phrasings of one question template, in three disjoint pools."""

    train: tuple[str, ...]
    """Every training question, and the rest of the validation and test questions."""
    val: tuple[str, ...]
    """Held out from training and test: only validation questions use them (HELDOUT_SHARE of them). Two per template,
    of different sentence shapes, so selections on validation meet more new phrasings than one
    (docs/EXPERIMENTS.md#retired-test-phrasings)."""
    test: tuple[str, ...]
    """Held out from training and validation: only test questions use them (HELDOUT_SHARE of them)."""


# Slots: {shape} {color} {a_animal} ("an owl").
TEMPLATES: dict[str, Phrasings] = {
    "count_shapes": Phrasings(
        ("how many shapes are there?", "how many shapes do you see?", "count the shapes in the picture.",
         "how many objects are there?", "tell me how many shapes are drawn.", "how many shapes are in this picture?",
         "count how many objects you see."),
        ("how many shapes does the image show?", "what is the number of shapes in the image?"),
        ("give the count of shapes in the picture.",),
    ),
    "color_of_shape": Phrasings(
        ("what color is the {shape}?", "which color does the {shape} have?", "what colour is the {shape}?",
         "tell me the color of the {shape}.", "which color is the {shape} drawn in?", "the {shape} is which color?"),
        ("what is the color of the {shape}?", "the {shape} is painted in which color?"),
        ("in what color is the {shape} drawn?",),
    ),
    "shape_of_color": Phrasings(
        ("what shape is {color}?", "which shape is {color}?", "what shape is the {color} one?",
         "tell me the shape of the {color} object.", "which shape has the color {color}?",
         "the {color} thing is which shape?"),
        ("what is the shape of the {color} object?", "the {color} object has which shape?"),
        ("which shape is drawn in {color}?",),
    ),
    "exists_color_shape": Phrasings(
        ("is there a {color} {shape}?", "do you see a {color} {shape}?", "is a {color} {shape} shown?",
         "does the image have a {color} {shape}?", "can you see a {color} {shape}?",
         "is there any {color} {shape} in the picture?"),
        ("can you find a {color} {shape} in the image?", "does the picture contain a {color} {shape}?"),
        ("is any {color} {shape} visible?",),
    ),
    "animal": Phrasings(
        ("what animal do you hear?", "which animal is making this sound?", "name the animal you hear.",
         "what animal makes this sound?", "which animal can you hear in the audio?",
         "the sound comes from which animal?"),
        ("what kind of animal makes the noise in this clip?", "what creature can be heard in the recording?"),
        ("the clip features which animal?",),
    ),
    "count_beeps": Phrasings(
        ("how many beeps do you hear?", "how many beeps are there?", "count the beeps.",
         "how many times does it beep?", "tell me how many beeps you hear.", "how many beeps does the sound have?"),
        ("what is the number of beeps in the clip?", "count the beeps in the audio."),
        ("how many beeps can be heard in the recording?",),
    ),
    "tone_pitch": Phrasings(
        ("is the tone high or low?", "is the pitch of the tone high or low?", "tell me if the tone is high or low.",
         "is the sound high or low?", "is the beep high pitched or low pitched?"),
        ("is this a high tone or a low one?", "does the tone sound high or low?"),
        ("would you call the tone high or low?",),
    ),
    "sweep_direction": Phrasings(
        ("is the sound rising or falling?", "is the pitch rising or falling?", "is the sweep rising or falling?",
         "tell me whether the pitch is rising or falling.", "does the sound rise or fall?"),
        ("is the frequency of the sound rising or falling over time?", "does the sweep go rising or falling in pitch?"),
        ("over the clip, is the pitch rising or falling?",),
    ),
    "spoken_word": Phrasings(
        ("what word is spoken?", "which word do you hear?", "what word is said in the audio?",
         "tell me the spoken word.", "which word does the speaker say?", "what is the word you hear?"),
        ("which word is being said?", "what word does the voice say?"),
        ("the speaker says which word?",),
    ),
    "sound_order": Phrasings(
        ("which sound came first, the {sound_a} or the {sound_b}?",
         "which did you hear first, the {sound_a} or the {sound_b}?",
         "what comes first in the clip, the {sound_a} or the {sound_b}?",
         "tell me which came first, the {sound_a} or the {sound_b}.",
         "which sound plays first, the {sound_a} or the {sound_b}?"),
        ("which one starts earlier, the {sound_a} or the {sound_b}?",
         "which is heard before the other, the {sound_a} or the {sound_b}?"),
        ("of the {sound_a} and the {sound_b}, which one came first?",),
    ),
    "sound_position": Phrasings(
        ("what is the {position} sound?", "which sound do you hear {position}?", "name the {position} sound in the clip.",
         "what sound comes {position}?", "tell me the {position} sound you hear.", "which sound is played {position}?"),
        ("what can be heard {position} in the recording?", "the {position} sound in the audio is which one?"),
        ("identify the {position} sound of the clip.",),
    ),
    "beeps_match_shapes": Phrasings(
        ("does the number of beeps match the number of shapes?", "are there as many beeps as shapes?",
         "do the beeps and shapes come in equal numbers?", "are the beeps as many as the shapes?"),
        ("is the number of beeps the same as the number of shapes?", "is the beep count equal to the shape count?"),
        ("do the shapes and the beeps have the same count?",),
    ),
    "color_and_animal": Phrasings(
        ("is there a {color} shape and do you hear {a_animal}?", "do you see a {color} shape and hear {a_animal}?",
         "can you see a {color} shape and hear {a_animal}?", "is a {color} shape shown and is {a_animal} heard?"),
        ("does the image show a {color} shape while the clip has {a_animal} in it?",
         "is a {color} shape visible while {a_animal} can be heard?"),
        ("do you both see a {color} shape and hear {a_animal}?",),
    ),
}
VL_TEMPLATES = ("count_shapes", "color_of_shape", "shape_of_color", "exists_color_shape")
AV_TEMPLATES = ("beeps_match_shapes", "color_and_animal")
ORDER_TEMPLATE = "sound_order"
ORDER_SOUNDS = ("beep", "hum", "whistle", "dog", "cat", "cow", "duck", "rooster")
"""The events of `audio_order` clips: three synthetic sounds and five of the animal recordings."""
AUDIO_KIND_TEMPLATE = {
    "animal": "animal",
    "beeps": "count_beeps",
    "tone": "tone_pitch",
    "sweep": "sweep_direction",
    "speech": "spoken_word",
}


# ----------------------------------------------------------------------------------------------- sizes


def _largest_remainder(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to `total`, proportional to `shares` (ties broken by key order)."""
    raw = {k: total * v / sum(shares.values()) for k, v in shares.items()}
    counts = {k: math.floor(x) for k, x in raw.items()}
    order = sorted(shares, key=lambda k: (-(raw[k] - counts[k]), list(shares).index(k)))
    for k in order[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def split_sizes(total: int, val_size: int | None = None, test_size: int | None = None) -> dict[str, int]:
    """train/val/test sizes: 70/15/15 of `total`, with validation and/or test replaced by `val_size` / `test_size`.

    The training split is always 70% of `total`, and examples are numbered train first (`_family_plan`), so a
    larger validation or test split only adds examples with fresh indices: every training example stays
    byte-identical. With an override the sizes no longer sum to `total`.
    """
    if not isinstance(total, int) or total < 1:
        raise ValueError(f"total must be a positive integer, got {total!r}")
    sizes = _largest_remainder(total, SPLIT_SHARES)
    for split, size in (("val", val_size), ("test", test_size)):
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"{split}_size must be a positive integer or None, got {size!r}")
            sizes[split] = size
    return sizes


# ----------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str


def _sample_scene(rng: np.random.Generator, n: int, shapes=SHAPES, colors=tuple(COLORS)) -> list[Obj]:
    return [Obj(str(rng.choice(shapes)), str(rng.choice(colors))) for _ in range(n)]


def _render(rng: np.random.Generator, scene: list[Obj], size: int) -> Image.Image:
    """Draw the objects in distinct cells of a 2x2 grid (so they never overlap), 4x supersampled."""
    ss = 4
    side = size * ss
    cell = side / 2
    bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    cells = rng.permutation(4)[: len(scene)]
    for obj, c in zip(scene, cells):
        s = cell * rng.uniform(0.55, 0.8)  # object side
        slack = max((cell - s) / 2 - ss, 0.0)  # keep a 1-pixel margin inside the cell
        cx = (c % 2 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (c // 2 + 0.5) * cell + rng.uniform(-slack, slack)
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLORS[obj.color], jitter))
        box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------------------------- audio


def _place(rng: np.random.Generator, sound: np.ndarray, n: int) -> np.ndarray:
    """Put `sound` at a random offset in an n-sample clip (cropping a random window if it is longer)."""
    out = np.zeros(n, dtype=np.float32)
    if len(sound) >= n:
        start = int(rng.integers(0, len(sound) - n + 1))
        out[:] = sound[start : start + n]
    else:
        start = int(rng.integers(0, n - len(sound) + 1))
        out[start : start + len(sound)] = sound
    return out


def _finish(rng: np.random.Generator, wave: np.ndarray) -> np.ndarray:
    """Random gain (peak 0.3-0.9) and white noise at 15-35 dB SNR."""
    peak = float(np.abs(wave).max())
    if peak > 0:
        wave = wave * (rng.uniform(0.3, 0.9) / peak)
    rms = float(np.sqrt(np.mean(wave**2)))
    noise = rng.standard_normal(len(wave), dtype=np.float32) * (rms / 10 ** (rng.uniform(15, 35) / 20))
    return np.clip(wave + noise, -1.0, 1.0).astype(np.float32)


def _stretch(sound: np.ndarray, factor: float) -> np.ndarray:
    """Cheap pitch/speed shift by linear-interpolation resampling: factor > 1 raises pitch and shortens."""
    n_out = max(1, int(round(len(sound) / factor)))
    return np.interp(np.arange(n_out) * factor, np.arange(len(sound)), sound).astype(np.float32)


def _ramp(n: int, sr: int = SR, ms: float = 5.0) -> np.ndarray:
    """Raised-cosine fade in/out envelope so synthetic tones do not click."""
    env = np.ones(n, dtype=np.float32)
    r = min(int(sr * ms / 1000), n // 2)
    if r > 0:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, r, dtype=np.float32))
        env[:r], env[-r:] = fade, fade[::-1]
    return env


def _tone(freq: float, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / SR
    return (np.sin(2 * np.pi * freq * t) * _ramp(n)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _animal_energy(label: str) -> np.ndarray:
    """Cumulative energy of a recording, for picking loud windows quickly."""
    rec = animal_recordings(SR)[label]
    return np.concatenate([[0.0], np.cumsum(rec.astype(np.float64) ** 2)])


def _loud_window(rng: np.random.Generator, label: str, m: int, hop: int = SR // 20) -> np.ndarray:
    """A random m-sample window of the recording with at least 60% of the loudest window's energy, starts on a
    `hop` grid (the whole recording when it is not longer than m)."""
    rec = animal_recordings(SR)[label]
    if len(rec) <= m:
        return rec
    cum = _animal_energy(label)
    starts = np.arange(0, len(rec) - m + 1, hop)
    energy = cum[starts + m] - cum[starts]
    good = starts[energy >= 0.6 * energy.max()]
    start = int(good[rng.integers(len(good))])
    return rec[start : start + m]


def animal_clip(rng: np.random.Generator, label: str, n: int) -> np.ndarray:
    """A loud window of the recording, pitch-shifted by up to +-1.5 semitones, placed in an n-sample clip."""
    factor = 2 ** (rng.uniform(-1.5, 1.5) / 12)
    m = int(round(n * 0.9 * factor))  # source samples that become ~90% of the clip after the shift
    return _finish(rng, _place(rng, _stretch(_loud_window(rng, label, m), factor), n))


def beeps_clip(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
    """`count` equal beeps at one random frequency, separated by clear gaps."""
    freq = rng.uniform(600, 1400)
    beep = int(n * rng.uniform(0.07, 0.10))
    gap = int(n * rng.uniform(0.09, 0.12))
    total = count * beep + (count - 1) * gap
    wave = np.zeros(n, dtype=np.float32)
    start = int(rng.integers(0, n - total + 1))
    one = _tone(freq, beep)
    for i in range(count):
        s = start + i * (beep + gap)
        wave[s : s + beep] = one
    return _finish(rng, wave)


def tone_clip(rng: np.random.Generator, high: bool, n: int) -> np.ndarray:
    """One steady tone: high = 1.5-3 kHz, low = 150-400 Hz (a wide gap, so the label is unambiguous)."""
    freq = rng.uniform(1500, 3000) if high else rng.uniform(150, 400)
    return _finish(rng, _place(rng, _tone(freq, int(n * rng.uniform(0.4, 0.8))), n))


def sweep_clip(rng: np.random.Generator, rising: bool, n: int) -> np.ndarray:
    """Exponential chirp between ~300 Hz and ~2 kHz, upwards or downwards."""
    lo, hi = rng.uniform(200, 400), rng.uniform(1500, 3000)
    f0, f1 = (lo, hi) if rising else (hi, lo)
    m = int(n * rng.uniform(0.5, 0.9))
    dur = m / SR
    t = np.arange(m, dtype=np.float64) / SR
    k = f1 / f0
    phase = 2 * np.pi * f0 * dur / np.log(k) * (k ** (t / dur) - 1)
    return _finish(rng, _place(rng, (np.sin(phase) * _ramp(m)).astype(np.float32), n))


def event_sound(rng: np.random.Generator, name: str, m: int) -> np.ndarray:
    """One `audio_order` event of m samples at peak 1: a steady beep, a low hum, a warbling whistle or a loud
    window of an animal recording."""
    if name == "beep":
        sound = _tone(rng.uniform(800, 1400), m)
    elif name == "hum":
        sound = _tone(rng.uniform(120, 300), m)
    elif name == "whistle":
        t = np.arange(m, dtype=np.float64) / SR
        phase = 2 * np.pi * rng.uniform(2200, 3200) * t + rng.uniform(3, 8) * np.sin(2 * np.pi * rng.uniform(5, 8) * t)
        sound = (np.sin(phase) * _ramp(m)).astype(np.float32)
    else:
        rec = _loud_window(rng, name, m, hop=SR // 50)
        sound = np.zeros(m, dtype=np.float32)
        sound[: len(rec)] = rec * _ramp(len(rec))
    peak = float(np.abs(sound).max())
    return (sound / peak if peak > 0 else sound).astype(np.float32)


def order_clip(rng: np.random.Generator, first: str, second: str, n: int) -> tuple[np.ndarray, list[float]]:
    """`first`, a gap, then `second`, each 18-32% of the clip at a random level, the pair at a random offset
    -> (wave, the two onsets in seconds)."""
    m1, m2 = (int(n * rng.uniform(0.18, 0.32)) for _ in range(2))
    gap = int(n * rng.uniform(0.04, 0.15))
    start = int(rng.integers(0, n - (m1 + gap + m2) + 1))
    wave = np.zeros(n, dtype=np.float32)
    wave[start : start + m1] = event_sound(rng, first, m1) * rng.uniform(0.5, 1.0)
    onset2 = start + m1 + gap
    wave[onset2 : onset2 + m2] = event_sound(rng, second, m2) * rng.uniform(0.5, 1.0)
    return _finish(rng, wave), [start / SR, onset2 / SR]


def sequence_clip(
    rng: np.random.Generator, k: int, n: int, kinds: np.ndarray | None = None, with_spans: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """k `ORDER_SOUNDS` back to back, one in each k-th of the clip (60-85% of its slot, at a random level) -> (wave,
    (k,) sound indices), plus each sound's (start, end) sample with `with_spans`; `kinds` (k,) fixes the sounds,
    else they are drawn. `benchmarks/bench_segment_probe.py` measures what each budget's features hold about the
    sound at one position (docs/EXPERIMENTS.md#sequence-probe)."""
    slot = n // k
    if kinds is None:
        kinds = rng.integers(0, len(ORDER_SOUNDS), size=k)
    wave = np.zeros(n, dtype=np.float32)
    spans = []
    for i, kind in enumerate(kinds):
        m = int(slot * rng.uniform(0.6, 0.85))
        start = i * slot + int(rng.integers(0, slot - m + 1))
        wave[start : start + m] = event_sound(rng, ORDER_SOUNDS[int(kind)], m) * rng.uniform(0.5, 1.0)
        spans.append((start, start + m))
    return (_finish(rng, wave), kinds, spans) if with_spans else (_finish(rng, wave), kinds)


def silent_clip(rng: np.random.Generator, n: int) -> np.ndarray:
    """Near-silence: faint white noise around -70 dBFS (a few 16-bit LSBs)."""
    return (rng.standard_normal(n, dtype=np.float32) * 3e-4).astype(np.float32)


def speech_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=None)
def _spoken(word: str, variant: int) -> np.ndarray:
    """espeak-ng rendering of `word` in one voice variant, at 16 kHz with silence trimmed (cached)."""
    voice, wpm, pitch = SPEECH_VOICES[variant]
    cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", word]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for {word!r} ({' '.join(cmd)}): {proc.stderr.decode(errors='replace')}")
    wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    wave = soxr.resample(wave, sr, SR, quality="HQ").astype(np.float32)
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    return wave[loud[0] : loud[-1] + 1] if len(loud) else wave


def speech_clip(rng: np.random.Generator, word: str, n: int) -> np.ndarray:
    """A spoken word (one of 4 voices, +-1 semitone), squeezed if needed to fit 95% of the clip."""
    sound = _spoken(word, int(rng.integers(len(SPEECH_VOICES))))
    factor = max(2 ** (rng.uniform(-1, 1) / 12), len(sound) / (0.95 * n))
    return _finish(rng, _place(rng, _stretch(sound, factor), n))


def _random_audio(rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, dict[str, Any], str]:
    """A clip of `kind` with random content -> (wave, ground-truth attributes, answer to its question)."""
    if kind == "animal":
        label = str(rng.choice(sorted(animal_recordings(SR))))
        return animal_clip(rng, label, n), {"animal": label}, label
    if kind == "beeps":
        count = int(rng.integers(1, 5))
        return beeps_clip(rng, count, n), {"n_beeps": count}, NUMBER_WORDS[count - 1]
    if kind == "tone":
        pitch = str(rng.choice(["high", "low"]))
        return tone_clip(rng, pitch == "high", n), {"pitch": pitch}, pitch
    if kind == "sweep":
        direction = str(rng.choice(["rising", "falling"]))
        return sweep_clip(rng, direction == "rising", n), {"direction": direction}, direction
    if kind == "speech":
        word = str(rng.choice(SPEECH_WORDS))
        return speech_clip(rng, word, n), {"word": word}, word
    raise ValueError(f"unknown audio kind {kind!r}")


# ----------------------------------------------------------------------------------------------- questions


def phrasing_pool(template: str, split: str, heldout: bool) -> tuple[str, ...]:
    """The phrasings a question of `split` was drawn from: the split's held-out pool, or the training pool."""
    phrasings = TEMPLATES[template]
    if not heldout:
        return phrasings.train
    if split not in ("val", "test"):
        raise ValueError(f"only val and test questions use held-out phrasings, got split {split!r}")
    return getattr(phrasings, split)


def _phrase(rng: np.random.Generator, template: str, split: str, **slots: str) -> tuple[str, dict[str, Any]]:
    # Training questions draw nothing for the held-out decision (short-circuit), so they do not depend on whether
    # validation and test have held-out pools; test questions draw exactly as before validation had one.
    use_heldout = split in ("val", "test") and rng.random() < HELDOUT_SHARE
    pool = phrasing_pool(template, split, use_heldout)
    k = int(rng.integers(len(pool)))
    meta = {"template": template, "paraphrase": k, "paraphrase_heldout": bool(use_heldout)}
    return pool[k].format(**slots), meta


def _scene_meta(scene: list[Obj]) -> dict[str, Any]:
    return {"n_shapes": len(scene), "shapes": [f"{o.color} {o.shape}" for o in scene]}


def _vl_question(rng: np.random.Generator, split: str) -> tuple[list[Obj], str, str, dict[str, Any]]:
    """A question answerable from the image alone -> (scene, question, answer, extras)."""
    template = VL_TEMPLATES[int(rng.integers(len(VL_TEMPLATES)))]
    n = int(rng.integers(1, 5))
    colors = tuple(COLORS)
    slots: dict[str, str] = {}
    if template == "count_shapes":
        scene = _sample_scene(rng, n)
        answer = NUMBER_WORDS[n - 1]
    elif template == "color_of_shape":  # the asked shape occurs exactly once
        target = Obj(str(rng.choice(SHAPES)), str(rng.choice(colors)))
        others = _sample_scene(rng, n - 1, shapes=tuple(s for s in SHAPES if s != target.shape))
        scene = [target, *others]
        slots, answer = {"shape": target.shape}, target.color
    elif template == "shape_of_color":  # the asked colour occurs exactly once
        target = Obj(str(rng.choice(SHAPES)), str(rng.choice(colors)))
        others = _sample_scene(rng, n - 1, colors=tuple(c for c in colors if c != target.color))
        scene = [target, *others]
        slots, answer = {"color": target.color}, target.shape
    else:  # exists_color_shape, yes/no balanced; "no" prefers near misses sharing a colour or shape
        scene = _sample_scene(rng, n)
        present = {(o.color, o.shape) for o in scene}
        if rng.random() < 0.5:
            color, shape = sorted(present)[int(rng.integers(len(present)))]
            answer = "yes"
        else:
            absent = [(c, s) for c in colors for s in SHAPES if (c, s) not in present]
            near = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
            pool = near or absent
            color, shape = pool[int(rng.integers(len(pool)))]
            answer = "no"
        slots = {"color": color, "shape": shape}
    order = rng.permutation(len(scene))  # the target must not always be drawn first
    scene = [scene[i] for i in order]
    question, meta = _phrase(rng, template, split, **slots)
    return scene, question, answer, {**meta, **_scene_meta(scene)}


def _av_question(
    rng: np.random.Generator, split: str, n_samples: int
) -> tuple[list[Obj], np.ndarray, str, str, dict[str, Any]]:
    """A question that needs both image and audio -> (scene, wave, question, answer, extras)."""
    template = AV_TEMPLATES[int(rng.integers(len(AV_TEMPLATES)))]
    yes = bool(rng.random() < 0.5)
    if template == "beeps_match_shapes":
        n_shapes = int(rng.integers(1, 5))
        n_beeps = n_shapes if yes else int(rng.choice([k for k in range(1, 5) if k != n_shapes]))
        scene = _sample_scene(rng, n_shapes)
        wave = beeps_clip(rng, n_beeps, n_samples)
        question, meta = _phrase(rng, template, split)
        attrs: dict[str, Any] = {"kind": "beeps", "n_beeps": n_beeps}
    else:  # color_and_animal: "no" is split evenly between wrong colour, wrong animal and both wrong
        animals = sorted(animal_recordings(SR))
        heard = str(rng.choice(animals))
        miss = "none" if yes else str(rng.choice(["color", "animal", "both"]))
        while True:  # a scene missing at least one colour (always true for < 4 objects)
            scene = _sample_scene(rng, int(rng.integers(1, 5)))
            shown = sorted({o.color for o in scene})
            hidden = [c for c in COLORS if c not in shown]
            if hidden:
                break
        color = str(rng.choice(hidden)) if miss in ("color", "both") else str(rng.choice(shown))
        asked = str(rng.choice([a for a in animals if a != heard])) if miss in ("animal", "both") else heard
        wave = animal_clip(rng, heard, n_samples)
        article = "an" if asked[0] in "aeiou" else "a"
        question, meta = _phrase(rng, template, split, color=color, a_animal=f"{article} {asked}")
        attrs = {"kind": "animal", "animal": heard, "asked_color": color, "asked_animal": asked}
    return scene, wave, question, "yes" if yes else "no", {**meta, **attrs, **_scene_meta(scene)}


def _order_question(rng: np.random.Generator, split: str, n_samples: int) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """Two different sounds in turn; which came first -> (wave, question, answer, extras). The question names
    them in a random order, so the answer is the first-named sound half of the time."""
    picks = rng.choice(len(ORDER_SOUNDS), size=2, replace=False)
    first, second = (ORDER_SOUNDS[int(i)] for i in picks)
    wave, onsets = order_clip(rng, first, second, n_samples)
    named = (first, second) if rng.random() < 0.5 else (second, first)
    question, meta = _phrase(rng, ORDER_TEMPLATE, split, sound_a=named[0], sound_b=named[1])
    return wave, question, first, {**meta, "kind": "order", "first": first, "second": second, "onsets_s": onsets}


SEQUENCE_SECONDS = 2.4
SEQUENCE_SLOTS = 12
SEQUENCE_POSITIONS = ("first", "second")


def _sequence_question(rng: np.random.Generator, split: str) -> tuple[np.ndarray, str, str, dict[str, Any]]:
    """12 sounds back to back in 2.4 s, the first three all different; which is the first or the second. The
    first quarter holds three sounds, so only the fine tokens (budget 8 for the first, 12 for the second) tell
    them apart; `audio_span` is where the asked sound plays."""
    head = rng.choice(len(ORDER_SOUNDS), size=3, replace=False)
    kinds = np.concatenate([head, rng.integers(0, len(ORDER_SOUNDS), size=SEQUENCE_SLOTS - 3)])
    wave, kinds, spans = sequence_clip(rng, SEQUENCE_SLOTS, int(SEQUENCE_SECONDS * SR), kinds, with_spans=True)
    pos = int(rng.integers(len(SEQUENCE_POSITIONS)))
    question, meta = _phrase(rng, "sound_position", split, position=SEQUENCE_POSITIONS[pos])
    sounds = [ORDER_SOUNDS[int(k)] for k in kinds]
    span = [round(spans[pos][0] / SR, 4), round(spans[pos][1] / SR, 4)]
    return wave, question, sounds[pos], {**meta, "kind": "sequence", "position": pos, "sounds": sounds,
                                         "audio_span": span}


# ----------------------------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class _Settings:
    seed: int
    image_size: int
    n_samples: int
    audio_kinds: tuple[str, ...]


def _make_example(
    index: int, split: str, family: str, cfg: _Settings
) -> tuple[str, dict[str, Any], Image.Image, np.ndarray | None]:
    """Build one example from its own RNG -> (id, record fields, image, wave or None)."""
    rng = np.random.default_rng([cfg.seed, index])
    wave: np.ndarray | None = None
    if family in ("vl", "vl_distractor"):
        scene, question, answer, extras = _vl_question(rng, split)
        extras["kind"] = None
        if family == "vl_distractor":
            kind = cfg.audio_kinds[int(rng.integers(len(cfg.audio_kinds)))]
            wave, attrs, _ = _random_audio(rng, kind, cfg.n_samples)
            extras.update(kind=kind, **attrs)
    elif family == "audio_visual":
        scene, wave, question, answer, extras = _av_question(rng, split, cfg.n_samples)
    elif family == "audio_order":
        wave, question, answer, extras = _order_question(rng, split, cfg.n_samples)
        scene = _sample_scene(rng, int(rng.integers(1, 5)))  # an image the answer does not depend on
        extras.update(_scene_meta(scene))
    elif family == "audio_sequence":
        wave, question, answer, extras = _sequence_question(rng, split)
        scene = _sample_scene(rng, int(rng.integers(1, 5)))  # an image the answer does not depend on
        extras.update(_scene_meta(scene))
    elif family in ("audio", "silent_control"):
        kind = cfg.audio_kinds[int(rng.integers(len(cfg.audio_kinds)))]
        question, extras = _phrase(rng, AUDIO_KIND_TEMPLATE[kind], split)
        if family == "audio":
            wave, attrs, answer = _random_audio(rng, kind, cfg.n_samples)
            extras.update(kind=kind, **attrs)
        else:
            wave, answer = silent_clip(rng, cfg.n_samples), SILENT_ANSWER
            extras.update(kind="silence", asked_kind=kind)
        scene = _sample_scene(rng, int(rng.integers(1, 5)))  # an image the answer does not depend on
        extras.update(_scene_meta(scene))
    else:
        raise ValueError(f"unknown family {family!r}")
    image = _render(rng, scene, cfg.image_size)
    fields = {
        "split": split,
        "family": family,
        "question": question,
        "answer": answer,
        "needs_audio": family in AUDIO_FAMILIES,
        "audio_span": extras.pop("audio_span", None),
        "extras": extras,
    }
    return f"synth-{index:06d}", fields, image, wave


def _family_plan(seed: int, sizes: dict[str, int]) -> list[tuple[int, str, str]]:
    """(global index, split, family) for every example: exact family mix per split, shuffled per split."""
    plan: list[tuple[int, str, str]] = []
    index = 0
    for code, split in enumerate(SPLITS):
        counts = _largest_remainder(sizes.get(split, 0), FAMILY_MIX)
        families = [f for f in FAMILIES for _ in range(counts[f])]
        order = np.random.default_rng([seed, 1_000_003, code]).permutation(len(families))
        for k in order:
            plan.append((index, split, families[k]))
            index += 1
    return plan


_SPEECH_NOTICE_SHOWN = False


def _audio_kinds(speech: bool) -> tuple[str, ...]:
    global _SPEECH_NOTICE_SHOWN
    kinds = ("animal", "beeps", "tone", "sweep")
    if speech and speech_available():
        return (*kinds, "speech")
    if speech and not _SPEECH_NOTICE_SHOWN:
        notice = "notice: espeak-ng not found, spoken-word questions are skipped (apt-get install espeak-ng)"
        print(notice, file=sys.stderr)
        _SPEECH_NOTICE_SHOWN = True
    return kinds


def _check_args(sizes: dict[str, int], image_size: int, clip_seconds: float) -> None:
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) in sizes: {sorted(unknown)}; expected {', '.join(SPLITS)}")
    if any(not isinstance(v, int) or v < 0 for v in sizes.values()) or sum(sizes.values()) == 0:
        raise ValueError(f"sizes must be non-negative integers with a positive total, got {sizes}")
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size must be in [16, 1024] (shapes stay legible from 32), got {image_size}")
    if not 0.25 <= clip_seconds <= 30:
        raise ValueError(f"clip_seconds must be in [0.25, 30], got {clip_seconds}")


def generate_benchmark(
    out_dir: str | os.PathLike,
    sizes: dict[str, int],
    seed: int = 0,
    image_size: int = 32,
    clip_seconds: float = 1.0,
    speech: bool = True,
    progress: bool = True,
) -> Path:
    """Write the benchmark under `out_dir` and return the manifest path.

    Layout: out_dir/manifest.jsonl, out_dir/images/<id>.png, out_dir/audio/<id>.wav (16 kHz mono 16-bit).
    Media files of an earlier run that the new manifest does not reference are removed, and the manifest is
    written last, so an interrupted run never leaves a manifest pointing at missing files of this run.
    """
    _check_args(sizes, image_size, clip_seconds)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    cfg = _Settings(seed, image_size, int(round(clip_seconds * SR)), _audio_kinds(speech))
    records: list[ManifestRecord] = []
    for index, split, family in tqdm(_family_plan(seed, sizes), desc="synth", unit="ex", disable=not progress):
        ex_id, fields, image, wave = _make_example(index, split, family, cfg)
        image_rel = f"images/{ex_id}.png"
        write_png(out / image_rel, image)
        audio_rel = None
        if wave is not None:
            audio_rel = f"audio/{ex_id}.wav"
            write_wav(out / audio_rel, wave, SR)
        records.append(ManifestRecord(id=ex_id, source="synth", image=image_rel, audio=audio_rel, **fields))
    _remove_stale(out, records)
    return write_manifest(records, out / "manifest.jsonl")


def _remove_stale(out: Path, records: list[ManifestRecord]) -> None:
    keep = {r.image for r in records} | {r.audio for r in records}
    for folder, pattern in (("images", "synth-*.png"), ("audio", "synth-*.wav")):
        for f in (out / folder).glob(pattern):
            if f"{folder}/{f.name}" not in keep:
                f.unlink()


# ----------------------------------------------------------------------------------------------- derived questions


def scene_tags(record) -> list[str]:
    """The objects in the record's image as tags ("red circle", ...), for vision-tower pretraining.

    Every synthetic image has its scene in `extras.shapes`, audio-family ones too (their image is a random scene the
    answer does not depend on). Records without it (real datasets) give [].
    """
    return sorted(set((record.extras or {}).get("shapes") or []))


def derived_vl_questions(record, seed: int = 0) -> list[tuple[str, str]]:
    """Every VL question the record's image answers, with train phrasings: (question, answer) pairs.

    Base-VL pretraining asks several questions about each VL-only training image instead of only the one in the
    manifest (the way VQA has several questions per image). Uses the scene kept in `extras.shapes`; records
    without it (real datasets) give [].
    """
    shapes = (record.extras or {}).get("shapes")
    if not shapes or record.split == "test":
        return []
    scene = [Obj(*reversed(s.split(" ", 1))) for s in shapes]  # "red circle" -> Obj(shape, color)
    rng = np.random.default_rng([seed, int.from_bytes(record.id.encode()[-6:], "little")])
    phrase = lambda t, **slots: TEMPLATES[t].train[int(rng.integers(len(TEMPLATES[t].train)))].format(**slots)  # noqa: E731
    out = [(phrase("count_shapes"), NUMBER_WORDS[len(scene) - 1])]
    for shape in SHAPES:
        matches = [o for o in scene if o.shape == shape]
        if len(matches) == 1:
            out.append((phrase("color_of_shape", shape=shape), matches[0].color))
    for color in COLORS:
        matches = [o for o in scene if o.color == color]
        if len(matches) == 1:
            out.append((phrase("shape_of_color", color=color), matches[0].shape))
    present = sorted({(o.color, o.shape) for o in scene})
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    picks = [present[int(i)] for i in rng.permutation(len(present))[:2]]
    picks_absent = [absent[int(i)] for i in rng.permutation(len(absent))[:len(picks)]]
    out += [(phrase("exists_color_shape", color=c, shape=s), "yes") for c, s in picks]
    out += [(phrase("exists_color_shape", color=c, shape=s), "no") for c, s in picks_absent]
    return out
