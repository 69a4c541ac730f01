"""PRESET resolution per machine (issue #29's first slice): from a described machine, never the
one the tests run on."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO, make_env
from medalist import presets
from medalist.core.competition import load_competition
from medalist.core.config import UserError
from medalist.core.hardware import Gpu, Machine, describe

CPU = Machine(2, True)
A100 = Gpu("A100", 80, True)
T4 = Gpu("T4", 16, False)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty local Hugging Face cache: `cache(repo)` puts a model in it."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    def cache(repo: str) -> None:
        (tmp_path / "hub" / f"models--{repo.replace('/', '--')}").mkdir(parents=True)
    return cache


def _resolve(comp, preset, machine):
    return presets.resolve(load_competition(comp), preset, machine, REPO / "configs")


def test_a_cpu_gets_todays_defaults_and_the_measured_best_recipe(hub):
    assert _resolve("demo", "good", CPU).models == ("tfidf", "embed", "minilm")  # demo's default_models
    assert _resolve("math-subjects", "best", CPU).models == ("tfidf", "embed", "minilm-dapt", "minilm-dapt+pseudo")
    assert _resolve("demo-images", "good", CPU).models == ("cnn", "image-embed")
    assert _resolve("demo-products", "fast", CPU).models == ("tfidf", "image-embed", "fusion-embed")


def test_one_gpu_gets_hub_backbones_where_their_weights_are_cached(hub):
    hub("microsoft/deberta-v3-base")
    hub("Qwen/Qwen2.5-1.5B")
    r = _resolve("demo", "best", Machine(8, False, (A100,)))
    assert r.models == ("tfidf", "deberta-v3-base", "qwen2.5-1.5b-lora")
    assert "1 GPU(s): A100 (80 GB, bf16)" in r.why[0]


def test_without_cached_weights_a_hub_model_becomes_its_packaged_stand_in_with_a_line(hub):
    r = _resolve("demo", "good", Machine(8, False, (A100,)))
    assert r.models == ("tfidf", "embed", "minilm")
    assert any("microsoft/deberta-v3-base is not in the local Hugging Face cache" in w and "→ minilm (packaged)" in w
               for w in r.why)
    assert _resolve("demo-images", "good", Machine(8, False, (A100,))).models == ("image-embed", "efficientnet-lite0")


def test_no_bf16_leaves_the_lora_decoder_out_and_several_gpus_say_make_j(hub):
    hub("microsoft/deberta-v3-base")
    hub("Qwen/Qwen2.5-1.5B")
    r = _resolve("demo", "best", Machine(8, False, (T4, T4)))
    assert r.models == ("tfidf", "deberta-v3-base")
    assert any("qwen2.5-1.5b-lora: left out — a LoRA decoder needs a GPU with bf16" in w for w in r.why)
    assert any("`make -j 2 all` trains 2 folds at once" in w for w in r.why)


def test_a_described_machine_and_a_bad_description(monkeypatch):
    monkeypatch.setenv("MEDALIST_HARDWARE", json.dumps({"cores": 4, "gpus": [{"name": "L4", "memory_gb": 24, "bf16": True}]}))
    assert describe() == Machine(4, False, (Gpu("L4", 24.0, True),))
    monkeypatch.setenv("MEDALIST_HARDWARE", "{not json")
    with pytest.raises(UserError, match="MEDALIST_HARDWARE: expected JSON"):
        describe()
    with pytest.raises(UserError, match="PRESET must be one of fast, good, best, not 'huge'"):
        _resolve("demo", "huge", CPU)


def test_make_uses_the_preset_and_a_hand_given_models_wins(make_project):
    def models(*args):
        p = subprocess.run(["make", "-C", str(make_project), "--no-print-directory", "-n", "train", "COMP=demo", *args],
                           env={**make_env(), "MEDALIST_HARDWARE": '{"cores": 2}'}, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        return list(dict.fromkeys(ln.split("--model ")[1].split()[0] for ln in p.stdout.splitlines() if "--model " in ln))

    assert models("PRESET=fast") == ["tfidf", "embed"]
    assert models() == ["tfidf", "embed", "minilm"]
    assert models("PRESET=best", "MODELS=tfidf") == ["tfidf"]
