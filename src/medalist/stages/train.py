"""`make train MODELS="…" [USE_GEN=1 | GEN=aug,llm,pseudo] [FOLDS=0,1]`: k-fold training of one model config.

Reads   configs/models/<model>.yaml (with the competition config's model_overrides.<model>), data/processed/<comp>/train.csv + test.csv,
        data/generated/<comp>/generated_train.csv (only with --use-gen: every source, or --gen: those named),
        results/<comp>/pretrain/<name>/done.json (only for a `backbone: pretrain:<name>`)
Writes  results/<comp>/<run>/ — config.yaml, fold<k>/ (weights + val.csv, test.csv, done.json),
        and, once every fold is done, oof.csv, test.csv, metrics.json (metrics.json last: it is
        the Make target). <run> = <model>, <model>+gen (USE_GEN=1) or e.g. <model>+aug+pseudo (GEN=aug,pseudo).
Run     python -m medalist.stages.train --comp demo --model tfidf
        accelerate launch --config_file accelerate_config.yaml -m medalist.stages.train … (neural models)

Each fold hands the family rows (FoldData): id plus the processed columns the model config's
`inputs` names (default [text]), which the competition must declare; metrics.json records them.
A killed run restarts at the first unfinished fold; a fold whose done.json carries another
config hash is retrained (the hash covers, by content (`core.cache`), the processed tables, the
images they name, the family's code, the generated rows chosen and a pretrained backbone's key). A --folds subset trains and scores those folds only and leaves the run unfinished, so a
later full run reuses them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core import generated
from medalist.core.cache import file_digest, file_digests, key, source_digest
from medalist.core.competition import load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import align, proba_frame, read_json, read_processed, write_csv, write_json, write_text
from medalist.core.locks import stage_lock
from medalist.core.metrics import score
from medalist.core.runtime import current_threads
from medalist.models import FoldData, Tokenized
from medalist.models.backbones import pretrain_key
from medalist.models.registry import load_model_config
from medalist.text.dedup import near_duplicates


def run_name(model: str, use_gen: bool, gen: tuple[str, ...] = ()) -> str:
    return model + generated.suffix(use_gen, gen)


def _state():
    from accelerate import PartialState

    return PartialState()


def _gen_for_fold(gen: pd.DataFrame, k: int, val_texts: pd.Series, threshold: float) -> tuple[pd.DataFrame, dict[str, int]]:
    """The generated rows fold k trains on: those whose `folds` names k, less any that
    near-duplicates one of fold k's validation texts (correctness rule 5, for every source: an
    augmented child can copy a row of another fold than its parent's). Also what was dropped, by source."""
    sets = gen["folds"].astype(str).str.split(";")
    g = gen[sets.map(lambda s: str(k) in s)]
    near = near_duplicates(g["text"].astype(str).tolist(), val_texts.astype(str).tolist(), threshold)
    dropped = {str(s): int(c) for s, c in g.loc[near, "source"].value_counts().sort_index().items()}
    return g[~near], dropped


