"""`make tta`: test-time augmentation of one finished run, from its saved fold weights.

Reads   results/<comp>/<run>/ (config.yaml, oof.csv, test.csv, fold<k>/ weights),
        data/processed/<comp>/train.csv + test.csv, configs/tta.yaml
Writes  results/<comp>/<run>/tta/ — oof.csv, test.csv, metrics.json (last: the Make target)
Run     python -m medalist.stages.tta --comp demo --run tfidf

Views per text: the original; for models with a max length, head-only and tail-only
truncation and a sliding-window mean of texts longer than it (counted with the run's tokenizer,
or in words when none can be loaded); k nlpaug views with math spans protected. Views per image
(a run that reads images, alone or beside text — the text stays as it is; rows without an image
keep their prediction): the original and a fixed set from tta.yaml's `image:` —
horizontal flip, vertical flip where listed, centre and corner crops, a larger scale — never a
search over subsets. Validation rows are predicted with their own fold's weights, test rows with
every fold's (mean). The TTA mean is used only where it raises the run's OOF score (images: by at
least `image.min_gain`); otherwise tta/ holds the plain predictions, so downstream stages can
always read tta/. Nothing is retrained.
"""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
import pandas as pd

from medalist.core.config import AtLeastOne, NonNegative, Paths, Range, stage_parser, UserError
from medalist.core import config as C
# TTA reuses augment's text views (DESIGN.md's one exception)
from medalist.text import augmenters, math_spans, views
from medalist.core.competition import load_competition
from medalist.core.io import align, proba_frame, read_processed, read_run, write_csv, write_json
from medalist.core.metrics import better, score
from medalist.image import augment as image_views

View = Literal["head", "tail", "window", "nlpaug"]


@dataclasses.dataclass(frozen=True)
class Augmenter:
    """One nlpaug step of a TTA view (names as in configs/augment.yaml)."""

    name: Literal["swap", "delete", "crop", "spelling", "keyboard", "synonym", "contextual"]
    aug_p: Annotated[float, Range(gt=0, le=1)] = 0.1
    aug_max: Annotated[int, AtLeastOne] = 2
    model_path: str | None = None  # contextual only: a local masked-LM folder


@dataclasses.dataclass(frozen=True)
class ImageTTA:
    """The views of an image run: a fixed set, averaged with the original."""

    views: tuple[image_views.ViewSet, ...] = ("hflip", "crops", "scale")
    crop: Annotated[float, Range(gt=0.5, lt=1)] = 0.875  # share of the side a crop keeps (resized back)
    scale: Annotated[float, Range(gt=1, le=2)] = 1.15  # factor on the input size of the `scale` view
    min_gain: Annotated[float, Range(ge=0, le=1)] = 0.002  # views are used only if the OOF gains at least this


@dataclasses.dataclass(frozen=True)
class TTAConfig:
    views: tuple[View, ...] = ("head", "tail", "window")  # + "nlpaug": k augmented copies of every text
    nlpaug_k: Annotated[int, NonNegative] = 2
    augmenters: tuple[Augmenter, ...] = (Augmenter("synonym"),)
    window_stride: Annotated[float, Range(gt=0, le=1)] = 0.5
    max_windows: Annotated[int, AtLeastOne] = 8
    seed: Annotated[int, NonNegative] = 42
    min_gain: Annotated[float, Range(ge=-1, le=1)] = 0.0
    image: ImageTTA = ImageTTA()


def load_config() -> TTAConfig:
    return C.load(TTAConfig, C.configs_dir() / "tta.yaml")


# ---------------------------------------------------------------- math spans and truncation

WORD = re.compile(r"\S+")


def math_kept(original: str, view: str) -> bool:
    """Does `view` hold every math span of `original` byte for byte, in order?"""
    return math_spans.holds_in_order(view, math_spans.math_spans(original))


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
    spans = math_spans.find_spans(text)
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


