"""Stage `pretrain`: continued masked-LM training of a text backbone on the competition's own
unlabelled texts (in-domain pretraining), for model configs that name `backbone: pretrain:<name>`.

Reads:  configs/pretrain/<name>.yaml (backbone, max_length, mlm_probability and the engine's knobs);
        configs/competitions/<comp>.yaml (pretrain_on_test: may the test texts be read — rules differ);
        data/processed/<comp>/train.csv, and test.csv where allowed
Writes: results/<comp>/pretrain/<name>/ — the backbone (save_pretrained of the masked-LM model and
        its tokenizer), config.yaml (resolved), done.json last (the Make target: the key the
        backbone was trained for, texts, loss per epoch); ckpt/ while it trains (a killed run
        resumes from its last epoch); TensorBoard events in logs/<comp>/pretrain/<name>/
Run:    make pretrain COMP=demo MODEL=minilm
        (= accelerate launch --config_file accelerate_config.yaml -m medalist.stages.pretrain --comp demo --model minilm)

No label is read: the validation folds' texts are seen as the test's may be, unlabelled. A run on
the backbone hashes done.json's key into its folds, so a new pretraining retrains them; the same
key again (the config and texts unchanged) trains nothing and leaves the backbone as it is.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import pandas as pd

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import read_json, read_processed, write_json, write_text
from medalist.core.locks import stage_lock
from medalist.models.backbones import pretrain_key, pretrained_dir, resolve
from medalist.models.families import mlm


def load_config(name: str) -> mlm.Config:
    path = C.configs_dir() / "pretrain" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"unknown pretraining config '{name}': no {path} (known: {', '.join(known) or 'none'})")
    return C.load(mlm.Config, path)


def corpus(comp: Competition, cfg: mlm.Config, train: pd.DataFrame, test: pd.DataFrame) -> list[str]:
    """The texts to pretrain on: train's (and test's where the competition allows it), each once,
    capped at max_train_rows (a seeded draw)."""
    if "text" not in comp.inputs.kinds:
        raise UserError(f"competition '{comp.name}' declares no text input: nothing to pretrain a text backbone on")
    parts = [train["text"], test["text"]] if comp.pretrain_on_test else [train["text"]]
    texts = pd.Series(pd.unique(pd.concat(parts, ignore_index=True).fillna("").astype(str)))
    texts = texts[texts.str.strip() != ""]
    if cfg.max_train_rows and len(texts) > cfg.max_train_rows:
        texts = texts.sample(n=cfg.max_train_rows, random_state=cfg.seed)
    return texts.tolist()


def pretraining_key(cfg: mlm.Config, comp: str, texts: list[str]) -> str:
    """What a finished backbone must match to be kept: its config, what it started from, the texts."""
    start = {"backbone": cfg.backbone, "key": pretrain_key(cfg.backbone, comp)}  # a pretrain:<other> start
    h = hashlib.sha256(json.dumps([C.to_dict(cfg), start], sort_keys=True).encode())
    h.update("\n\x00".join(texts).encode())
    return h.hexdigest()[:16]


def run(comp_name: str, name: str) -> Path:
    from accelerate import PartialState

    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    cfg = load_config(name)
    train, test = read_processed(paths)
    texts = corpus(comp, cfg, train, test)
    key = pretraining_key(cfg, comp.name, texts)
    out = pretrained_dir(comp.name, name)
    done = out / "done.json"
    state = PartialState()
    # one process per pretraining at a time (under accelerate only the main one locks)
    lock = (stage_lock(paths, f"pretrain-{name}", [(out, ".*.tmp")]) if state.is_main_process
            else contextlib.nullcontext())
    with lock:
        state.wait_for_everyone()
        if done.exists() and read_json(done).get("key") == key:
            if state.is_main_process:  # rewritten as it was: make sees the target up to date
                write_json(done, read_json(done))
                print(f"pretrain {name}: up to date ({out})")
            return out
        if state.is_main_process:  # a killed retraining must not leave the old done.json beside new weights
            done.unlink(missing_ok=True)
            write_text(out / "config.yaml", _yaml({"pretrain": name, "competition": comp.name, "key": key,
                                                   "pretrain_on_test": comp.pretrain_on_test,
                                                   "config": C.to_dict(cfg)}))
            print(f"pretrain {name}: {len(texts)} texts ({'train and test' if comp.pretrain_on_test else 'train'}) "
                  f"→ {out}")
        state.wait_for_everyone()
        t0 = time.time()
        info = mlm.fit(cfg, resolve(cfg.backbone, comp.name), texts, out, paths.logs / "pretrain" / name)
        if state.is_main_process:
            losses = [h["loss"] for h in info.get("history", [])]
            write_json(done, {"key": key, "backbone": cfg.backbone, "n_texts": len(texts),
                              "pretrain_on_test": comp.pretrain_on_test, "seconds": time.time() - t0,
                              "losses": losses, "git_sha": C.git_sha(),
                              "info": {k: v for k, v in info.items() if k != "history"}})
            print(f"pretrain {name}: masked-LM loss per epoch " + " ".join(f"{x:.3f}" for x in losses))
        state.wait_for_everyone()
    return out


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.pretrain", __doc__)
    ap.add_argument("--model", required=True, help="a pretraining config: configs/pretrain/<name>.yaml")
    a = ap.parse_args(argv)
    run(a.comp, a.model)


if __name__ == "__main__":
    main()
