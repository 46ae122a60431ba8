"""Does the frozen base carry a question's ordinal ("first", "second", "third" sound) to where a fusion block reads it?

A fusion block's cross-attention query at a position is that position's hidden state; the answer is read at the
prompt's last position. For a temporal question to pick one audio token, the ordinal must be linearly readable there.
This script asks the trained base (data/models/base_vl of a finished `dvc repro`) the same ordinal questions in six
training phrasings and three held-out ones, each with `--images` validation images, takes the hidden state after every
decoder layer at the last prompt position (and the mean over the prompt's text tokens), fits a logistic regression on
the training phrasings and reports its accuracy on the held-out ones (chance 1/3). Reads validation images only.

    python benchmarks/bench_question_probe.py [--images 40] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - puts the project on sys.path, offline environment

ORDINALS = ("first", "second", "third")
TRAIN_PHRASINGS = (
    "What is the {o} sound?", "Which sound comes {o}?", "What do you hear {o}?",
    "Name the {o} sound in the clip.", "Which sound is played {o}?", "What is heard {o} in the recording?",
)
HELDOUT_PHRASINGS = ("Tell me the {o} sound you hear.", "What sound plays {o}?", "Identify the {o} noise.")


def hidden_features(base, questions: list[str], images: list) -> dict[str, np.ndarray]:
    """Per layer: the hidden state at the last prompt position (N, D) and the mean over text tokens (N, D)."""
    out: dict[str, list] = {}
    for start in range(0, len(questions), 32):
        batch = base.prompts.encode(questions[start:start + 32], images[start:start + 32]).to(base.llava.device)
        with torch.no_grad():
            result = base.llava(**batch.model_inputs(), output_hidden_states=True)
        text = base.prompt_text_mask(batch)  # (B, T)
        for layer, h in enumerate(result.hidden_states):  # (B, T, D) each; 0 = the embeddings
            h = h.float()
            mean = (h * text.unsqueeze(-1)).sum(1) / text.sum(1, keepdim=True)
            out.setdefault(f"last@{layer}", []).append(h[:, -1].numpy())
            out.setdefault(f"text_mean@{layer}", []).append(mean.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="validation images per question")
    parser.add_argument("--json", type=Path, help="write the accuracies here")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipelines.common import BASE_VL, MANIFEST
    from safe.data.manifest import read_manifest
    from safe.data.media import load_image
    from safe.models.base_vl import BaseVLModel
    from safe.provenance import provenance

    manifest = read_manifest(MANIFEST)
    val = [r for r in manifest.by_split("val") if r.image][: args.images]
    images = [load_image(manifest.resolve(r.image)) for r in val]
    base = BaseVLModel.from_pretrained(BASE_VL)
    base.llava.eval()

    def dataset(phrasings):
        rows = [(p.format(o=o), i, label) for p in phrasings for label, o in enumerate(ORDINALS) for i in images]
        return hidden_features(base, [q for q, _, _ in rows], [i for _, i, _ in rows]), np.array([y for *_, y in rows])

    (train_x, train_y), (test_x, test_y) = dataset(TRAIN_PHRASINGS), dataset(HELDOUT_PHRASINGS)
    results = {}
    for key in train_x:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(train_x[key], train_y)
        results[key] = float(probe.score(test_x[key], test_y))
    print(f"held-out ordinal accuracy (chance {1 / len(ORDINALS):.3f}), {len(test_y)} prompts:")
    for key, acc in results.items():
        print(f"  {key:<14} {acc:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"base": str(BASE_VL), "layers_of_lm": base.llava.config.text_config.num_hidden_layers,
                                         "images": len(images), "accuracy": results, **provenance()}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
