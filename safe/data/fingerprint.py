"""Content fingerprint of one split of a manifest: what makes two evaluations comparable."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from safe.data.manifest import Manifest
from safe.io import file_sha256


def split_fingerprint(manifest: Manifest, split: str) -> str:
    """Hex SHA-256 (16 chars) over the split's rows (sorted by id) and the bytes of the media they reference.

    Equal fingerprints mean the same questions, answers and media, whatever the other splits or the manifest's
    location; a regenerated clip or a relabelled answer changes it.
    """
    digest = hashlib.sha256()
    root = manifest.path.parent
    for record in sorted((r for r in manifest.records if r.split == split), key=lambda r: r.id):
        digest.update(json.dumps(asdict(record), sort_keys=True, default=str).encode())
        for rel in (record.image, record.audio):
            if rel:
                media = root / rel
                digest.update(file_sha256(media).encode() if media.is_file() else f"missing:{rel}".encode())
    return digest.hexdigest()[:16]
