"""Prediction-only forms of image networks (medalist.models.inference): BatchNorm folding is exact,
checked, and refused where sibling order lies; the Classifier's form predicts what it predicts.
Text prediction from saved weights (training.predictor) on a CPU: the run's training precision
(bf16 on a native-bf16 CPU for a config with cpu_bf16_training), MEDALIST_CPU_INFERENCE=fp32 to opt out."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medalist.core import config as C
from medalist.image import weights as W
from medalist.models import inference
from medalist.models.families import cnn, image


def _randomise_bn(net: torch.nn.Module) -> None:
    """Statistics far from the identity, so a wrong fold cannot pass unnoticed."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("which", ["timm", "cnn"])
def test_folding_batchnorm_keeps_the_outputs_and_removes_every_batchnorm(which):
    torch.manual_seed(0)
    if which == "timm":  # timm's BatchNormAct2d: the activation after the norm must survive the fold
        net, _ = W.create("test_efficientnet", "none", 5, load=False, drop_rate=0.0)
    else:
        net = cnn.SmallCNN((8, 16), 5, 0.0)
    _randomise_bn(net)
    net.eval()
    x = torch.randn(4, 3, 20, 20)
    folded, n = inference.fold_batchnorm(net)
    assert n > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


class _NormFirst(torch.nn.Module):
    """A conv defined before a BatchNorm that is applied to its input: sibling order lies here."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_fold_that_changes_the_outputs_is_refused():
    net = _NormFirst()
    _randomise_bn(net)
    x = torch.randn(2, 3, 8, 8)
    assert inference.fold_batchnorm(net)[1] == 1  # the naive fold happens ...
    assert inference.folded_or_original(net, x) is net  # ... and the check throws it away


def test_the_classifiers_prediction_form_gives_its_averaged_logits():
    cfg = C.from_dict(image.Config, {"family": "image", "backbone": "test_efficientnet", "weights": "none",
                                     "image_size": 20, "cpu_bf16_inference": False}, "tiny")
    adapter = image.ImageAdapter(cfg, 5, image.timm_net)
    model = adapter.model(pretrained=False, ema=True)
    _randomise_bn(model.net)
    for n, t in model.net.state_dict().items():  # an average that differs from the current weights
        if t.is_floating_point():
            getattr(model.ema, n.replace(".", "__")).mul_(0.9)
    model.eval()
    pixels = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    form = adapter.for_inference(model)
    batch = {"pixels": pixels, "ok": torch.tensor([True] * 5 + [False])}
    with torch.no_grad():
        torch.testing.assert_close(form(pixels), model(pixels, averaged=True), atol=1e-4, rtol=1e-4)
        got, want = adapter.proba(form, batch), adapter.proba(model, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[5], model.prior)  # a row without an image still answers with the prior


@pytest.mark.skipif(not inference.cpu_bf16_native(), reason="this CPU has no native bf16")
def test_bf16_prediction_on_a_native_cpu_keeps_the_predicted_classes():
    torch.manual_seed(0)
    net, _ = W.create("test_efficientnet", "none", 5, load=False, drop_rate=0.0)
    net.eval()
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with inference.autocast(x.device, inference.bf16_enabled(x.device, cpu_bf16=True)):
            low = net(x).float()
    assert not torch.equal(low, ref)  # bf16 did run
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


@pytest.mark.parametrize("avx512_bf16, amx, onednn, native", [
    (False, False, True, False),  # AVX512 alone: oneDNN emulates bf16 (3.7x slower training seen here)
    (True, False, True, True), (False, True, True, True), (True, True, False, False)])
def test_native_cpu_bf16_needs_avx512_bf16_or_amx_not_only_onednn(monkeypatch, avx512_bf16, amx, onednn, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert inference.cpu_bf16_native() is native
    assert inference.bf16_enabled(torch.device("cpu"), cpu_bf16=True) is native
    assert inference.bf16_enabled(torch.device("cpu"), cpu_bf16=False) is False


def test_cpu_bf16_training_is_taken_only_where_asked_for_and_native(monkeypatch):
    from medalist.models import engine

    if torch.cuda.is_available():
        pytest.skip("CUDA picks bf16 by itself")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert engine.mixed_precision(cpu_bf16=False) == "no"
    assert engine.mixed_precision(cpu_bf16=True) == ("bf16" if inference.cpu_bf16_native() else "no")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # a launch config that sets one wins
    assert engine.mixed_precision(cpu_bf16=True) == "fp16"


@pytest.mark.skipif(torch.cuda.is_available() or not inference.cpu_bf16_native(), reason="needs a CPU with native bf16")
def test_a_run_asking_for_cpu_bf16_computes_its_forward_in_bf16(monkeypatch, tmp_path):
    from accelerate.state import AcceleratorState

    from medalist.models import engine

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    AcceleratorState._reset_state(True)
    try:
        acc = engine._accelerator(tmp_path / "ckpt", None, cpu_bf16=True)
        assert acc.mixed_precision == "bf16"
        torch.manual_seed(0)
        net = cnn.SmallCNN((8, 16), 5, 0.0)
        seen = []
        net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        model = acc.prepare(net)
        out = model(torch.randn(4, 3, 20, 20))
        acc.backward(out.sum())
        assert seen == [torch.bfloat16]  # the convolutions ran in bf16 ...
        assert out.dtype == torch.float32  # ... and the loss sees fp32 logits
        assert net.features[0].weight.grad.dtype == torch.float32  # the weights and their updates stay fp32
    finally:
        AcceleratorState._reset_state(True)


# ---------------------------------------------------------------- text prediction's precision (training.predictor)


@pytest.fixture(scope="module")
def tiny_bert(tiny_models):
    return tiny_models["bert"]


def _text_predictor(backbone, cpu_bf16_training: bool):
    """training.predictor over a randomly initialised tiny BERT classifier, and the dtypes its first
    query projection computed in."""
    from medalist.models import training
    from medalist.models.families import hf_text
    from tiny_text import LABELS

    cfg = C.from_dict(hf_text.Config, {"family": "encoder", "backbone": str(backbone), "max_length": 32,
                                       "eval_batch_size": 4, "cpu_bf16_training": cpu_bf16_training}, "tiny")
    adapter = hf_text.TextAdapter(cfg, len(LABELS))
    torch.manual_seed(0)
    model = adapter.build_model(0)
    seen: list[torch.dtype] = []
    model.bert.encoder.layer[0].attention.self.query.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return training.predictor(adapter, [model], cfg), seen


def _rows(n: int = 10):
    import pandas as pd

    from tiny_text import make_texts

    return pd.DataFrame({"id": [str(i) for i in range(n)], "text": make_texts(n, 5)[0]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA predicts in bf16 by itself")
@pytest.mark.parametrize("native, trained_bf16, knob, want", [
    (True, True, None, torch.bfloat16),  # a run trained in bf16 predicts as it did in training ...
    (True, True, "auto", torch.bfloat16),
    (True, True, "fp32", torch.float32),  # ... unless the knob says fp32
    (True, False, None, torch.float32),  # a run trained in fp32 keeps fp32
    (False, True, None, torch.float32)])  # no AVX512-BF16/AMX: bf16 would be emulated, slower than fp32
def test_text_prediction_on_a_cpu_takes_the_runs_training_precision(monkeypatch, tiny_bert, native, trained_bf16,
                                                                     knob, want):
    monkeypatch.setattr(inference, "cpu_bf16_native", lambda: native)
    if knob is None:
        monkeypatch.delenv("MEDALIST_CPU_INFERENCE", raising=False)
    else:
        monkeypatch.setenv("MEDALIST_CPU_INFERENCE", knob)
    predict, seen = _text_predictor(tiny_bert, trained_bf16)
    p = predict(_rows())
    assert seen and set(seen) == {want}
    assert predict.precision == ("bf16" if want == torch.bfloat16 else "fp32")
    assert p.dtype == np.float64 and np.allclose(p.sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA predicts in bf16 by itself")
def test_bf16_text_prediction_stays_within_rounding_of_fp32(monkeypatch, tiny_bert):
    monkeypatch.setattr(inference, "cpu_bf16_native", lambda: True)
    monkeypatch.delenv("MEDALIST_CPU_INFERENCE", raising=False)
    rows = _rows(24)
    low = _text_predictor(tiny_bert, True)[0](rows)
    fp32 = _text_predictor(tiny_bert, False)[0](rows)
    assert not np.array_equal(low, fp32)  # bf16 did run
    np.testing.assert_allclose(low, fp32, atol=0.02)
    monkeypatch.setenv("MEDALIST_CPU_INFERENCE", "fp32")
    np.testing.assert_array_equal(_text_predictor(tiny_bert, True)[0](rows), fp32)  # the knob: fp32 exactly


def test_an_unknown_cpu_inference_knob_is_one_clear_error(monkeypatch, tiny_bert):
    from medalist.core.config import UserError

    monkeypatch.setenv("MEDALIST_CPU_INFERENCE", "int4")
    with pytest.raises(UserError, match="MEDALIST_CPU_INFERENCE"):
        _text_predictor(tiny_bert, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA predicts in bf16 by itself")
def test_a_family_with_its_own_prediction_form_keeps_its_precision_on_a_cpu(monkeypatch):
    """As images do (`cpu_bf16_inference`): the predictor does not wrap a form in autocast."""
    import pandas as pd

    from medalist.models import training

    class Adapter(training.Adapter):
        n_classes = 3

        def __init__(self):
            self.seen: list[torch.dtype] = []

        def build_model(self, device_index):
            return torch.nn.Linear(4, 3)

        def make_items(self, rows, stage):
            return [{"x": torch.full((4,), float(v))} for v in rows["v"]]

        def cost(self, item):
            return 1.0

        def collate(self, items):
            return {"x": torch.stack([it["x"] for it in items])}

        def loss(self, model, batch):
            raise NotImplementedError

        def proba(self, model, batch):
            out = model(batch["x"])
            self.seen.append(out.dtype)
            return torch.softmax(out.float(), dim=-1)

        def for_inference(self, model):
            return torch.nn.Sequential(model)  # its own (fp32) form: the predictor must not wrap it in autocast

    monkeypatch.setattr(inference, "cpu_bf16_native", lambda: True)
    monkeypatch.delenv("MEDALIST_CPU_INFERENCE", raising=False)
    adapter = Adapter()
    cfg = training.TrainConfig(family="toy", cpu_bf16_training=True)
    predict = training.predictor(adapter, [adapter.build_model(0)], cfg)
    predict(pd.DataFrame({"v": [0.0, 1.0, 2.0]}))
    assert adapter.seen == [torch.float32] and predict.precision == "fp32"
