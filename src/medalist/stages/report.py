"""`make report RUNS="…"`: one self-contained HTML page (and its Markdown twin) about a competition,
then a short summary of what the pipeline produced on stdout (the last thing `make all` prints).

Reads   results/<comp>/checks.md + images/<comp>/checks_*.png (if present), each run's
        metrics.json (+ tta/metrics.json) and fold<k>/done.json (per-epoch history), its TensorBoard
        events under logs/<comp>/<run>/fold<k>/ (if present), results/<comp>/ensemble/ (if present),
        data/processed/<comp>/train.csv (and, for an image competition, the images of the most
        confident OOF mistakes), submission/<comp>/submission.csv checked against
        data/raw/<comp>/sample_submission.csv, submission/<comp>/ledger.csv (if present),
        results/<comp>/budget.json + budget.md (if `make all BUDGET=…` wrote them for these runs),
        $MEDALIST_MAKE_START (the Makefile's start time, for the wall time; optional)
Writes  results/<comp>/report.html (images inlined as base64 — the checks' contact sheet and, for an
        image competition, thumbnails of the most confident OOF mistakes per class —, inline CSS, no
        script, nothing loaded from outside; every text from the data HTML-escaped), results/<comp>/report.md,
        images/<comp>/curves_<run>.png for each run that logged epochs, and
        images/<comp>/confusion_ensemble.png when the ensemble has none yet
Run     python -m medalist.stages.report --comp demo --runs "tfidf minilm"
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_sample, validate_submission
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import align, read_csv, read_json, read_processed, read_run, write_text
from medalist.core.metrics import higher_is_better
from medalist.core.plots import pyplot, save_figure
from medalist.stages.report_html import Page, Table, Thumb

MISTAKES_PER_CLASS = 3
THUMBS_PER_CLASS = 8  # pictures of the most confident mistakes per true class (image competitions)
THUMB = 96  # pixels a side at most
TEXT_CHARS = 300


def _f(x, fmt: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


# ---------------------------------------------------------------- sections


def _checks(page: Page, paths: Paths) -> None:
    page.heading("Data checks")
    md = paths.results / "checks.md"
    if md.exists():
        page.markdown(md.read_text(encoding="utf-8"), below=2)
    else:
        page.para(f"No checks yet: run `make check COMP={paths.comp}`.", muted=True)
    for png in sorted(paths.images.glob("checks_*.png")):
        page.image(png, png.stem)


def _tta(paths: Paths, run: str) -> dict | None:
    path = paths.run(run) / "tta" / "metrics.json"
    return read_json(path) if path.exists() else None


def _runs(page: Page, paths: Paths, runs: list[str], metric: str) -> dict[str, dict]:
    page.heading("Runs (out-of-fold)")
    metrics = {r: read_run(paths.run(r))[2] for r in runs}
    order = sorted(runs, key=lambda r: metrics[r]["oof_score"], reverse=higher_is_better(metric))
    rows = []
    for r in order:
        m = metrics[r]
        t = _tta(paths, r)
        rows.append([r + ("*" if m.get("optimistic") else ""), _f(m["oof_score"]), _f(m.get("fold_std")),
                     _f(m.get("train_seconds"), ".1f"), _f(m.get("peak_rss_mb"), ".0f"),
                     _f(m.get("train_samples_per_s"), ".1f"),
                     _f(t["gain"], "+.4f") if t else "–", ("yes" if t["use_tta"] else "no") if t else "–"])
    page.table(Table(["run", f"OOF {metric}", "fold std", "train s", "peak RSS MB", "samples/s",
                      "TTA gain", "TTA used"], rows))
    page.para("* best epoch picked on the validation fold (optimistic). TTA gain = TTA OOF − plain OOF "
              "from each run's saved fold weights; TTA is used only where it helps.", muted=True)
    return metrics


Curves = dict[str, dict[str, tuple[list, list]]]  # "fold 0" → {"loss": (x, y), "metric": (x, y)}


def _fold_dirs(parent: Path, done_in: Path) -> list[tuple[int, Path]]:
    """parent/fold<k> in fold order, for the folds the run finished (done_in/fold<k>/done.json):
    logs left by an older layout of folds are not this run's."""
    out = []
    for d in parent.glob("fold*"):
        if d.name[4:].isdigit() and (done_in / d.name / "done.json").exists():
            out.append((int(d.name[4:]), d))
    return sorted(out)


