"""attribute(..., reduction=...): each reduction equals reducing the full maps; one layer of maps at a time."""

from __future__ import annotations

import weakref

import pytest
import torch

from lightning_attattr.core import attribution as attribution_module
from lightning_attattr.core import reductions
from lightning_attattr.core.attribution import attribute, merge_shards
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError
from lightning_attattr.core.importance import attribution_head_scores, head_importance
from lightning_attattr.core.reductions import HeadScores, Rows, Stream, TopK, load_streamed, pool_heads
from tests.conftest import image_batch, make_model, text_batch

KW = dict(n_steps=3, return_convergence_delta=True)


def left_padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same examples with the padding moved to the front (padding is then not a suffix)."""
    out = {}
    lengths = batch["attention_mask"].sum(1).tolist()
    for key, t in batch.items():
        rows = [torch.roll(row, t.shape[1] - n) for row, n in zip(t, lengths, strict=True)]
        out[key] = torch.stack(rows)
    return out


@pytest.fixture(scope="module", params=["bert", "roberta"])
def case(request):
    """A tiny model, a padded batch and its full result (the reference every reduction is compared with)."""
    model = make_model(request.param)
    batch = text_batch(lengths=(7, 4, 6, 5))
    return model, batch, attribute(model, batch, **KW)


def real_index(batch, i, n):
    """Positions of example ``i``'s real tokens in the padded batch (for left padding)."""
    return batch["attention_mask"][i].nonzero().squeeze(1)[:n]


@pytest.mark.parametrize("pooling", ["max", "mean", "sum"])
def test_head_scores_equal_pooled_full_maps(case, pooling):
    model, batch, full = case
    result = attribute(model, batch, reduction=HeadScores(pooling), **KW)
    assert result.reduced is not None and result.reduced.head_scores is not None
    expected = attribution_head_scores(full, pooling)  # [batch, layer, head]
    assert result.reduced.head_scores.shape == expected.shape
    torch.testing.assert_close(result.reduced.head_scores, expected, rtol=1e-6, atol=1e-9)
    # completeness comes from the full maps, before the reduction
    torch.testing.assert_close(result.convergence_delta, full.convergence_delta, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.prob, full.prob)
    assert result.attributions == [] and len(result) == len(full)


def test_rows_equal_rows_of_full_maps(case):
    model, batch, full = case
    result = attribute(model, batch, reduction=Rows([-1, 0, 2]), **KW)
    assert result.reduced is not None and result.reduced.rows is not None
    for i, a in enumerate(full.attributions):
        n = a.shape[-1]
        assert result.reduced.query_positions[i].tolist() == [n - 1, 0, 2]
        torch.testing.assert_close(result.reduced.rows[i], a[:, :, [n - 1, 0, 2], :], rtol=1e-6, atol=1e-9)


def test_top_k_equals_top_k_of_full_maps(case):
    model, batch, full = case
    for by in ("abs", "value"):
        result = attribute(model, batch, reduction=TopK(6, by=by), **KW)
        assert result.reduced is not None and result.reduced.top_values is not None
        for i, a in enumerate(full.attributions):
            flat = a.flatten(1)  # [layer, head * n * n]
            order = (flat.abs() if by == "abs" else flat).topk(6, dim=1).indices
            values, where = result.reduced.top_values[i], result.reduced.top_indices[i]
            assert values.shape == (a.shape[0], 6) and where.shape == (a.shape[0], 6, 3)
            torch.testing.assert_close(values, flat.gather(1, order), rtol=1e-6, atol=1e-9)
            # the (head, query, key) triples point at those values
            layer = torch.arange(a.shape[0])[:, None].expand(-1, 6)
            torch.testing.assert_close(a[layer, where[..., 0], where[..., 1], where[..., 2]], values)


def test_top_k_keeps_every_edge_of_a_small_map(bert):
    batch = text_batch(lengths=(2,))
    result = attribute(bert, batch, reduction=TopK(1000), n_steps=3)
    full = attribute(bert, batch, n_steps=3)
    heads = full.attributions[0].shape[1]
    assert result.reduced.top_values[0].shape == (3, heads * 2 * 2)
    assert torch.equal(result.reduced.top_values[0].sort(1).values, full.attributions[0].flatten(1).sort(1).values)


