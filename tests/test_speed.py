"""Faster steps: attention and dropout (without other results), the loop's one read of the
loss per epoch, CPU threads, torch.compile with its eager fallback, and bf16 on a CPU
where it pays."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, Job, make_table
from sklearn.metrics import roc_auc_score

from tabtransformer import hardware, hyperparameters, load_model, training
from tabtransformer.checkpoints import Checkpointer
from tabtransformer.inference import encode_table, predict_raw, prediction_autocast
from tabtransformer.loop import LoopSettings, run_epochs
from tabtransformer.model import (
    SelfAttention,
    TabTransformer,
    TabTransformerConfig,
    TinyHeadAttention,
    batched_attention,
    dropout,
    dropout_scale,
)
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder

CPU = torch.device("cpu")


# --- the model: the same function, computed faster -----------------------------------


# the broadcast path (9 and 13 tokens), batched matmuls past 13 (transposed up to 24: 14;
# in the plain layout past it: 30, 80; training always transposed), SDPA for a few rows
@pytest.mark.parametrize(
    ("m", "b"), [(9, 64), (13, 64), (14, 64), (30, 64), (80, 64), (9, 1), (30, 8)]
)
def test_attention_computes_scaled_dot_product_attention(m, b):
    torch.manual_seed(0)
    attention = SelfAttention(dim=32, n_heads=8, dropout=0.3).eval()
    x = torch.randn(b, m, 32)  # (B, m, d)
    q, k, v = attention.qkv(x).view(b, m, 3, 8, 4).unbind(2)
    heads = [t.transpose(1, 2) for t in (q, k, v)]
    expected = attention.proj(
        F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(b, m, 32)
    )
    got = attention(x.transpose(0, 1).contiguous()).transpose(0, 1)  # token-major in and out
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("m", [9, 30])
def test_each_attention_path_trains_as_sdpa_does(m):
    """Training mode without dropout: the CPU paths' outputs and gradients are SDPA's."""
    torch.manual_seed(0)
    attention = SelfAttention(dim=32, n_heads=8, dropout=0.0).train()
    x = torch.randn(m, 64, 32, requires_grad=True)
    got = attention(x)
    (d_x,) = torch.autograd.grad(got.square().sum(), x)
    few = [attention(x[:, i : i + 1]) for i in range(64)]  # a row at a time: SDPA
    expected = torch.cat(few, dim=1)
    (d_expected,) = torch.autograd.grad(expected.square().sum(), x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(d_x, d_expected, atol=1e-4)


def test_the_batched_attention_drops_a_share_p_of_the_weights():
    torch.manual_seed(0)
    qkv = torch.zeros(3, 8, 4, 30, 64)
    qkv[2] = 1.0  # every value 1: an output is the sum of its query's kept weights
    y = batched_attention(qkv, 0.3, training=True)
    assert abs(y.mean().item() - 1.0) < 0.02  # weights sum to 1, kept ones scaled up
    assert y.std().item() > 0.05  # and which are kept differs by query
    assert torch.allclose(batched_attention(qkv, 0.3, training=False), torch.ones_like(y))


@pytest.mark.parametrize("with_dropout", [False, True])
def test_the_written_out_attention_backward_is_the_gradient(with_dropout):
    torch.manual_seed(0)
    qkv = torch.randn(3, 2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(2, 5, 5, 3) > 0.3).double() / 0.7 if with_dropout else None
    assert torch.autograd.gradcheck(TinyHeadAttention.apply, (qkv, keep))


def test_dropout_zeroes_a_share_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    assert abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert abs(y.mean().item() - 1.0) < 0.02
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through kept cells only
    assert dropout(x, 0.3, training=False) is x


@pytest.mark.parametrize("p", [1 / 65536, 0.1, 0.3, 0.5, 0.9, 65535 / 65536])
def test_the_dropout_mask_keeps_a_lane_exactly_when_it_reaches_ps_threshold(p):
    """The float arithmetic of `dropout_scale` is the comparison lane >= threshold."""
    shape = (7, 33, 5)  # not a multiple of 4 lanes
    torch.manual_seed(1)
    scale = dropout_scale(torch.Size(shape), torch.device("cpu"), p)
    torch.manual_seed(1)
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    lanes = bits.view(torch.int16)[:n].view(shape)
    kept = lanes >= round(p * 65536) - 32768
    assert scale.dtype == torch.float32
    assert torch.equal(scale, kept.float() / (1.0 - p))


def tiny_fit_inputs(n: int = 400):
    table = make_table("binary", n=n)
    features, target = table.drop(columns="label"), table["label"]
    pre = TablePreprocessor.fit(features, None)
    encoder = TargetEncoder.fit(target, "auto", 20)
    train = encode_table(pre, features.iloc[:320], encoder.encode(target.iloc[:320]))
    valid = encode_table(pre, features.iloc[320:], encoder.encode(target.iloc[320:]))
    return pre, encoder, train, valid


def fit_tiny(monkeypatch=None, **hp) -> tuple[list[dict], TabTransformer, tuple]:
    pre, encoder, train, valid = tiny_fit_inputs()
    values = hyperparameters.parse({**FAST, "n_epochs": "2", "batch_size": "32", **hp})
    torch.manual_seed(0)
    config = TabTransformerConfig(pre.cardinalities, len(pre.numeric), 2, dim=8, n_blocks=1)
    model = TabTransformer(config)
    settings = training.FitSettings.from_hyperparameters(values, "binary")
    history, _ = training.fit(model, training.FitData(train, valid, encoder), settings, CPU)
    return history, model, (pre, encoder, train, valid)


# --- the loop: no host sync per batch -------------------------------------------------


class CountedReads(torch.Tensor):
    """A tensor that counts how often its value is read on the host."""

    reads = 0

    def item(self):
        CountedReads.reads += 1
        return super().item()

    def __float__(self):
        CountedReads.reads += 1
        return super().__float__()


def test_the_loop_reads_the_summed_loss_once_per_epoch():
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = Checkpointer(None).phase("finetune", model, optimizer, [])
    CountedReads.reads = 0

    def train_epoch():
        for loss in (0.5, 1.0, 1.5, 2.0, 2.5):
            yield torch.tensor(loss).as_subclass(CountedReads), 10

    loop = run_epochs(
        LoopSettings(n_epochs=3, patience=9, watch="auc", higher_is_better=True),
        checkpoint,
        checkpoint.restore(),
        model,
        train_epoch,
        lambda: {"loss": 0.5, "auc": 0.7},
    )
    assert CountedReads.reads == 3  # 5 batches per epoch, one read per epoch
    assert [h["train_loss"] for h in loop.history] == [1.5, 1.5, 1.5]


def test_fine_tuning_hands_the_loop_tensors_not_numbers(monkeypatch):
    yielded = []

    def recording(settings, checkpoint, start, keep, train_epoch, validate):
        def recorded():
            for loss, rows in train_epoch():
                yielded.append(loss)
                yield loss, rows

        return run_epochs(settings, checkpoint, start, keep, recorded, validate)

    monkeypatch.setattr(training, "run_epochs", recording)
    history, _, _ = fit_tiny(grad_clip="1.0")
    assert len(yielded) == 2 * 10  # 320 rows in batches of 32, two epochs
    assert all(isinstance(t, torch.Tensor) and not t.requires_grad for t in yielded)
    assert math.isclose(history[0]["train_loss"], float(sum(yielded[:10])) / 10, rel_tol=1e-5)


# --- CPU threads -----------------------------------------------------------------------


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path: Path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs
    assert hardware.available_cores(quota) == 1
    quota.write_text("max 100000\n")
    assert hardware.available_cores(quota) == len(hardware.os.sched_getaffinity(0))
    assert hardware.available_cores(tmp_path / "absent") >= 1


def test_each_process_gets_its_share_of_the_cores(tmp_path, monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    quota = tmp_path / "cpu.max"
    quota.write_text("800000 100000\n")  # 8 CPUs, but never more than the affinity mask
    cores = min(8, len(hardware.os.sched_getaffinity(0)))
    assert hardware.configure_threads(1, quota) == cores == torch.get_num_threads()
    assert hardware.configure_threads(cores * 4, quota) == 1 == torch.get_num_threads()


def test_omp_num_threads_wins(tmp_path, monkeypatch, restore_threads):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert hardware.configure_threads(1, quota) == 1 == torch.get_num_threads()


# --- torch.compile and its fallback ---------------------------------------------------


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """A history without its seconds (the only entries that differ between equal runs)."""
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in history]


def test_compile_is_a_hyperparameter_off_by_default():
    assert hyperparameters.parse({})["compile"] is False
    assert hyperparameters.parse({"compile": "true"})["compile"] is True


@pytest.mark.parametrize("when", ["at the first call", "at once"])
def test_a_failing_compile_warns_and_trains_eagerly_with_the_same_results(
    monkeypatch, caplog, when
):
    eager_history, eager_model, (_, _, _, valid) = fit_tiny()

    def failing_compile(module, *args, **kwargs):
        if when == "at once":
            raise RuntimeError("torch.compile is not supported on this platform")

        def call(*a, **k):
            raise RuntimeError("InductorError: C++ compile error\nlong details")

        return call

    monkeypatch.setattr(hardware.torch, "compile", failing_compile)
    with caplog.at_level(logging.WARNING, logger="tabtransformer.hardware"):
        history, model, _ = fit_tiny(compile="true")
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "running it eagerly" in warnings[0]
    assert untimed(history) == untimed(eager_history)
    assert torch.equal(predict_raw(model, valid, CPU), predict_raw(eager_model, valid, CPU))


@pytest.mark.slow
def test_compile_trains_through_the_real_entry_point(job: Job):
    """compile=true compiles for real where a C++ compiler is installed (elsewhere it falls
    back): the job succeeds and writes a model either way."""
    job.channel("training", make_table("binary", n=200))
    job.hyperparameters({**FAST, "n_epochs": "1", "compile": "true", "report": "false"})
    result = job.train()
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert (job.model / "model.safetensors").is_file()
    if shutil.which("g++"):
        assert "torch.compile of the model failed" not in log


@pytest.mark.slow
def test_compile_without_a_cpp_compiler_falls_back_in_a_real_job(job: Job, monkeypatch):
    job.channel("training", make_table("binary", n=200))
    job.hyperparameters({**FAST, "n_epochs": "1", "compile": "true", "report": "false"})
    monkeypatch.setenv("CXX", "/bin/false")  # inductor's C++ compiler: it always fails
    result = job.train()
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "torch.compile of the model failed" in log and "running it eagerly" in log
    assert "epoch 1/1 train_loss=" in log


def test_local_entry_points_preload_tcmalloc_as_the_image_does(monkeypatch, tmp_path):
    from tabtransformer import local

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(local.ctypes.util, "find_library", lambda name: f"lib{name}.so.4")
    env = local.environment(tmp_path)
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    assert env["SAGEMAKER_BASE_DIR"] == str(tmp_path)
    monkeypatch.setattr(local.ctypes.util, "find_library", lambda name: None)
    assert "LD_PRELOAD" not in local.environment(tmp_path)  # not installed: glibc's malloc
    monkeypatch.setenv("LD_PRELOAD", "libmine.so")
    assert local.environment(tmp_path)["LD_PRELOAD"] == "libmine.so"  # the user's wins


def test_gpu_evaluation_batches_shrink_with_the_networks_width():
    from tabtransformer.inference import (
        EVAL_ACTIVATION_BYTES_GPU,
        activation_bytes_per_row,
        eval_batch_rows,
    )

    cuda = torch.device("cuda")  # a device name: no GPU is needed to size its batches
    paper = TabTransformerConfig(cardinalities=[10] * 9, n_continuous=2, n_blocks=6)
    wide = TabTransformerConfig(n_continuous=150, numeric_embedding="periodic", ensemble_size=8)
    assert eval_batch_rows(cuda, paper) == 65536  # the paper's size fits whole
    rows = eval_batch_rows(cuda, wide)
    assert 1024 <= rows < 65536
    assert rows * activation_bytes_per_row(wide) <= EVAL_ACTIVATION_BYTES_GPU
    wider = TabTransformerConfig(n_continuous=500, dim=64, numeric_embedding="periodic")
    assert eval_batch_rows(cuda, wider) == 1024  # never fewer
    assert eval_batch_rows(CPU, wide) == eval_batch_rows(CPU, paper) == 1024


# --- precision -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "native", "bf16"), [(40, True, True), (39, True, False), (85, False, False)]
)
def test_a_cpu_trains_wide_networks_in_bf16_only_with_native_bf16(
    monkeypatch, tokens, native, bf16
):
    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: native)
    with hardware.training_autocast(CPU, tokens):
        assert torch.is_autocast_enabled("cpu") is bf16
        if bf16:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with prediction_autocast(CPU):  # predictions stay float32 on a CPU
        assert not torch.is_autocast_enabled("cpu")


def test_a_forty_token_network_trains_under_bf16_where_the_cpu_has_it(monkeypatch, caplog):
    """One real fine-tuning step of a 40-token network under CPU bf16 autocast (emulated
    where the CPU lacks the instructions): finite losses, float32 weights and predictions."""
    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: True)
    fit_data, settings = numeric_fit_inputs(40)
    config = TabTransformerConfig([], 40, 2, dim=8, n_blocks=1, numeric_embedding="periodic")
    model = TabTransformer(config)
    assert model.config.n_tokens == 40
    data = fit_data.train
    with caplog.at_level(logging.INFO, logger="tabtransformer.training"):
        history, _ = training.fit(model, fit_data, settings, CPU)
    assert "training under bf16 autocast: 40 tokens" in caplog.text
    assert math.isfinite(history[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert predict_raw(model, data, CPU).dtype == torch.float32


@pytest.mark.parametrize(
    ("tokens", "native", "bf16"), [(39, True, True), (40, True, False), (10, False, False)]
)
def test_below_forty_tokens_only_the_head_trains_in_bf16(monkeypatch, tokens, native, bf16):
    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: native)
    dtype = hardware.training_head_dtype(CPU, tokens)
    assert dtype == (torch.bfloat16 if bf16 else None)
    assert hardware.training_head_dtype(torch.device("cuda"), tokens) is None


def test_the_head_trains_in_bf16_and_predicts_in_float32(monkeypatch, caplog):
    """One real fine-tuning epoch of a 12-token network on a CPU with native bf16 (emulated
    where it lacks the instructions): while training, the head computes in bf16 (its
    outputs differ from float32's by bf16's rounding) and the Transformer in float32;
    validation and predictions are float32 and ignore the head's training dtype."""
    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: True)
    fit_data, settings = numeric_fit_inputs(12)
    config = TabTransformerConfig([], 12, 2, dim=8, n_blocks=1, ensemble_size=4,
                                  attn_dropout=0.0, mlp_dropout=0.0,
                                  numeric_embedding="periodic")  # fmt: skip
    model = TabTransformer(config)
    blocks: set[torch.dtype] = set()
    model.blocks[0].register_forward_hook(lambda module, inputs, out: blocks.add(out.dtype))
    with caplog.at_level(logging.INFO, logger="tabtransformer.training"):
        history, _ = training.fit(model, fit_data, settings, CPU)
    assert "the prediction head trains in bf16" in caplog.text
    assert model.head_dtype == torch.bfloat16 and blocks == {torch.float32}
    assert math.isfinite(history[0]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())

    features = torch.randn(64, model.config.mlp_width)
    model.train()  # no dropout in this config: the head is deterministic
    in_bf16 = model.head(features)
    model.head_dtype = None
    in_float32 = model.head(features)
    assert in_bf16.dtype == in_float32.dtype == torch.float32
    assert not torch.equal(in_bf16, in_float32)
    torch.testing.assert_close(in_bf16, in_float32, rtol=0.05, atol=0.05)
    model.eval()
    model.head_dtype = torch.bfloat16
    in_eval = model.head(features)
    model.head_dtype = None
    assert torch.equal(in_eval, model.head(features))
    assert predict_raw(model, fit_data.train, CPU).dtype == torch.float32