def _event_curves(paths: Paths, run: str, metric: str) -> Curves:
    """From TensorBoard events (x: optimizer steps): `train/loss` per step, `val/<metric>` per epoch.
    Several seeds of a fold log into fold<k>/seed<s>/ and are drawn as lines of their own."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: Curves = {}
    for k, fold_dir in _fold_dirs(paths.logs / run, paths.run(run)):
        dirs = [(f"fold {k}", fold_dir)] + [(f"fold {k} seed {d.name[4:]}", d)
                                            for d in sorted(fold_dir.glob("seed*")) if d.is_dir()]
        for label, d in dirs:
            if not any(d.glob("events.out.tfevents.*")):
                continue
            acc = EventAccumulator(str(d), size_guidance={"scalars": 0})  # 0: keep every point
            acc.Reload()
            tags = set(acc.Tags().get("scalars", []))
            found = {}
            for key, wanted in (("loss", ("train/loss", "train/epoch_loss")), ("metric", (f"val/{metric}",))):
                tag = next((t for t in wanted if t in tags), None)
                if tag:
                    events = acc.Scalars(tag)
                    found[key] = ([e.step for e in events], [e.value for e in events])
            if found:
                curves[label] = found
    return curves


def _history_curves(paths: Paths, run: str, metric: str) -> Curves:
    """From the per-epoch history the neural families keep in fold<k>/done.json (x: epochs)."""
    curves: Curves = {}
    run_dir = paths.run(run)
    for k, fold_dir in _fold_dirs(run_dir, run_dir):
        info = read_json(fold_dir / "done.json").get("info") or {}
        pre = info.get("pretrain") or {}
        if pre.get("losses") and not pre.get("reused"):  # an unsupervised run the folds share (autoencoder)
            curves["unsupervised pretraining"] = {"loss": (list(range(1, len(pre["losses"]) + 1)), pre["losses"])}
        seeds = info.get("per_seed") or [info]
        for s in seeds:
            hist = s.get("history") or []
            if not hist:
                continue
            epochs = [h["epoch"] for h in hist]
            found = {"loss": (epochs, [h["loss"] for h in hist])}
            if all(metric in h for h in hist):
                found["metric"] = (epochs, [h[metric] for h in hist])
            curves[f"fold {k}" + (f" seed {s.get('seed')}" if len(seeds) > 1 else "")] = found
    return curves


def run_curves(paths: Paths, run: str, metric: str) -> tuple[Curves, str]:
    """A run's training curves and their x unit: TensorBoard's where they cover as many folds as the
    done.json histories (finer: a loss point per step), else the histories (folds trained on another
    host leave no events here)."""
    events, history = _event_curves(paths, run, metric), _history_curves(paths, run, metric)
    if events and len(events) >= len(history):
        return events, "optimizer step"
    return history, "epoch"


def plot_curves(curves: Curves, unit: str, run: str, metric: str, out: Path) -> Path:
    """One small picture: training loss and validation metric, a line per fold, same colour in both."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "training loss")] + ([("metric", f"validation {metric}")]
                                            if any("metric" in c for c in curves.values()) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 2.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, (label, c) in enumerate(curves.items()):
            if key in c:
                x, y = c[key]
                ax.plot(x, y, color=f"C{i % 10}", lw=1, marker="o" if len(x) <= 20 else None, ms=3, label=label)
        ax.set_title(f"{run}: {title}", fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, dpi=80)


def _curves(page: Page, paths: Paths, runs: list[str], metric: str) -> None:
    page.heading("Training curves")
    for r in runs:
        curves, unit = run_curves(paths, r, metric)
        if curves:
            page.image(plot_curves(curves, unit, r, metric, paths.images / f"curves_{r}.png"), f"training curves {r}")
        else:
            page.para(f"{r}: no training curves (it logged no epochs: a one-pass fit such as tfidf or embed).",
                      muted=True)