def test_stream_writes_the_full_maps(case, tmp_path):
    model, batch, full = case
    result = attribute(model, batch, reduction=Stream(tmp_path / "maps", prefix="b0_"), **KW)
    paths = result.reduced.paths
    assert paths and all(p.parent == tmp_path / "maps" and p.name.startswith("b0_") for p in paths)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(p.name for p in paths)  # no temp files
    back = load_streamed(paths)
    assert len(back) == len(full)
    for got, expected in zip(back, full.attributions, strict=True):
        assert torch.equal(got, expected)
    torch.testing.assert_close(result.convergence_delta, full.convergence_delta, rtol=0, atol=1e-12)


def test_stream_without_safetensors_uses_weights_only_files(bert, tmp_path, monkeypatch):
    monkeypatch.setattr(reductions, "_safetensors_bytes", None)
    monkeypatch.setattr(reductions, "STREAM_SUFFIX", ".pt")
    batch = text_batch(lengths=(5, 3))
    result = attribute(bert, batch, reduction=Stream(tmp_path), n_steps=3)
    assert all(p.suffix == ".pt" for p in result.reduced.paths)
    assert isinstance(torch.load(result.reduced.paths[0], weights_only=True), dict)
    full = attribute(bert, batch, n_steps=3)
    for got, expected in zip(load_streamed(result.reduced.paths), full.attributions, strict=True):
        assert torch.equal(got, expected)


def test_left_padding_rows_and_scores(bert):
    batch = text_batch(lengths=(7, 4, 6))
    moved = left_padded(batch)
    full = attribute(bert, moved, **KW)
    rows = attribute(bert, moved, reduction=Rows(-1), **KW)
    scores = attribute(bert, moved, reduction=HeadScores("sum"), **KW)
    for i, a in enumerate(full.attributions):
        torch.testing.assert_close(rows.reduced.rows[i], a[:, :, -1:, :], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scores.reduced.head_scores, attribution_head_scores(full, "sum"), rtol=1e-6, atol=1e-9)


def test_adaptive_steps_and_head_importance(bert):
    batch = text_batch(lengths=(7, 4, 6))
    full = attribute(bert, batch, n_steps="auto")
    result = attribute(bert, batch, n_steps="auto", reduction=HeadScores())
    torch.testing.assert_close(result.completeness_error, full.completeness_error, rtol=0, atol=1e-12)
    assert torch.equal(result.n_steps_used, full.n_steps_used)
    torch.testing.assert_close(
        head_importance(result.reduced.head_scores), head_importance(attribution_head_scores(full)), rtol=1e-6, atol=0
    )