def _token_spans(run_dir: Path, model) -> tuple[Callable[[str], list[tuple[int, int]]], int | None, str]:
    """(text → token char spans, token budget, how counted) for the run's model config.

    The run's own tokenizer when one loads offline (saved in fold0/, or the config's backbone);
    whitespace words otherwise. Models without a tokenizer (not `Tokenized`) get no budget.
    """
    from medalist.models import Tokenized

    words = (lambda t: [m.span() for m in WORD.finditer(t)])
    if not isinstance(model, Tokenized):
        return words, None, "none"
    tok = _load_tokenizer(run_dir, model)
    if tok is None:
        return words, model.max_length, "words"
    budget = model.max_length - tok.num_special_tokens_to_add(pair=False)

    def spans(t: str) -> list[tuple[int, int]]:
        enc = tok(t, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        return [tuple(o) for o in enc["offset_mapping"] if o[1] > o[0]]

    return spans, budget, "tokenizer"


def _load_tokenizer(run_dir: Path, model):
    """fold0's saved tokenizer, else the backbone's, from local files; None if neither loads."""
    from medalist.models.backbones import load_tokenizer_offline

    fold0 = run_dir / "fold0"
    try:
        tok = load_tokenizer_offline(str(fold0) if (fold0 / "tokenizer_config.json").exists() else model.backbone)
    except Exception:  # noqa: BLE001 — a tokenizer that cannot load offline: count words instead
        return None
    return tok if tok.is_fast else None  # offsets need a fast tokenizer


def nlpaug_views(texts: list[str], cfg: TTAConfig) -> list[list[str]]:
    """k nlpaug views per text, math protected (a view that cannot be made intact is the text)."""
    augs = []
    for a in cfg.augmenters:
        if a.name == "synonym" and not augmenters.ensure_wordnet(C.root() / "data" / "nltk_data"):
            print("note: WordNet not installed (apt-get install wordnet-base wordnet-sense-index): "
                  "TTA skips synonyms")
            continue
        augs.append(augmenters.build_augmenter(a.name, a.aug_p, a.aug_max, a.model_path))
    if not augs:
        return [[] for _ in texts]
    return views.augment_views(texts, augs, cfg.nlpaug_k, cfg.seed)


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
    rows = pd.DataFrame({"id": [f"view-{i}" for i in range(len(unique))], "text": list(unique)})
    probs = predict(rows) if unique else np.zeros((0, plain.shape[1]))
    out = {}
    for name in names:
        p = plain.copy()
        for i, d in enumerate(views.per_text):
            if d.get(name):
                p[i] = probs[[unique[t] for t in d[name]]].mean(axis=0)
        out[name] = p
    return out


def _text_views(run_dir: Path, run: str, model, cfg: TTAConfig, train: pd.DataFrame, test: pd.DataFrame,
                fold: np.ndarray, plain_oof: np.ndarray, plain_test: np.ndarray, K: int):
    """(view names, OOF per view, test per view, facts for metrics.json) of a text run."""
    from medalist.models.registry import load_run_predictor

    n_folds = int(fold.max()) + 1
    spans_of, budget, counted = _token_spans(run_dir, model)
    names = [v for v in cfg.views if v == "nlpaug" or budget is not None]
    if names and tuple(model.inputs) != ("text",):  # views are of the text alone
        print(f"note: TTA views change text only; {run} reads {list(model.inputs)}: plain predictions kept")
        names = []

    oof_views = {n: plain_oof.copy() for n in names}
    test_views = {n: np.zeros_like(plain_test) for n in names}
    te_views = build_views(test["text"].tolist(), cfg, spans_of, budget) if names else None
    n_long, n_rejected = (te_views.n_long, te_views.n_rejected) if te_views else (0, 0)
    for k in range(n_folds):
        if not names:
            break
        predict = load_run_predictor(run_dir, k, K)
        rows = np.flatnonzero(fold == k)
        va_views = build_views(train["text"].iloc[rows].tolist(), cfg, spans_of, budget)
        n_long += va_views.n_long
        n_rejected += va_views.n_rejected
        for n, p in predict_views(predict, va_views, plain_oof[rows], names).items():
            oof_views[n][rows] = p
        for n, p in predict_views(predict, te_views, plain_test, names).items():
            test_views[n] += p / n_folds
        print(f"[{run}] tta fold {k}: {len(rows)} val rows, {len(test)} test rows")

    return names, oof_views, test_views, {"length_counted_in": counted, "token_budget": budget,
                                          "n_long_texts": n_long, "nlpaug_views_rejected": n_rejected}


def _image_views(run_dir: Path, run: str, cfg: ImageTTA, paths: Paths, train: pd.DataFrame, test: pd.DataFrame,
                 fold: np.ndarray, plain_oof: np.ndarray, plain_test: np.ndarray, K: int):
    """(view names, OOF per view, test per view, facts for metrics.json) of an image run: every
    view of tta.yaml, predicted from the competition's decode-once image cache."""
    import inspect

    from medalist.models.registry import load_run_predictor

    n_folds = int(fold.max()) + 1
    wanted = image_views.views(cfg.views, cfg.crop, cfg.scale)
    oof_views = {v.name: plain_oof.copy() for v in wanted}
    test_views = {v.name: np.zeros_like(plain_test) for v in wanted}
    for k in range(n_folds):
        predict = load_run_predictor(run_dir, k, K)
        if "view" not in inspect.signature(predict).parameters:
            print(f"note: {run}'s family predicts no image views: plain predictions kept")
            return [], {}, {}, {}
        rows = np.flatnonzero(fold == k)
        for v in wanted:
            oof_views[v.name][rows] = predict(train.iloc[rows], view=v, data_dir=paths.processed)
            test_views[v.name] += predict(test, view=v, data_dir=paths.processed) / n_folds
        print(f"[{run}] tta fold {k}: {len(wanted)} views of {len(rows)} val rows and {len(test)} test rows")
    return [v.name for v in wanted], oof_views, test_views, {"image_views": list(cfg.views)}


def test_tta(run_dir: Path, model, cfg: TTAConfig, names: list[str], predictors: list, test: pd.DataFrame,
             plain: np.ndarray) -> np.ndarray:
    """The TTA mean of test rows from a finished run's chosen views (`names`, as its
    tta/metrics.json lists them after "original"), given the fold predictors and the plain
    fold-mean probabilities: what `run` computes for test.csv, for rows it has never seen (a code
    competition's hidden test). Every view is made from its own row alone."""
    if not names:
        return plain
    n = len(predictors)
    out = {name: np.zeros_like(plain) for name in names}
    if "image" in model.inputs:
        wanted = [v for v in image_views.views(cfg.image.views, cfg.image.crop, cfg.image.scale) if v.name in names]
        for predict in predictors:
            for v in wanted:
                out[v.name] += predict(test, view=v) / n
    else:
        spans_of, budget, _ = _token_spans(run_dir, model)
        te_views = build_views(test["text"].tolist(), cfg, spans_of, budget)
        for predict in predictors:
            for name, p in predict_views(predict, te_views, plain, names).items():
                out[name] += p / n
    return np.mean([plain, *out.values()], axis=0)


def run(comp_name: str, run: str) -> Path:
    from medalist.models.registry import family_module

    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    cfg = load_config()
    run_dir = paths.run(run)
    oof, test_df, run_metrics = read_run(run_dir)
    train, test = read_processed(paths)
    model_dict = C.load_yaml(run_dir / "config.yaml")["model"]
    model = C.from_dict(family_module(model_dict["family"]).Config, model_dict, f"{run_dir}/config.yaml")
    try:
        plain_oof, plain_test = align(oof, train["id"]), align(test_df, test["id"])
    except UserError:
        raise UserError(f"{run_dir}: oof.csv/test.csv ids differ from data/processed/{comp.name}: "
                        f"retrain the run (`make train`)") from None
    y = train["label"].to_numpy()
    fold = train["fold"].to_numpy()  # the fold each OOF row was predicted in (train wrote it from here)
    K = comp.n_classes
    n_folds = int(fold.max()) + 1
    t0 = time.time()
    reads_images = "image" in model.inputs
    if reads_images:
        names, oof_views, test_views, extra = _image_views(run_dir, run, cfg.image, paths, train, test, fold,
                                                           plain_oof, plain_test, K)
    else:
        names, oof_views, test_views, extra = _text_views(run_dir, run, model, cfg, train, test, fold,
                                                          plain_oof, plain_test, K)

    tta_oof = np.mean([plain_oof, *oof_views.values()], axis=0)
    tta_test = np.mean([plain_test, *test_views.values()], axis=0)
    plain_score = score(comp.metric, y, plain_oof)
    tta_score = score(comp.metric, y, tta_oof)
    gain = tta_score - plain_score
    margin = abs(gain) >= cfg.image.min_gain if reads_images else abs(gain) > cfg.min_gain
    use = bool(names) and better(comp.metric, tta_score, plain_score) and margin
    if not use:
        tta_oof, tta_test = plain_oof, plain_test

    out = run_dir / "tta"
    write_csv(out / "oof.csv", proba_frame(train["id"], tta_oof, fold))
    write_csv(out / "test.csv", proba_frame(test["id"], tta_test))
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
        **extra,
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