def _ensemble(page: Page, paths: Paths, metric: str) -> dict | None:
    page.heading("Ensemble")
    d = paths.results / "ensemble"
    if not (d / "metrics.json").exists():
        page.para(f"No ensemble yet: run `make ensemble COMP={paths.comp}`.", muted=True)
        return None
    m, w = read_json(d / "metrics.json"), read_json(d / "weights.json")
    page.para(f"{m['label']}: method {m['method']}{' on TTA predictions' if m.get('use_tta') else ''}; "
              f"nested CV {metric} {m['nested_score']:.4f} (the method is chosen inside each outer fold, "
              f"so this score is honest). Decision rule: {_post(m.get('postprocess', {}))}.")
    page.table(Table(["run", "weight", f"run OOF {metric}"],
                     [[r, _f(w["weights"].get(r), ".3f"), _f(m["run_scores"].get(r))] for r in m["runs"]]))
    page.table(Table(["method", f"CV {metric} (fit on K−1 folds)", f"in-sample {metric}"],
                     [[k, _f(v["cv"]), _f(v["in_sample"])] for k, v in w["methods"].items()]))
    em = m.get("exact_match", {})
    if em.get("enabled"):
        page.para(f"Exact-match: {em['test_rows_matched']} test rows take the label of an identical train text.")
    return m


MODALITY_GROUPS = (("text only", {"text"}), ("image only", {"image"}), ("fused", {"text", "image"}))


def _modalities(page: Page, paths: Paths, runs, metrics, ens, train: pd.DataFrame, labels, metric: str) -> None:
    """A competition with several inputs: the best run per modality (by OOF), the ensemble, and
    per-class F1 side by side, so a user sees what each modality buys (also on rows without an image)."""
    from medalist.core.metrics import score
    from sklearn.metrics import f1_score

    best = {}
    for name, kinds in MODALITY_GROUPS:
        mine = [r for r in runs if set(metrics[r].get("inputs", ["text"])) == kinds]
        if mine:
            best[name] = sorted(mine, key=lambda r: metrics[r]["oof_score"], reverse=higher_is_better(metric))[0]
    cols = {f"{g} ({r})": align(read_run(paths.run(r))[0], train["id"]) for g, r in best.items()}
    if ens is not None:
        cols["ensemble"] = align(read_run(paths.results / "ensemble")[0], train["id"])
    if not cols:
        return
    y = train["label"].to_numpy()
    photo = train["image"].fillna("").astype(str).ne("").to_numpy() if "image" in train.columns else np.ones(len(y), bool)
    page.heading("By modality (out-of-fold)")
    rows = [[c, _f(score(metric, y, p)), _f(score(metric, y[photo], p[photo])) if photo.any() else "–",
             _f(score(metric, y[~photo], p[~photo])) if (~photo).any() else "–"] for c, p in cols.items()]
    page.table(Table(["best run of each kind", f"OOF {metric}", f"rows with an image ({int(photo.sum())})",
                      f"rows without one ({int((~photo).sum())})"], rows))
    per_class = {c: f1_score(y, p.argmax(1), labels=range(len(labels)), average=None, zero_division=0)
                 for c, p in cols.items()}
    page.table(Table(["class", *(f"F1 {c}" for c in cols)],
                     [[lab, *(_f(per_class[c][k], ".3f") for c in cols)] for k, lab in enumerate(labels)]))


def _post(post: dict) -> str:
    if "multipliers" in post:
        return "argmax after per-class multipliers " + ", ".join(f"{x:.2f}" for x in post["multipliers"])
    if "temperature" in post:
        return f"temperature scaling (T = {post['temperature']:.3f})"
    return "argmax"


def _best_predictions(paths: Paths, runs, metrics, ens, metric, train) -> tuple[str, np.ndarray]:
    if ens is not None:
        oof, _, _ = read_run(paths.results / "ensemble")
        name = "ensemble"
    else:
        name = sorted(runs, key=lambda r: metrics[r]["oof_score"], reverse=higher_is_better(metric))[0]
        oof, _, _ = read_run(paths.run(name))
    return name, align(oof, train["id"])


