"""Heads of decoder LLMs: head masks against an independent computation, structural pruning, key/value groups."""

import copy
import io

import pytest
import torch
import transformers

from lightning_attattr.core.adapter import attention_scope, kv_group_head_mask
from lightning_attattr.core.importance import heads_of_kv_groups, heads_to_prune, kv_group_importance
from lightning_attattr.core.pruning import (
    PRUNED_HEADS_KEY,
    count_parameters,
    from_pretrained_pruned,
    kept_heads,
    prune_heads,
    pruned_heads,
)

HIDDEN, HEADS, HEAD_DIM, LAYERS = 32, 4, 8, 2
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2")
TASKS = {"causal": transformers.AutoModelForCausalLM, "classify": transformers.AutoModelForSequenceClassification}
# attention biases per family: (query, key/value); the output projection's bias is per hidden unit and stays
BIASES = {"qwen2": (True, True), "gpt2": (True, True), "gpt_oss": (True, True)}
PRUNE = {0: [1], 1: [0, 3]}  # MHA: any heads


# family-specific terms switched on so that they shape the attention of 7-token inputs
EXTRA = {
    "mistral": {"sliding_window": 3},
    "qwen3": {"head_dim": HEAD_DIM},
    "gemma": {"head_dim": HEAD_DIM},
    "gemma2": {"head_dim": HEAD_DIM, "attn_logit_softcapping": 1.0, "query_pre_attn_scalar": 8, "sliding_window": 3},
    "gemma3_text": {"head_dim": HEAD_DIM, "sliding_window": 3},
    "phi3": {"sliding_window": 3},
    "gpt_oss": {"head_dim": HEAD_DIM, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 3},
}


def decoder_config(family: str, n_kv_heads: int = HEADS) -> transformers.PretrainedConfig:
    """A tiny random decoder config (hidden 32, 2 layers, 4 heads of dim 8, vocab 100, pad id 0).

    ``initializer_range=0.2``: weights large enough that every head visibly changes the output.
    """
    common = {"vocab_size": 100, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "num_labels": 3}
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=32, initializer_range=0.2, **common
        )
    return transformers.AutoConfig.for_model(
        family,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=n_kv_heads,
        intermediate_size=64,  # gpt-oss: expert matrices need 16-byte strides
        max_position_embeddings=32,
        initializer_range=0.2,
        **common,
        **EXTRA.get(family, {}),
    )


def make_decoder(family: str, task: str = "causal", n_kv_heads: int = HEADS) -> torch.nn.Module:
    """In float64, except gpt-oss (its expert kernel takes float32 at most)."""
    torch.manual_seed(0)
    dtype = torch.float32 if family == "gpt_oss" else torch.float64
    return TASKS[task].from_config(decoder_config(family, n_kv_heads), dtype=dtype).eval()


def tolerance(family: str) -> dict[str, float]:
    """How close two computations of the same logits must be.

    Gemma2's native attention (eager, for its softcapping) takes the softmax in float32 whatever the
    model's dtype, and gpt-oss runs in float32; everything else agrees to float64 rounding.
    """
    tol = {"gemma2": 1e-6, "gpt_oss": 1e-5}.get(family, 1e-10)
    return {"rtol": tol, "atol": tol}


