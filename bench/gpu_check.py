"""GPU checks on a CUDA box, one command: bf16 in the pipeline, text and image training speed,
two training processes sharing the machine.

Run (from the repository root, with the demo's processed data in data/ and a MiniLM folder):
    python bench/gpu_check.py --backbone /path/to/minilm --out gpu_check.json

1. `make train COMP=demo MODELS=<gpu config> FOLDS=0`: one fold of the text family under
   `accelerate launch`, alone — its done.json says which precision and device it used, samples/s.
2. The same with two runs at once (`make -j2`): each process's samples/s and threads.
3. timm EfficientNet-Lite0 (random init): training images/s at 224 px, batch 128, fp32 vs bf16
   autocast, channels-last; inference images/s in bf16 — the raw speed an image family builds on.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def text_config(name: str, backbone: str) -> None:
    cfg = {"family": "encoder", "backbone": backbone, "max_length": 128, "batch_size": 64,
           "eval_batch_size": 256, "epochs": 2, "lr": 1e-4}
    (ROOT / "configs/models" / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def make_train(models: str, jobs: int) -> tuple[float, dict]:
    t0 = time.time()
    subprocess.run(["make", "-C", str(ROOT), "--no-print-directory", f"-j{jobs}", "train", "COMP=demo",
                    f"MODELS={models}", "FOLDS=0"], check=True)
    wall = time.time() - t0
    out = {}
    for m in models.split():
        done = json.loads((ROOT / "results/demo" / m / "fold0/done.json").read_text())
        info = done["info"]
        out[m] = {k: info.get(k) for k in ("device", "mixed_precision", "train_samples_per_s", "peak_gpu_mb",
                                            "predict_seconds")}
        out[m].update(score=done["score"], seconds=done["seconds"], threads=done.get("threads"))
    return wall, out


def image_speed(batch: int = 128, size: int = 224, steps: int = 30) -> dict:
    import timm
    import torch

    dev = torch.device("cuda")
    res = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10)
        model = model.to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=dev)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
        for i in range(steps + 5):
            if i == 5:
                torch.cuda.synchronize()
                t0 = time.time()
            with ctx:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        res[f"train_images_per_s_{precision}"] = round(batch * steps / (time.time() - t0), 1)
        model.eval()
        with torch.no_grad(), ctx:
            for i in range(steps + 5):
                if i == 5:
                    torch.cuda.synchronize()
                    t0 = time.time()
                model(x)
        torch.cuda.synchronize()
        res[f"infer_images_per_s_{precision}"] = round(batch * steps / (time.time() - t0), 1)
    res.update(batch=batch, size=size, model="efficientnet_lite0 (timm, random init, channels-last)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True, help="a MiniLM (BERT) folder with config, tokenizer, weights")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
              "bf16_supported": torch.cuda.is_bf16_supported(), "cpu_cores": os.cpu_count()}
    for name in ("gpu-minilm", "gpu-minilm-a", "gpu-minilm-b"):
        text_config(name, a.backbone)
    wall, alone = make_train("gpu-minilm", 1)
    report["text_alone"] = {"wall_s": round(wall, 1), **alone}
    wall, both = make_train("gpu-minilm-a gpu-minilm-b", 2)
    report["text_two_processes"] = {"wall_s": round(wall, 1), **both}
    report["image"] = image_speed()
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