def _confusion(page: Page, paths: Paths, name: str, proba: np.ndarray, y, labels) -> None:
    page.heading(f"Confusion matrix ({name}, out-of-fold)")
    png = paths.images / f"confusion_{name}.png"
    source = (paths.results / "ensemble" if name == "ensemble" else paths.run(name)) / "oof.csv"
    if not png.exists() or png.stat().st_mtime < source.stat().st_mtime:
        from medalist.core.plots import plot_confusion

        plot_confusion(y, proba.argmax(axis=1), labels, name, png)
    page.image(png, f"confusion matrix {name}")


def thumbnail(image_path: str) -> bytes | None:
    """A small PNG of a processed table's image (a path under the project root), at most THUMB
    pixels a side (smaller images stay as they are: the page scales them up pixel for pixel);
    None where it does not decode."""
    import io

    from PIL import Image

    from medalist.image.decode import open_rgb, square

    im = open_rgb(C.root() / image_path) if image_path else None
    if im is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(square(im, min(THUMB, max(im.size)))).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _mistakes(page: Page, name: str, proba: np.ndarray, train: pd.DataFrame, labels) -> None:
    page.heading(f"Most confident OOF mistakes per class ({name})")
    y = train["label"].to_numpy()
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    shown = "text" if "text" in train.columns else "image"  # what a reader recognises a row by
    pictures = "image" in train.columns and (train["image"].astype(str) != "").any()
    rows, galleries = [], []
    for c, lab in enumerate(labels):
        wrong = np.flatnonzero((y == c) & (pred != c))
        worst = wrong[np.argsort(-conf[wrong], kind="stable")]
        for i in worst[:MISTAKES_PER_CLASS]:
            rows.append([lab, labels[pred[i]], _f(conf[i], ".3f"), _f(proba[i, c], ".3f"),
                         train["id"].iloc[i], _short(train[shown].iloc[i])])
        if pictures and len(worst):
            galleries.append((f"true {lab}", [_thumb(train, i, labels[pred[i]], conf[i])
                                              for i in worst[:THUMBS_PER_CLASS]]))
    if not rows:
        page.para("No OOF mistakes.")
        return
    for label, thumbs in galleries:  # what a reader of an image competition looks at first
        page.gallery(label, thumbs)
    page.table(Table(["true", "predicted", "p(predicted)", "p(true)", "id", shown], rows))


def _thumb(train: pd.DataFrame, i: int, predicted: str, conf: float) -> Thumb:
    path = str(train["image"].iloc[i])
    inside = bool(path) and not Path(path).is_absolute()  # the Markdown links files under the project root only
    return Thumb(thumbnail(path), f"{train['id'].iloc[i]}: {predicted} ({conf:.2f})",
                 C.root() / path if inside else None)


def _ledger(page: Page, paths: Paths) -> None:
    page.heading("Submissions")
    path = paths.submission / "ledger.csv"
    if not path.exists():
        page.para(f"Nothing submitted yet (`make submit COMP={paths.comp}`).", muted=True)
        return
    led = pd.read_csv(path, dtype=str, keep_default_na=False)
    cols = [c for c in ("time", "file", "cv", "public_score", "message", "git_sha", "kaggle_ref") if c in led.columns]
    page.table(Table(["CV" if c == "cv" else "public LB" if c == "public_score" else c for c in cols],
                     led[cols].to_numpy().tolist()))


def budget_record(paths: Paths, runs: list[str]) -> dict | None:
    """results/<comp>/budget.json when it describes these runs (`make all BUDGET=…` wrote it)."""
    path = paths.results / "budget.json"
    if not path.exists():
        return None
    rec = read_json(path)
    return rec if sorted(rec.get("runs", [])) == sorted(runs) else None


def _budget(page: Page, paths: Paths, runs: list[str]) -> None:
    rec = budget_record(paths, runs)
    if rec is None:
        return
    page.heading("Budget")
    page.markdown((paths.results / "budget.md").read_text(encoding="utf-8"), below=2)


