import subprocess
import sys

import pytest
import torch

from lightning_attattr.core import reference
from lightning_attattr.core.approximation import METHODS
from lightning_attattr.core.attribution import AttentionIntegratedGradients, attribute, merge_shards
from lightning_attattr.core.checks import UserError
from tests.conftest import batch_for, make_model, text_batch
from tests.core.test_adapter import ARCHS, _no_hooks


def reference_attattr(model, batch, target, method="riemann_left", n_steps=20, pad_to=None):
    """The slow reference (one example, one layer, one step at a time; its own attention function)."""
    return reference.reference_attattr(model, batch, target, method=method, n_steps=n_steps, pad_to=pad_to).attributions


def test_reference_with_batched_steps_and_padding_equals_one_step_at_a_time(bert64):
    # the benchmark's official-code mirror (20 steps per pass, padded) agrees with the slow loop
    batch = text_batch(lengths=(5, 7))
    target = torch.tensor([1, 0])
    official = reference.reference_attattr(bert64, batch, target, steps_per_pass=20, pad_to=12)
    slow = reference.reference_attattr(bert64, batch, target)
    for a, b in zip(official.attributions, slow.attributions):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(official.baseline_prob, slow.baseline_prob)
    with pytest.raises(ValueError, match="eval mode"):
        reference.reference_attattr(bert64.train(), batch, target)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_riemann_left_20_reproduces_the_official_algorithm(dtype):
    model = make_model("bert", dtype=dtype)
    batch = text_batch(lengths=(7, 4, 6))
    ours = attribute(model, batch, method="riemann_left", n_steps=20)
    # official: one example at a time, padded to a fixed length (128 there, 10 here)
    ref = reference_attattr(model, batch, ours.target, "riemann_left", 20, pad_to=10)
    assert ours.target.tolist() == model(**batch).logits.argmax(-1).tolist()
    for a, r in zip(ours.attributions, ref):
        assert a.shape == r.shape
        scale = r.abs().max()
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert (a - r).abs().max() <= tol * scale, (a - r).abs().max() / scale
        assert scale > 1e-4  # the maps are not trivially zero


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_right", "riemann_trapezoid"])
def test_other_rules_match_the_reference(bert64, method):
    batch = text_batch(lengths=(5, 7))
    ours = attribute(bert64, batch, method=method, n_steps=5, target=[0, 2])
    ref = reference_attattr(bert64, batch, torch.tensor([0, 2]), method, 5)
    for a, r in zip(ours.attributions, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_completeness_converges_for_every_method(bert64, method):
    batch = text_batch()
    errors = []
    for n in (4, 16, 64):
        res = attribute(bert64, batch, method=method, n_steps=n, return_convergence_delta=True)
        errors.append(res.relative_convergence_delta().max().item())
        # the delta is computed from the returned maps
        sums = torch.stack([a.sum(dim=(1, 2, 3)) for a in res.attributions])
        torch.testing.assert_close(sums - (res.prob[:, None] - res.baseline_prob), res.convergence_delta)
    assert errors[2] < errors[1] < errors[0] or errors[1] < 1e-10, errors  # or at the float64 floor
    assert errors[2] < (1e-8 if method == "gausslegendre" else 2e-2), errors
    assert (res.prob - res.baseline_prob).abs().min() > 1e-5  # far above float64 noise


def test_gauss_legendre_reaches_1e_minus_8_with_few_nodes(bert64):
    res = attribute(bert64, text_batch(), method="gausslegendre", n_steps=12, return_convergence_delta=True)
    assert res.relative_convergence_delta().max() < 1e-8


def test_baseline_prob_is_the_zeroed_layer(bert64):
    # F(A^l := 0) from the alpha = 0 step (left rule) equals the separate baseline pass (GL rule)
    batch = text_batch()
    left = attribute(bert64, batch, method="riemann_left", n_steps=3, return_convergence_delta=True)
    gl = attribute(bert64, batch, method="gausslegendre", n_steps=3, return_convergence_delta=True)
    torch.testing.assert_close(left.baseline_prob, gl.baseline_prob, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(left.prob, bert64(**batch).logits.softmax(-1).max(-1).values.detach())


# ------------------------------------------------------------------------------ invariance
def _assert_same(a, b, rtol=1e-6):
    for x, y in zip(a.attributions, b.attributions):
        assert x.shape == y.shape
        assert (x - y).abs().max() <= rtol * y.abs().max()


@pytest.mark.parametrize("ibs", [1, 2, 3, 5, 64])
def test_internal_batch_size_never_changes_results(bert, ibs):
    batch = text_batch(lengths=(7, 4, 6, 7, 3))
    full = attribute(bert, batch, n_steps=6, return_convergence_delta=True)
    part = attribute(bert, batch, n_steps=6, internal_batch_size=ibs, return_convergence_delta=True)
    _assert_same(part, full)
    torch.testing.assert_close(part.convergence_delta, full.convergence_delta, rtol=0, atol=1e-7)


def test_example_alone_equals_example_in_padded_batch(bert):
    batch = text_batch(lengths=(4, 9, 12), seq_len=16)
    together = attribute(bert, batch, target=1)
    for i, n in enumerate((4, 9, 12)):
        alone = attribute(bert, {k: v[i : i + 1, :n] for k, v in batch.items()}, target=1)
        assert alone.attributions[0].shape == (3, 4, n, n)
        torch.testing.assert_close(together.attributions[i], alone.attributions[0], rtol=1e-5, atol=1e-8)


def test_padding_inside_the_sequence_is_cropped(bert):
    # [CLS] pad pad tok ... [SEP] with positions that skip the pads computes exactly what the
    # unpadded sequence computes; the maps come back cropped to the real tokens
    plain = text_batch(lengths=(4, 6))
    holes = {k: torch.zeros(2, 8, dtype=v.dtype) for k, v in plain.items()}
    for i, n in enumerate((4, 6)):
        for k in plain:
            holes[k][i, 0] = plain[k][i, 0]
            holes[k][i, 3 : 3 + n - 1] = plain[k][i, 1:n]
    holes["position_ids"] = (holes["attention_mask"].cumsum(1) - 1).clamp(min=0)
    a = attribute(bert, plain, target=0)
    b = attribute(bert, holes, target=0)
    _assert_same(b, a, rtol=1e-5)


def test_repeated_calls_are_identical(bert):
    batch = text_batch()
    first = attribute(bert, batch)
    second = attribute(bert, batch)
    for x, y in zip(first.attributions, second.attributions):
        assert torch.equal(x, y)


def test_works_under_inference_mode_and_no_grad(bert):
    batch = text_batch()
    expected = attribute(bert, batch)
    with torch.inference_mode():
        inference_batch = {k: v.clone() for k, v in batch.items()}
        got = attribute(bert, inference_batch)
    with torch.no_grad():
        got2 = attribute(bert, batch)
    _assert_same(got, expected, rtol=0)
    _assert_same(got2, expected, rtol=0)


# ------------------------------------------------------------------------------ targets and layout
def test_targets_and_layers(bert):
    batch = dict(text_batch(lengths=(5, 6)), labels=torch.tensor([2, 0]))
    by_label = attribute(bert, batch, target="labels", layers=[2, 0])
    by_list = attribute(bert, batch, target=[2, 0], layers=(0, -1))
    assert by_label.layers == (0, 2) == by_list.layers
    assert by_label.target.tolist() == [2, 0]
    _assert_same(by_label, by_list, rtol=0)
    one_layer = attribute(bert, batch, target=torch.tensor([2, 0]), layers=2)
    for x, y in zip(one_layer.attributions, by_label.attributions):
        torch.testing.assert_close(x[0], y[1], rtol=1e-5, atol=1e-8)
    padded = by_label.padded()
    assert padded.shape == (2, 2, 4, 6, 6) and torch.equal(padded[0, :, :, :5, :5], by_label[0])
    assert padded[0, :, :, 5:].abs().sum() == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture(arch):
    model = make_model(arch, dtype=torch.float64, head_scale=10.0)  # predictions not saturated
    model.train()  # attribution runs in eval mode and restores the caller's mode
    batch = batch_for(arch, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    model.train()
    res = attribute(model, batch, n_steps=16, return_convergence_delta=True)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    _no_hooks(model)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)
    assert len(res) == before.shape[0] and res.layers == (0, 1, 2)
    for a in res.attributions:
        assert a.shape[:2] == (3, 4) and torch.isfinite(a).all()
    # DistilBERT's classifier has a ReLU: F(alpha) has kinks along the path (measured: the
    # derivative jumps at alpha ~ 0.57), so no quadrature converges fast there; all other heads
    # are smooth (tanh pooler, GELU) and Gauss-Legendre reaches the float64 floor
    assert res.relative_convergence_delta().max() < (1e-2 if arch == "distilbert" else 1e-8)


class _Boom(RuntimeError):
    pass


def test_hooks_are_removed_when_attribution_fails_midway(bert):
    calls = {"n": 0}

    def explode(_module, _args, _output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Boom("failure in the third forward")

    handle = bert.classifier.register_forward_hook(explode)
    with pytest.raises(_Boom):
        attribute(bert, text_batch())
    handle.remove()
    _no_hooks(bert)
    assert bert.config._attn_implementation != "attattr"
    assert all(p.requires_grad for p in bert.parameters())


def test_parameter_gradients_are_never_touched(bert):
    for p in bert.parameters():
        p.grad = torch.zeros_like(p)
    attribute(bert, text_batch())
    assert all(p.grad.abs().sum() == 0 for p in bert.parameters())


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(n_steps=0), ValueError, '`n_steps` to be a positive integer or "auto", but got 0'),
        (dict(n_steps="8"), TypeError, "`n_steps` to be a positive integer"),
        (dict(method="simpson"), ValueError, r"`method` to be one of \[.*'riemann_left'.*\], but got 'simpson'"),
        (dict(layers=3), ValueError, r"`layers` to be in \[-3, 2\] \(the model has 3 layers\), but got 3"),
        (dict(layers=[]), ValueError, "at least one layer"),
        (dict(layers="all"), TypeError, "`layers` to be an int, a list of ints or None"),
        (dict(layers=[0, 0]), ValueError, r"`layers` to name each layer once .*but got \[0, 0\]"),
        (dict(layers=[0, -3]), ValueError, r"`layers` to name each layer once .*but got \[0, -3\]"),
        (dict(target=3), ValueError, r"`target` classes in \[0, 2\], but got \[3, 3, 3\]"),
        (dict(target=[0, -1, 1]), ValueError, r"`target` classes in \[0, 2\], but got \[-1\]"),
        (dict(target=[0, 1]), ValueError, r"one class per example, shape \[3\], but got \[2\]"),
        (dict(target="gold"), ValueError, r"`target` to be one of \['predicted', 'labels'\]"),
        (dict(target="labels"), ValueError, "needs a `labels` entry in `inputs`"),
        (dict(target=[0.5, 1.0, 2.0]), TypeError, "integer class indices in `target`"),
        (dict(internal_batch_size=0), ValueError, "`internal_batch_size` to be an integer >= 1, but got 0"),
        (dict(autocast_dtype=torch.float64), ValueError, "`autocast_dtype` to be None or one of"),
    ],
)
def test_bad_arguments(bert, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        attribute(bert, text_batch(), **kwargs)
    assert isinstance(info.value, UserError)  # the entry points print it as one line


def test_float_and_out_of_vocabulary_input_ids_are_refused_before_any_forward(bert):
    batch = text_batch()
    calls = []
    handle = bert.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(
            TypeError, match=r"`inputs\['input_ids'\]` to hold integer token ids, but got dtype torch.float32"
        ):
            attribute(bert, {**batch, "input_ids": batch["input_ids"].float()})
        bad = batch["input_ids"].clone()
        bad[0, 1] = 99  # the tiny vocabulary has ids 0..98
        with pytest.raises(ValueError, match=r"`inputs\['input_ids'\]` in \[0, 98\] .* but got \[99\]"):
            attribute(bert, {**batch, "input_ids": bad})
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize(
    ("inputs", "exc", "match"),
    [
        ([[1, 2, 3]], TypeError, "`inputs` to be a mapping of model inputs"),
        ({"attention_mask": torch.ones(2, 3)}, ValueError, "one of `input_ids`, `inputs_embeds` or `pixel_values`"),
        (
            {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
            ValueError,
            r"`attention_mask` of shape \[2, 3\] \(as `input_ids`\), but got \[2, 4\]",
        ),
        (
            {"input_ids": torch.ones(2, 3, dtype=torch.long), "token_type_ids": torch.ones(3, 3, dtype=torch.long)},
            ValueError,
            r"batch size 2 .* but `token_type_ids` has shape \[3, 3\]",
        ),
        ({"input_ids": [[1, 2, 3], [1, 2]]}, ValueError, "pad the batch"),
        (
            {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])},
            ValueError,
            "row 1 is all zeros",
        ),
        ({"input_ids": torch.ones(3, dtype=torch.long)}, ValueError, "non-empty batch with a leading batch axis"),
    ],
)
def test_bad_inputs(bert, inputs, exc, match):
    with pytest.raises(exc, match=match):
        attribute(bert, inputs)


