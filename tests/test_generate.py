"""`make generate` against a local OpenAI-compatible server (the real `openai` client, 127.0.0.1).

The server answers with canned JSON lists: one 429 first, one malformed answer, and planted
duplicates (of train, of test, within the set) and an off-label problem for the filters to catch.
"""
from __future__ import annotations

import http.server
import json
import socket
import threading

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from medalist.clients.llm import read_cache
from medalist.core.config import Paths, UserError
from medalist.stages import generate

COMP = "tiny"
LABELS = ["Algebra", "Geometry", "Probability"]
N_FOLDS = 3
PROBE = "zebra zebra zebra zebra zebra zebra"  # only fold 0's Probability rows say "zebra"

ALGEBRA = ["Solve the equation {a}x + {b} = {c} for the unknown x.",
           "Find all roots of the polynomial x^2 - {a}x + {b} over the reals.",
           "Simplify the expression ({a}x + {b})({c}x - 1) and collect terms.",
           "For which values of x does the inequality {a}x - {b} > {c} hold?",
           "Solve the system of equations x + y = {a} and x - y = {b}."]
GEOMETRY = ["Find the area of a triangle with sides {a}, {b} and {c}.",
            "A circle has radius {a}; what is the length of a chord at distance {b} from the centre?",
            "In a right triangle the legs are {a} and {b}; find the hypotenuse and the angles.",
            "A square is inscribed in a circle of radius {a}. Find the area of the square."]
PROBABILITY = ["A fair die is rolled {a} times; find the probability of at least {b} sixes.",
               "Two cards are drawn at random from a deck of {a}; what is the probability of a pair?",
               "A coin is flipped {a} times. What is the expected number of heads?"]


