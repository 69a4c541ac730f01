"""`make ensemble`: blend finished runs with weights fitted on their OOF predictions.

Reads   results/<comp>/<run>/oof.csv + test.csv of exactly the runs named (their tta/ files with
        --tta), data/processed/<comp>/train.csv (labels, folds; test.csv for --exact-match),
        data/raw/<comp>/sample_submission.csv, configs/ensemble.yaml
Writes  results/<comp>/ensemble/ — weights.json, oof.csv, test.csv, metrics.json (last: the
        Make target); submission/<comp>/submission.csv (validated) + submission.json
Run     python -m medalist.stages.ensemble --comp demo --runs "tfidf minilm" [--tta]

Candidate methods, simplest first: the best single run (so the ensemble never loses to its best
member by construction), mean of probabilities, mean of ranks, Caruana greedy selection with
replacement, log-loss-optimal weights (scipy, on the simplex), stacking (level-2 logistic
regression). Each is followed by the metric's decision rule fitted on the same rows: macro-F1 →
per-class probability multipliers, log-loss → temperature, micro-F1/accuracy → argmax.
Honest CV: a method's CV score fits it on K−1 folds' OOF and scores the held-out fold; the
reported nested score also picks the method inside each outer fold by an inner CV, so the choice
of method is not scored on the rows it was chosen with. oof.csv holds those nested predictions.
Choosing: among the methods whose CV score lies within one standard error (of the best method's
fold scores) of the best, the simplest wins — on a 1.5k-row demo the differences between blends
are noise, and a noisy pick costs more than it gains.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Literal

import joblib
import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from medalist.core.config import AtLeastOne, NonNegative, Paths, Positive, stage_parser, UserError
from medalist.core import config as C
from medalist.core.competition import load_competition, write_submission
from medalist.core.io import align, atomic_path, proba_frame, read_processed, read_run, write_csv, write_json
from medalist.core.metrics import better, score
from medalist.text.clean import normalise

Method = Literal["best", "mean", "rank", "caruana", "optimise", "stack"]  # simplest first
EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    methods: tuple[Method, ...] = ("best", "mean", "rank", "caruana", "optimise", "stack")  # simplest first
    caruana_iters: Annotated[int, AtLeastOne] = 100
    stack_C: Annotated[float, Positive] = 1.0
    multiplier_grid: tuple[float, ...] = (0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
    multiplier_passes: Annotated[int, AtLeastOne] = 2
    exact_match: bool = False
    seed: Annotated[int, NonNegative] = 42

    def validate(self, where: str) -> None:
        if not self.methods:
            raise UserError(f"{where}: methods is empty")
        if not self.multiplier_grid or any(g <= 0 for g in self.multiplier_grid):
            raise UserError(f"{where}: multiplier_grid must be a non-empty list of positive numbers")


def load_config() -> EnsembleConfig:
    return C.load(EnsembleConfig, C.configs_dir() / "ensemble.yaml")


# ---------------------------------------------------------------- blending methods
# P is (R, n, K): R runs' probabilities for n rows. A fitted method is a dict of parameters.


def _blend(w: np.ndarray, P: np.ndarray) -> np.ndarray:
    return np.tensordot(w, P, axes=1)


def _ranks(P: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each run's per-class ranks against a fixed reference (the fitted rows' probabilities,
    sorted along the rows), scaled to (0, 1]: a row's rank never depends on which other rows are
    being predicted. On the reference rows themselves it is scipy's average rank."""
    n = reference.shape[1]
    out = np.empty_like(P, dtype=np.float64)
    for r in range(P.shape[0]):
        for c in range(P.shape[2]):
            ref = reference[r, :, c]
            below = np.searchsorted(ref, P[r, :, c], side="left")
            upto = np.searchsorted(ref, P[r, :, c], side="right")
            out[r, :, c] = (below + upto + 1) / 2 / n
    return out


def _caruana(P: np.ndarray, y: np.ndarray, metric: str, iters: int) -> np.ndarray:
    counts = np.zeros(len(P))
    total = np.zeros(P.shape[1:])
    current = None
    for _ in range(iters):
        trials = [score(metric, y, (total + p) / (counts.sum() + 1)) for p in P]
        best = int(np.argmax(trials) if metric != "log_loss" else np.argmin(trials))
        if current is not None and not better(metric, trials[best], current):
            break
        counts[best] += 1
        total += P[best]
        current = trials[best]
    return counts / counts.sum()


