"""The report a person reads: data checks as HTML tables, training curves per run from the run's own
logs, and the summary block that ends `make all`."""
from __future__ import annotations

import re
import shutil
import time

import pytest
import yaml

from medalist.core.competition import load_competition
from medalist.core.config import Paths
from medalist.core.io import read_json, write_json
from medalist.stages import checks as checks_stage
from medalist.stages import ensemble
from medalist.stages import report
from medalist.stages import train as train_stage

PLANT = "<img src=x onerror=alert(1)>"  # a label name that is also HTML


def _copy_run(paths: Paths, src: str, dst: str) -> None:
    """Another run with the same predictions: what the report reads of its curves is what we plant."""
    shutil.copytree(paths.run(src), paths.run(dst))
    m = read_json(paths.run(dst) / "metrics.json")
    write_json(paths.run(dst) / "metrics.json", {**m, "run": dst})


@pytest.fixture
def demo_runs(project, small_demo_folds):
    """The demo with a planted label; run quick trained; 'logged' with TensorBoard events, 'epochs'
    with per-epoch histories in its done.json files (both copies of quick's predictions); TTA
    outputs where only 'logged' gained; the ensemble over the three on TTA."""
    cfg_path = project / "configs" / "competitions" / "demo.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["description"][PLANT] = cfg["description"].pop(cfg["labels"][0])
    cfg["labels"][0] = PLANT
    cfg["check_models"] = []  # the tokenizer lengths are not what this tests
    cfg_path.write_text(yaml.safe_dump(cfg))
    comp = load_competition("demo")
    paths = small_demo_folds  # the folds do not depend on the labels' names
    checks_stage.run(comp)
    train_stage.run("demo", "quick")

    from torch.utils.tensorboard import SummaryWriter

    _copy_run(paths, "quick", "logged")
    for k in (0, 1, 2, 3, 4, 9):  # fold 9 is not one of this run's folds: an older run's leftover
        with SummaryWriter(str(paths.logs / "logged" / f"fold{k}")) as w:
            for step in range(1, 21):
                w.add_scalar("train/loss", 2.0 / step + 0.01 * k, step)
                w.add_scalar("train/lr", 1e-4, step)
                if step % 10 == 0:
                    w.add_scalar("val/micro_f1", 0.5 + step / 50, step)

    _copy_run(paths, "quick", "epochs")
    for done in paths.run("epochs").glob("fold*/done.json"):
        d = read_json(done)
        d["info"] = {**d.get("info", {}), "history": [
            {"epoch": e, "stage": "fit", "loss": 1.0 / e, "micro_f1": 0.6 + 0.1 * e} for e in (1, 2, 3)]}
        write_json(done, d)

    for run, gain in (("quick", -0.002), ("logged", 0.0123), ("epochs", 0.0)):  # TTA helped 'logged' only
        tta_dir = paths.run(run) / "tta"
        tta_dir.mkdir()
        for name in ("oof.csv", "test.csv"):
            shutil.copy(paths.run(run) / name, tta_dir / name)
        m = read_json(paths.run(run) / "metrics.json")
        write_json(tta_dir / "metrics.json", {**m, "plain_score": m["oof_score"], "gain": gain, "use_tta": gain > 0})
    ensemble.run("demo", ["quick", "logged", "epochs"], use_tta=True)
    return comp, paths


def _section(page: str, heading: str) -> str:
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start:end if end > 0 else None]