def decoder_batch() -> dict[str, torch.Tensor]:
    """Two right-padded sequences (pad id 0): the classifier reads each one's last real token."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, 7), generator=g)  # tokens 0-2 are pad, bos, eos
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def mask_for(heads: dict[int, list[int]]) -> torch.Tensor:
    mask = torch.ones(LAYERS, HEADS, dtype=torch.float64)
    for layer, hs in heads.items():
        mask[layer, hs] = 0
    return mask


def output_projection(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    if model.config.model_type == "gpt2":
        return model.transformer.h[layer].attn.c_proj
    return model.model.layers[layer].self_attn.o_proj


def hooked_logits(
    model: torch.nn.Module,
    batch: dict,
    row_heads: list[dict[int, list[int]]],
    projections: dict[int, torch.nn.Module] | None = None,
    head_dim: int = HEAD_DIM,
) -> torch.Tensor:
    """Independent reference: the native model with each row's heads zeroed at the output projection's input.

    ``row_heads[r]`` are the heads removed for batch row ``r`` (the attention output of a head is its
    ``head_dim`` slice of the input to the output projection); ``projections``: the output projection
    of each layer or site (default: every decoder layer's ``o_proj`` / ``c_proj``). No attention scope.
    """
    if projections is None:
        projections = {layer: output_projection(model, layer) for layer in range(LAYERS)}
    handles = []
    for layer, module in projections.items():

        def zero(_module, args, layer=layer):
            x = args[0].clone()  # [batch, pos, head * head_dim]
            for row, heads in enumerate(row_heads):
                for h in heads.get(layer, []):
                    x[row, :, h * head_dim : (h + 1) * head_dim] = 0
            return (x, *args[1:])

        handles.append(module.register_forward_pre_hook(zero))
    try:
        with torch.no_grad():
            return model(**batch).logits
    finally:
        for handle in handles:
            handle.remove()


def scoped_logits(model: torch.nn.Module, batch: dict, mask: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.masked(mask):
        return model(**batch).logits


def removed_parameters(family: str, n_query_heads: int, n_groups: int) -> int:
    """Parameters that removing query heads and key/value groups takes away (q rows + o columns, k/v rows)."""
    q_bias, kv_bias = BIASES.get(family, (False, False))
    return n_query_heads * HEAD_DIM * (2 * HIDDEN + q_bias) + n_groups * 2 * HEAD_DIM * (HIDDEN + kv_bias)


# ----------------------------------------------------------------------------- head masks (no pruning)
@pytest.mark.parametrize("family", FAMILIES)
def test_head_mask_equals_zeroed_head_outputs(family):
    """ctrl.masked on a decoder equals the eager model with those heads' outputs zeroed before o_proj."""
    model = make_decoder(family, "causal")
    batch = decoder_batch()
    plain = scoped_logits(model, batch, None)
    torch.testing.assert_close(plain, hooked_logits(model, batch, [{}, {}]), **tolerance(family))
    masked = scoped_logits(model, batch, mask_for(PRUNE))
    torch.testing.assert_close(masked, hooked_logits(model, batch, [PRUNE, PRUNE]), **tolerance(family))
    assert (masked - plain).abs().max() > 1e-3  # the heads mattered
    # one mask per batch row: row 0 loses head 2 of layer 1, row 1 keeps everything
    per_row = torch.stack([mask_for({1: [2]}), mask_for({})])
    want = hooked_logits(model, batch, [{1: [2]}, {}])
    torch.testing.assert_close(scoped_logits(model, batch, per_row), want, **tolerance(family))


# ----------------------------------------------------------------------------- structural pruning, MHA
@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_decoder_equals_masked(family, task):
    model = make_decoder(family, task)
    batch = decoder_batch()
    expected = scoped_logits(model, batch, mask_for(PRUNE))
    n_before = count_parameters(model)
    report = prune_heads(model, PRUNE)
    assert report.pruned == PRUNE and report.n_heads_pruned == 3
    with torch.no_grad():
        native = model(**batch).logits  # plain forward, the model's own attention implementation
    torch.testing.assert_close(native, expected, **tolerance(family))
    torch.testing.assert_close(scoped_logits(model, batch, None), expected, **tolerance(family))
    assert report.n_parameters_before == n_before
    assert n_before - report.n_parameters_after == removed_parameters(family, 3, 3)
    assert report.n_parameters_after == count_parameters(model)
    assert kept_heads(model) == {0: [0, 2, 3], 1: [1, 2]}


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_decoder_in_scope_keeps_original_heads(family):
    """Inside attention_scope a pruned decoder takes full-width masks and captures zeros at removed heads."""
    model, reference = make_decoder(family), make_decoder(family)
    batch = decoder_batch()
    prune_heads(model, PRUNE)
    extra = {0: [3]}
    want = scoped_logits(reference, batch, mask_for({0: [1, 3], 1: [0, 3]}))
    torch.testing.assert_close(scoped_logits(model, batch, mask_for(extra)), want, **tolerance(family))
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as probs:
        model(**batch)
    assert probs[1].shape == (2, HEADS, 7, 7)
    assert probs[1][:, [0, 3]].abs().max() == 0
    torch.testing.assert_close(probs[1][:, [1, 2]].sum(-1), torch.ones(2, 2, 7, dtype=probs[1].dtype))


def test_phi3_fused_projection_rows():
    """Phi-3's qkv_proj keeps the query rows of the kept heads, then the key and value rows, in order."""
    model = make_decoder("phi3")
    attn = model.model.layers[1].self_attn
    weight = attn.qkv_proj.weight.detach().clone()  # [(4 + 4 + 4) * 8, hidden]
    prune_heads(model, {1: [0, 3]})
    rows = [block * HEADS * HEAD_DIM + h * HEAD_DIM + d for block in range(3) for h in (1, 2) for d in range(HEAD_DIM)]
    torch.testing.assert_close(attn.qkv_proj.weight, weight[rows])
    assert attn.num_key_value_heads == 2 and attn.config.num_attention_heads == 2
    assert model.config.num_attention_heads == HEADS  # the shared config keeps the original count
    assert model.model.layers[0].self_attn.config is model.config  # unpruned layers keep the shared config
    assert attn.config._attn_implementation == model.config._attn_implementation


def test_pruned_phi3_copies_and_pickles():
    """The per-layer view of the config follows a deep copy (and a pickle) of the model."""
    model = make_decoder("phi3")
    batch = decoder_batch()
    prune_heads(model, PRUNE)
    with torch.no_grad():
        expected = model(**batch).logits
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (copied, loaded):
        assert other.model.layers[1].self_attn.config.num_attention_heads == 2
        assert other.model.layers[1].self_attn.config._base is other.config
        with torch.no_grad():
            torch.testing.assert_close(other(**batch).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(scoped_logits(copied, batch, None), expected, rtol=1e-10, atol=1e-10)


def test_gpt2_conv1d_columns():
    """GPT-2's Conv1D weights are [in, out]: c_attn loses output columns, c_proj input rows."""
    model = make_decoder("gpt2")
    attn = model.transformer.h[0].attn
    c_attn, c_proj = attn.c_attn.weight.detach().clone(), attn.c_proj.weight.detach().clone()
    bias = attn.c_attn.bias.detach().clone()
    prune_heads(model, {0: [2]})
    cols = [block * HIDDEN + h * HEAD_DIM + d for block in range(3) for h in (0, 1, 3) for d in range(HEAD_DIM)]
    kept = [h * HEAD_DIM + d for h in (0, 1, 3) for d in range(HEAD_DIM)]
    torch.testing.assert_close(attn.c_attn.weight, c_attn[:, cols])
    torch.testing.assert_close(attn.c_attn.bias, bias[cols])
    torch.testing.assert_close(attn.c_proj.weight, c_proj[kept])
    assert (attn.num_heads, attn.split_size, attn.c_attn.nf, attn.c_proj.nx) == (3, 24, 72, 24)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_save_load_round_trip(family, task, tmp_path):
    model = make_decoder(family, task)
    batch = decoder_batch()
    prune_heads(model, PRUNE)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained_pruned(str(tmp_path), TASKS[task]).to(model.dtype)
    assert pruned_heads(loaded) == PRUNE and getattr(loaded.config, PRUNED_HEADS_KEY) == {"0": [1], "1": [0, 3]}
    assert count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, **tolerance(family))


@pytest.mark.parametrize(
    ("heads", "match"),
    [
        ({0: [0, 1, 2, 3]}, "every head of layer 0"),
        ({2: [0]}, r"layer indices in \[0, 1\].*2"),
        ({0: [4]}, r"head indices in \[0, 3\] in `heads\[0\]`.*4"),
    ],
)
def test_decoder_refusals(heads, match):
    model = make_decoder("llama")
    with pytest.raises(ValueError, match=match) as caught:
        prune_heads(model, heads)
    assert "\n" not in str(caught.value)
    assert pruned_heads(model) == {}


def test_refuses_gpt2_cross_attention():
    """BART is pruned per attention site (test_pruning_encdec.py); GPT-2's add-on cross-attention is not."""
    config = decoder_config("gpt2")
    config.add_cross_attention = True
    with pytest.raises(ValueError, match="GPT2Block with a cross-attention module"):
        prune_heads(transformers.GPT2LMHeadModel(config), {0: [1]})


# ----------------------------------------------------------------------------- grouped-query attention
GQA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt_oss")
GROUPS = {0: [1], 1: [0]}  # 4 query heads in 2 groups: group g holds query heads 2g, 2g + 1


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_gqa_group_pruning_equals_zeroed_heads(family, task):
    model = make_decoder(family, task, n_kv_heads=2)
    batch = decoder_batch()
    heads = heads_of_kv_groups(GROUPS, n_heads=HEADS, n_kv_heads=2)
    assert heads == {0: [2, 3], 1: [0, 1]}
    expected = hooked_logits(model, batch, [heads, heads])
    group_mask = torch.ones(LAYERS, 2, dtype=torch.float64)
    group_mask[0, 1] = group_mask[1, 0] = 0
    head_mask = kv_group_head_mask(group_mask, n_heads=HEADS)
    torch.testing.assert_close(head_mask, mask_for(heads))
    torch.testing.assert_close(scoped_logits(model, batch, head_mask), expected, **tolerance(family))
    n_before = count_parameters(model)
    report = prune_heads(model, heads)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, **tolerance(family))
    torch.testing.assert_close(scoped_logits(model, batch, None), expected, **tolerance(family))
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as probs:
        model(**batch)
    assert probs[0][:, 2:].abs().max() == 0 and probs[1][:, :2].abs().max() == 0  # removed heads, original index
    sinks = 4 if family == "gpt_oss" else 0  # one sink logit per removed query head
    assert n_before - report.n_parameters_after == removed_parameters(family, 4, 2) + sinks
    attn = model.model.layers[0].self_attn
    k_proj = attn.qkv_proj if family == "phi3" else attn.k_proj
    assert k_proj.weight.shape[0] == (2 * HEAD_DIM + 2 * HEAD_DIM if family == "phi3" else HEAD_DIM)
    assert model.config.num_key_value_heads == 2  # the config keeps the original structure