def test_unsupported_and_regression_models_are_refused():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.DebertaV2Config(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    with pytest.raises(ValueError, match="'deberta-v2' is not supported.*Supported model types"):
        AttentionIntegratedGradients(transformers.DebertaV2ForSequenceClassification(cfg))
    with pytest.raises(ValueError, match="`num_labels` >= 2, but the model has num_labels=1"):
        AttentionIntegratedGradients(make_model("bert", num_labels=1))
    with pytest.raises(TypeError, match="Hugging Face `PreTrainedModel`"):
        AttentionIntegratedGradients(torch.nn.Linear(3, 3))


def test_importing_the_core_does_not_import_lightning():
    code = (
        "import sys, lightning_attattr.core.attribution, lightning_attattr.core.adapter; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ work done once
def _record_attention_calls(model, layer):
    seen = []
    module = model.bert.encoder.layer[layer].attention.self
    handle = module.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape[:2])))
    return seen, handle


def test_layers_below_the_target_run_once_per_example(bert):
    seen0, h0 = _record_attention_calls(bert, 0)
    seen2, h2 = _record_attention_calls(bert, 2)
    try:
        attribute(bert, text_batch(lengths=(6, 6)), layers=[2], n_steps=8, internal_batch_size=2)
    finally:
        h0.remove()
        h2.remove()
    assert seen0 == [(2, 6)]  # layer 0: only the clean pass, not once per step or pass
    assert seen2 == [(2, 6)] + [(2, 6)] * 8  # clean pass + 8 passes of 2 rows (2 examples x 1 step)


