import re
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from safe.data import synth
from safe.data.manifest import read_manifest
from safe.data.media import load_audio, load_image

SIZES = {"train": 140, "val": 30, "test": 60}


def _sounds_or_skip():
    from safe.data import sounds

    try:
        sounds.animal_files()
    except sounds.SoundsUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    _sounds_or_skip()
    out = tmp_path_factory.mktemp("bench")
    path = synth.generate_benchmark(out / "a", SIZES, seed=3, progress=False)
    return read_manifest(path)


def _all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(bench, tmp_path):
    sizes = {"train": 40, "val": 10, "test": 10}
    a = synth.generate_benchmark(tmp_path / "a", sizes, seed=11, progress=False).parent
    b = synth.generate_benchmark(tmp_path / "b", sizes, seed=11, progress=False).parent
    c = synth.generate_benchmark(tmp_path / "c", sizes, seed=12, progress=False).parent
    files_a, files_b, files_c = _all_files(a), _all_files(b), _all_files(c)
    assert len(files_a) > 60 and files_a == files_b
    assert files_a["manifest.jsonl"] != files_c["manifest.jsonl"]
    common = set(files_a) & set(files_c) - {"manifest.jsonl"}
    assert sum(files_a[k] != files_c[k] for k in common) > 0.9 * len(common)


def test_regenerating_into_the_same_folder_removes_stale_media(tmp_path):
    _sounds_or_skip()
    out = tmp_path / "b"
    first = {r.id: r for r in read_manifest(synth.generate_benchmark(out, {"train": 30}, seed=0, progress=False))}
    before = _all_files(out)
    second = read_manifest(synth.generate_benchmark(out, {"train": 10}, seed=0, progress=False))
    after = _all_files(out)
    referenced = {m for r in second for m in (r.image, r.audio) if m}
    assert set(after) == referenced | {"manifest.jsonl"}
    # An example depends only on (seed, index, family): where the family plan agrees, the files are equal.
    same = [r for r in second if first[r.id].family == r.family]
    assert same and all(after[r.image] == before[r.image] for r in same)


def test_split_sizes():
    assert synth.split_sizes(100) == {"train": 70, "val": 15, "test": 15}
    assert synth.split_sizes(6000) == {"train": 4200, "val": 900, "test": 900}
    for total in (1, 7, 333):
        assert sum(synth.split_sizes(total).values()) == total
    with pytest.raises(ValueError):
        synth.split_sizes(0)


def test_split_sizes_with_val_and_test_set_apart_from_train():
    assert synth.split_sizes(4000, test_size=2000) == {"train": 2800, "val": 600, "test": 2000}
    assert synth.split_sizes(4000, 900, 1500) == {"train": 2800, "val": 900, "test": 1500}
    assert synth.split_sizes(100, None, None) == synth.split_sizes(100)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="test_size"):
            synth.split_sizes(100, test_size=bad)


def test_larger_val_and_test_splits_leave_train_examples_unchanged(tmp_path):
    _sounds_or_skip()
    small = {"train": 30, "val": 8, "test": 8}
    a = synth.generate_benchmark(tmp_path / "a", small, seed=4, progress=False)
    b = synth.generate_benchmark(tmp_path / "b", {**small, "test": 20}, seed=4, progress=False)
    c = synth.generate_benchmark(tmp_path / "c", {**small, "val": 15}, seed=4, progress=False)
    ra, rb, rc = read_manifest(a), read_manifest(b), read_manifest(c)
    files_a, files_b, files_c = _all_files(a.parent), _all_files(b.parent), _all_files(c.parent)
    for other, files in ((rb, files_b), (rc, files_c)):
        assert other.by_split("train") == ra.by_split("train")
        assert all(files[m] == files_a[m] for r in ra.by_split("train") for m in (r.image, r.audio) if m)
    assert rb.by_split("val") == ra.by_split("val") and len(rb.by_split("test")) == 20
    assert len(rc.by_split("val")) == 15
    # extra test examples are new indices after every train and val example
    assert min(r.id for r in rb.by_split("test")) > max(r.id for r in rb.by_split("val"))


def test_config_sets_val_and_test_sizes():
    from safe.config import ConfigError, build_config

    data = build_config({"profile": "tiny"}).data
    assert data.val_size is None and data.test_size is None
    data = build_config({"profile": "tiny", "data": {"val_size": 300, "test_size": 1200}}).data
    assert synth.split_sizes(data.size, data.val_size, data.test_size) == {"train": 280, "val": 300, "test": 1200}
    for key in ("val_size", "test_size"):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            build_config({"profile": "tiny", "data": {key: 0}})