@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_gqa_head_mask_is_per_query_head(family):
    """Under GQA a head mask still silences single query heads (no structural counterpart): equal to zeroing them."""
    model = make_decoder(family, n_kv_heads=2)
    batch = decoder_batch()
    heads = {0: [1], 1: [2, 3]}
    want = hooked_logits(model, batch, [heads, heads])
    torch.testing.assert_close(scoped_logits(model, batch, mask_for(heads)), want, **tolerance(family))
    per_row = torch.stack([mask_for({0: [3]}), mask_for({})])
    want = hooked_logits(model, batch, [{0: [3]}, {}])
    torch.testing.assert_close(scoped_logits(model, batch, per_row), want, **tolerance(family))


@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_gqa_round_trip(family, tmp_path):
    model = make_decoder(family, "classify", n_kv_heads=2)
    prune_heads(model, {1: [2, 3]})
    model.save_pretrained(tmp_path)
    loaded = from_pretrained_pruned(str(tmp_path)).to(model.dtype)
    assert pruned_heads(loaded) == {1: [2, 3]} and count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**decoder_batch()).logits, model(**decoder_batch()).logits)


def test_gqa_partial_group_refused():
    model = make_decoder("llama", n_kv_heads=2)
    prune_heads(model, {0: [2, 3]})
    with pytest.raises(ValueError, match=r"only heads \[1\] of group 0 \(query heads \[0, 1\]\)") as caught:
        prune_heads(model, {0: [1], 1: [0, 1]})
    assert "\n" not in str(caught.value) and "repeat_kv" in str(caught.value)
    assert pruned_heads(model) == {0: [2, 3]}  # nothing half-done
    with pytest.raises(ValueError, match=r"only heads \[0, 1, 2\] of group 0"):  # multi-query: one group of 4
        prune_heads(make_decoder("llama", n_kv_heads=1), {1: [0, 1, 2]})