def test_pixel_inputs():
    vit = make_model("vit")
    batch = image_batch()
    full = attribute(vit, batch, n_steps=3)
    result = attribute(vit, batch, n_steps=3, reduction=Rows(0))
    torch.testing.assert_close(result.reduced.rows[1], full.attributions[1][:, :, :1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reduction", [Rows([-1, 1]), HeadScores("sum"), HeadScores("mean")])
def test_linear_reductions_merge_over_shards(bert, reduction):
    batch = text_batch(lengths=(7, 4, 6))
    whole = attribute(bert, batch, reduction=reduction, **KW)
    parts = [attribute(bert, batch, reduction=reduction, shard=(i, 2), **KW) for i in range(2)]
    merged = merge_shards(parts)
    torch.testing.assert_close(merged.convergence_delta, whole.convergence_delta, rtol=0, atol=1e-9)
    if isinstance(reduction, Rows):
        for got, expected in zip(merged.reduced.rows, whole.reduced.rows, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)
    else:
        torch.testing.assert_close(merged.reduced.head_scores, whole.reduced.head_scores, rtol=1e-5, atol=1e-8)


def test_merge_refuses_mixed_shards(bert):
    batch = text_batch(lengths=(5, 3))
    parts = [attribute(bert, batch, n_steps=3, shard=(0, 2), reduction=Rows(-1))]
    parts.append(attribute(bert, batch, n_steps=3, shard=(1, 2)))
    with pytest.raises(ArgumentError, match="same inputs"):
        merge_shards(parts)


def test_reduced_result_refuses_full_map_access(bert):
    result = attribute(bert, text_batch(lengths=(5, 3)), n_steps=3, reduction=HeadScores())
    with pytest.raises(ArgumentError, match="read `result.reduced`"):
        result.padded()
    with pytest.raises(ArgumentError, match="read `result.reduced`"):
        result[0]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: HeadScores("median"), ArgumentError, "Expected `pooling` to be one of"),
        (lambda: Rows([]), ArgumentError, "Expected `positions` to be one or more distinct ints"),
        (lambda: Rows([1, 1]), ArgumentError, "distinct"),
        (lambda: Rows(["a"]), ArgumentTypeError, "Expected `positions` to be an int or a sequence of ints"),
        (lambda: Rows(True), ArgumentTypeError, "Expected `positions`"),
        (lambda: TopK(0), ArgumentError, "Expected `k` to be an integer >= 1"),
        (lambda: TopK(2.5), ArgumentTypeError, "Expected `k`"),
        (lambda: TopK(3, by="signed"), ArgumentError, "Expected `by` to be one of"),
        (lambda: Stream(""), ArgumentTypeError, "Expected `folder`"),
        (lambda: Stream("x", prefix="a/b"), ArgumentError, "Expected `prefix`"),
    ],
)
def test_bad_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_stream_into_a_file_is_refused(tmp_path):
    file = tmp_path / "taken"
    file.write_text("x")
    with pytest.raises(ArgumentError, match="Expected `folder` to be a folder"):
        Stream(file)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(reduction="rows"), ArgumentTypeError, "Expected `reduction` to be None, HeadScores"),
        (dict(reduction=Rows([5])), ArgumentError, r"Expected `Rows` positions in \[-4, 3\]"),
        (dict(reduction=Rows([-5])), ArgumentError, "an example has 4 real tokens"),
        (dict(reduction=HeadScores(), shard=(0, 2)), ArgumentError, "Expected `reduction` to be Rows"),
        (dict(reduction=TopK(3), shard=(1, 2)), ArgumentError, "shards hold partial sums"),
        (dict(reduction=Stream("unused"), shard=(0, 2)), ArgumentError, "Expected `reduction` to be Rows"),
    ],
)
def test_bad_reduction_arguments_fail_before_any_forward(bert, kwargs, error, match):
    calls = []
    handle = bert.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(error, match=match) as info:
            attribute(bert, text_batch(lengths=(7, 4)), n_steps=3, **kwargs)
    finally:
        handle.remove()
    assert calls == [] and "\n" not in str(info.value)


def _track_live_maps(monkeypatch):
    """Record how many maps of other layers are alive when a layer's maps are made (reduced calls) and integrated."""
    refs: list[weakref.ref] = []
    alive_others: list[int] = []
    original = attribution_module._LayerIntegration.integrate

    def integrate(self, steps):
        alive_others.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(self.probs))
        out = original(self, steps)
        refs.append(weakref.ref(self.attr))
        return out

    monkeypatch.setattr(attribution_module._LayerIntegration, "integrate", integrate)
    layer_probs = attribution_module._Run.layer_probs

    def recompute(
        self, inputs, target, layer, below
    ):  # a reduced call recomputes a layer's maps: the last ones are gone
        alive_others.append(sum(ref() is not None for ref in refs))
        return layer_probs(self, inputs, target, layer, below)

    monkeypatch.setattr(attribution_module._Run, "layer_probs", recompute)
    return alive_others


def test_a_reduced_call_holds_one_layer_of_maps_at_a_time(monkeypatch):
    model = make_model("bert")  # 3 layers
    batch = text_batch(lengths=(7, 6))  # one length group
    alive = _track_live_maps(monkeypatch)
    attribute(model, batch, n_steps=3)
    assert alive == [0, 2, 4]  # the check sees a full call keep every layer's captured and attributed maps
    alive.clear()
    for reduction in (HeadScores(), Rows(-1), TopK(4)):
        attribute(model, batch, n_steps=3, reduction=reduction)
        assert alive == [0] * 6, reduction  # when each layer's maps are recomputed and integrated
        alive.clear()