def test_split_sizes_and_family_mix(bench):
    for split, n in SIZES.items():
        records = bench.by_split(split)
        assert len(records) == n
        counts = Counter(r.family for r in records)
        for family, share in synth.FAMILY_MIX.items():
            assert abs(counts[family] / n - share) <= 1.0 / n + 1e-9, (split, family, counts)
    for r in bench:
        assert r.needs_audio == (r.family in ("audio", "audio_order", "audio_visual", "audio_sequence",
                                              "silent_control"))
        assert (r.audio is None) == (r.family == "vl")
        assert r.image is not None and r.source == "synth"


def _pattern(phrasing: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(phrasing)) + "$")


def test_heldout_paraphrases_only_in_their_own_split(bench):
    pools = {name: {p for phrasings in synth.TEMPLATES.values() for p in getattr(phrasings, name)}
             for name in ("train", "val", "test")}
    assert all(len(phrasings.val) >= 1 and len(phrasings.test) >= 1 for phrasings in synth.TEMPLATES.values())
    assert not pools["train"] & pools["val"] and not pools["train"] & pools["test"] and not pools["val"] & pools["test"]
    n_heldout = Counter()
    for r in bench:
        pool = synth.phrasing_pool(r.extras["template"], r.split, r.extras["paraphrase_heldout"])
        assert _pattern(pool[r.extras["paraphrase"]]).match(r.question), r
        for other in {"train", "val", "test"} - {r.split}:  # no question uses another split's held-out phrasing
            assert not any(_pattern(p).match(r.question) for p in pools[other] - pools["train"]), (r.split, r.question)
        if r.split == "train":
            assert not r.extras["paraphrase_heldout"]
        n_heldout[r.split] += r.extras["paraphrase_heldout"]
    for split in ("val", "test"):  # HELDOUT_SHARE (0.5) of validation and of test questions
        assert 0.25 * SIZES[split] < n_heldout[split] < 0.75 * SIZES[split], n_heldout


def test_every_template_has_three_pools_with_the_same_slots():
    for template in (*synth.AUDIO_KIND_TEMPLATE.values(), *synth.VL_TEMPLATES, *synth.AV_TEMPLATES, synth.ORDER_TEMPLATE):
        phrasings = synth.TEMPLATES[template]
        slots = [set(re.findall(r"\{(\w+)\}", p)) for p in (*phrasings.train, *phrasings.val, *phrasings.test)]
        assert all(s == slots[0] for s in slots), template  # every phrasing takes the same slots
    with pytest.raises(ValueError, match="only val and test"):
        synth.phrasing_pool("count_shapes", "train", True)


def test_answers_are_single_lowercase_words(bench):
    for r in bench:
        assert re.fullmatch(r"[a-z]+", r.answer), r


def _slot(r, name):
    phrasing = synth.phrasing_pool(r.extras["template"], r.split, r.extras["paraphrase_heldout"])[r.extras["paraphrase"]]
    names = re.findall(r"\{(\w+)\}", phrasing)
    return _pattern(phrasing).match(r.question).group(names.index(name) + 1)


def test_answers_follow_from_the_ground_truth(bench):
    number = {w: i + 1 for i, w in enumerate(synth.NUMBER_WORDS)}
    for r in bench:
        x, t = r.extras, r.extras["template"]
        objs = [tuple(s.split()) for s in x["shapes"]]  # (color, shape)
        assert len(objs) == x["n_shapes"]
        if r.family == "silent_control":
            assert r.answer == synth.SILENT_ANSWER and x["kind"] == "silence"
        elif t == "count_shapes":
            assert number[r.answer] == x["n_shapes"]
        elif t == "color_of_shape":
            matches = [c for c, s in objs if s == _slot(r, "shape")]
            assert matches == [r.answer]
        elif t == "shape_of_color":
            matches = [s for c, s in objs if c == _slot(r, "color")]
            assert matches == [r.answer]
        elif t == "exists_color_shape":
            assert r.answer == ("yes" if (_slot(r, "color"), _slot(r, "shape")) in objs else "no")
        elif t == "count_beeps":
            assert number[r.answer] == x["n_beeps"]
        elif t == "animal":
            assert r.answer == x["animal"]
        elif t == "tone_pitch":
            assert r.answer == x["pitch"]
        elif t == "sweep_direction":
            assert r.answer == x["direction"]
        elif t == "spoken_word":
            assert r.answer == x["word"] and r.answer in synth.SPEECH_WORDS
        elif t == "beeps_match_shapes":
            assert r.answer == ("yes" if x["n_beeps"] == x["n_shapes"] else "no")
        elif t == "sound_order":
            named = {_slot(r, "sound_a"), _slot(r, "sound_b")}
            assert named == {x["first"], x["second"]} and x["first"] != x["second"] and r.answer == x["first"]
            assert x["onsets_s"][0] < x["onsets_s"][1]
        elif t == "sound_position":
            assert r.answer == x["sounds"][x["position"]] and _slot(r, "position") in synth.SEQUENCE_POSITIONS
        elif t == "color_and_animal":
            assert _slot(r, "a_animal").split()[-1] == x["asked_animal"]
            both = x["asked_color"] in {c for c, _ in objs} and x["asked_animal"] == x["animal"]
            assert r.answer == ("yes" if both else "no")
        else:
            pytest.fail(f"untested template {t}")


