"""Epoch checkpoints of one training run, through accelerate: `save_state` into
<root>/checkpoints/checkpoint_<epochs done>/, rotated by the Accelerator's
ProjectConfiguration(automatic_checkpoint_naming, total_limit), with progress.json written last — a
checkpoint without it is incomplete and never used — and resumed only when its key (config + data)
matches. Weights the adapter froze at build time (a LoRA base) are left out: they never change.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch

from medalist.core.io import atomic_path, read_json, write_json


@dataclasses.dataclass
class Progress:
    """Everything besides tensors that a resumed run needs."""

    key: str
    stage: int = 0  # the stage being trained
    stage_epoch: int = 0  # its epochs completed
    epoch: int = 0  # epochs completed over all stages
    step: int = 0  # optimizer steps taken (TensorBoard x-axis)
    halvings: int = 0  # out-of-memory halvings of the batch so far
    oom_events: int = 0
    history: list = dataclasses.field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped: bool = False  # early stopping ended the current stage
    samples: int = 0
    train_seconds: float = 0.0


class Checkpoints:
    def __init__(self, acc, frozen: set[str]):
        self.acc, self.frozen = acc, frozen
        self.root = Path(acc.project_dir)

        def drop_frozen(models, weights, output_dir):
            for i, w in enumerate(weights):
                weights[i] = {k: v for k, v in w.items() if k.removeprefix("module.") not in frozen}

        acc.register_save_state_pre_hook(drop_frozen)

    def _found(self) -> list[Path]:
        named = [(p.name.rsplit("_", 1)[-1], p) for p in (self.root / "checkpoints").glob("checkpoint_*")]
        return [p for n, p in sorted((int(n), p) for n, p in named if n.isdigit())]

    def latest(self, key: str) -> tuple[Progress, Path] | None:
        """The last complete checkpoint saved under `key`, its leftovers cleared; None to start afresh."""
        acc = self.acc
        complete = [p for p in self._found() if (p / "progress.json").exists()]
        saved = read_json(complete[-1] / "progress.json") if complete else None
        stale = saved is not None and saved.get("key") != key
        if acc.is_main_process:  # leftovers would block accelerate's next save of the same number
            for p in self._found():
                if stale or p not in complete:
                    shutil.rmtree(p, ignore_errors=True)
        acc.wait_for_everyone()
        if stale:
            acc.print(f"checkpoint {complete[-1]} is from another config or data; starting afresh")
        return None if saved is None or stale else (Progress(**saved), complete[-1])

    def load(self, path: Path) -> None:
        self.acc.load_state(str(path), strict=not self.frozen)

    def save(self, progress: Progress) -> None:
        acc = self.acc
        acc.project_configuration.iteration = progress.epoch  # folder checkpoint_<epochs done>
        where = acc.save_state()
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(Path(where) / "progress.json", dataclasses.asdict(progress))
        acc.wait_for_everyone()

    def save_best(self, model) -> None:
        """The trained weights (and buffers) of the best epoch so far, for select_best_epoch."""
        if self.acc.is_main_process:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().clone().contiguous()
                     for k, v in self.acc.unwrap_model(model).state_dict().items() if k not in self.frozen}
            with atomic_path(self.root / "best.safetensors") as tmp:
                save_file(state, str(tmp))
        self.acc.wait_for_everyone()

    def load_best(self, model) -> None:
        from safetensors.torch import load_file

        self.acc.unwrap_model(model).load_state_dict(load_file(str(self.root / "best.safetensors")),
                                                     strict=not self.frozen)

    def remove(self) -> None:
        """Once the run is done its checkpoints are dead weight."""
        if self.acc.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)
        self.acc.wait_for_everyone()


def load_weights(model: torch.nn.Module, ckpt_dir: Path) -> torch.nn.Module:
    """A freshly built model with an epoch checkpoint's weights (`make predict CKPT=…`)."""
    from safetensors.torch import load_file

    state = {k.removeprefix("module."): v for k, v in load_file(str(Path(ckpt_dir) / "model.safetensors")).items()}
    missing = set(state) - set(model.state_dict())
    assert not missing, f"checkpoint weights do not fit the model: {sorted(missing)[:3]}"
    model.load_state_dict(state, strict=False)
    return model


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / "progress.json").exists()