def _optimise(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights on the simplex minimising the blend's log-loss."""
    R = len(P)
    Py = np.clip(P[:, np.arange(len(y)), y], EPS, None)  # (R, n): each run's prob of the truth

    def loss(w):
        return -np.mean(np.log(np.clip(w @ Py, EPS, None)))

    def grad(w):
        return -np.mean(Py / np.clip(w @ Py, EPS, None), axis=1)

    res = minimize(loss, np.full(R, 1.0 / R), jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * R,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(R)}])
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def _stack_features(P: np.ndarray) -> np.ndarray:
    return np.log(np.clip(P, 1e-6, 1.0)).transpose(1, 0, 2).reshape(P.shape[1], -1)


def fit_method(method: str, P: np.ndarray, y: np.ndarray, metric: str, cfg: EnsembleConfig) -> dict:
    R = len(P)
    if method == "best":
        scores = [score(metric, y, p) for p in P]
        top = max(range(R), key=lambda i: (scores[i] if metric != "log_loss" else -scores[i], -i))
        return {"weights": np.eye(R)[top]}
    if method == "mean":
        return {"weights": np.full(R, 1.0 / R)}
    if method == "rank":
        return {"weights": np.full(R, 1.0 / R), "reference": np.sort(P, axis=1)}
    if method == "caruana":
        return {"weights": _caruana(P, y, metric, cfg.caruana_iters)}
    if method == "optimise":
        return {"weights": _optimise(P, y)}
    if method == "stack":
        from sklearn.linear_model import LogisticRegression

        # newton-cg: a few R·K features converge in a handful of steps, 20× faster than lbfgs here
        lr = LogisticRegression(C=cfg.stack_C, solver="newton-cg", max_iter=500, random_state=cfg.seed)
        lr.fit(_stack_features(P), y)
        coef = np.zeros((P.shape[2], lr.coef_.shape[1]))
        coef[lr.classes_ if len(lr.classes_) > 2 else slice(None)] = lr.coef_
        importance = np.abs(coef).reshape(P.shape[2], R, -1).sum(axis=(0, 2))
        return {"model": lr, "weights": importance / max(importance.sum(), EPS)}
    raise ValueError(method)


def apply_method(method: str, params: dict, P: np.ndarray) -> np.ndarray:
    if method == "rank":
        r = _blend(params["weights"], _ranks(P, params["reference"]))
        return r / r.sum(axis=1, keepdims=True)
    if method == "stack":
        lr = params["model"]
        out = np.full((P.shape[1], P.shape[2]), EPS)
        out[:, lr.classes_.astype(int)] = lr.predict_proba(_stack_features(P))
        return out / out.sum(axis=1, keepdims=True)
    return _blend(params["weights"], P)


# ---------------------------------------------------------------- metric-aware decision


def _macro_f1(y: np.ndarray, pred: np.ndarray, K: int) -> float:
    # bincount instead of sklearn: this runs thousands of times inside the multiplier search
    cm = np.bincount(y * K + pred, minlength=K * K).reshape(K, K)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present]))


def fit_multipliers(p: np.ndarray, y: np.ndarray, grid, passes: int) -> np.ndarray:
    """Per-class multipliers on the probabilities, by coordinate ascent on macro-F1.

    Starts at 1 and accepts only strict improvements, so it never lowers the fitted rows' score.
    """
    K = p.shape[1]
    w = np.ones(K)
    best = _macro_f1(y, (p * w).argmax(axis=1), K)
    for _ in range(passes):
        improved = False
        for c in range(K):
            for g in grid:
                trial = w.copy()
                trial[c] = g
                s = _macro_f1(y, (p * trial).argmax(axis=1), K)
                if s > best + 1e-12:
                    best, w, improved = s, trial, True
        if not improved:
            break
    return w


def _temper(p: np.ndarray, t: float) -> np.ndarray:
    z = np.log(np.clip(p, EPS, 1.0)) / t
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_post(metric: str, p: np.ndarray, y: np.ndarray, cfg: EnsembleConfig) -> dict:
    if metric == "macro_f1":
        return {"multipliers": fit_multipliers(p, y, cfg.multiplier_grid, cfg.multiplier_passes)}
    if metric == "log_loss":
        res = minimize_scalar(lambda lt: score("log_loss", y, _temper(p, float(np.exp(lt)))),
                              bounds=(-3.0, 3.0), method="bounded")
        return {"temperature": float(np.exp(res.x))}
    return {}  # micro-F1 / accuracy: plain argmax is already the optimal decision


def apply_post(post: dict, p: np.ndarray) -> np.ndarray:
    if "multipliers" in post:
        q = p * post["multipliers"]
        return q / q.sum(axis=1, keepdims=True)
    if "temperature" in post:
        return _temper(p, post["temperature"])
    return p


def fit_model(method: str, P: np.ndarray, y: np.ndarray, metric: str, cfg: EnsembleConfig) -> dict:
    params = fit_method(method, P, y, metric, cfg)
    post = fit_post(metric, apply_method(method, params, P), y, cfg)
    return {"method": method, "params": params, "post": post}