def run(comp_name: str, model: str, use_gen: bool = False, folds: list[int] | None = None,
        gen_sources: tuple[str, ...] = (), merge: bool = False) -> Path:
    """use_gen: train on every generated source; gen_sources: on those named (e.g. ("aug", "pseudo"));
    folds: train these only (the run's files wait for all); merge: train nothing, only write the
    run's files from its finished folds (a fold not finished under this config is an error)."""
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    load_model_config(model, comp)  # a config error is the first thing said, before any data is read
    state = _state()
    train, test = read_processed(paths)
    mod, cfg, name, cols, gen, resolved, cfg_hash = resolve_run(comp, paths, model, use_gen, gen_sources, train, test)
    run_dir = paths.run(name)
    n_folds = int(train["fold"].max()) + 1
    todo = list(range(n_folds)) if folds is None else folds
    bad = [k for k in todo if k not in range(n_folds)]
    if bad:
        raise UserError(f"FOLDS={','.join(map(str, todo))}: fold {bad[0]} does not exist (0..{n_folds - 1})")
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", _yaml(resolved))

    for k in todo:
        fold_dir = run_dir / f"fold{k}"
        done = fold_dir / "done.json"
        # one process per fold at a time (the folds of a run are make targets of their own and may
        # train side by side under make -j); what a killed one left (half-written weights) goes
        # first. Under accelerate only the main process locks; the others wait at the barrier.
        lock = (stage_lock(paths, f"train-{name}-fold{k}", [(fold_dir, ".*.tmp")])
                if state.is_main_process else contextlib.nullcontext())
        with lock:
            state.wait_for_everyone()
            if done.exists() and read_json(done).get("config_hash") == cfg_hash:
                if state.is_main_process:
                    os.utime(done)  # still good: make, which asked because a prerequisite is newer, sees it so
                    print(f"[{name}] fold {k}: done, skipped ({read_json(done)['score']:.4f})")
                continue
            if merge:
                raise UserError(f"[{name}] fold {k} is not finished under this config: run `make train`")
            tr = train[train["fold"] != k]
            if cfg.max_train_rows and len(tr) > cfg.max_train_rows:
                tr = tr.sample(n=cfg.max_train_rows, random_state=cfg.seed)
            va = train[train["fold"] == k]
            n_gen: dict[str, int] = {}
            n_dropped: dict[str, int] = {}
            rows, labels = tr[cols], tr["label"].to_numpy()
            if gen is not None:
                g, n_dropped = _gen_for_fold(gen, k, va["text"], comp.folds.near_dup_threshold)
                n_gen = {str(s): int(c) for s, c in g["source"].value_counts().sort_index().items()}
                rows = pd.concat([rows, g[cols]])
                labels = np.concatenate([labels, g["label"].to_numpy(dtype=int)])
            fold = FoldData(
                fold=k, n_classes=comp.n_classes, train=rows.reset_index(drop=True), train_labels=labels,
                val=va[cols].reset_index(drop=True), val_labels=va["label"].to_numpy(),
                test=test[cols].reset_index(drop=True), metric=comp.metric, log_dir=paths.logs / name / f"fold{k}",
                data_dir=paths.processed,
            )
            t0 = time.time()
            res = mod.fit_fold(cfg, fold, fold_dir)
            seconds = time.time() - t0
            if state.is_main_process:
                s = score(comp.metric, fold.val_labels, res.val_proba)
                write_csv(fold_dir / "val.csv", proba_frame(fold.val_ids, res.val_proba, k))
                write_csv(fold_dir / "test.csv", proba_frame(fold.test_ids, res.test_proba))
                write_json(done, {"config_hash": cfg_hash, "fold": k, "score": s, "seconds": seconds,
                                  "n_train": len(tr), "n_generated": n_gen,
                                  "n_generated_dropped": n_dropped, "peak_rss_mb": C.peak_rss_mb(),
                                  "threads": current_threads(), "info": res.info})
                print(f"[{name}] fold {k}: {comp.metric} {s:.4f}  ({seconds:.1f}s, {len(rows)} train rows)")
            state.wait_for_everyone()

    if state.is_main_process and folds is None:  # the run's own files, from every fold's
        with stage_lock(paths, f"train-{name}", [(run_dir, ".*.tmp")]):
            _assemble(comp, train, test, run_dir, name, n_folds, cfg.inputs)
    elif state.is_main_process:
        finished = sum((run_dir / f"fold{k}" / "done.json").exists()
                       and read_json(run_dir / f"fold{k}" / "done.json").get("config_hash") == cfg_hash
                       for k in range(n_folds))
        print(f"[{name}] {finished}/{n_folds} folds done; `make train` without FOLDS finishes the run")
    return run_dir


def resolve_run(comp, paths: Paths, model: str, use_gen: bool, gen_sources: tuple[str, ...],
                train: pd.DataFrame, test: pd.DataFrame):
    """What one run is: its family module, config, name, input columns, generated rows, the
    resolved record (config.yaml) and the hash a finished fold carries (`make all BUDGET=`
    reads it too: a fold finished under this hash costs nothing)."""
    mod, cfg = load_model_config(model, comp)
    name = run_name(model, use_gen, gen_sources)
    with_gen = use_gen or bool(gen_sources)
    cols = ["id", *_inputs(comp, model, cfg, train, with_gen)]
    gen = generated.read_train_rows(paths, generated.SOURCES if use_gen else gen_sources) if with_gen else None

    resolved = {"run": name, "competition": comp.name, "use_gen": use_gen, "model": C.to_dict(cfg),
                # new processed tables (other data, cleaning or folds), a replaced image or new code of the
                # family (`core.cache`) retrain every fold: a finished fold of the old is not a fold of the new
                "data_digest": key(file_digest(paths.processed / "train.csv"), file_digest(paths.processed / "test.csv"),
                                   _image_digests(train, test) if "image" in cols else None),
                "source_digest": source_digest(mod.__name__)}
    if gen is not None:  # new generated rows retrain the folds; unchanged ones keep them
        resolved["generated"] = {"sources": sorted(set(generated.kind(gen["source"]))), "rows": len(gen),
                                 "digest": generated.digest(gen),
                                 "near_dup_threshold": comp.folds.near_dup_threshold}
    if isinstance(cfg, Tokenized) and (pre := pretrain_key(cfg.backbone, comp.name)):  # a new pretraining retrains too
        resolved["pretrain_key"] = pre
    cfg_hash = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
    return mod, cfg, name, cols, gen, resolved, cfg_hash


