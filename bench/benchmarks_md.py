"""BENCHMARKS.md from bench/results.json: machine, commands, goals met or not, and a table per part."""
from __future__ import annotations

import budget
import dedup
import images
import scale
import validation
from quality import REFERENCE_TFIDF


def fmt(x, nd: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def goals(res: dict) -> list[str]:
    q, s = res.get("quality") or {}, res.get("speed") or {}
    out = []

    def line(ok, text):
        out.append(f"- {'met' if ok else ('not met' if ok is False else 'not measured')}: {text}")

    ens, tf, best = q.get("ensemble_test_micro_f1"), q.get("tfidf_test_micro_f1"), q.get("best_single_test_micro_f1")
    line(None if ens is None or tf is None else ens >= tf + 0.06,
         f"stretch: ensemble test micro-F1 ≥ TF-IDF + 0.06 ({fmt(ens)} vs {fmt(tf)} + 0.06; SOURCE.md: {REFERENCE_TFIDF})")
    line(None if ens is None or best is None else ens > best,
         f"ensemble above every single run ({fmt(ens)} vs best single {fmt(best)}, {q.get('best_single_run')})")
    mac = q.get("ensemble_test_macro_f1")
    line(None if ens is None or mac is None else ens >= 0.80 and mac >= 0.80,
         f"ensemble test micro-F1 and macro-F1 ≥ 0.80 ({fmt(ens)} / {fmt(mac)})")
    hours, pre = q.get("train_hours"), q.get("pretrain_seconds") or {}
    line(None if hours is None else hours <= 4,
         f"quality part at most 4 hours of training on this CPU ({fmt(hours, 2)} h: the runs above"
         + "".join(f" + pretraining {k} {fmt(v / 3600, 2)} h" for k, v in pre.items())
         + (f" + the references {fmt(q['reference_train_seconds'] / 3600, 2)} h" if q.get("reference_train_seconds") else "")
         + ")")
    ref = (q.get("references") or {}).get("HF Trainer (bench/trainer_baseline.py)")
    ref_f1, ref_s = (ref or {}).get("test", {}).get("micro_f1"), (ref or {}).get("train_seconds")
    rival = q.get("neural_at_trainer_cost")
    best = (f"{q.get('best_neural_run')}: {fmt(q.get('best_neural_test_micro_f1'))} in "
            f"{fmt(q.get('best_neural_train_seconds'), 0)} s, {q.get('best_neural_measured_on') or 'all folds'}")
    if rival:
        line(bool(rival["test_micro_f1"] >= ref_f1),
             f"a fine-tuned transformer ≥ the plain Trainer at no more training time ({rival['run']}, "
             f"{rival['measured_on'] or 'all folds'}: {fmt(rival['test_micro_f1'])} in {fmt(rival['train_seconds'], 0)} s "
             f"vs {fmt(ref_f1)} in {fmt(ref_s, 0)} s; the best: {best})")
    else:
        line(None if ref is None or q.get("best_neural_run") is None else False,
             f"a fine-tuned transformer ≥ the plain Trainer at no more training time (none trained within "
             f"{fmt(ref_s, 0)} s; the best: {best}; the Trainer: {fmt(ref_f1)})")
    tr, rr = s.get("train_samples_per_s") or {}, s.get("infer_texts_per_s") or {}
    speed_model = res.get("model", "")
    mm = (q.get("runs") or {}).get(speed_model, {}).get("test", {}).get("micro_f1")
    tq = q.get("trainer_test_micro_f1")
    # the score half needs a finished run of the speed part's own config: without one, not measured
    line(None if tr.get("ratio") is None or mm is None or tq is None else bool(tr["ratio"] >= 1.5 and mm >= tq),
         f"training throughput ≥ 1.5× the plain Trainer at equal or better score "
         f"({fmt(tr.get('ratio'), 2)}×; test micro-F1 {fmt(mm)} vs Trainer {fmt(tq)}"
         f"{'' if mm is not None else f' — no finished run of the speed config, {speed_model}'})")
    fp32 = s.get("infer_texts_per_s_fp32") or {}
    how = (f" in {s['infer_precision']}, what a run trained with cpu_bf16_training predicts in here; fp32: "
           f"{fmt(fp32.get('ratio'), 2)}×" if s.get("infer_precision") else "")
    line(None if rr.get("ratio") is None else rr["ratio"] >= 2, f"inference ≥ 2× ({fmt(rr.get('ratio'), 2)}×{how})")
    line(None if not s.get("wall_seconds") else s["wall_seconds"] < 900,
         f"speed part under 15 minutes ({fmt(s.get('wall_seconds', 0) / 60 if s.get('wall_seconds') else None, 1)} min)")
    return out + images.goals(res.get("images") or {})


def infer_how(s: dict) -> str:
    """How the speed part timed inference, for its paragraph."""
    if not s.get("infer_precision"):
        return ""
    rr = s["infer_round_ratios"]
    return (f" (one process per repeat, on the fold medalist's side just trained, alternating {s['infer_rounds']} "
            f"passes each after a warm-up batch, so the machine's load falls on all three alike: medalist's "
            f"`load_predictor` in the precision it picks for a run trained with `cpu_bf16_training`, as the minilm "
            f"configs are — {s['infer_precision']} here, where the CPU {'has' if s['bf16_native_cpu'] else 'has no'} "
            f"native bf16 —, the same in fp32 (`MEDALIST_CPU_INFERENCE=fp32`; also what a run trained in fp32 "
            f"predicts in), and the plain Trainer's `predict` as bench/trainer_baseline.py makes it; texts/s: the "
            f"median of each repeat's passes, then over repeats; ratio: the median of the {rr['chosen']['n']} per-round "
            f"ratios (a round's three passes run back to back, under the same load), which ranged "
            f"{rr['chosen']['min']:.2f}–{rr['chosen']['max']:.2f}× ({s['infer_precision']}) and "
            f"{rr['fp32']['min']:.2f}–{rr['fp32']['max']:.2f}× (fp32). The two precisions' probabilities on that briefly trained "
            f"fold within {s['infer_max_abs_diff_vs_fp32']:.1e}. The Trainer script's own predict after its training "
            f"steps, in its process: {s['infer_texts_per_s_trainer_process']:.1f} texts/s)")


def infer_rows(s: dict) -> list[str]:
    """The speed table's inference rows: the chosen precision, and fp32 beside it where measured."""
    inf, fp32 = s["infer_texts_per_s"], s.get("infer_texts_per_s_fp32")
    if not fp32:
        return [f"| inference texts/s | {fmt(inf['medalist'], 1)} | {fmt(inf['trainer'], 1)} | {fmt(inf['ratio'], 2)}× |"]
    return [f"| inference texts/s, {s['infer_precision']} | {fmt(inf['medalist'], 1)} | {fmt(inf['trainer'], 1)} | "
            f"{fmt(inf['ratio'], 2)}× |",
            f"| inference texts/s, fp32 | {fmt(fp32['medalist'], 1)} | {fmt(fp32['trainer'], 1)} | {fmt(fp32['ratio'], 2)}× |"]


def per_repeat(s: dict) -> str:
    """Each repeat's figures: training samples/s, and inference texts/s of each side."""
    sm = s["samples"]
    if not s.get("infer_precision"):
        return "Per repeat (samples/s, texts/s): " + "; ".join(
            f"{side} " + ", ".join(f"{r['train_samples_per_s']:.2f}/{r['infer_texts_per_s']:.1f}" for r in rs)
            for side, rs in sm.items()) + "."
    train = "; ".join(f"{side} " + ", ".join(f"{r['train_samples_per_s']:.2f}" for r in rs) for side, rs in sm.items())
    infer = ", ".join(f"{r['infer_texts_per_s']:.1f}/{r['infer_texts_per_s_fp32']:.1f}/{r['infer_texts_per_s_trainer']:.1f}"
                      for r in sm["medalist"])
    took = f" (its process: {s['infer_process_seconds']:.0f} s, median)" if s.get("infer_process_seconds") else ""
    return (f"Per repeat: training samples/s {train}; inference texts/s (medalist {s['infer_precision']} / medalist "
            f"fp32 / Trainer.predict) {infer}{took}.")


def ablation_lines(abl: dict | None, q: dict) -> list[str]:
    """The quality part's table of each technique alone and the ensemble of all of them."""
    if not abl:
        return []
    L = ["### Each technique alone", "",
         ("What each technique costs and buys on its own. A neural technique too slow for all folds on "
          "this CPU is trained on one fold (`make train … FOLDS=0`, sometimes under a `max_train_rows` cap): its "
          "test score is that fold's model alone and its OOF column that fold's validation score; "
          "\"measured on\" says which."), "",
         "| technique | run | measured on | test micro-F1 | test macro-F1 | OOF | train s |", "|---|---|---|---|---|---|---|"]
    for what, e in abl["rows"].items():
        if not e.get("measured"):
            L.append(f"| {what} | {e['run']} | not measured (`{e['how']}`) | — | — | — | — |")
            continue
        L.append(f"| {what} | {e['run']} | {e['measured_on']} | {fmt(e['test']['micro_f1'])} | "
                 f"{fmt(e['test']['macro_f1'])} | {fmt(e['oof_score'])} | {fmt(e['train_seconds'], 1)} |")
    for ens in [abl.get("ensemble"), *(abl.get("ensembles_before") or [])]:
        if ens:
            where = f"the runs on all folds{' (' + ens['carried'] + ')' if ens.get('carried') else ''}"
            L.append(f"| **ensemble of all of them** ({ens['method']}) | {' '.join(ens['runs'])} | {where} | "
                     f"{fmt(ens['test']['micro_f1'])} | {fmt(ens['test']['macro_f1'])} | {fmt(ens['oof_score'])} | "
                     f"{fmt(ens['train_seconds'], 1)} + {fmt(ens['seconds'], 1)} |")
    if q.get("best_neural_run"):
        L += ["", (f"Best fine-tuned transformer: {q['best_neural_run']}, test micro-F1 "
                   f"{fmt(q.get('best_neural_test_micro_f1'))} after {fmt(q.get('best_neural_train_seconds'), 0)} s of "
                   f"training ({q.get('best_neural_measured_on') or 'all folds'}); the plain Trainer reference: "
                   f"{fmt(q.get('trainer_test_micro_f1'))}.")]
    rival = q.get("neural_at_trainer_cost")
    if rival and (rival["run"], rival["measured_on"]) != (q.get("best_neural_run"), q.get("best_neural_measured_on")):
        L[-1] += (f" Within the Trainer's training seconds: {rival['run']}, {rival['measured_on'] or 'all folds'}, "
                  f"test micro-F1 {fmt(rival['test_micro_f1'])} after {fmt(rival['train_seconds'], 0)} s.")
    return L + [""]


def stamp_lines(res: dict) -> list[str]:
    """When parts were measured on different commits or stacks, say which part came from where."""
    stamps = res.get("part_stamps") or {}
    if len({(v["git_sha"], v["machine"]["versions"].get("torch")) for v in stamps.values()}) < 2:
        return []
    return ["Parts measured at different times (a part not rerun keeps its figures):", ""] + [
        f"- {part}: git `{v['git_sha']}`, {v['date']}, torch {v['machine']['versions'].get('torch')}"
        for part, v in stamps.items()] + [""]


def render(res: dict) -> str:
    m, q, s, g = res["machine"], res.get("quality") or {}, res.get("speed") or {}, res.get("growth") or {}
    gpu = bool(m.get("gpu"))
    L = ["# Benchmarks", "",
         f"`make bench` on **{res.get('comp')}** (answers: `{res.get('answers')}`), git `{res['git_sha']}`, {res['date']}.", "",
         "## Machine", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; GPU: {m['gpu'] or 'none'}; {m['os']}",
         "- " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
         *stamp_lines(res),
         "## Commands", "", "```bash", *res.get("commands", []),
         *dict.fromkeys([*((res.get("images") or {}).get("bench_commands") or {}).values(),
                         *(res.get("part_commands") or {}).values()]),
         "```", "", "## Goals", "", *goals(res), ""]
    if q:
        L += ["## Quality (test set, scored against the answers)", "",
              "| what | test micro-F1 | test macro-F1 | OOF | train s | predict s |", "|---|---|---|---|---|---|"]
        for name, e in q["references"].items():
            name += f" ({e['carried']})" if e.get("carried") else ""
            L.append(f"| reference: {name} | {fmt(e['test']['micro_f1'])} | {fmt(e['test']['macro_f1'])} | — | "
                     f"{fmt(e.get('train_seconds'), 1)} | {fmt(e.get('predict_seconds'), 1)} |")
        for name, e in q["runs"].items():
            name += f" ({e['carried']})" if e.get("carried") else ""
            L.append(f"| run {name} | {fmt(e['test']['micro_f1'])} | {fmt(e['test']['macro_f1'])} | "
                     f"{fmt(e['oof_score'])} | {fmt(e['train_seconds'], 1)} | {fmt(e['predict_seconds'], 1)} |")
            if "tta" in e:
                t = e["tta"]
                L.append(f"| run {name} + TTA{'' if t.get('used') else ' (not used: no OOF gain)'} | "
                         f"{fmt(t['test']['micro_f1'])} | {fmt(t['test']['macro_f1'])} | {fmt(t['oof_score'])} | — | "
                         f"{fmt(t['predict_seconds'], 1)} |")
        for name, e in q["ensembles"].items():
            L.append(f"| **ensemble {name}** ({e['method']}{'; ' + e['carried'] if e.get('carried') else ''}) | {fmt(e['test']['micro_f1'])} | "
                     f"{fmt(e['test']['macro_f1'])} | {fmt(e['oof_score'])} | {fmt(e['seconds'], 1)} | — |")
        d = q.get("default_ensemble")
        if d and d not in q["ensembles"].values():
            L.append(f"| **ensemble of the default MODELS** ({' '.join(d['runs'])}{' + TTA' if d.get('tta') else ''}; "
                     f"{d['method']}{'; ' + d['carried'] if d.get('carried') else ''}) | {fmt(d['test']['micro_f1'])} | "
                     f"{fmt(d['test']['macro_f1'])} | {fmt(d['oof_score'])} | {fmt(d['seconds'], 1)} | — |")
        pre = q.get("pretrain_seconds") or {}
        hours = sum((e.get("train_seconds") or 0) for e in q["runs"].values()) / 3600
        L += ["", (f"Train / predict seconds of a run are all its folds (metrics.json); the first `make bench` "
              f"trains them (on this CPU: {fmt(hours, 2)} h of training for the runs above"
              + "".join(f", and {fmt(v / 3600, 2)} h of in-domain pretraining ({k}) that some of them start from"
                        for k, v in pre.items())
              + f"), a rerun reuses them. The HF Trainer reference is one model "
              f"on all of train.csv (no folds), cached under results/{res['comp']}/bench/."
              + (f" The row \"ensemble of the default MODELS\" is what a plain `make all COMP={res['comp']}` makes "
                 f"(its runs trained {fmt(d['train_seconds'] / 3600, 2)} h)." if d and d.get('train_seconds')
                 and d not in q["ensembles"].values() else "")), ""]
        L += ablation_lines(q.get("ablations"), q)
    if s:
        tr, tok = s["train_samples_per_s"], s["tokenize_seconds"]
        L += ["## Speed (A/B, same backbone, same rows)", "",
              (f"{s['repeats']} alternating repeats (ABBA order), median; each side its own process; "
              f"training: {s['steps']} optimizer steps on the same {s['rows']} train rows (medalist: "
              f"`hf_text.fit_fold` through the engine, one epoch over them; Trainer: `--max-steps {s['steps']}`); inference: "
              f"the same {s['infer_rows']} test texts{infer_how(s)}. Device: {s['device']}."), "",
              "| | medalist | plain Trainer | ratio |", "|---|---|---|---|",
              f"| training samples/s | {fmt(tr['medalist'], 2)} | {fmt(tr['trainer'], 2)} | {fmt(tr['ratio'], 2)}× |",
              *infer_rows(s),
              (f"| tokenisation s ({tok['texts']} texts) | {fmt(tok['medalist'], 3)} | {fmt(tok['trainer'], 3)} | "
              f"{fmt(tok['ratio'], 2)}× |"),
              f"| peak RSS MB | {fmt(s['peak_rss_mb']['medalist'], 0)} | {fmt(s['peak_rss_mb']['trainer'], 0)} | |"]
        if gpu or any(s["peak_gpu_mb"].values()):
            L.append(f"| peak GPU MB ({s['mixed_precision']['medalist']} / {s['mixed_precision']['trainer']}) | "
                     f"{fmt(s['peak_gpu_mb']['medalist'], 0)} | {fmt(s['peak_gpu_mb']['trainer'], 0)} | |")
        L += ["", per_repeat(s) + f" Speed part wall time: {s['wall_seconds'] / 60:.1f} min.", ""]
    stages = res.get("stages") or {}
    if stages:
        L += ["## Memory and wall time per stage", "", ("Each stage is its own process; runs' figures come from "
              "their metrics.json (all folds), the others are sampled by the bench (RSS of the process tree)."), "",
              "| stage | peak RSS MB | wall s |", "|---|---|---|"]
        L += [f"| {k} | {fmt(v['peak_rss_mb'], 0)} | {fmt(v['seconds'], 1)} |" for k, v in stages.items()] + [""]
    if g:
        L += ["## Growth", "", g["note"], "", "![growth](bench/growth.png)", "",
              ("| train rows | TF-IDF fit s | medalist epoch s | Trainer epoch s | medalist k-fold run h | "
              "test rows | TF-IDF predict s | medalist predict s | Trainer predict s |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            L.append(f"| {r['n']} | {fmt(r['tfidf_train_seconds'], 2)} | {fmt(r.get('medalist_epoch_seconds'), 1)} | "
                     f"{fmt(r.get('trainer_epoch_seconds'), 1)} | {fmt(r.get('medalist_kfold_run_hours'), 2)} | "
                     f"{r['n_test']} | {fmt(r['tfidf_predict_seconds'], 2)} | {fmt(r.get('medalist_predict_seconds'), 1)} | "
                     f"{fmt(r.get('trainer_predict_seconds'), 1)} |")
        L.append("")
    L += images.render(res.get("images") or {})
    L += dedup.render(res.get("dedup") or {})
    L += validation.render(res.get("validation") or {})
    L += scale.render(res.get("scale") or {})
    L += budget.render(res.get("budget") or {})
    gpu_check = res.get("gpu_check")
    if gpu_check:
        L += gpu_section(gpu_check)
    return "\n".join(L)


def gpu_section(c: dict) -> list[str]:
    """The GPU checks of bench/gpu_check.py (run on a lent GPU box, not by `make bench`)."""
    alone, both, img = c["text_alone"], c["text_two_processes"], c["image"]
    L = ["## GPU check", "", (f"`python bench/gpu_check.py --backbone <MiniLM folder> --out bench/gpu_check.json` on "
         f"{c['gpu']} ({c['cpu_cores']} CPU cores, torch {c['torch']}, bf16 supported: {c['bf16_supported']}). "
         "Text: one fold of the demo (1,223 train rows, 2 epochs, batch 64, 128 tokens) with the MiniLM-L6 "
         "encoder through `make train … FOLDS=0` (accelerate launch, the engine's automatic bf16); samples/s is "
         "the mean over both epochs, the first including CUDA warm-up. Two processes: `make -j2 train` of two "
         "such runs at once on the one GPU."), "",
         "| run | precision | threads | train samples/s | fold s | peak GPU MB | fold-0 micro-F1 | make wall s |",
         "|---|---|---|---|---|---|---|---|"]
    for label, block in (("alone", alone), ("two at once", both)):
        for name, r in ((k, v) for k, v in block.items() if k != "wall_s"):
            L.append(f"| {name} ({label}) | {r['mixed_precision']} | {r['threads']} | {fmt(r['train_samples_per_s'], 0)} | "
                     f"{fmt(r['seconds'], 1)} | {fmt(r['peak_gpu_mb'], 0)} | {fmt(r['score'])} | {fmt(block['wall_s'], 1)} |")
    L += ["", f"Image: {img['model']}, {img['size']} px, batch {img['batch']}, AdamW, random tensors (no data loading).", "",
          "| precision | train images/s | inference images/s |", "|---|---|---|",
          f"| fp32 | {fmt(img['train_images_per_s_fp32'], 0)} | {fmt(img['infer_images_per_s_fp32'], 0)} |",
          f"| bf16 autocast | {fmt(img['train_images_per_s_bf16'], 0)} | {fmt(img['infer_images_per_s_bf16'], 0)} |", ""]
    return L