def test_yes_no_questions_are_balanced(bench):
    yes_no = [r.answer for r in bench if r.answer in ("yes", "no")]
    assert len(yes_no) > 20
    assert 0.3 < yes_no.count("yes") / len(yes_no) < 0.7


def _count_blobs(img) -> int:
    """Count shapes in a rendered image: connected regions far from the background colour."""
    px = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    border = np.concatenate([px[0], px[-1], px[:, 0], px[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.linalg.norm(px - bg, axis=-1) > 60
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return int((sizes >= 6).sum())


def test_media_are_readable_and_match_the_labels(bench):
    for r in bench:
        img = load_image(bench.resolve(r.image))
        assert img.size == (32, 32)
        assert _count_blobs(img) == r.extras["n_shapes"], r
        if r.audio is None:
            continue
        wave = load_audio(bench.resolve(r.audio))
        assert wave.shape == ((int(synth.SEQUENCE_SECONDS * 16000),) if r.family == "audio_sequence" else (16000,))
        kind = r.extras["kind"]
        if kind == "silence":
            assert np.abs(wave).max() < 0.01
            continue
        assert np.abs(wave).max() > 0.2
        if kind == "beeps":  # count bursts in a 10 ms energy envelope
            rms = np.sqrt((wave.reshape(-1, 160) ** 2).mean(axis=1))
            on = rms > 0.3 * rms.max()
            assert int(on[0] + (on[1:] & ~on[:-1]).sum()) == r.extras["n_beeps"]
        if kind == "tone":
            peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
            assert (peak_hz > 1000) == (r.extras["pitch"] == "high")


def test_every_audio_kind_occurs(bench):
    kinds = Counter(r.extras["kind"] for r in bench if r.family == "audio")
    expected = {"animal", "beeps", "tone", "sweep"} | ({"speech"} if synth.speech_available() else set())
    assert set(kinds) == expected


def test_without_speech_no_spoken_questions_and_one_notice(tmp_path, monkeypatch, capsys):
    _sounds_or_skip()
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    monkeypatch.setattr(synth, "_SPEECH_NOTICE_SHOWN", False)
    for out in ("a", "b"):
        path = synth.generate_benchmark(tmp_path / out, {"train": 40}, seed=1, progress=False)
        assert all(r.extras["kind"] != "speech" for r in read_manifest(path))
    assert capsys.readouterr().err.count("espeak-ng not found") == 1


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        synth.generate_benchmark(tmp_path, {"dev": 3})
    with pytest.raises(ValueError, match="image_size"):
        synth.generate_benchmark(tmp_path, {"train": 3}, image_size=8)
    with pytest.raises(ValueError, match="positive total"):
        synth.generate_benchmark(tmp_path, {"train": 0})


# ----------------------------------------------------------------------------- base VL pretraining questions


def _train_phrasing(question: str) -> str | None:
    """The template whose train phrasings produce `question` (None if none does)."""
    for template, phrasings in synth.TEMPLATES.items():
        for pattern in phrasings.train:
            regex = re.escape(pattern).replace(r"\{shape\}", "(?P<shape>\\w+)").replace(r"\{color\}", "(?P<color>\\w+)")
            if re.fullmatch(regex, question):
                return template
    return None


def test_derived_questions_follow_from_the_scene(bench):
    number = {w: i + 1 for i, w in enumerate(synth.NUMBER_WORDS)}
    vl_records = [r for r in bench if r.family == "vl" and r.split == "train"]
    assert vl_records
    for r in vl_records:
        objs = [tuple(s.split()) for s in r.extras["shapes"]]  # (color, shape)
        pairs = synth.derived_vl_questions(r)
        assert pairs and pairs == synth.derived_vl_questions(r)  # deterministic per record
        for question, answer in pairs:
            assert _train_phrasing(question) is not None, question
            if answer in number:
                assert number[answer] == len(objs)
    assert synth.derived_vl_questions(next(r for r in bench if r.split == "test")) == []  # never about test images



# ----------------------------------------------------------------------------- the temporal family


def test_order_family_is_audio_dependent_and_its_phrasings_are_disjoint(bench):
    rows = [r for r in bench if r.family == "audio_order"]
    assert rows and all(r.needs_audio and r.audio and r.extras["template"] == synth.ORDER_TEMPLATE for r in rows)
    pools = synth.TEMPLATES[synth.ORDER_TEMPLATE]
    assert not set(pools.train) & set(pools.val) and not set(pools.train) & set(pools.test)
    assert not set(pools.val) & set(pools.test)
    for r in rows:  # a question uses its own split's held-out phrasing or a training one, never another split's
        own = synth.phrasing_pool(synth.ORDER_TEMPLATE, r.split, r.extras["paraphrase_heldout"])
        assert _pattern(own[r.extras["paraphrase"]]).match(r.question)
    assert sum(abs(v) for v in synth.FAMILY_MIX.values()) == pytest.approx(1.0)


def test_order_answer_is_not_the_first_named_sound_by_construction(bench):
    rows = [r for r in bench if r.family == "audio_order"]
    first_named = sum(_slot(r, "sound_a") == r.answer for r in rows)
    assert 0 < first_named < len(rows)


def test_order_clip_energy_follows_its_onsets():
    """The first event's onset is where the clip's energy rises first; both events are audible."""
    for seed in range(6):
        rng = np.random.default_rng([seed, 7])
        first, second = synth.ORDER_SOUNDS[seed % 3], synth.ORDER_SOUNDS[3 + seed % 5]
        wave, onsets = synth.order_clip(rng, first, second, 16000)
        rms = np.sqrt((wave.reshape(-1, 160) ** 2).mean(axis=1))  # 10 ms frames
        on = np.flatnonzero(rms > 0.1 * rms.max())
        assert abs(on[0] * 0.01 - onsets[0]) <= 0.03, (first, second, on[0], onsets)
        second_part = rms[int(onsets[1] * 100) + 1:]
        assert second_part.max() > 0.1 * rms.max()


def test_sequence_clip_puts_one_audible_sound_in_each_slot():
    """Every k-th of the clip holds sound: the n-th sound is where the n-th slot is, which is what the probe asks."""
    for k in (8, 12):
        rng = np.random.default_rng([k, 3])
        wave, kinds = synth.sequence_clip(rng, k, 16000)
        assert wave.shape == (16000,) and kinds.shape == (k,) and 0 <= kinds.min() and kinds.max() < 8
        rms = np.sqrt((wave[: 16000 // k * k].reshape(k, -1) ** 2).mean(axis=1))
        assert rms.min() > 0.2 * rms.max(), rms
    fixed = np.array([3, 0, 7, 1])
    wave, kinds = synth.sequence_clip(np.random.default_rng(0), 4, 16000, fixed)
    assert kinds.tolist() == fixed.tolist() and wave.shape == (16000,)


def test_order_generator_is_deterministic(tmp_path):
    sizes = {"train": 20, "val": 5, "test": 5}
    a = read_manifest(synth.generate_benchmark(tmp_path / "a", sizes, seed=5, speech=False, progress=False))
    b = read_manifest(synth.generate_benchmark(tmp_path / "b", sizes, seed=5, speech=False, progress=False))
    rows_a = [r for r in a if r.family == "audio_order"]
    rows_b = [r for r in b if r.family == "audio_order"]
    assert rows_a and [(r.id, r.question, r.answer) for r in rows_a] == [(r.id, r.question, r.answer) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert a.resolve(ra.audio).read_bytes() == b.resolve(rb.audio).read_bytes()


def test_sequence_family_asks_the_first_or_second_of_twelve_sounds_and_says_where_it_plays(bench):
    """The answer is the sound in the asked slot; `audio_span` covers that sound and nothing of the next slot, so
    Stage A's grounding loss points at the twelfth that holds it."""
    rows = [r for r in bench if r.family == "audio_sequence"]
    assert rows and all(r.needs_audio and r.extras["template"] == "sound_position" for r in rows)
    slot = synth.SEQUENCE_SECONDS / synth.SEQUENCE_SLOTS
    for r in rows:
        pos = r.extras["position"]
        assert r.answer == r.extras["sounds"][pos] and synth.SEQUENCE_POSITIONS[pos] in r.question
        assert len(set(r.extras["sounds"][:3])) == 3  # the first quarter cannot tell first from second
        start, end = r.audio_span
        assert pos * slot <= start < end <= (pos + 1) * slot + 1e-6 and end - start >= 0.6 * slot - 1e-3
    assert all(r.audio_span is None for r in bench if r.family != "audio_sequence")


def test_sequence_clip_spans_are_where_each_sound_is_loud():
    """Inside its slot, a sound's span is loud and the rest is the background noise alone."""
    rng = np.random.default_rng(4)
    n, k = 38400, 12
    wave, kinds, spans = synth.sequence_clip(rng, k, n, with_spans=True)
    slot = n // k
    for i, (start, end) in enumerate(spans):
        assert i * slot <= start < end <= (i + 1) * slot
        rest = np.concatenate([wave[i * slot:start], wave[end:(i + 1) * slot]])
        if len(rest) > 20:
            assert np.sqrt((wave[start:end] ** 2).mean()) > 2 * np.sqrt((rest ** 2).mean())