def test_reduced_outputs_allocate_no_layer_stack(bert, monkeypatch):
    seen = {}
    original = attribution_module._Outputs.result

    def result(self):
        seen["maps"] = self.maps
        seen["reducer"] = self.reducer
        return original(self)

    monkeypatch.setattr(attribution_module._Outputs, "result", result)
    batch = text_batch(lengths=(7, 4, 6))
    attribute(bert, batch, n_steps=3, reduction=Rows(-1))
    assert seen["maps"] == [[], [], []]
    n_max = max(7, 4, 6)
    # every kept tensor has a single query row: nothing of [layer, head, n, n] size
    assert all(t.shape[-2] == 1 for per in seen["reducer"].per_example for t in per)
    assert all(t.numel() <= 4 * n_max for per in seen["reducer"].per_example for t in per)


def test_pool_heads_is_the_importance_pooling():
    maps = torch.randn(2, 3, 5, 5)
    for pooling in ("max", "mean", "sum"):
        assert torch.equal(attribution_head_scores([maps], pooling)[0], pool_heads(maps, pooling))


def test_load_streamed_refuses_missing_layers(bert, tmp_path):
    result = attribute(bert, text_batch(lengths=(5, 3)), n_steps=3, reduction=Stream(tmp_path))
    with pytest.raises(ArgumentError, match="Expected layers"):
        load_streamed(result.reduced.paths[:-1])


@pytest.mark.parametrize("model_type", ["distilbert", "albert"])
def test_models_without_layer_index(model_type):
    """DistilBERT and ALBERT (one module for all layers) count their layers: the per-layer recompute must agree."""
    model = make_model(model_type)
    batch = text_batch(lengths=(6, 4))
    batch.pop("token_type_ids")
    full = attribute(model, batch, n_steps=3)
    result = attribute(model, batch, n_steps=3, reduction=Rows([-1, 0]))
    for i, a in enumerate(full.attributions):
        torch.testing.assert_close(result.reduced.rows[i], a[:, :, [-1, 0], :], rtol=1e-6, atol=1e-9)


def test_llama_causal_maps(tmp_path):
    """A Llama classifier (causal, grouped-query attention), one example with one row per pass."""
    from tests.core.test_families import _build

    model = _build("llama-cls")
    ids = torch.randint(5, 99, (1, 9), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    kw = dict(n_steps=3, internal_batch_size=1, return_convergence_delta=True)
    full = attribute(model, batch, **kw)
    a = full.attributions[0]
    assert bool((a.triu(1) == 0).all())  # causal: no query attends to a later key
    rows = attribute(model, batch, reduction=Rows(-1), **kw)
    torch.testing.assert_close(rows.reduced.rows[0], a[:, :, -1:], rtol=1e-6, atol=1e-9)
    scores = attribute(model, batch, reduction=HeadScores(), **kw)
    torch.testing.assert_close(scores.reduced.head_scores, attribution_head_scores(full), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(scores.convergence_delta, full.convergence_delta, rtol=0, atol=1e-12)
    streamed = attribute(model, batch, reduction=Stream(tmp_path), **kw)
    assert torch.equal(load_streamed(streamed.reduced.paths)[0], a)


def test_encoder_decoder_reductions_follow_each_sites_axes():
    import transformers

    from tests.core.test_families import _bart

    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(_bart(encoder_layers=1, decoder_layers=1)).eval()
    ids = torch.randint(3, 100, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": torch.randint(3, 100, (2, 4))}
    full = attribute(model, inputs, n_steps=3)  # sites: encoder.0, decoder.0.self, decoder.0.cross
    scores = attribute(model, inputs, n_steps=3, reduction=HeadScores()).reduced.head_scores
    torch.testing.assert_close(scores, torch.stack([pool_heads(a, "max") for a in full.attributions]))
    rows = attribute(model, inputs, n_steps=3, reduction=Rows(-1)).reduced.rows
    for i, n_enc in enumerate((6, 4)):
        a = full.attributions[i]  # [site, head, q, k], zero-padded to the largest axes
        torch.testing.assert_close(rows[i][0, :, 0, :n_enc], a[0, :, n_enc - 1, :n_enc])  # last input token
        torch.testing.assert_close(rows[i][1, :, 0, :4], a[1, :, 3, :4])  # last decoder token over decoder keys
        torch.testing.assert_close(rows[i][2, :, 0, :n_enc], a[2, :, 3, :n_enc])  # ... over the encoder's