def _rows(templates, n, label, rng):
    out = []
    for i in range(n):
        a, b, c = rng.integers(2, 99, size=3)
        out.append((templates[i % len(templates)].format(a=a, b=b, c=c) + f" (case {i})", label))
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A processed 3-class, 3-fold dataset and tfidf fold models, each fitted without its fold."""
    monkeypatch.setenv("MEDALIST_ROOT", str(tmp_path))
    monkeypatch.setenv("MEDALIST_CONFIGS", str(tmp_path / "configs"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    comps = tmp_path / "configs" / "competitions"
    comps.mkdir(parents=True)
    (comps / f"{COMP}.yaml").write_text(yaml.safe_dump({
        "name": COMP, "source": "local", "labels": LABELS, "folds": {"n": N_FOLDS},
        "description": {"Algebra": "equations and polynomials", "Geometry": "shapes and areas",
                        "Probability": "chance, dice, coins and cards"}}))
    (tmp_path / "configs" / "generate.yaml").write_text(yaml.safe_dump({
        "model": "test-model", "target_fraction": 0.8, "max_per_class": 10, "oversample": 1.5,
        "per_request": 5, "few_shot": 2, "concurrency": 2, "retries": 3, "retry_base_delay": 0.0,
        "timeout": 10.0, "min_chars": 15, "max_chars": 400}))
    rng = np.random.default_rng(0)
    rows = _rows(ALGEBRA, 30, 0, rng) + _rows(GEOMETRY, 24, 1, rng) + _rows(PROBABILITY, 9, 2, rng)
    train = pd.DataFrame(rows, columns=["text", "label"])
    train.insert(0, "id", [f"train-{i}" for i in range(len(train))])
    train["fold"] = train.groupby("label").cumcount() % N_FOLDS
    zebra = (train["label"] == 2) & (train["fold"] == 0)
    train.loc[zebra, "text"] = train.loc[zebra, "text"] + " The zebra zebra zebra asks."
    test = pd.DataFrame({"id": ["t0", "t1"], "text": [
        "What is the probability that a random permutation of five letters has no fixed point?",
        "Find the volume of a cone with radius 3 and height 4."]})
    paths = Paths(COMP)
    paths.processed.mkdir(parents=True)
    train.to_csv(paths.processed / "train.csv", index=False)
    test.to_csv(paths.processed / "test.csv", index=False)
    for k in range(N_FOLDS):
        fit = train[train["fold"] != k]
        model = make_pipeline(TfidfVectorizer(), LogisticRegression(C=100, max_iter=1000))
        model.fit(fit["text"].tolist(), fit["label"].to_numpy())
        (paths.run("tfidf") / f"fold{k}").mkdir(parents=True)
        joblib.dump(model, paths.run("tfidf") / f"fold{k}" / "model.joblib")
    return paths, train, test


def _answer(train: pd.DataFrame, test: pd.DataFrame) -> list:
    prob = train[train["label"] == 2]["text"].tolist()
    good = ["A fair coin is tossed four times. What is the probability of exactly two heads?",
            "Two cards are drawn from a standard deck without replacement; find the probability both are aces.",
            "A bag holds 3 red and 5 blue marbles and two are drawn at random. What is the probability they match?",
            PROBE]
    return good + [
        "  " + good[0].upper() + "  ",  # duplicate within the set
        prob[1].upper(),  # duplicate of a train row (case and spacing differ)
        test["text"][0],  # duplicate of a test row
        prob[2].replace("number", "numbers"),  # near duplicate of a train row
        "Solve the equation 5x + 3 = 18 for the unknown x and simplify the polynomial.",  # off-label
        "", "Why?", {"unexpected": 1},
    ]


class Server:
    """OpenAI-compatible /v1/chat/completions on an ephemeral port. `script` lists the status or
    content kind of the first calls; later calls get the canned list."""

    def __init__(self, content: list, script=(), always=None):
        self.calls, self.bodies, self.lock = 0, [], threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = outer.calls
                    outer.calls += 1
                    outer.bodies.append(body)
                kind = always or (script[n] if n < len(script) else "ok")
                if kind in (401, 429, 500):
                    return self._send(kind, {"error": {"message": f"status {kind}", "type": "error", "code": None}})
                text = "Sure! 1. a problem 2. another" if kind == "malformed" else json.dumps(content)
                self._send(200, {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_for(monkeypatch):
    servers = []

    def start(*args, **kwargs):
        s = Server(*args, **kwargs)
        servers.append(s)
        monkeypatch.setenv("OPENAI_BASE_URL", s.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        return s

    yield start
    for s in servers:
        s.close()


def _read(paths):
    llm = pd.read_csv(paths.generated / "llm.csv", dtype={"id": str, "folds": str}, keep_default_na=False)
    stats = json.loads((paths.generated / "generate_stats.json").read_text())
    return llm, stats, list(read_cache(paths.generated / "llm_cache.jsonl").values())


def test_generate_filters_caches_and_keeps_folds_clean(project, server_for):
    paths, train, test = project
    server = server_for(_answer(train, test), script=[429, "malformed"])
    generate.run(COMP)
    llm, stats, cache = _read(paths)

    assert stats["targets"] == {"Algebra": 0, "Geometry": 0, "Probability": 10}
    assert stats["requests_planned"] == 3 and stats["requests_sent"] == 3 and server.calls == 4  # 429 retried
    assert stats["usage_sent"]["total_tokens"] == 3 * 150
    f = stats["filtered"]
    assert f["unparseable"] == 1 and f["bad_items"] == 2
    assert f["empty"] == 2 and f["too_short"] == 2
    assert f["duplicate_test"] == 2 and f["duplicate_train"] == 2 and f["near_duplicate_train"] == 2
    # second answer repeats the first: its 4 good rows, the upper-cased copy and the off-label row
    assert f["duplicate_within"] == 1 + 6
    assert f["off_label"] == 1
    assert sorted(llm["text"]) == sorted(_answer(train, test)[:4])
    assert stats["kept"] == 4 and stats["kept_per_class"]["Probability"] == 4

    # generated_train.csv follows the contract
    gen = pd.read_csv(paths.generated / "generated_train.csv", dtype=str, keep_default_na=False)
    assert list(gen.columns) == ["id", "text", "label", "source", "parent_id", "folds"]
    assert (gen["source"] == "llm:test-model").all() and gen["id"].str.startswith("llm-").all()
    assert (gen["label"] == "2").all() and (gen["parent_id"] == "").all()

    # few-shot examples: training rows of the prompt's class, all outside its fold, never test rows
    by_id = train.set_index("id")
    meta = {e["key"][:12]: e["meta"] for e in cache}
    for e in cache:
        m = e["meta"]
        assert m["example_ids"] and not set(m["example_ids"]) & set(test["id"])
        assert (by_id.loc[m["example_ids"], "fold"] != m["fold"]).all()
        assert (by_id.loc[m["example_ids"], "label"] == m["label"]).all()
        for ex in by_id.loc[m["example_ids"], "text"]:
            assert ex in e["request"]["messages"][1]["content"]
    # a row trains in fold k only if it is not its few-shot fold and fold k's model agrees
    models = [joblib.load(paths.run("tfidf") / f"fold{k}" / "model.joblib") for k in range(N_FOLDS)]
    for row in llm.itertuples():
        few_shot_fold = meta[row.id.split("-")[1]]["fold"]
        assert row.fewshot_fold == few_shot_fold
        folds = {int(k) for k in row.folds.split(";")}
        assert few_shot_fold not in folds
        expect = {k for k in range(N_FOLDS) if k != few_shot_fold
                  and models[k].predict_proba([row.text])[0][2] >= 0.5}
        assert folds == expect
    # the probe is recognised only by models that saw fold 0's rows: the fold-0 model did not
    probe = llm[llm["text"] == PROBE].iloc[0]
    assert "0" not in probe["folds"].split(";") and probe["folds"]

    # a rerun sends nothing and writes the same rows
    calls = server.calls
    generate.run(COMP)
    llm2, stats2, _ = _read(paths)
    assert server.calls == calls and stats2["requests_sent"] == 0 and stats2["requests_cached"] == 3
    pd.testing.assert_frame_equal(llm, llm2)
    assert stats2["filtered"] == stats["filtered"]

    # an interrupted run (last answer lost, a line cut short) resumes with exactly one request
    lines = (paths.generated / "llm_cache.jsonl").read_text().splitlines()
    (paths.generated / "llm_cache.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    generate.run(COMP)
    _, stats3, cache3 = _read(paths)
    assert server.calls == calls + 1 and stats3["requests_sent"] == 1 and len(cache3) == 3


def _one_line_exit(capsys, argv=("--comp", COMP)):
    with pytest.raises(SystemExit) as e:
        generate.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    return err


def test_bad_credentials_is_one_line(project, server_for, capsys):
    paths, _, _ = project
    server_for([], always=401)
    err = _one_line_exit(capsys)
    assert "401" in err and "OPENAI_API_KEY" in err and "test-key" not in err
    assert not (paths.generated / "llm.csv").exists()


def test_unreachable_server_is_one_line(project, monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    assert "cannot reach" in _one_line_exit(capsys)


def test_server_errors_retry_then_give_up(project, server_for):
    server = server_for([], always=500)
    with pytest.raises(UserError, match="kept failing"):
        generate.run(COMP)
    assert server.calls >= 4  # 1 try + 3 retries for the first failing request


def test_missing_tfidf_models_say_run_baseline(project, capsys):
    paths, _, _ = project
    (paths.run("tfidf") / "fold1" / "model.joblib").unlink()
    assert "make baseline" in _one_line_exit(capsys)