def test_group_importance_and_ranking():
    importance = torch.tensor([[0.5, 0.1, 0.2, 0.9], [0.3, 0.3, 0.0, 0.1]])
    groups = kv_group_importance(importance, n_kv_heads=2)
    torch.testing.assert_close(groups, torch.tensor([[0.6, 1.1], [0.6, 0.1]]))
    torch.testing.assert_close(kv_group_importance(importance, n_kv_heads=4), importance)
    torch.testing.assert_close(kv_group_importance(importance, n_kv_heads=1), importance.sum(1, keepdim=True))
    lowest = heads_to_prune(groups, 0.5)  # two of four groups, lowest first (ties in flat order)
    assert lowest == {0: [0], 1: [1]}
    assert heads_of_kv_groups(lowest, n_heads=4, n_kv_heads=2) == {0: [0, 1], 1: [2, 3]}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: kv_group_importance(torch.ones(2, 4), 3), ValueError, r"`n_kv_heads` to divide .*\(4\), but got 3"),
        (lambda: kv_group_importance(torch.ones(2, 4), 0), ValueError, "`n_kv_heads`"),
        (lambda: heads_of_kv_groups({0: [2]}, 4, 2), ValueError, r"group indices in \[0, 1\] in `groups\[0\]`.*2"),
        (lambda: heads_of_kv_groups([0], 4, 2), TypeError, "`groups` to be a mapping"),
    ],
)
def test_group_helper_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_heads_to_prune_with_key_value_groups_ranks_whole_groups():
    from lightning_attattr.core.importance import heads_of_kv_groups, heads_to_prune, kv_group_importance, prune_mask

    importance = torch.tensor([[0.9, 0.1, 0.2, 0.3], [0.05, 0.8, 0.6, 0.7]])
    # groups (sums): layer 0: [1.0, 0.5], layer 1: [0.85, 1.3]; the lowest half of 4 groups: (0, 1) and (1, 0)
    expected = heads_of_kv_groups(heads_to_prune(kv_group_importance(importance, 2), 0.5), 4, 2)
    assert heads_to_prune(importance, 0.5, n_kv_heads=2) == expected == {0: [2, 3], 1: [0, 1]}
    assert heads_to_prune(importance, 0.5, n_kv_heads=4) == heads_to_prune(importance, 0.5)  # no groups
    assert prune_mask(importance, 0.5, n_kv_heads=2).tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
