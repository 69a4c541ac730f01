"""One side of the images A/B of `make bench` (bench/images.py runs each side as its own process).

  plain     the loop a competitor writes: a torch Dataset that opens and decodes each PNG with PIL
            on every access, torchvision Resize / RandomHorizontalFlip / ToTensor / Normalize, a
            DataLoader, the timm backbone with the same weights, AdamW, cross-entropy with label
            smoothing; inference the same way (no_grad, eval mode, softmax).
  medalist  the image family's own path: `medalist.models.engine.fit_fold` with the family's
            `ImageAdapter` and net builder, items from the decode-once cache
            (data/processed/<comp>/images/<size>.npy), channels-last, the config's augmentation, EMA
            and eval batch. One stage training every parameter, one epoch over the rows given.
            Prediction through the family's prediction form: BatchNorm folded into the
            convolutions, bf16 on a CPU with native bf16 (the config's cpu_bf16_inference).
  medalist-fp32  the same with cpu_bf16_inference off: what the fold alone buys.

Both sides train on exactly the rows of --train-csv (steps × batch) and predict the rows of
--test-csv; the timed figures are the training loop (images/s over every step, the first ones
included) and the test prediction loop. Loading the weights is not timed on either side; the
medalist side's one-off item preparation (reading the cache, which decodes any image it misses) is
reported apart as items_seconds.

Reads   --train-csv / --test-csv (id, image: a path relative to the project root, label),
        --model-config (family image: backbone, weights, image_size, batch_size, lr …)
Writes  --out/metrics.json (the medalist side also its fold weights under --out/fold0/)
Run     python bench/image_ab.py --side plain --train-csv t.csv --test-csv s.csv \
            --model-config configs/models/efficientnet-lite0.yaml --data-dir data/processed/fashion-products --out /tmp/p
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medalist.core import config as C


def plain(cfg, train: pd.DataFrame, test: pd.DataFrame, n_classes: int, workers: int) -> dict:
    """The competitor's loop. Only the model's weights come through medalist (the same file)."""
    from PIL import Image
    from timm.data import resolve_data_config
    from torchvision import transforms as T

    from medalist.image.weights import create

    root = C.root()

    class PngDataset(torch.utils.data.Dataset):
        def __init__(self, paths, labels, tf):
            self.paths, self.labels, self.tf = paths, labels, tf

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            with Image.open(root / self.paths[i]) as im:
                x = self.tf(im.convert("RGB"))
            return x, int(self.labels[i])

    net, _ = create(cfg.backbone, cfg.weights, n_classes, drop_rate=cfg.drop_rate)
    d = resolve_data_config({}, model=net)
    size = (cfg.image_size, cfg.image_size)
    norm = T.Normalize(d["mean"], d["std"])
    tf_train = T.Compose([T.Resize(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    tf_test = T.Compose([T.Resize(size), T.ToTensor(), norm])
    train_dl = torch.utils.data.DataLoader(PngDataset(train["image"].tolist(), train["label"].to_numpy(), tf_train),
                                           batch_size=cfg.batch_size, shuffle=True, num_workers=workers)
    test_dl = torch.utils.data.DataLoader(PngDataset(test["image"].tolist(), np.zeros(len(test)), tf_test),
                                          batch_size=cfg.batch_size, shuffle=False, num_workers=workers)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    losses = []
    t0 = time.perf_counter()
    for x, y in train_dl:
        loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train_s = time.perf_counter() - t0
    net.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        proba = torch.cat([torch.softmax(net(x), dim=-1) for x, _ in test_dl])
    infer_s = time.perf_counter() - t0
    return {"train_seconds": train_s, "infer_seconds": infer_s, "items_seconds": 0.0, "steps": len(losses),
            "last_loss": losses[-1], "infer_batch_size": cfg.batch_size, "predicted": int(proba.shape[0]),
            "dataloader_workers": workers}


def medalist(cfg, train: pd.DataFrame, test: pd.DataFrame, n_classes: int, data_dir: Path, out: Path) -> dict:
    """The family's path through the engine: its adapter, net builder and decode-once cache."""
    from medalist.models import FoldData, engine
    from medalist.models.families import image
    from medalist.models.training import Stage

    class TimedAdapter(image.ImageAdapter):
        """The family's adapter as it is, with the one-off item preparation timed."""

        items_seconds = 0.0

        def make_items(self, rows, stage):
            t0 = time.perf_counter()
            try:
                return super().make_items(rows, stage)
            finally:
                TimedAdapter.items_seconds += time.perf_counter() - t0

    cfg = dataclasses.replace(cfg, stages=(Stage(name="all", epochs=1),), epochs=1, n_seeds=1)
    labels = train["label"].to_numpy()
    prior = np.bincount(labels, minlength=n_classes) / len(labels)
    adapter = TimedAdapter(cfg, n_classes, image.timm_net, prior, data_dir)
    cols = ["id", "image"]
    fold = FoldData(fold=0, n_classes=n_classes, train=train[cols], train_labels=labels,
                    val=train[cols].iloc[:8].reset_index(drop=True), val_labels=labels[:8],
                    test=test[cols], metric="accuracy", data_dir=data_dir)
    res = engine.fit_fold(adapter, cfg, fold, out / "fold0")
    info = res.info
    return {"train_seconds": len(train) / max(info["train_samples_per_s"], 1e-9),
            "infer_seconds": info["predict_seconds"], "items_seconds": TimedAdapter.items_seconds,
            "steps": info["optimizer_steps"], "last_loss": info["history"][-1]["loss"],
            "infer_batch_size": cfg.eval_batch_size, "predicted": int(res.test_proba.shape[0]),
            "device": info.get("device")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["plain", "medalist", "medalist-fp32"], required=True)
    ap.add_argument("--train-csv", type=Path, required=True)
    ap.add_argument("--test-csv", type=Path, required=True)
    ap.add_argument("--model-config", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, required=True, help="data/processed/<comp>/ (the decode-once cache)")
    ap.add_argument("--n-classes", type=int, required=True)
    ap.add_argument("--workers", type=int, default=0, help="the plain DataLoader's worker processes")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    from medalist.models.families import image

    cfg = C.from_dict(image.Config, C.load_yaml(a.model_config), a.model_config.name)
    if a.side == "medalist-fp32":
        cfg = dataclasses.replace(cfg, cpu_bf16_inference=False)
    train = pd.read_csv(a.train_csv, dtype={"id": str})
    test = pd.read_csv(a.test_csv, dtype={"id": str})
    a.out.mkdir(parents=True, exist_ok=True)
    if a.side == "plain":
        m = plain(cfg, train, test, a.n_classes, a.workers)
    else:
        m = medalist(cfg, train, test, a.n_classes, a.data_dir.resolve(), a.out)
    m.update({"side": a.side, "n_train": len(train), "n_test": len(test), "batch_size": cfg.batch_size,
              "image_size": cfg.image_size, "backbone": cfg.backbone, "weights": cfg.weights,
              "threads": torch.get_num_threads(),
              "train_images_per_s": len(train) / max(m["train_seconds"], 1e-9),
              "infer_images_per_s": len(test) / max(m["infer_seconds"], 1e-9)})
    (a.out / "metrics.json").write_text(json.dumps(m, indent=1))
    print(json.dumps(m))


if __name__ == "__main__":
    main()
