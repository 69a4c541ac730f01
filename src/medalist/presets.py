"""PRESET=fast|good|best: what `make all` trains when MODELS is not given, resolved per
competition (its rows show text, images or both) and per machine (`core.hardware`: cores, native
bf16, GPUs and their memory) from configs/presets.yaml. The planner writes each preset's list
into the plan; `make plan` prints them with the reasons.

Rules on top of the table: a LoRA decoder needs a GPU with bf16 and `decoder_min_gpu_gb` of
memory, else it is left out; a model whose backbone is a hub id whose files are not in the local
Hugging Face cache (nothing is downloaded at run time) becomes its family's packaged stand-in;
a list never names a model twice.

Run     python -m medalist.presets --comp demo [--preset good]     (`make plan`)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from medalist.core import config as C
from medalist.core.config import UserError
from medalist.core.hardware import Machine, describe

PRESETS = ("fast", "good", "best")


@dataclasses.dataclass(frozen=True)
class Resolved:
    preset: str
    models: tuple[str, ...]
    why: tuple[str, ...]


def modality(comp) -> str:
    kinds = comp.inputs.kinds
    return "text+image" if set(kinds) == {"text", "image"} else kinds[0]


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _hub_id(cfg: dict) -> str | None:
    """The hub repository a model config would download, or None (packaged, local, TF-IDF)."""
    if cfg.get("family") == "image":
        return f"timm/{cfg['backbone']}" if cfg.get("weights") == "timm" else None
    for key in ("backbone", "text_backbone"):
        b = cfg.get(key)
        if isinstance(b, str) and "/" in b and not b.startswith(("pretrain:", "/", ".")) and not Path(b).exists():
            return b
    return None


def _cached(repo: str) -> bool:
    return (hub_cache() / f"models--{repo.replace('/', '--')}").is_dir()


def resolve(comp, preset: str, machine: Machine, configs_dir: Path) -> Resolved:
    if preset not in PRESETS:
        raise UserError(f"PRESET must be one of {', '.join(PRESETS)}, not '{preset}'")
    table = C.load_yaml(configs_dir / "presets.yaml")
    kind = modality(comp)
    tier = "gpu" if machine.gpus else "cpu"
    try:
        listed = table[kind][tier][preset]
    except (KeyError, TypeError):
        raise UserError(f"configs/presets.yaml: no {kind} → {tier} → {preset} entry") from None
    why = [f"{comp.name} shows {kind}; this machine: {machine.summary()} → the {tier} list of PRESET={preset}"]
    if listed == "default":
        why.append(f"{preset} on a {tier} is the competition's default_models")
        listed = list(comp.default_models)
    models: list[str] = []
    min_gb = float(table.get("decoder_min_gpu_gb", 24))
    for m in listed:
        base = m.split("+")[0]
        path = configs_dir / "models" / f"{base}.yaml"
        if not path.exists():
            raise UserError(f"configs/presets.yaml: {kind} {tier} {preset} names '{m}', which has no configs/models/{base}.yaml")
        cfg = C.load_yaml(path)
        fam = cfg.get("family")
        if fam == "decoder_lora" and not any(g.bf16 and g.memory_gb >= min_gb for g in machine.gpus):
            why.append(f"{m}: left out — a LoRA decoder needs a GPU with bf16 and ≥ {min_gb:g} GB")
            continue
        repo = _hub_id(cfg)
        if repo and not _cached(repo):
            stand_in = (table.get("fallback") or {}).get(fam)
            if not stand_in:
                why.append(f"{m}: left out — {repo} is not in the local Hugging Face cache ({hub_cache()}) and its family has no packaged stand-in")
                continue
            why.append(f"{m}: {repo} is not in the local Hugging Face cache ({hub_cache()}); nothing is downloaded "
                       f"at run time → {stand_in} (packaged)")
            m = stand_in + m[len(base):]
        if m not in models:
            models.append(m)
    if not models:
        raise UserError(f"PRESET={preset} leaves no model on this machine: give MODELS=…")
    if len(machine.gpus) > 1:
        why.append(f"{len(machine.gpus)} GPUs: `make -j {len(machine.gpus)} all` trains {len(machine.gpus)} folds at once, one GPU each")
    return Resolved(preset, tuple(models), tuple(why))


@C.cli
def main(argv: list[str] | None = None) -> None:
    from medalist.core.competition import load_competition

    ap = argparse.ArgumentParser(prog="python -m medalist.presets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comp", required=True)
    ap.add_argument("--preset", default="good")
    ap.add_argument("--models", default="", help="MODELS given by hand (they win)")
    a = ap.parse_args(argv)
    comp = load_competition(a.comp)
    machine = describe()
    for p in PRESETS:
        r = resolve(comp, p, machine, C.configs_dir())
        mark = "→" if p == a.preset else " "
        print(f"{mark} PRESET={p}: MODELS=\"{' '.join(r.models)}\"")
        if p == a.preset:
            for line in r.why:
                print(f"    {line}")
    if a.models.strip():
        print(f"MODELS=\"{' '.join(a.models.split())}\" given by hand: it wins over PRESET")


if __name__ == "__main__":
    main()
