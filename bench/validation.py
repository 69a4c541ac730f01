"""`make bench`, part validation: can the CV be trusted? For each competition (math-subjects and
the images part's fashion-products), each run of its default MODELS and their ensemble (what a
plain `make all` makes; of the trained ones, named, while some are not): OOF score (nested for the
ensemble), test score against the answers, the gap and its two standard errors, and whether
ranking the runs by OOF ranks them as the test does.

The gap's standard error treats OOF and test as two independent samples of a proportion (micro-F1
is accuracy here): sqrt(p(1-p)/n_test + p(1-p)/n_train); a gap within two of them is noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import load_competition
from quality import Answers, made_ensemble, run_entry


def _row(name: str, oof: float | None, test: float | None, n_train: int, n_test: int) -> dict:
    if oof is None or test is None:
        return {"what": name, "oof": oof, "test": test}
    se = float(np.sqrt(oof * (1 - oof) / n_train + test * (1 - test) / n_test))
    return {"what": name, "oof": oof, "test": test, "gap": test - oof, "two_se": 2 * se,
            "within": bool(abs(test - oof) <= 2 * se)}


def one(comp_name: str, answers_path: Path, work: Path, carried: dict | None = None) -> dict:
    """carried: the images part's last figures ({"runs", "ensemble", "note"}), used for runs not
    in results/ now — its folds are the image grouping's, which no text change moves."""
    comp = load_competition(comp_name)
    res = C.root() / "results" / comp.name
    answers = Answers(comp, answers_path)
    n_test = len(answers.y)
    processed = C.root() / "data" / "processed" / comp.name / "train.csv"
    n_train = len(pd.read_csv(processed, usecols=["id"])) if processed.exists() else 0
    old = carried or {}
    rows, missing, from_old = [], [], []
    for run in comp.default_models:
        if (res / run / "metrics.json").exists():
            e = run_entry(answers, res / run)
        elif run in (old.get("runs") or {}):
            e = old["runs"][run]
            from_old.append(run)
        else:
            missing.append(run)
            continue
        rows.append(_row(run + (f" ({old['note']})" if run in from_old else ""), e["oof_score"],
                         e["test"]["micro_f1"], n_train, n_test))
    trained = [r for r in comp.default_models if r not in missing]
    ens = None
    if from_old and not missing and (old.get("ensemble") or {}).get("runs") == trained:
        ens = {**old["ensemble"], "note": old["note"]}
    elif len(trained) > 1 and not from_old:  # the ensemble of what is trained, named when it is not all of the default
        ens = made_ensemble(answers, comp, trained, work / comp.name)
    if ens:
        of = f" of {' '.join(trained)}" if missing else ""
        how = ", ".join([ens["method"], *(["TTA"] if ens.get("tta") else []), *([ens["note"]] if ens.get("note") else [])])
        rows.append(_row(f"ensemble{of} ({how})", ens["oof_score"], ens["test"]["micro_f1"], n_train, n_test))
    runs = [r for r in rows if not r["what"].startswith("ensemble") and r.get("gap") is not None]
    by_oof = [r["what"].split(" (")[0] for r in sorted(runs, key=lambda r: -r["oof"])]
    by_test = [r["what"].split(" (")[0] for r in sorted(runs, key=lambda r: -r["test"])]
    return {"comp": comp.name, "metric": comp.metric, "n_train": n_train, "n_test": n_test, "rows": rows,
            "missing": missing, "rank_by_oof": by_oof, "rank_by_test": by_test, "same_ranking": by_oof == by_test}


def part_validation(args, work: Path, images: dict | None = None, stamp: dict | None = None) -> dict:
    """images, stamp: the images part's last results and when they were measured."""
    q = (images or {}).get("quality") or {}
    carried = None
    if q.get("comp") == args.image_comp:
        when = f"measured at git {stamp['git_sha']}, {stamp['date']}" if stamp else "measured earlier"
        carried = {"runs": q.get("runs"), "ensemble": q.get("ensemble"), "note": f"{when}; not in results/ now"}
    return {"comps": [one(args.comp, args.answers, work), one(args.image_comp, args.image_answers, work, carried)]}


def _f(x) -> str:
    return "—" if x is None else f"{x:.4f}"


def render(v: dict) -> list[str]:
    if not v:
        return []
    L = ["## Validation (OOF against held-out)", "",
         ("Each run of a competition's default MODELS and their ensemble (what a plain `make all` makes): OOF "
          "(nested for the ensemble: the method is chosen inside each outer fold), the test score against the "
          "answers, the gap (test − OOF) and two standard errors of it (OOF and test as two independent "
          "samples of a proportion). Folds are grouped by near duplicates (section above)."), ""]
    for c in v["comps"]:
        L += [f"**{c['comp']}** ({c['metric']}; {c['n_train']} train rows, {c['n_test']} test rows)", "",
              "| what | OOF | test | gap | 2 SE | gap within 2 SE |", "|---|---|---|---|---|---|"]
        for r in c["rows"]:
            gap = "—" if r.get("gap") is None else f"{r['gap']:+.4f}"
            L.append(f"| {r['what']} | {_f(r['oof'])} | {_f(r['test'])} | {gap} | {_f(r.get('two_se'))} | "
                     f"{'—' if r.get('within') is None else 'yes' if r['within'] else 'no'} |")
        if c["missing"]:
            L.append(f"| not trained: {', '.join(c['missing'])} | | | | | |")
        L.append("")
        if len(c["rank_by_oof"]) > 1:
            L += [(f"Ranking by OOF {'equals' if c['same_ranking'] else 'differs from'} the ranking by test: "
                   f"OOF {' > '.join(c['rank_by_oof'])}; test {' > '.join(c['rank_by_test'])}."), ""]
    return L
