"""`make evaluate RUNS="…"`: confusion matrices, per-class scores and a leaderboard of runs.

Reads   results/<comp>/<run>/oof.csv + metrics.json for each run, data/processed/<comp>/train.csv
Writes  images/<comp>/confusion_<run>.png (counts | row-normalised), results/<comp>/leaderboard.md
        (runs ranked by OOF score with fold spread, time, memory, speed; per-class P/R/F1)
Run     python -m medalist.stages.evaluate --comp demo --runs "tfidf minilm"   (scripts/evaluate_models.sh)
"""
from __future__ import annotations

from pathlib import Path

from sklearn.metrics import precision_recall_fscore_support

from medalist.core import config as C
from medalist.core.competition import load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import align, read_processed, read_run, write_text
from medalist.core.plots import plot_confusion
from medalist.core.metrics import higher_is_better


def per_class_table(y_true, y_pred, labels: list[str]) -> str:
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(labels))), zero_division=0)
    rows = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    rows += [f"| {_cell(lab)} | {p[i]:.3f} | {r[i]:.3f} | {f[i]:.3f} | {n[i]} |" for i, lab in enumerate(labels)]
    return "\n".join(rows)


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def run(comp_name: str, runs: list[str]) -> Path:
    comp = load_competition(comp_name)
    paths = Paths(comp.name)
    if not runs:
        raise UserError('no runs to evaluate: pass --runs "tfidf minilm …"')
    train, _ = read_processed(paths)
    labels = list(comp.labels)
    entries = []
    for r in runs:
        oof, _, m = read_run(paths.run(r))
        try:
            p = align(oof, train["id"])
        except UserError:
            raise UserError(f"run '{r}': oof.csv ids differ from data/processed/{comp.name}: retrain it") from None
        y, pred = train["label"].to_numpy(), p.argmax(axis=1)
        png = plot_confusion(y, pred, labels, r, paths.images / f"confusion_{r}.png")
        entries.append((r, m, per_class_table(y, pred, labels), png))
    entries.sort(key=lambda e: e[1]["oof_score"], reverse=higher_is_better(comp.metric))

    lines = [f"# Leaderboard — {comp.name}", "",
             f"Out-of-fold {comp.metric} ({'higher' if higher_is_better(comp.metric) else 'lower'} is better); "
             "± is the standard deviation over folds. * = best epoch picked on the validation fold (optimistic).", "",
             f"| # | run | OOF {comp.metric} | fold std | train s | peak RSS MB | train samples/s | device |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for i, (r, m, _, _) in enumerate(entries, 1):
        flag = "*" if m.get("optimistic") else ""
        lines.append(f"| {i} | {_cell(r)}{flag} | {m['oof_score']:.4f} | {_num(m.get('fold_std'), '.4f')} | "
                     f"{_num(m.get('train_seconds'), '.1f')} | {_num(m.get('peak_rss_mb'), '.0f')} | "
                     f"{_num(m.get('train_samples_per_s'), '.1f')} | {_cell(m.get('device', ''))} |")
    for r, m, table, png in entries:
        lines += ["", f"## {_cell(r)}", "",
                  f"Folds: {' '.join(f'{s:.4f}' for s in m.get('fold_scores', []))}", "",
                  table, "", f"![confusion {r}]({Path('..', '..', png.relative_to(C.root())).as_posix()})"]
    out = write_text(paths.results / "leaderboard.md", "\n".join(lines) + "\n")
    print(f"[evaluate] {len(runs)} run(s) → {out.relative_to(C.root())}")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.evaluate", __doc__)
    ap.add_argument("--runs", required=True, help='space-separated run names, e.g. "tfidf minilm"')
    a = ap.parse_args(argv)
    run(a.comp, a.runs.split())


if __name__ == "__main__":
    main()