def predict_model(model: dict, P: np.ndarray) -> np.ndarray:
    return apply_post(model["post"], apply_method(model["method"], model["params"], P))


# ---------------------------------------------------------------- nested cross-validation


def cv_predict(method: str, P, y, folds, use: list[int], metric: str, cfg: EnsembleConfig) -> np.ndarray:
    """Predictions for the rows of folds `use`, each fold from a model fitted on the others."""
    out = np.full(P.shape[1:], np.nan)
    for k in use:
        fit_rows = np.isin(folds, use) & (folds != k)
        held = folds == k
        model = fit_model(method, P[:, fit_rows], y[fit_rows], metric, cfg)
        out[held] = predict_model(model, P[:, held])
    return out


def choose(preds: dict[str, np.ndarray], y, folds, use: list[int], metric: str) -> str:
    """The simplest method (`preds` is in simplicity order) whose CV score on folds `use` is within
    one standard error of the best one's, the error taken over the best method's fold scores."""
    rows = np.isin(folds, use)
    scores = {m: score(metric, y[rows], p[rows]) for m, p in preds.items()}
    best = _best(scores, metric)
    per_fold = [score(metric, y[folds == k], preds[best][folds == k]) for k in use]
    se = float(np.std(per_fold, ddof=1) / np.sqrt(len(per_fold))) if len(per_fold) > 1 else 0.0
    return next(m for m in preds if abs(scores[m] - scores[best]) <= se)


def nested_cv(P, y, folds, methods: list[str], metric: str, cfg: EnsembleConfig) -> dict:
    """Per-method CV predictions and scores, and the nested (method chosen inside) predictions."""
    all_folds = sorted(int(f) for f in np.unique(folds))
    per_method = {m: cv_predict(m, P, y, folds, all_folds, metric, cfg) for m in methods}
    cv_scores = {m: score(metric, y, p) for m, p in per_method.items()}
    nested = np.full(P.shape[1:], np.nan)
    choices = {}
    for k in all_folds:
        inner = [f for f in all_folds if f != k]
        if len(methods) == 1 or len(inner) < 2:
            pick = methods[0]
        else:
            pick = choose({m: cv_predict(m, P, y, folds, inner, metric, cfg) for m in methods},
                          y, folds, inner, metric)
        choices[k] = pick
        # fitting `pick` on every fold but k and predicting k is exactly its outer CV prediction
        nested[folds == k] = per_method[pick][folds == k]
    return {"per_method": per_method, "cv_scores": cv_scores, "nested": nested, "choices": choices}


def _best(scores: dict[str, float], metric: str) -> str:
    best = None
    for m, s in scores.items():  # ties keep the earlier (simpler) method
        if best is None or better(metric, s, scores[best]):
            best = m
    return best


# ---------------------------------------------------------------- inputs and outputs


def exact_table(train: pd.DataFrame) -> pd.Series:
    """Normalised train text (as `checks` counts duplicates) → the majority label of its rows;
    saved with the ensemble (exact_match.csv) so a code competition's notebook applies it too."""
    tr = pd.DataFrame({"t": train["text"].map(normalise), "label": train["label"]})
    return tr.groupby("t")["label"].agg(lambda s: s.value_counts().index[0])


def exact_matches(table: pd.Series, test: pd.DataFrame) -> np.ndarray:
    """For each test row, the label its normalised text has in `table`, or -1."""
    return test["text"].map(normalise).map(table).fillna(-1).astype(int).to_numpy()


def apply_exact(table: pd.Series, test: pd.DataFrame, test_p: np.ndarray, n_classes: int) -> int:
    """Test rows whose text is a train text take its label (argmax), in place; how many did."""
    lab = exact_matches(table, test)
    hit = lab >= 0
    onehot = np.eye(n_classes)[lab[hit]]
    test_p[hit] = 0.9 * onehot + 0.1 * test_p[hit]  # argmax is the train label; log-loss not ruined
    return int(hit.sum())


def load_runs(paths: Paths, runs: list[str], use_tta: bool, train: pd.DataFrame, test_ids: pd.Series):
    oofs, tests, sources = [], [], {}
    for r in runs:
        d = paths.run(r) / "tta" if use_tta else paths.run(r)
        if use_tta and not (d / "metrics.json").exists():
            raise UserError(f"no TTA for run '{r}': {d}/metrics.json missing (run `make tta` first)")
        oof, test, _ = read_run(d)
        try:
            oofs.append(align(oof, train["id"]))
            tests.append(align(test, test_ids))
        except UserError:
            raise UserError(f"run '{r}': oof.csv/test.csv ids differ from data/processed/{paths.comp} "
                            f"(folds were rebuilt?): retrain it with `make train`") from None
        sources[r] = str(d.relative_to(C.root()))
    shapes = {p.shape[1] for p in oofs + tests}
    if len(shapes) != 1:
        raise UserError(f"runs {runs} disagree on the number of classes: {sorted(shapes)}")
    return np.stack(oofs), np.stack(tests), sources


