"""`make bench`, part budget: `make all BUDGET=…` from cold — a scratch copy of the project (Makefile,
configs, src; the real .venv) with no data, no results and no speed cache, so the download, the
checks, the folds and every probe are inside the budget — for each point of --budget-points
(competition=budget): wall time against the budget, what it bought, and the submission's test
score against the competition's answers. A table and bench/budget.png (score against budget).
A point already measured at the same commit is kept unless --budget-redo.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from images import make_env, timed_stage
from processes import BENCH
from scale import _project

from medalist.budget import fmt, parse_duration
from medalist.core.competition import load_competition
from medalist.stages import score


def parse_points(text: str, dirs: dict[str, Path]) -> list[tuple[str, str]]:
    """'math-subjects=20m,60m;fashion-products=20m' → [(comp, budget), …]; each comp needs a folder."""
    out = []
    for chunk in filter(None, (c.strip() for c in text.split(";"))):
        comp, _, budgets = chunk.partition("=")
        if comp not in dirs:
            raise SystemExit(f"--budget-points: no folder for '{comp}' (it must be --comp or --image-comp)")
        for b in filter(None, (x.strip() for x in budgets.split(","))):
            parse_duration(b)
            out.append((comp, b))
    return out


def part_budget(points: list[tuple[str, str]], dirs: dict[str, Path], work: Path, old: dict | None, sha: str,
                redo: bool = False) -> dict:
    res = dict(old or {})
    pts = dict(res.get("points") or {})
    for comp, b in points:
        key = f"{comp}@{b}"
        if not redo and (pts.get(key) or {}).get("git_sha") == sha:
            print(f"[budget] {key}: measured at {sha}, kept", flush=True)
            continue
        root = _project(work / key.replace("@", "-"))
        env = {k: v for k, v in make_env().items() if k not in ("MEDALIST_MAKE_START", "BUDGET", "PRESET")}
        try:
            rec = timed_stage(["make", "-C", str(root), "--no-print-directory", "all", f"COMP={comp}",
                               f"COMP_DIR={dirs[comp]}", f"BUDGET={b}"], work / f"{key.replace('@', '-')}.log", env)
        except RuntimeError as e:  # a failed point is a result too: its last line, and the next point runs
            pts[key] = {"comp": comp, "budget": b, "budget_seconds": parse_duration(b), "git_sha": sha,
                        "error": [line for line in str(e).splitlines() if line.strip()][-2:]}
            continue
        c = load_competition(comp)
        sub = root / "submission" / comp / "submission.csv"
        rb = root / "results" / comp / "budget.json"
        point = {"comp": comp, "budget": b, "budget_seconds": parse_duration(b), "git_sha": sha,
                 "wall_seconds": rec["wall_seconds"], "cpu_seconds": rec["cpu_seconds"],
                 "load_avg_15min": rec["load_avg_15min"], "metric": c.metric}
        if rb.exists():
            b_rec = json.loads(rb.read_text())
            point.update(runs=b_rec["runs"], tta=b_rec["tta"], probe_seconds=b_rec["probe_s"],
                         left_out=[r["name"] for r in b_rec["table"] if r["name"] not in b_rec["runs"]],
                         table=b_rec["table"])
        if sub.exists():  # scored as `make score` in that project would (its raw files, its sample submission)
            before = os.environ.get("MEDALIST_ROOT")
            os.environ["MEDALIST_ROOT"] = str(root)
            try:
                point["test"] = score.run(c, sub, dirs[comp] / "test_labels.csv")
            finally:
                os.environ.pop("MEDALIST_ROOT") if before is None else os.environ.__setitem__("MEDALIST_ROOT", before)
        pts[key] = point
        shutil.rmtree(root / "data", ignore_errors=True)  # the copies of the competition's files
    res["points"] = pts
    plot(pts, BENCH / "budget.png")
    return res


def plot(pts: dict, out: Path) -> None:
    from medalist.core.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for comp in sorted({p["comp"] for p in pts.values()}):
        xs = sorted((p["budget_seconds"] / 60, (p.get("test") or {}).get(p["metric"]))
                    for p in pts.values() if p["comp"] == comp and p.get("test"))
        if xs:
            ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", label=comp)
    ax.set_xlabel("BUDGET (minutes)")
    ax.set_ylabel("test score of the submission")
    ax.set_title("make all BUDGET=…, from cold")
    ax.legend()
    save_figure(fig, out)


def render(r: dict) -> list[str]:
    pts = (r or {}).get("points") or {}
    if not pts:
        return []
    rows = []
    for key in sorted(pts, key=lambda k: (pts[k]["comp"], pts[k]["budget_seconds"])):
        p = pts[key]
        if "error" in p:
            rows.append(f"| {p['comp']} | {p['budget']} | failed: {' '.join(p['error'])} | no | – | – | – | – | – | – | `{p['git_sha']}` |")
            continue
        within = p["wall_seconds"] <= 1.05 * p["budget_seconds"]
        t = (p.get("test") or {}).get(p["metric"])
        rows.append(f"| {p['comp']} | {p['budget']} | {fmt(p['wall_seconds'])} ({100 * p['wall_seconds'] / p['budget_seconds']:.0f}%) | "
                    f"{'yes' if within else 'no'} | {'–' if t is None else f'{t:.4f}'} | {' '.join(p.get('runs', [])) or '–'} | "
                    f"{' '.join(p.get('left_out', [])) or '–'} | {'on' if p.get('tta') else 'off'} | "
                    f"{fmt(p.get('probe_seconds', 0))} | {p['load_avg_15min']:.1f} | `{p['git_sha']}` |")
    return ["## Budget", "",
            ("`make all COMP=<comp> COMP_DIR=<folder> BUDGET=<b>` from cold: a scratch copy of the project with no "
             "data, results or speed cache, so download, checks, folds and the probes count against the budget. "
             "Goal: every wall time within the budget + 5%. Test score: the submission against the competition's "
             "answers (micro-F1 for math-subjects, accuracy for fashion-products). Load: the 15-minute load average at "
             "the end (2 cores)."), "",
            "| competition | BUDGET | wall | within +5% | test score | bought | left out | TTA | probing | load | git |",
            "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
            "![score against budget](bench/budget.png)", ""]