def _submission_status(comp: Competition, paths: Paths, sub: Path) -> str:
    """Checked here again, by the validator `make submit` runs, as it lies on disk now."""
    if not sub.exists():
        return f"not written (make ensemble COMP={comp.name})"
    try:
        df = read_csv(sub, sub.name, dtype={comp.submission.id_column: str})
        validate_submission(comp, read_sample(comp, paths.raw), df)
    except UserError as e:
        return f"INVALID: {e}"
    return f"valid against {comp.files.sample_submission} ({len(df)} rows)"


def _wall_time() -> str | None:
    """Seconds since the Makefile's MEDALIST_MAKE_START (absent outside make: no wall time)."""
    start = os.environ.get("MEDALIST_MAKE_START", "")
    if not start.isdigit():
        return None
    s = max(0, int(time.time()) - int(start))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def summary(comp: Competition, paths: Paths, runs: list[str], metrics: dict[str, dict], ens: dict | None,
            report: Path) -> str:
    """The few lines that say what was produced: the last thing a finished `make all` prints."""
    metric = comp.metric
    sub = paths.submission / "submission.csv"
    rows = [("submission", f"{sub.relative_to(C.root())}  {_submission_status(comp, paths, sub)}")]
    if ens is None:
        rows.append(("ensemble", f"none (make ensemble COMP={comp.name})"))
    else:
        rows.append(("ensemble", f"{ens['method']}, nested CV {metric} {ens['nested_score']:.4f}"))
    for r in sorted(runs, key=lambda r: metrics[r]["oof_score"], reverse=higher_is_better(metric)):
        t = _tta(paths, r)
        used = t is not None and t["use_tta"] and ens is not None and ens.get("use_tta") and r in ens["runs"]
        rows.append((f"run {r}", f"OOF {metric} {metrics[r]['oof_score']:.4f}"
                                 + (f"  TTA {t['gain']:+.4f}" if used else "")))
    rows.append(("report", str(report.relative_to(C.root()))))
    wall = _wall_time()
    if wall:
        rows.append(("wall time", wall))
    rec = budget_record(paths, runs)
    if rec:
        out = [r["name"] for r in rec["table"] if r["name"] not in rec["runs"]]
        rows.append(("budget", f"BUDGET={rec['budget']}: bought {' '.join(rec['runs'])}"
                               + (f"; left out {' '.join(out)}" if out else "") + f"; {rec['note']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"== {comp.name}: done =="] + [f"{k:<{width}}  {v}" for k, v in rows])


def run(comp_name: str, runs: list[str]) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    if not runs:
        raise UserError('no runs to report: pass --runs "tfidf minilm …"')
    train, _ = read_processed(paths)
    labels = list(comp.labels)
    page = Page(paths.results)
    page.para(f"Metric: {comp.metric}. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
              f"at commit {C.git_sha()}.", muted=True)
    _checks(page, paths)
    metrics = _runs(page, paths, runs, comp.metric)
    _curves(page, paths, runs, comp.metric)
    ens = _ensemble(page, paths, comp.metric)
    if len(comp.inputs.kinds) > 1:
        _modalities(page, paths, runs, metrics, ens, train, labels, comp.metric)
    name, proba = _best_predictions(paths, runs, metrics, ens, comp.metric, train)
    _confusion(page, paths, name, proba, train["label"].to_numpy(), labels)
    _mistakes(page, name, proba, train, labels)
    _budget(page, paths, runs)
    _ledger(page, paths)
    md, page_html = page.render(f"medalist report — {comp.name}")
    write_text(paths.results / "report.md", md)
    out = write_text(paths.results / "report.html", page_html)
    print(summary(comp, paths, runs, metrics, ens, out))
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.report", __doc__)
    ap.add_argument("--runs", required=True, help='space-separated run names, e.g. "tfidf minilm"')
    a = ap.parse_args(argv)
    run(a.comp, a.runs.split())


if __name__ == "__main__":
    main()