def test_padding_of_short_examples_is_not_computed(bert):
    seen, handle = _record_attention_calls(bert, 2)
    try:
        attribute(bert, text_batch(lengths=(3, 16, 3, 3), seq_len=16), layers=[2], n_steps=4)
    finally:
        handle.remove()
    # the three short examples run together at length 3; only the long one runs at length 16
    assert sorted(seen) == sorted([(3, 3), (3 * 4, 3), (1, 16), (1 * 4, 16)])


def test_bf16_autocast_is_close_to_fp32(bert):
    batch = text_batch()
    fp32 = attribute(bert, batch, target=0)
    bf16 = attribute(bert, batch, target=0, autocast_dtype=torch.bfloat16)
    for a, b in zip(fp32.attributions, bf16.attributions):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).norm() / a.norm() < 0.1  # measured ~1 % on MiniLM (README)
        assert not torch.equal(a, b)  # autocast was really applied


def test_progress_bar_counts_every_pass(bert, capsys):
    attribute(bert, text_batch(lengths=(4, 9)), n_steps=4, internal_batch_size=2, show_progress=True)
    err = capsys.readouterr().err
    # 2 length groups x 3 layers x 2 passes (4 steps, 2 per pass for one example each)
    assert "AttAttr" in err and "12/12" in err


