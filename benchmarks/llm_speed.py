"""AttAttr on a small decoder LM against the Captum code a user would write; prints one JSON document.

A Llama-shaped causal LM (grouped-query attention) is trained from scratch on SST-2 training sentences
as bytes (no pretrained decoder is available offline), then every layer of ``n_prompts`` SST-2 dev
prompts is attributed for the predicted next byte at the last position (output: its probability),
in one run:

(a) ``ours_auto``: ``attribute(n_steps="auto")`` (the default, completeness tolerance 1e-3), and the
    same from the uniform-attention baseline (``baseline="uniform"``);
(b) ``ours_gl10``: ``attribute(method="gausslegendre", n_steps=10)``;
(c) ``captum_glN``: ``captum.attr.IntegratedGradients`` over ONE layer's attention probabilities of ONE
    prompt, through the same attention interface (``attention_scope`` + ``ctrl.replacing(layer, x)``),
    zero baseline, Gauss-Legendre with N nodes (``--captum_steps``, default 10, 40 and 160), the softmax
    probability of the target token at the last position; one call per prompt and layer (what the
    Captum documentation leads a user to write).

``at_equal_worst_error``: ``ours_auto`` against the cheapest Captum run whose worst completeness error is
no larger than ours (the time a Captum user needs for the same accuracy); when no Captum run reaches it,
the ratio to the largest one is a lower bound (``captum_reached: false``).

For each: prompts per second (ours including the ``F(A := 0)`` forwards of the completeness check) and
the relative completeness error |sum attr - (F(A) - F(0))| / |F(A) - F(0)| over the (prompt, layer)
pairs (Captum's maps checked against (b)'s ``prob``/``baseline_prob``), and the largest difference of
(b) and (c) relative to the largest |attribution| (the same rule: floating-point level).

Run: ``python benchmarks/llm_speed.py`` (``--help``); needs captum (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_attattr.core.adapter import attention_scope  # noqa: E402
from lightning_attattr.core.attribution import attribute, completeness_scale  # noqa: E402

GLUE = ROOT.parent / "shared" / "data" / "glue" / "SST-2"


def sentences(split: str, limit: int) -> list[bytes]:
    """SST-2 sentences of ``split`` (train or dev) as bytes, at most ``limit``."""
    lines = (GLUE / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0].strip().encode("utf-8") for line in lines[:limit]]


def train_lm(n_steps: int, seq: int, hidden: int, layers: int, heads: int, kv_heads: int, seed: int):
    """A byte-level Llama trained ``n_steps`` AdamW steps on SST-2 training text; returns (model, final loss)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    text = torch.tensor(list(b" ".join(sentences("train", 20000))), dtype=torch.long)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    model.train()
    for _ in range(n_steps):
        starts = torch.randint(0, len(text) - seq - 1, (32,))
        batch = torch.stack([text[s : s + seq] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    return model.eval(), float(loss.detach())


def captum_lm(model, prompts: list[torch.Tensor], n_steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """Captum maps ``[layer, head, n, n]`` per prompt for the predicted next token at the last position."""
    from captum.attr import IntegratedGradients

    maps, targets = [], []
    with attention_scope(model) as ctrl:
        ctrl.use_sdpa = True
        for ids in prompts:
            inputs = {"input_ids": ids[None]}
            with torch.no_grad(), ctrl.capturing() as clean:
                target = int(model(**inputs).logits[0, -1].argmax())
            per_layer = []
            for layer in range(ctrl.n_layers):

                def forward(x: torch.Tensor, layer: int = layer, ids: torch.Tensor = ids) -> torch.Tensor:
                    rows = {"input_ids": ids[None].expand(x.shape[0], -1)}
                    with ctrl.replacing(layer, x):
                        return torch.softmax(model(**rows).logits[:, -1], dim=-1)

                ig = IntegratedGradients(forward)
                probs = clean[layer]
                attr = ig.attribute(
                    probs,
                    baselines=torch.zeros_like(probs),
                    target=target,
                    n_steps=n_steps,
                    method="gausslegendre",
                    internal_batch_size=n_steps,
                )
                per_layer.append(attr[0].detach())
            maps.append(torch.stack(per_layer))
            targets.append(target)
    return maps, targets


def errors(sums: torch.Tensor, prob: torch.Tensor, base: torch.Tensor) -> dict:
    """Relative completeness error over (prompt, layer) pairs: ``sums``, ``prob``, ``base`` are ``[prompt, layer]``.

    The measure ``attribute`` reports (``completeness_error``): the gap over ``max(|F(A) - F(B)|, 1e-3)``.
    """
    rel = (sums - (prob - base)).abs() / completeness_scale(prob, base)  # [prompt, layer]
    return {
        "mean": float(rel.mean()),
        "worst": float(rel.max()),
        "within_1e-3": float((rel <= 1e-3).double().mean()),
        "worst_per_layer": rel.max(0).values.tolist(),
    }


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--n_prompts", type=int, default=12)
    parser.add_argument("--prompt_bytes", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--captum_steps", type=int, nargs="+", default=[10, 40, 160])
    parser.add_argument("--model_cache", type=Path, default=None, help="reuse (or save) the trained weights here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    shape = (args.hidden, args.layers, args.heads, args.kv_heads)
    if args.model_cache is not None and args.model_cache.exists():
        model, loss = train_lm(0, 64, *shape, seed=0)
        saved = torch.load(args.model_cache, weights_only=True)
        model.load_state_dict(saved["weights"])
        loss = float(saved["loss"])
    else:
        model, loss = train_lm(args.train_steps, 64, *shape, seed=0)
        if args.model_cache is not None:
            torch.save({"weights": model.state_dict(), "loss": torch.tensor(loss)}, args.model_cache)
    train_seconds = time.perf_counter() - start
    prompts = [torch.tensor(list(s[: args.prompt_bytes])) for s in sentences("dev", 400)]
    prompts = [p for p in prompts if len(p) == args.prompt_bytes][: args.n_prompts]
    batch = {"input_ids": torch.stack(prompts)}
    n = len(prompts)

    def ours(**kwargs):
        return attribute(model, batch, return_convergence_delta=True, **kwargs)

    ours(n_steps=2)  # warm-up
    t_auto, auto = timed(lambda: ours(n_steps="auto"), args.repeats)
    t_uniform, uniform = timed(lambda: ours(n_steps="auto", baseline="uniform"), args.repeats)
    t_gl10, gl10 = timed(lambda: ours(method="gausslegendre", n_steps=10), args.repeats)
    t_auto63, auto63 = timed(lambda: ours(n_steps="auto", max_steps=63), args.repeats)
    captum = {
        steps: timed(lambda steps=steps: captum_lm(model, prompts, steps), args.repeats) for steps in args.captum_steps
    }
    t_captum, (captum_maps, captum_targets) = captum[10]  # the same rule as ours_gl10: the maps are compared

    def sums(maps) -> torch.Tensor:
        return torch.stack([m.double().flatten(1).sum(1) for m in maps])  # [prompt, layer]

    prob = gl10.prob.double()[:, None].expand(n, args.layers)
    base = gl10.baseline_prob.double()
    assert captum_targets == gl10.target.tolist()
    diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(gl10.attributions, captum_maps))
    stats = {
        "ours_auto": {
            "prompts_per_s": n / t_auto,
            "completeness": errors(sums(auto.attributions), prob, auto.baseline_prob.double()),
            "mean_nodes": float(auto.n_steps_used.double().mean()),
            "mean_nodes_per_layer": auto.n_steps_used.double().mean(0).tolist(),
            "unconverged_pairs": int(auto.unconverged.sum()),
        },
        "ours_auto_uniform_baseline": {
            "prompts_per_s": n / t_uniform,
            "completeness": errors(sums(uniform.attributions), prob, uniform.baseline_prob.double()),
            "mean_nodes_per_layer": uniform.n_steps_used.double().mean(0).tolist(),
            "unconverged_pairs": int(uniform.unconverged.sum()),
        },
        "ours_auto_max_steps_63": {
            "prompts_per_s": n / t_auto63,
            "completeness": errors(sums(auto63.attributions), prob, auto63.baseline_prob.double()),
            "mean_nodes_per_layer": auto63.n_steps_used.double().mean(0).tolist(),
            "unconverged_pairs": int(auto63.unconverged.sum()),
        },
        "ours_gl10": {"prompts_per_s": n / t_gl10, "completeness": errors(sums(gl10.attributions), prob, base)},
    }
    for steps, (seconds, (maps, _)) in captum.items():
        stats[f"captum_gl{steps}"] = {"prompts_per_s": n / seconds, "completeness": errors(sums(maps), prob, base)}
    worst = stats["ours_auto"]["completeness"]["worst"]
    reached = [steps for steps in sorted(captum) if stats[f"captum_gl{steps}"]["completeness"]["worst"] <= worst]
    match = reached[0] if reached else max(captum)
    equal = {
        "ours_auto_worst": worst,
        "captum_steps": match,
        "captum_worst": stats[f"captum_gl{match}"]["completeness"]["worst"],
        "captum_reached": bool(reached),
        "speedup": captum[match][0] / t_auto,
    }
    out = {
        "benchmark": "llm_speed",
        "model": {
            "family": "llama (LlamaForCausalLM, byte-level, trained from scratch on SST-2 train text)",
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "kv_heads": args.kv_heads,
            "train_steps": args.train_steps,
            "final_train_loss": loss,
            "train_seconds": train_seconds,
        },
        "prompts": {"n": n, "bytes": args.prompt_bytes, "source": "SST-2 dev sentences, first bytes"},
        "target": "predicted next byte at the last position, probability",
        "variants": stats,
        "ratios": {
            "auto_over_captum_gl10": t_captum / t_auto,
            "gl10_over_captum_gl10": t_captum / t_gl10,
        },
        "at_equal_worst_error": equal,
        "gl10_vs_captum_max_rel_diff": diff,
        "environment": {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
