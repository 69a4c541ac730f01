"""Embed once: the vectors a frozen network gives every image of a competition, computed once per
(network, size) and reused by every fold and by any run or stage that trains only a head on them
(`image_embed`, the autoencoder's classifier).

Files: data/processed/<comp>/features/<name>.npy (n, d) float32, one row per image of the decode
cache (processed train.csv + test.csv, `medalist.image.cache`), and <name>.json (the image paths in
row order, which decoded, and a fingerprint (`core.cache`) of the decode cache's — paths, the
files' bytes, the pixel limit — and of the network's identity and code: new weights, another
size, new rows, a replaced image or a new limit recomputes it). Pixels come from the decode-once cache.
A row with no image or an unreadable one gets a zero vector and readable=False: what it predicts is
its family's fallback.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medalist.core.cache import file_digests, key, source_digest
from medalist.core.io import atomic_path, write_text
from medalist.core.progress import progress
from medalist.image.cache import ImageCache, images

CHUNK = 256  # images fetched at a time: bounded memory at any size (and under decode_all's own progress bar)


@dataclasses.dataclass(frozen=True)
class Extractor:
    """A frozen network from images to vectors, and what names and identifies its output."""

    name: str  # the cache file's stem under features/
    identity: str  # everything its output depends on (backbone, weights, size …): part of the fingerprint
    size: int  # pixels a side
    # → a torch module from (B, 3, s, s) pixels in [0, 1] to (B, d)
    build: Callable[[], "object"] = dataclasses.field(compare=False, repr=False)
    batch_size: int = 64


_MODELS: dict[str, object] = {}
_FOLDED: set[str] = set()  # identities whose model in _MODELS has been through the BatchNorm fold


def _model(ex: Extractor):
    import torch

    if ex.identity not in _MODELS:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = ex.build().eval().to(device)
        _MODELS.clear()  # one frozen network in memory at a time
        _FOLDED.clear()
        _MODELS[ex.identity] = model.to(memory_format=torch.channels_last)
    return _MODELS[ex.identity]


def embed_pixels(ex: Extractor, pixels: np.ndarray, progress: Callable[[int], object] = lambda n: None) -> np.ndarray:
    """(n, s, s, 3) uint8 → (n, d) float32 through the frozen network, batch by batch (each batch's
    row count told to `progress`)."""
    import torch

    from medalist.models import inference

    model = _model(ex)
    device = next(model.parameters()).device
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(pixels), ex.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(pixels[s:s + ex.batch_size])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=torch.channels_last)
            if ex.identity not in _FOLDED:  # BatchNorm folded in (exact; checked in fp32 on this batch)
                with torch.autocast(device.type, enabled=False):
                    model = _MODELS[ex.identity] = inference.folded_or_original(model, x[:8])
                _FOLDED.add(ex.identity)
            out.append(model(x).float().flatten(1).cpu().numpy())
            progress(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def compute(ex: Extractor, image_paths: Sequence[str],
            processed_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 and a readable mask for these images, computed now (a progress bar over images)."""
    vecs, ok = [], []
    with progress(total=len(image_paths), desc=f"features ({ex.name}, {ex.size}px)", unit="img",
                  disable=len(image_paths) < 500) as bar:
        for s in range(0, len(image_paths), CHUNK):
            pixels, good = images(list(image_paths[s:s + CHUNK]), ex.size, processed_dir)
            v = embed_pixels(ex, pixels, bar.update)
            v[~good] = 0.0  # an unreadable image's black square says nothing: zero, and readable=False
            vecs.append(v)
            ok.append(good)
    if not vecs:
        return np.zeros((0, 0), np.float32), np.zeros(0, bool)
    return np.concatenate(vecs).astype(np.float32), np.concatenate(ok)


def _fingerprint(ex: Extractor, pixels: str) -> str:
    # the network's code counts too: the module that builds it and this one
    return key("features", ex.identity, ex.size, pixels, source_digest(__name__, ex.build.__module__))


def cached(ex: Extractor, processed_dir: Path) -> tuple[np.ndarray, dict[str, int], np.ndarray, dict]:
    """The competition's feature file for this extractor (memory-mapped), built first if missing or
    stale: (features, path → row, readable mask, its metadata)."""
    decoded = ImageCache(Path(processed_dir), ex.size)
    paths = list(decoded.index)  # the decode cache's rows, in its order
    npy = Path(processed_dir) / "features" / f"{ex.name}.npy"
    meta = npy.with_suffix(".json")
    fp = _fingerprint(ex, decoded.fingerprint)  # the decoded pixels' own key: paths, bytes, limit, code
    if not (npy.exists() and meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fp):
        t0 = time.time()
        vecs, ok = compute(ex, paths, processed_dir)
        seconds = time.time() - t0
        with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, vecs)
        write_text(meta, json.dumps({"fingerprint": fp, "identity": ex.identity, "size": ex.size,
                                     "seconds": round(seconds, 2),
                                     "images_per_s": round(len(paths) / max(seconds, 1e-9), 1),
                                     "paths": paths, "readable": ok.tolist()}))
    info = json.loads(meta.read_text())
    return (np.load(npy, mmap_mode="r"), {p: i for i, p in enumerate(info["paths"])},
            np.asarray(info["readable"], bool), {k: v for k, v in info.items() if k not in ("paths", "readable")})


_last: tuple[str, tuple[np.ndarray, np.ndarray]] | None = None


def features(ex: Extractor, image_paths: Sequence[str],
             processed_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 features and a readable mask for these rows' images: from the competition's
    feature cache where its processed folder is given (images it does not hold — new rows — are
    computed now), computed directly otherwise."""
    image_paths = ["" if p is None else str(p) for p in image_paths]
    if processed_dir is None:
        # rows outside any competition folder (a code competition's hidden test): every fold's
        # model reads the same frozen features, so the last set is kept for the next fold
        global _last
        k = key("rows", ex.identity, ex.size, image_paths, file_digests(image_paths))
        if _last is None or _last[0] != k:
            _last = (k, compute(ex, image_paths))
        return _last[1][0].copy(), _last[1][1].copy()
    vecs, index, readable, _ = cached(ex, processed_dir)
    idx = np.array([index.get(p, -1) if p else -1 for p in image_paths], dtype=np.int64)
    out = np.zeros((len(idx), vecs.shape[1]), np.float32)
    ok = np.zeros(len(idx), bool)
    have = idx >= 0
    out[have], ok[have] = vecs[idx[have]], readable[idx[have]]
    new = [i for i, p in enumerate(image_paths) if p and idx[i] < 0]
    if new:
        out[new], ok[new] = compute(ex, [image_paths[i] for i in new], processed_dir)
    return out, ok