def _image_digests(train: pd.DataFrame, test: pd.DataFrame) -> str:
    """The bytes of every image the tables name: the tables hold paths only."""
    paths = sorted({p for p in (*train["image"], *test["image"]) if isinstance(p, str) and p})
    return key(paths, file_digests(paths))


def _inputs(comp, model: str, cfg, train: pd.DataFrame, with_gen: bool) -> tuple[str, ...]:
    """The processed columns the model reads, checked against what the competition provides."""
    missing = [i for i in cfg.inputs if i not in comp.inputs.kinds]
    if missing:
        raise UserError(f"model '{model}' reads {list(cfg.inputs)} but competition '{comp.name}' declares "
                        f"inputs {list(comp.inputs.kinds)}: train a model whose `inputs:` it provides")
    stale = [i for i in cfg.inputs if i not in train.columns]
    if stale:
        raise UserError(f"data/processed/{comp.name}/train.csv has no '{stale[0]}' column: "
                        f"rebuild it with `make folds COMP={comp.name}`")
    if with_gen and set(cfg.inputs) - {"text"}:
        raise UserError(f"USE_GEN=1 / GEN: generated rows hold text only, model '{model}' reads {list(cfg.inputs)}")
    return cfg.inputs


def _assemble(comp, train: pd.DataFrame, test: pd.DataFrame, run_dir: Path, name: str, n_folds: int,
              inputs: tuple[str, ...]) -> None:
    vals, tests, dones = [], [], []
    for k in range(n_folds):
        vals.append(pd.read_csv(run_dir / f"fold{k}" / "val.csv", dtype={"id": str}))
        tests.append(pd.read_csv(run_dir / f"fold{k}" / "test.csv", dtype={"id": str}))
        dones.append(read_json(run_dir / f"fold{k}" / "done.json"))
    oof_p = align(pd.concat(vals), train["id"])
    test_p = np.mean([align(t, test["id"]) for t in tests], axis=0)
    oof_score = score(comp.metric, train["label"].to_numpy(), oof_p)
    infos = [d["info"] for d in dones]
    metrics = {
        "run": name,
        "metric": comp.metric,
        "inputs": list(inputs),
        "oof_score": oof_score,
        "fold_scores": [d["score"] for d in dones],
        "fold_std": float(np.std([d["score"] for d in dones])),
        "n_train": int(len(train)),
        "n_generated": [d["n_generated"] for d in dones],
        # rule 5: generated rows left out of fold k's training as near duplicates of its validation rows
        "n_generated_dropped": [d.get("n_generated_dropped", {}) for d in dones],  # none in folds finished before it counted
        "train_seconds": float(sum(d["seconds"] for d in dones)),
        "predict_seconds": float(sum(i.get("predict_seconds", 0.0) for i in infos)),
        "train_samples_per_s": _mean([i.get("train_samples_per_s") for i in infos]),
        "peak_rss_mb": max(d["peak_rss_mb"] for d in dones),
        "threads": max(d.get("threads", 0) for d in dones),
        # seed averaging: each seed's fold scores (the fold's probabilities are their mean)
        "seed_fold_scores": ({str(seed): [i["seed_scores"][j] for i in infos] for j, seed in enumerate(infos[0]["seeds"])}
                             if all("seed_scores" in i for i in infos) else None),  # per process: cores / (make jobs x processes)
        "peak_gpu_mb": max([i.get("peak_gpu_mb", 0.0) for i in infos] or [0.0]),
        "optimistic": any(i.get("optimistic", False) for i in infos),
        "device": infos[0].get("device", "cpu"),
        "git_sha": C.git_sha(),
        "versions": C.versions(),
    }
    write_csv(run_dir / "oof.csv", proba_frame(train["id"], oof_p, train["fold"].to_numpy()))
    write_csv(run_dir / "test.csv", proba_frame(test["id"], test_p))
    write_json(run_dir / "metrics.json", metrics)
    print(f"[{name}] OOF {comp.metric} {oof_score:.4f}  folds: "
          + " ".join(f"{s:.4f}" for s in metrics["fold_scores"]))


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def parse_folds(s: str | None) -> list[int] | None:
    if not s:
        return None
    try:
        return [int(x) for x in s.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UserError(f"FOLDS={s!r}: expected comma-separated fold numbers like 0,1") from None


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.train", __doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--use-gen", action="store_true", help="train on every generated source too (run suffix +gen)")
    ap.add_argument("--gen", default="", help="train on these generated sources too, e.g. aug,pseudo")
    ap.add_argument("--folds", default=None, help="comma-separated subset, e.g. 0,1")
    ap.add_argument("--merge", action="store_true", help="only write oof.csv, test.csv, metrics.json from the finished folds")
    a = ap.parse_args(argv)
    run(a.comp, a.model, a.use_gen, parse_folds(a.folds), generated.parse_sources(a.gen) if a.gen else (), a.merge)


if __name__ == "__main__":
    main()