def run(comp_name: str, runs: list[str], use_tta: bool = False) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    cfg = load_config()
    if not runs:
        raise UserError("no runs to ensemble: pass --runs \"tfidf minilm …\"")
    if len(set(runs)) != len(runs):
        raise UserError(f"--runs names a run twice: {runs}")
    t0 = time.time()
    train, test = read_processed(paths)
    y = train["label"].to_numpy(dtype=int)
    folds = train["fold"].to_numpy(dtype=int)
    P, T, sources = load_runs(paths, runs, use_tta, train, test["id"])
    metric = comp.metric
    methods = list(cfg.methods) if len(runs) > 1 else ["mean"]  # one run: the method is that run

    cv = nested_cv(P, y, folds, methods, metric, cfg)
    chosen = choose(cv["per_method"], y, folds, sorted(cv["choices"]), metric)
    final = fit_model(chosen, P, y, metric, cfg)
    test_p = predict_model(final, T)
    in_sample = {}
    per_method = {}
    for m in methods:
        fitted = final if m == chosen else fit_model(m, P, y, metric, cfg)
        in_sample[m] = score(metric, y, predict_model(fitted, P))
        per_method[m] = {"cv": cv["cv_scores"][m], "in_sample": in_sample[m],
                         "weights": dict(zip(runs, map(float, fitted["params"]["weights"])))}

    matched = 0
    out = paths.results / "ensemble"
    exact = out / "exact_match.csv"
    if cfg.exact_match and "text" in train.columns:  # a text rule: image-only competitions have none
        table = exact_table(train)
        matched = apply_exact(table, test, test_p, comp.n_classes)
        write_csv(exact, pd.DataFrame({"text": table.index, "label": table.to_numpy()}))
    else:
        exact.unlink(missing_ok=True)
    # the fitted blend itself (a code competition's notebook applies it to the hidden test)
    with atomic_path(out / "model.joblib") as tmp:
        joblib.dump({"runs": runs, "use_tta": use_tta, "model": final, "n_classes": comp.n_classes}, tmp)

    nested = cv["nested"]
    nested_score = score(metric, y, nested)
    fold_ids = sorted(cv["choices"])
    fold_scores = [score(metric, y[folds == k], nested[folds == k]) for k in fold_ids]
    name = "single" if len(runs) == 1 else chosen
    label = f"ensemble({' '.join(runs)})"
    post = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in final["post"].items()}

    write_json(out / "weights.json", {
        "method": name, "runs": runs, "use_tta": use_tta, "sources": sources,
        "weights": per_method[chosen]["weights"], "postprocess": post,
        "nested_choices": {str(k): v for k, v in cv["choices"].items()}, "methods": per_method,
    })
    write_csv(out / "oof.csv", proba_frame(train["id"], nested, folds))
    write_csv(out / "test.csv", proba_frame(test["id"], test_p))
    sub = write_submission(comp, paths.raw, test["id"], test_p, paths.submission / "submission.csv", label, nested_score)
    seconds = time.time() - t0
    write_json(out / "metrics.json", {
        "run": "ensemble", "label": label, "metric": metric, "method": name,
        "oof_score": nested_score, "nested_score": nested_score,
        "method_cv": cv["cv_scores"], "in_sample": in_sample,
        "fold_scores": fold_scores, "fold_std": float(np.std(fold_scores)),
        "run_scores": {r: score(metric, y, P[i]) for i, r in enumerate(runs)},
        "runs": runs, "use_tta": use_tta, "postprocess": post,
        "exact_match": {"enabled": cfg.exact_match, "test_rows_matched": matched},
        "n_train": int(len(train)), "train_seconds": seconds, "predict_seconds": 0.0,
        "train_samples_per_s": None, "peak_rss_mb": C.peak_rss_mb(), "optimistic": False,
        "device": "cpu", "submission": str(sub.relative_to(C.root())), "git_sha": C.git_sha(),
    })
    print(f"[ensemble] {label}: {name}, nested {metric} {nested_score:.4f} "
          f"(in-sample {in_sample[chosen]:.4f}); wrote {sub.relative_to(C.root())}")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.ensemble", __doc__)
    ap.add_argument("--runs", required=True, help='space-separated run names, e.g. "tfidf minilm"')
    ap.add_argument("--tta", action="store_true", help="blend each run's tta/ predictions")
    a = ap.parse_args(argv)
    run(a.comp, a.runs.split(), a.tta)


if __name__ == "__main__":
    main()
