"""A convolutional autoencoder trained once per competition on its train and test images (no
labels), then a classifier on its code per fold: the CIFAR-10 write-up's recipe, a member that
learns the data's own look instead of ImageNet's.

The autoencoder trains through the engine's unsupervised mode (`fit_unsupervised`: resume after a
kill, out-of-memory halving, TensorBoard loss, bf16 on CUDA) under accelerate launch, at the first
fold that needs it; every later fold reuses it, and it retrains only when its part of the config or
the image set changes. Its codes are frozen features (`medalist.image.features`, cached under
data/processed/<comp>/features/<run>.npy); the per-fold head is image_embed's (logistic regression
or a small MLP), with the same fallback for rows without a readable image.

Files: results/<comp>/<run>/pretrain/ (model.safetensors, done.json with the key it was trained
for), images/<comp>/reconstructions_<run>.png (originals over reconstructions; beside the weights in
pretrain/ when the fold knows no competition), fold<k>/model.joblib (the head), TensorBoard events in
logs/<comp>/<run>/pretrain/.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch

from medalist.core import config as C
from medalist.core.config import AtLeastOne, NonNegative, Positive, Range, UserError
from medalist.core.io import read_json, write_bytes, write_json
from medalist.image.cache import ImageCache, images
from medalist.image.features import Extractor, features
from medalist.models import FoldData, FoldResult
from medalist.models import engine, training
from medalist.models.families.image_embed import fit_head, fit_split, head_proba, load_head

HEAD_FIELDS = ("classifier", "C", "hidden", "max_iter")  # per-fold head: changing them keeps the autoencoder
SHOWN = 12  # images in the reconstructions picture


@dataclasses.dataclass(frozen=True)
class Config(training.TrainConfig):
    family: Literal["autoencoder"] = "autoencoder"
    inputs: tuple[str, ...] = ("image",)
    image_size: Annotated[int, AtLeastOne] = 32  # CIFAR's size; 28 px Fashion-MNIST loses nothing at 32
    channels: tuple[int, ...] = (32, 64, 128)  # encoder conv widths, each halving the side (decoder mirrors)
    code_dim: Annotated[int, AtLeastOne] = 256
    batch_size: Annotated[int, AtLeastOne] = 128
    eval_batch_size: Annotated[int, AtLeastOne] = 256
    lr: Annotated[float, Positive] = 2e-3  # a small network from scratch takes a larger step than a fine-tune
    epochs: Annotated[int, AtLeastOne] = 15
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: Annotated[float, Range(ge=0, lt=1)] = 0.05
    weight_decay: Annotated[float, NonNegative] = 0.0  # a reconstruction is not a classifier to regularise
    classifier: Literal["logistic", "mlp"] = "mlp"  # the codes are not linearly separable like ImageNet features
    C: Annotated[float, Positive] = 1.0  # logistic: inverse L2 strength; mlp: alpha = 1/C
    hidden: Annotated[int, AtLeastOne] = 256  # mlp hidden units
    max_iter: Annotated[int, AtLeastOne] = 300

    def validate(self, where: str) -> None:
        super().validate(where)
        if "image" not in self.inputs:
            raise UserError(f"{where}: family autoencoder reads the image input; set inputs: [image]")
        if not self.channels or any(c < 1 for c in self.channels):
            raise UserError(f"{where}: channels must be a non-empty list of positive widths")
        if self.image_size % 2 ** len(self.channels):
            raise UserError(f"{where}: image_size {self.image_size} must be divisible by 2^{len(self.channels)} "
                            f"(each of the {len(self.channels)} encoder layers halves it)")


# ---------------------------------------------------------------- the network


class AutoEncoder(torch.nn.Module):
    """Strided convolutions down to a code vector, transposed convolutions back to pixels in [0,1]."""

    def __init__(self, size: int, channels: tuple[int, ...], code_dim: int):
        super().__init__()
        nn = torch.nn
        self.side, self.top = size // 2 ** len(channels), channels[-1]
        down, prev = [], 3
        for c in channels:
            down += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            prev = c
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(self.top * self.side ** 2, code_dim))
        up = []
        for c in [*reversed(channels[:-1]), None]:
            out = c or 3
            up += [nn.ConvTranspose2d(prev, out, 4, stride=2, padding=1)]
            up += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)] if c else [nn.Sigmoid()]
            prev = out
        self.expand = nn.Linear(code_dim, self.top * self.side ** 2)
        self.decoder = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        h = torch.relu(self.expand(code)).view(-1, self.top, self.side, self.side)
        return code, self.decoder(h)


def _network(cfg: Config) -> AutoEncoder:
    return AutoEncoder(cfg.image_size, cfg.channels, cfg.code_dim)


def _pixels(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255)


class AutoEncoderAdapter(training.Adapter):
    """Decoded images in, the mean squared reconstruction error per row out (no labels)."""

    def __init__(self, cfg: Config, processed_dir: Path | None):
        self.cfg, self.processed_dir = cfg, processed_dir

    def build_model(self, device_index: int) -> AutoEncoder:
        return _network(self.cfg)

    def make_items(self, rows: pd.DataFrame, stage: training.Stage) -> list[dict]:
        px, _ = images(rows["image"].tolist(), stage.input_size or self.cfg.image_size, self.processed_dir)
        return [{"pixels": p} for p in px]

    def cost(self, item: dict) -> float:
        return float(item["pixels"].size)

    def collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return {"pixels": _pixels(np.stack([it["pixels"] for it in items]))}

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["pixels"]
        _, recon = model(x)
        return {"loss": ((recon.float() - x) ** 2).flatten(1).mean(1).sum()}


def load_autoencoder(cfg: Config, pretrain_dir: Path) -> AutoEncoder:
    from safetensors.torch import load_file

    path = Path(pretrain_dir) / "model.safetensors"
    if not path.exists():
        raise UserError(f"no autoencoder weights in {pretrain_dir}: train the run first")
    model = _network(cfg)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


class _Encoder(torch.nn.Module):
    def __init__(self, ae: AutoEncoder):
        super().__init__()
        self.ae = ae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ae.encoder(x)


# ---------------------------------------------------------------- the unsupervised run, once


def unlabelled_images(fold: FoldData, size: int) -> list[str]:
    """Every image of the competition (the decode cache's rows: processed train and test), or,
    for a fold that knows no competition, the images of its own rows."""
    if fold.data_dir is not None:
        cache = ImageCache(Path(fold.data_dir), size)
        return [p for p, ok in zip(cache.index, cache.readable_all) if ok]
    paths = sorted({str(p) for df in (fold.train, fold.val, fold.test) for p in df["image"] if p})
    _, ok = images(paths, size)
    return [p for p, good in zip(paths, ok) if good]


def pretrain_key(cfg: Config, image_paths: list[str]) -> str:
    """What the saved autoencoder must match to be reused: its config (not the head's) and the images."""
    own = {k: v for k, v in C.to_dict(cfg).items() if k not in HEAD_FIELDS}
    h = hashlib.sha256(json.dumps(own, sort_keys=True, default=str).encode())
    h.update("\n".join(image_paths).encode())
    return h.hexdigest()[:16]


def pretrain(cfg: Config, fold: FoldData, pretrain_dir: Path) -> tuple[str, dict]:
    """The competition's autoencoder in pretrain_dir: reused when trained for this key, trained
    (or resumed after a kill) otherwise. Returns (key, the run's info)."""
    from accelerate import PartialState

    paths = unlabelled_images(fold, cfg.image_size)
    if not paths:
        raise UserError("no readable image to train the autoencoder on: check the images (make check)")
    key = pretrain_key(cfg, paths)
    done = Path(pretrain_dir) / "done.json"
    if done.exists() and read_json(done).get("key") == key:
        return key, {**read_json(done)["info"], "reused": True}
    log_dir = fold.log_dir.parent / "pretrain" if fold.log_dir else None
    state = PartialState()
    info = engine.fit_unsupervised(AutoEncoderAdapter(cfg, fold.data_dir), cfg, pd.DataFrame({"image": paths}),
                                   Path(pretrain_dir), log_dir)
    info = {k: v for k, v in info.items() if k != "history"} | {"n_images": len(paths), "losses": [
        h["loss"] for h in info.get("history", [])]}
    if state.is_main_process:
        write_json(done, {"key": key, "info": info})
    state.wait_for_everyone()
    return key, {**info, "reused": False}


def reconstructions(cfg: Config, model: AutoEncoder, paths: list[str], processed_dir: Path | None, out: Path) -> Path:
    """A picture of SHOWN images (a fixed draw): originals in the top row, reconstructions below."""
    from PIL import Image

    drawn = np.random.default_rng(0).choice(len(paths), min(SHOWN, len(paths)), replace=False)
    pick = [paths[i] for i in sorted(drawn)]
    px, _ = images(pick, cfg.image_size, processed_dir)
    with torch.no_grad():
        _, recon = model.to("cpu")(_pixels(px))
    rec = (recon.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    s, gap = cfg.image_size, 2
    scale = max(1, 96 // s)  # small images are drawn larger, pixel for pixel
    grid = np.full((2 * (s + gap) + gap, len(pick) * (s + gap) + gap, 3), 255, np.uint8)
    for i, (a, b) in enumerate(zip(px, rec)):
        x = gap + i * (s + gap)
        grid[gap:gap + s, x:x + s], grid[2 * gap + s:2 * gap + 2 * s, x:x + s] = a, b
    im = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return write_bytes(out, buf.getvalue())


# ---------------------------------------------------------------- the family interface


def extractor(cfg: Config, pretrain_dir: Path, key: str, run: str) -> Extractor:
    return Extractor(name=f"autoencoder-{run}", identity=f"autoencoder|{key}", size=cfg.image_size,
                     batch_size=cfg.eval_batch_size, build=lambda: _Encoder(load_autoencoder(cfg, pretrain_dir)))


def _where(out_dir: Path) -> tuple[str, Path]:
    """(the run's name, its pretrain folder): fold<k>/ sits in the run's folder."""
    run_dir = Path(out_dir).resolve().parent
    return run_dir.name, run_dir / "pretrain"


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    from accelerate import PartialState

    run, pretrain_dir = _where(out_dir)
    key, info = pretrain(cfg, fold, pretrain_dir)
    state = PartialState()
    if state.is_main_process:
        where = C.Paths(Path(fold.data_dir).name).images if fold.data_dir else pretrain_dir
        out = where / f"reconstructions_{run}.png"
        if not info["reused"] or not out.exists():
            reconstructions(cfg, load_autoencoder(cfg, pretrain_dir), unlabelled_images(fold, cfg.image_size),
                            fold.data_dir, out)
    paths = [*fold.train["image"], *fold.val["image"], *fold.test["image"]]
    with state.main_process_first():  # one process writes the code cache, the others read it
        X, ok = features(extractor(cfg, pretrain_dir, key, run), paths, fold.data_dir)
    # every process fits the same (deterministic) head, as every process returns the fold's probabilities
    res = fit_split(X, ok, fold, lambda x, m: fit_head(
        x, fold.train_labels, m, fold.n_classes, kind=cfg.classifier, C=cfg.C, hidden=cfg.hidden,
        max_iter=cfg.max_iter, seed=cfg.seed), out_dir if state.is_main_process else None)
    res.info.update(pretrain=info, pretrain_key=key, device=info.get("device", "cpu"),
                    train_samples_per_s=None if info["reused"] else info.get("train_samples_per_s"))
    return res


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    run, pretrain_dir = _where(fold_dir)
    done = pretrain_dir / "done.json"
    if not done.exists():
        raise UserError(f"no trained autoencoder in {pretrain_dir}: train the run first")
    model, ex = load_head(fold_dir), extractor(cfg, pretrain_dir, read_json(done)["key"], run)
    return lambda rows: head_proba(model, *features(ex, rows["image"].tolist()), n_classes)