def numeric_fit_inputs(columns: int) -> tuple[training.FitData, training.FitSettings]:
    """96 rows of `columns` numeric columns (the training rows validate too) and the
    settings of one fine-tuning epoch in batches of 32, for a binary task."""
    table = wide_table(96, columns)
    pre = TablePreprocessor.fit(table.drop(columns="label"), None, numeric_bins=8)
    target = TargetEncoder.fit(table["label"], "binary", 20)
    data = encode_table(pre, table.drop(columns="label"), target.encode(table["label"]))
    values = hyperparameters.parse({**FAST, "n_epochs": "1", "batch_size": "32"})
    settings = training.FitSettings.from_hyperparameters(values, "binary")
    return training.FitData(data, data, target), settings


def wide_table(n: int, columns: int, seed: int = 0) -> pd.DataFrame:
    """`columns` numeric columns; the target depends on the first three."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, columns)).round(3)
    signal = x[:, 0] + x[:, 1] - x[:, 2] + rng.normal(0, 0.5, n)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(columns)])
    frame.insert(0, "label", np.where(signal > 0, "yes", "no"))
    return frame


@pytest.mark.slow
def test_a_wide_table_trains_in_bf16_where_the_cpu_has_it(job: Job):
    """A 40-token network through the real entry point: it trains (under bf16 autocast
    where this CPU computes bf16 natively, as its log says) and learns."""
    job.channel("training", wide_table(400, 40))
    job.hyperparameters({**FAST, "n_epochs": "3", "numeric_embedding": "ple", "report": "false"})
    result = job.train()
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert ("training under bf16 autocast: 40 tokens" in log) is hardware.native_cpu_bf16()
    test = wide_table(400, 40, seed=1)
    predictor = load_model(job.model)
    probabilities = predictor.predict_proba(test.drop(columns="label"))
    positive = predictor.classes.index("yes")
    assert roc_auc_score(test["label"] == "yes", probabilities[:, positive]) > 0.7
