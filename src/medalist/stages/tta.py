"""`make tta`: test-time augmentation of one finished run, from its saved fold weights.

Reads   results/<comp>/<run>/ (config.yaml, oof.csv, test.csv, fold<k>/ weights),
        data/processed/<comp>/train.csv + test.csv, configs/ensemble.yaml (`tta:` section)
Writes  results/<comp>/<run>/tta/ — oof.csv, test.csv, metrics.json (last: the Make target)
Run     python -m medalist.stages.tta --comp demo --run tfidf

Views per text: the original; for models with a max length, head-only and tail-only
truncation and a sliding-window mean of texts longer than it (counted with the run's tokenizer,
or in words when none can be loaded); k nlpaug views with math spans protected. Validation rows
are predicted with their own fold's weights, test rows with every fold's (mean). The TTA mean is
used only where it raises the run's OOF score; otherwise tta/ holds the plain predictions, so
downstream stages can always read tta/. Nothing is retrained.
"""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.text import views as textviews  # TTA reuses augment's text views (DESIGN.md's one exception)
from medalist.core.competition import load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import prob_columns, probs_of, read_processed, read_run, write_csv, write_json
from medalist.core.metrics import better, score

View = Literal["head", "tail", "window", "nlpaug"]


@dataclasses.dataclass(frozen=True)
class Augmenter:
    """One nlpaug step of a TTA view (names as in configs/augment.yaml)."""

    name: Literal["swap", "delete", "crop", "spelling", "keyboard", "synonym", "contextual"]
    aug_p: float = 0.1
    aug_max: int = 2
    model_path: str | None = None  # contextual only: a local masked-LM folder


@dataclasses.dataclass(frozen=True)
class TTAConfig:
    views: tuple[View, ...] = ("head", "tail", "window", "nlpaug")
    nlpaug_k: int = 2
    augmenters: tuple[Augmenter, ...] = (Augmenter("synonym"),)
    window_stride: float = 0.5
    max_windows: int = 8
    seed: int = 42
    min_gain: float = 0.0

    def validate(self, where: str) -> None:
        if not 0 < self.window_stride <= 1:
            raise UserError(f"{where}: window_stride must be in (0, 1]")
        if self.max_windows < 1 or self.nlpaug_k < 0:
            raise UserError(f"{where}: max_windows must be ≥ 1 and nlpaug_k ≥ 0")


@dataclasses.dataclass(frozen=True)
class _File:
    tta: TTAConfig = TTAConfig()
    ensemble: dict[str, Any] = dataclasses.field(default_factory=dict)  # checked by medalist.stages.ensemble


def load_config() -> TTAConfig:
    return C.load(_File, C.configs_dir() / "ensemble.yaml").tta


# ---------------------------------------------------------------- math spans and truncation

WORD = re.compile(r"\S+")


def math_kept(original: str, view: str) -> bool:
    """Does `view` hold every math span of `original` byte for byte, in order?"""
    return textviews.holds_in_order(view, textviews.math_spans(original))


def _snap(pos: int, spans: list[tuple[int, int]], forward: bool) -> int:
    """Move a cut that falls inside a math span to that span's end (forward) or start."""
    for a, b in spans:
        if a < pos < b:
            return b if forward else a
    return pos


def truncation_views(text: str, tokens: list[tuple[int, int]], budget: int, stride: float,
                     max_windows: int) -> dict[str, list[str]]:
    """Head, tail and sliding windows of a text longer than `budget` tokens (char spans given).

    Cuts never split a math span, and every view is a slice of the original text, so any math
    it holds is byte-identical. A text within the budget has no truncation views.
    """
    n = len(tokens)
    if n <= budget:
        return {}
    spans = textviews.find_spans(text)
    head_end = _snap(tokens[budget - 1][1], spans, forward=False)
    if head_end == 0:  # the text opens with a math span longer than the budget: keep it whole
        head_end = _snap(tokens[budget - 1][1], spans, forward=True)
    tail_start = _snap(tokens[n - budget][0], spans, forward=True)
    if tail_start >= len(text):
        tail_start = tokens[n - budget][0]
    step = max(1, int(budget * stride))
    starts = list(range(0, n - budget + 1, step))
    if starts[-1] != n - budget:
        starts.append(n - budget)
    if len(starts) > max_windows:  # spread the allowed windows evenly over the text
        starts = [starts[int(i)] for i in np.linspace(0, len(starts) - 1, max_windows).round()]
    windows = []
    for s in starts:
        a = _snap(tokens[s][0], spans, forward=True)
        b = _snap(tokens[s + budget - 1][1], spans, forward=False)
        if b > a:
            windows.append(text[a:b])
    return {"head": [text[:head_end]], "tail": [text[tail_start:]], "window": windows or [text[:head_end]]}


