"""`make report RUNS="…"`: one self-contained HTML page (and its Markdown twin) about a competition.

Reads   results/<comp>/checks.md + images/<comp>/checks_*.png (if present), each run's
        metrics.json (+ tta/metrics.json), results/<comp>/ensemble/ (if present),
        data/processed/<comp>/train.csv, submission/<comp>/ledger.csv (if present)
Writes  results/<comp>/report.html (images inlined as base64, inline CSS, no script, nothing loaded
        from outside; every text from the data HTML-escaped), results/<comp>/report.md, and
        images/<comp>/confusion_ensemble.png when the ensemble has none yet
Run     python -m medalist.stages.report --comp demo --runs "tfidf minilm"
"""
from __future__ import annotations

import base64
import dataclasses
import html
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import load_competition
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import probs_of, read_json, read_processed, read_run, write_text
from medalist.core.metrics import higher_is_better

MISTAKES_PER_CLASS = 3
TEXT_CHARS = 300

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;font-size:.9em;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;white-space:pre-wrap}img{max-width:100%}
.muted{color:#777}
"""


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[object]]

    def md(self) -> str:
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = ["| " + " | ".join(map(cell, self.headers)) + " |", "|" + "---|" * len(self.headers)]
        out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in self.rows]
        return "\n".join(out)

    def html(self) -> str:
        def td(v):
            cls = ' class="num"' if isinstance(v, (int, float, np.number)) or _numeric(v) else ""
            return f"<td{cls}>{html.escape(str(v))}</td>"

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numeric(v) -> bool:
    try:
        float(str(v).lstrip("+"))
        return True
    except ValueError:
        return False


class Page:
    """Builds report.md and report.html side by side, so both always say the same thing."""

    def __init__(self, md_dir: Path):
        self.md: list[str] = []
        self.html: list[str] = []
        self.md_dir = md_dir

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append("#" * level + " " + text)
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str, muted: bool = False) -> None:
        self.md.append(text)
        cls = ' class="muted"' if muted else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")

    def pre(self, text: str) -> None:
        self.md.append(text)
        self.html.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, t: Table) -> None:
        self.md.append(t.md())
        self.html.append(t.html())

    def image(self, path: Path, alt: str) -> None:
        rel = Path(*([".."] * len(self.md_dir.relative_to(C.root()).parts)), path.relative_to(C.root()))
        self.md.append(f"![{alt}]({rel.as_posix()})")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def render(self, title: str) -> tuple[str, str]:
        md = "\n\n".join([f"# {title}", *self.md]) + "\n"
        body = "\n".join(self.html)
        page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
                f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
        return md, page


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
        # its picture links are dropped here: the pictures themselves follow, inlined
        text = "\n".join(line for line in md.read_text(encoding="utf-8").splitlines() if not line.startswith("!["))
        page.pre(text.strip())
    else:
        page.para(f"No checks yet: run `make check COMP={paths.comp}`.", muted=True)
    for png in sorted(paths.images.glob("checks_*.png")):
        page.image(png, png.stem)


def _runs(page: Page, paths: Paths, runs: list[str], metric: str) -> dict[str, dict]:
    page.heading("Runs (out-of-fold)")
    metrics = {r: read_run(paths.run(r))[2] for r in runs}
    order = sorted(runs, key=lambda r: metrics[r]["oof_score"], reverse=higher_is_better(metric))
    rows = []
    for r in order:
        m = metrics[r]
        tta = paths.run(r) / "tta" / "metrics.json"
        t = read_json(tta) if tta.exists() else None
        rows.append([r + ("*" if m.get("optimistic") else ""), _f(m["oof_score"]), _f(m.get("fold_std")),
                     _f(m.get("train_seconds"), ".1f"), _f(m.get("peak_rss_mb"), ".0f"),
                     _f(m.get("train_samples_per_s"), ".1f"),
                     _f(t["gain"], "+.4f") if t else "–", ("yes" if t["use_tta"] else "no") if t else "–"])
    page.table(Table(["run", f"OOF {metric}", "fold std", "train s", "peak RSS MB", "samples/s",
                      "TTA gain", "TTA used"], rows))
    page.para("* best epoch picked on the validation fold (optimistic). TTA gain = TTA OOF − plain OOF "
              "from each run's saved fold weights; TTA is used only where it helps.", muted=True)
    return metrics


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
    return name, probs_of(oof.set_index("id").loc[train["id"]])


def _confusion(page: Page, paths: Paths, name: str, proba: np.ndarray, y, labels) -> None:
    page.heading(f"Confusion matrix ({name}, out-of-fold)")
    png = paths.images / f"confusion_{name}.png"
    source = (paths.results / "ensemble" if name == "ensemble" else paths.run(name)) / "oof.csv"
    if not png.exists() or png.stat().st_mtime < source.stat().st_mtime:
        from medalist.core.plots import plot_confusion

        plot_confusion(y, proba.argmax(axis=1), labels, name, png)
    page.image(png, f"confusion matrix {name}")


def _mistakes(page: Page, name: str, proba: np.ndarray, train: pd.DataFrame, labels) -> None:
    page.heading(f"Most confident OOF mistakes per class ({name})")
    y = train["label"].to_numpy()
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    rows = []
    for c, lab in enumerate(labels):
        wrong = np.flatnonzero((y == c) & (pred != c))
        for i in wrong[np.argsort(-conf[wrong], kind="stable")][:MISTAKES_PER_CLASS]:
            rows.append([lab, labels[pred[i]], _f(conf[i], ".3f"), _f(proba[i, c], ".3f"),
                         train["id"].iloc[i], _short(train["text"].iloc[i])])
    if rows:
        page.table(Table(["true", "predicted", "p(predicted)", "p(true)", "id", "text"], rows))
    else:
        page.para("No OOF mistakes.")


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
    ens = _ensemble(page, paths, comp.metric)
    name, proba = _best_predictions(paths, runs, metrics, ens, comp.metric, train)
    _confusion(page, paths, name, proba, train["label"].to_numpy(), labels)
    _mistakes(page, name, proba, train, labels)
    _ledger(page, paths)
    md, page_html = page.render(f"medalist report — {comp.name}")
    write_text(paths.results / "report.md", md)
    out = write_text(paths.results / "report.html", page_html)
    print(f"[report] wrote {out.relative_to(C.root())}")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.report", __doc__)
    ap.add_argument("--runs", required=True, help='space-separated run names, e.g. "tfidf minilm"')
    a = ap.parse_args(argv)
    run(a.comp, a.runs.split())


if __name__ == "__main__":
    main()