@pytest.mark.parametrize(
    ("method", "n_steps", "count"), [("gausslegendre", 6, 2), ("riemann_left", 5, 3), ("riemann_middle", 2, 7)]
)
def test_shards_sum_to_the_unsplit_result(bert64, method, n_steps, count):
    """DDP splits (group x layer x step) work items over ranks; the partial sums add up exactly."""
    batch = text_batch(lengths=(9, 4, 8, 5), seq_len=10)  # two length groups
    kwargs = dict(
        target="predicted", n_steps=n_steps, method=method, return_convergence_delta=True, internal_batch_size=8
    )
    ig = AttentionIntegratedGradients(bert64)
    full = ig.attribute(batch, **kwargs)
    shards = [ig.attribute(batch, shard=(i, count), **kwargs) for i in range(count)]
    assert all(s.shard == (i, count) for i, s in enumerate(shards))
    merged = merge_shards(list(reversed(shards)))
    for got, want in zip(merged.attributions, full.attributions):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(merged.convergence_delta, full.convergence_delta, rtol=1e-8, atol=1e-12)
    for s in shards:  # complete on every shard
        torch.testing.assert_close(s.prob, full.prob)
        torch.testing.assert_close(s.baseline_prob, full.baseline_prob, rtol=1e-10, atol=1e-14)
        assert torch.equal(s.target, full.target)
    # every shard did real work: partial maps differ from the full ones and are not all zero
    assert all(any(m.abs().sum() > 0 for m in s.attributions) for s in shards)


def test_bad_shards(bert):
    batch = text_batch()
    ig = AttentionIntegratedGradients(bert)
    for bad in [(2, 2), (-1, 2), (0, 0), 3, (0.0, 1)]:
        with pytest.raises(ValueError, match=r"`shard` to be None or \(index, count\)"):
            ig.attribute(batch, shard=bad)
    one = ig.attribute(batch, shard=(0, 2), n_steps=2)
    with pytest.raises(ValueError, match=r"shards 0..1 exactly once"):
        merge_shards([one])