def _token_spans(run_dir: Path, model: dict) -> tuple[Callable[[str], list[tuple[int, int]]], int | None, str]:
    """(text → token char spans, token budget, how counted) for the run's model.

    The run's own tokenizer when one loads offline (saved in fold0/, or the backbone named in the
    config); whitespace words otherwise. Families without max_length get no budget.
    """
    max_length = model.get("max_length")
    words = (lambda t: [m.span() for m in WORD.finditer(t)])
    if not isinstance(max_length, int):
        return words, None, "none"
    tok = _load_tokenizer(run_dir, model)
    if tok is None:
        return words, max_length, "words"
    budget = max_length - tok.num_special_tokens_to_add(pair=False)

    def spans(t: str) -> list[tuple[int, int]]:
        enc = tok(t, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return [tuple(o) for o in enc["offset_mapping"] if o[1] > o[0]]

    return spans, budget, "tokenizer"


def _load_tokenizer(run_dir: Path, model: dict):
    """The family's own tokenizer loader (fold0's saved tokenizer, else the backbone), or None."""
    from medalist.models.registry import family_module

    mod = family_module(model["family"])
    if not hasattr(mod, "load_tokenizer"):
        return None
    fold0 = run_dir / "fold0"
    try:
        cfg = C.from_dict(mod.Config, model, "config.yaml")
        tok = mod.load_tokenizer(cfg, fold0 if (fold0 / "tokenizer_config.json").exists() else None)
    except Exception:  # noqa: BLE001 — a tokenizer that cannot load offline: count words instead
        return None
    return tok if getattr(tok, "is_fast", False) else None  # offsets need a fast tokenizer


def nlpaug_views(texts: list[str], cfg: TTAConfig) -> list[list[str]]:
    """k nlpaug views per text, math protected (a view that cannot be made intact is the text)."""
    augs = []
    for a in cfg.augmenters:
        if a.name == "synonym" and not textviews.ensure_wordnet(C.root() / "data" / "nltk_data"):
            print("note: WordNet not installed (apt-get install wordnet-base wordnet-sense-index): "
                  "TTA skips synonyms")
            continue
        augs.append(textviews.build_augmenter(a.name, a.aug_p, a.aug_max, a.model_path))
    if not augs:
        return [[] for _ in texts]
    return textviews.augment_views(texts, augs, cfg.nlpaug_k, cfg.seed)


# ---------------------------------------------------------------- predicting views


@dataclasses.dataclass
class _Views:
    """Per text: view name → texts whose probabilities are averaged into that view."""

    per_text: list[dict[str, list[str]]]
    n_long: int = 0
    n_rejected: int = 0  # nlpaug views that changed math, replaced by the original text


def build_views(texts: list[str], cfg: TTAConfig, spans_of, budget: int | None) -> _Views:
    per_text: list[dict[str, list[str]]] = [{} for _ in texts]
    out = _Views(per_text)
    trunc = [v for v in cfg.views if v in ("head", "tail", "window")]
    if budget is not None and trunc:
        for i, t in enumerate(texts):
            tv = truncation_views(t, spans_of(t), budget, cfg.window_stride, cfg.max_windows)
            out.n_long += bool(tv)
            per_text[i].update({k: v for k, v in tv.items() if k in trunc})
    if "nlpaug" in cfg.views and cfg.nlpaug_k > 0 and texts:
        for i, (t, views) in enumerate(zip(texts, nlpaug_views(texts, cfg))):
            kept = []
            for v in views:
                if math_kept(t, v):
                    kept.append(v)
                else:
                    out.n_rejected += 1
                    kept.append(t)
            per_text[i]["nlpaug"] = kept
    return out


def predict_views(predict, views: _Views, plain: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Probabilities of every view, rows without that view keeping their plain probabilities."""
    unique: dict[str, int] = {}
    for d in views.per_text:
        for ts in d.values():
            for t in ts:
                unique.setdefault(t, len(unique))
    probs = predict(list(unique)) if unique else np.zeros((0, plain.shape[1]))
    out = {}
    for name in names:
        p = plain.copy()
        for i, d in enumerate(views.per_text):
            if d.get(name):
                p[i] = probs[[unique[t] for t in d[name]]].mean(axis=0)
        out[name] = p
    return out


def run(comp_name: str, run: str) -> Path:
    from medalist.models.registry import load_run_predictor

    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    cfg = load_config()
    run_dir = paths.run(run)
    oof, test_df, run_metrics = read_run(run_dir)
    train, test = read_processed(paths)
    model = C.load_yaml(run_dir / "config.yaml").get("model", {})
    try:
        oof = oof.set_index("id").loc[train["id"]].reset_index()
        test_df = test_df.set_index("id").loc[test["id"]].reset_index()
    except KeyError:
        raise UserError(f"{run_dir}: oof.csv/test.csv ids differ from data/processed/{comp.name}: "
                        f"retrain the run (`make train`)") from None
    y = train["label"].to_numpy()
    K = comp.n_classes
    plain_oof, plain_test = probs_of(oof), probs_of(test_df)
    spans_of, budget, counted = _token_spans(run_dir, model)
    names = [v for v in cfg.views if v == "nlpaug" or budget is not None]
    t0 = time.time()

    oof_views = {n: plain_oof.copy() for n in names}
    test_views = {n: np.zeros_like(plain_test) for n in names}
    n_folds = int(oof["fold"].max()) + 1
    te_views = build_views(test["text"].tolist(), cfg, spans_of, budget) if names else None
    n_long, n_rejected = (te_views.n_long, te_views.n_rejected) if te_views else (0, 0)
    for k in range(n_folds):
        if not names:
            break
        predict = load_run_predictor(run_dir, k, K)
        rows = np.flatnonzero(oof["fold"].to_numpy() == k)
        va_views = build_views(train["text"].iloc[rows].tolist(), cfg, spans_of, budget)
        n_long += va_views.n_long
        n_rejected += va_views.n_rejected
        for n, p in predict_views(predict, va_views, plain_oof[rows], names).items():
            oof_views[n][rows] = p
        for n, p in predict_views(predict, te_views, plain_test, names).items():
            test_views[n] += p / n_folds
        print(f"[{run}] tta fold {k}: {len(rows)} val rows, {len(test)} test rows")

    tta_oof = np.mean([plain_oof, *oof_views.values()], axis=0)
    tta_test = np.mean([plain_test, *test_views.values()], axis=0)
    plain_score = score(comp.metric, y, plain_oof)
    tta_score = score(comp.metric, y, tta_oof)
    gain = tta_score - plain_score
    use = bool(names) and better(comp.metric, tta_score, plain_score) and abs(gain) > cfg.min_gain
    if not use:
        tta_oof, tta_test = plain_oof, plain_test

    cols = prob_columns(K)
    out = run_dir / "tta"
    out_oof = pd.DataFrame(tta_oof, columns=cols)
    out_oof.insert(0, "fold", oof["fold"].to_numpy())
    out_oof.insert(0, "id", oof["id"].to_numpy())
    out_test = pd.DataFrame(tta_test, columns=cols)
    out_test.insert(0, "id", test_df["id"].to_numpy())
    write_csv(out / "oof.csv", out_oof)
    write_csv(out / "test.csv", out_test)
    fold = oof["fold"].to_numpy()
    final = tta_oof
    metrics = {
        "run": run,
        "metric": comp.metric,
        "plain_score": plain_score,
        "tta_score": tta_score,
        "gain": gain,
        "use_tta": use,
        "oof_score": score(comp.metric, y, final),
        "fold_scores": [score(comp.metric, y[fold == k], final[fold == k]) for k in range(n_folds)],
        "views": ["original", *names],
        "view_scores": {n: score(comp.metric, y, p) for n, p in oof_views.items()},
        "length_counted_in": counted,
        "token_budget": budget,
        "n_long_texts": n_long,
        "nlpaug_views_rejected": n_rejected,
        "predict_seconds": time.time() - t0,
        "peak_rss_mb": C.peak_rss_mb(),
        "train_seconds": run_metrics.get("train_seconds"),
        "config": C.to_dict(cfg),
        "git_sha": C.git_sha(),
    }
    metrics["fold_std"] = float(np.std(metrics["fold_scores"]))
    write_json(out / "metrics.json", metrics)
    verdict = "used" if use else "not used"
    print(f"[{run}] TTA {comp.metric} {tta_score:.4f} vs plain {plain_score:.4f} (gain {gain:+.4f}): {verdict}")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.tta", __doc__)
    ap.add_argument("--run", required=True)
    a = ap.parse_args(argv)
    run(a.comp, a.run)


if __name__ == "__main__":
    main()