def test_report_tables_curves_and_summary(demo_runs, monkeypatch, capsys):
    comp, paths = demo_runs
    monkeypatch.setenv("MEDALIST_MAKE_START", str(int(time.time()) - 125))
    out = report.run("demo", ["quick", "logged", "epochs"])
    page = out.read_text(encoding="utf-8")

    # the checks are real tables, every cell escaped
    checks = _section(page, "Data checks")
    assert "<pre>" not in page and "| ---" not in checks and "|---|" not in checks
    assert checks.count("<table>") >= 5  # rows, duplicates, classes, content, lengths
    assert "<h3>Class distribution</h3>" in checks
    assert f"<td>{PLANT.replace('<', '&lt;').replace('>', '&gt;')}</td>" in checks
    assert "<img src=x" not in page and "<script" not in page.lower()
    assert re.search(r"<code>[^<]+</code>", checks)  # the adversarial tokens, as code
    assert "TF-IDF classifier telling train from test: AUC" in checks

    # curves: the run with events and the run with histories get a picture, quick says it has none
    curves = _section(page, "Training curves")
    for run in ("logged", "epochs"):
        assert f'alt="training curves {run}" src="data:image/png;base64,' in curves
        assert (paths.images / f"curves_{run}.png").stat().st_size > 1000
    assert "quick: no training curves" in curves and 'alt="training curves quick"' not in curves
    events, unit = report.run_curves(paths, "logged", comp.metric)
    assert unit == "optimizer step" and list(events) == [f"fold {k}" for k in range(5)]
    assert events["fold 1"]["loss"][0] == list(range(1, 21))
    assert events["fold 1"]["metric"] == ([10, 20], [pytest.approx(0.7), pytest.approx(0.9)])
    history, unit = report.run_curves(paths, "epochs", comp.metric)
    assert unit == "epoch" and len(history) == 5 and history["fold 0"]["loss"] == ([1, 2, 3], [1.0, 0.5, 1 / 3])
    assert report.run_curves(paths, "quick", comp.metric) == ({}, "epoch")

    # the summary block: submission and its validation, the ensemble's CV, each run's OOF, report, wall time
    lines = capsys.readouterr().out.splitlines()
    block = lines[lines.index("== demo: done =="):]
    text = "\n".join(block)
    assert len(block) <= 10
    assert re.search(r"^submission\s+submission/demo/submission\.csv\s+valid against sample_submission\.csv "
                     r"\(500 rows\)$", text, re.M)
    ens = read_json(paths.results / "ensemble" / "metrics.json")
    assert re.search(rf"^ensemble\s+{ens['method']}, nested CV micro_f1 {ens['nested_score']:.4f}$", text, re.M)
    oof = read_json(paths.run("quick") / "metrics.json")["oof_score"]
    for run in ("quick", "epochs"):
        assert re.search(rf"^run {run}\s+OOF micro_f1 {oof:.4f}$", text, re.M)
    assert re.search(rf"^run logged\s+OOF micro_f1 {oof:.4f}  TTA \+0\.0123$", text, re.M)  # where TTA is used
    assert re.search(r"^report\s+results/demo/report\.html$", text, re.M)
    assert re.search(r"^wall time\s+2m 0[5-9]s$", text, re.M)
    values = {re.match(r"^(.+?) {2,}", line).end() for line in block[1:]}
    assert len(values) == 1  # one column of values

    # outside make there is no start time, so no wall time; a broken submission is named, not hidden
    monkeypatch.delenv("MEDALIST_MAKE_START")
    sub = paths.submission / "submission.csv"
    sub.write_text(sub.read_text().replace("\n", "\nextra,0\n", 1))
    metrics = {r: read_json(paths.run(r) / "metrics.json") for r in ("quick",)}
    text = report.summary(comp, paths, ["quick"], metrics, ens, out)
    assert "wall time" not in text
    assert re.search(r"^submission\s+submission/demo/submission\.csv\s+INVALID: submission has 501 rows", text, re.M)


def test_checks_markdown_becomes_elements(project):
    from medalist.stages.report_html import Page

    page = Page(project)
    page.markdown("# Title\n\n## Part\n\n| a | b \\| c |\n|---|---|\n| <b>x</b> | 12.5% |\n\n"
                  "Tokens: `<i>`, `y`\n\n- note <one>\n- note two\n\n![pic](../x.png)\n")
    body = "\n".join(page.html)
    assert "Title" not in body and body.startswith("<h3>Part</h3>")
    assert ("<table><thead><tr><th>a</th><th>b | c</th></tr></thead><tbody><tr><td>&lt;b&gt;x&lt;/b&gt;</td>"
            '<td class="num">12.5%</td></tr></tbody></table>') in body
    assert "<p>Tokens: <code>&lt;i&gt;</code>, <code>y</code></p>" in body
    assert "<ul><li>note &lt;one&gt;</li><li>note two</li></ul>" in body
    assert "pic" not in body
    assert page.md[1].startswith("| a | b \\| c |")


def test_a_label_with_a_bar_or_newline_keeps_the_checks_table_whole(project):
    from medalist.stages.report_html import Page

    md = checks_stage._table(["label", "rows"], [["algebra | geometry", 3], ["two\nlines", 4]])
    assert md.splitlines()[2] == "| algebra \\| geometry | 3 |" and md.splitlines()[3] == "| two lines | 4 |"
    page = Page(project)
    page.markdown("## Classes\n\n" + md + "\n")
    assert "<td>algebra | geometry</td>" in "\n".join(page.html)
