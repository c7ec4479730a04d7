"""Markdown tables for docs/results.md from the results folders of benchmarks/reproduce_heads.sh.

python benchmarks/results_tables.py results/minilm > /tmp/tables.md
python benchmarks/results_tables.py results/minilm --fill=docs/results.md   # refresh the tables in place
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_attattr.analysis.heads import METHODS as ORDER  # noqa: E402


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def heads_tables(root: Path, tasks: list[str]) -> str:
    out = []
    for task in tasks:
        pruning = load(root / f"{task}-heads" / "pruning.json")
        if pruning is None:
            continue
        metrics = [m for m in pruning["unpruned"]]
        fr = pruning["fractions"]
        out.append(
            f"\n**{task}** ({pruning['n_eval_examples']} dev examples; unpruned "
            + ", ".join(f"{m} {pruning['unpruned'][m]:.3f}" for m in metrics)
            + ")\n"
        )
        header = ["method", *[f"{m} @ {int(f * 100)}%" for m in metrics[:1] for f in fr[1:-1:2]]]
        header += [f"{m} AUC" for m in metrics] + ["largest fraction within 1 pt (acc)"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for name in ORDER:
            if name not in pruning["curves"]:
                continue
            curve = pruning["curves"][name]
            summary = pruning["summary"][name]
            cells = [f"{curve[metrics[0]][i]:.3f}" for i in range(1, len(fr) - 1, 2)]
            if name == "random":
                cells = [
                    f"{curve[metrics[0]][i]:.3f} ± {curve[metrics[0] + '_std'][i]:.3f}"
                    for i in range(1, len(fr) - 1, 2)
                ]
            cells += [f"{summary[m]['auc']:.3f}" for m in metrics]
            cells.append(f"{summary['acc']['max_fraction_within']:.1f}")
            out.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(out)


def structural_table(root: Path, tasks: list[str]) -> str:
    out = ["| task | fraction | heads removed | parameters (ratio) | latency ratio |", "|---|---|---|---|---|"]
    for task in tasks:
        data = load(root / f"{task}-heads" / "structural.json")
        if data is None:
            continue
        for row in data["rows"]:
            if "skipped" in row:
                out.append(f"| {task} | {row['fraction']:.1f} | {row['heads_removed']} | {row['skipped']} | |")
            else:
                out.append(
                    f"| {task} | {row['fraction']:.1f} | {row['heads_removed']} | {row['parameters']:,} "
                    f"({row['parameters_ratio']:.3f}) | {row['latency_ratio']:.2f} |"
                )
    return "\n".join(out)


def effectiveness_table(root: Path, tasks: list[str]) -> str:
    out = []
    for task in tasks:
        data = load(root / f"{task}-effectiveness" / "effectiveness.json")
        if data is None:
            continue
        ks = data["heads_pruned_per_layer"]
        out.append(f"\n**{task}** ({data['n_examples']} dev examples)\n")
        out.append("| curve | " + " | ".join(f"k={k}" for k in ks) + " |")
        out.append("|" + "---|" * (len(ks) + 1))
        for name, values in data["curves"].items():
            out.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(out)


def universality_table(root: Path) -> str:
    data = load(root / "universality" / "universality.json")
    if data is None:
        return ""
    out = []
    for stat in ("pearson", "spearman"):
        out.append(f"\n{stat}\n")
        out.append("| | " + " | ".join(data["tasks"]) + " |")
        out.append("|" + "---|" * (len(data["tasks"]) + 1))
        for name, row in zip(data["tasks"], data[stat]):
            out.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    transfer = data.get("transfer", {})
    if transfer:
        out.append("\ntransfer (accuracy AUC over fractions 0..1 with each task's AttAttr ranking)\n")
        out.append("| pruned task | ranking from | AUC |")
        out.append("|---|---|---|")
        for task, t in transfer.items():
            fr = t["fractions"]
            for name, acc in t["acc"].items():
                auc = sum((fr[i + 1] - fr[i]) * (acc[i] + acc[i + 1]) / 2 for i in range(len(fr) - 1))
                out.append(f"| {task} | {'own' if name == 'attattr' else name[9:]} | {auc:.3f} |")
    return "\n".join(out)


EDGE_ORDER = ("attattr", "grad_attention", "rollout", "attention", "random")


def faithfulness_table(root: Path, tasks: list[str]) -> str:
    """Per task and method: drop at k = 1, 4, 16, 64, areas under the drop and flip curves; the tree test."""
    out = [
        "| task | method | drop k=1 | k=4 | k=16 | k=64 | drop area | flip area |",
        "|---|---|---|---|---|---|---|---|",
    ]
    trees = [
        "| task | tree of | edges | drop | flips | random same layers: drop (± over seeds) | flips |",
        "|---|---|---|---|---|---|---|",
    ]
    cost = [
        "| task | tokens (mean) | " + " | ".join(EDGE_ORDER[:-1]) + " | attattr / grad_attention |",
        "|---|---|" + "---|" * len(EDGE_ORDER),
    ]
    for task in tasks:
        data = load(root / f"{task}-faithfulness" / "faithfulness.json")
        if data is None:
            continue
        ks = data["ks"]
        at = [ks.index(k) for k in (1, 4, 16, 64) if k in ks]
        for name in EDGE_ORDER:
            c = data["curves"][name]
            cells = [f"{c['drop'][i]:.3f}" for i in at] + [f"{c['drop_area']:.3f}", f"{c['flip_area']:.3f}"]
            out.append(f"| {task} ({data['n_examples']}) | {name} | " + " | ".join(cells) + " |")
        for name in EDGE_ORDER[:-1]:
            t = data["trees"][name]
            trees.append(
                f"| {task} | {name} | {t['mean_edges']:.1f} | {t['drop']:.3f} | {t['flip']:.3f} | "
                f"{t['random_drop']:.3f} ± {t['random_drop_std']:.3f} | {t['random_flip']:.3f} |"
            )
        sec = data["seconds_per_example"]
        cost.append(
            f"| {task} | {data['mean_tokens']:.1f} | "
            + " | ".join(f"{sec[m] * 1000:.0f} ms" for m in EDGE_ORDER[:-1])
            + f" | {sec['attattr'] / sec['grad_attention']:.0f}x |"
        )
    paired = [
        "| task | AttAttr vs | mean difference of drop areas ± s.e. | share of examples AttAttr larger |",
        "|---|---|---|---|",
    ]
    for task in tasks:
        data = load(root / f"{task}-faithfulness" / "faithfulness.json")
        for other in EDGE_ORDER[1:]:
            p = (data or {}).get("paired", {}).get(f"attattr vs {other}")
            if p:
                paired.append(
                    f"| {task} | {other} | {p['mean_difference']:+.3f} ± {p['stderr']:.3f} | {p['share_larger']:.2f} |"
                )
    return "\n\n".join("\n".join(t) for t in (out, paired, trees, cost))


def cross_layer_table(root: Path, tasks: list[str], extra: dict[str, Path] | None = None) -> str:
    """Per task: deletion areas per (layer, query, key) connection and per word pair across layers, and completeness."""
    out = [
        "| task | method | drop area, connections | drop area, word pairs in all layers | flip area, word pairs |",
        "|---|---|---|---|---|",
    ]
    worst = ["| task | AttAttr maps | worst completeness error | median |", "|---|---|---|---|"]
    folders = {task: root / f"{task}-faithfulness" for task in tasks} | (extra or {})
    for task, folder in folders.items():
        data = load(folder / "faithfulness.json")
        if data is None or "cross_layer" not in data:
            continue
        for name in EDGE_ORDER:
            c, x = data["curves"][name], data["cross_layer"]["curves"][name]
            out.append(
                f"| {task} ({data['n_examples']}) | {name} | {c['drop_area']:.3f} | {x['drop_area']:.3f} | "
                f"{x['flip_area']:.3f} |"
            )
        comp = data.get("completeness") or {}
        if comp.get("worst") is not None:
            worst.append(f"| {task} | {comp['n_maps']} | {comp['worst']:.1e} | {comp['median']:.1e} |")
    return "\n\n".join("\n".join(t) for t in (out, worst))


def removal_line(folder: Path) -> str:
    """The planted pairs removed in all layers against one layer at a time (groundtruth.json's `removal`)."""
    data = load(folder / "groundtruth.json")
    if data is None or "removal" not in data:
        return ""
    r = data["removal"]
    return (
        f"Removing the planted pairs' connections in all layers at once lowers the predicted probability by "
        f"{r['all_layers']['drop']:.3f} on average and flips {r['all_layers']['flip']:.3f} of the predictions; "
        f"removing them in one layer alone lowers it by at most {r['largest_single_layer_drop']:.3f} "
        f"(mean per layer: {', '.join(f'{v:.3f}' for v in r['per_layer']['drop'])})."
    )


def groundtruth_table(folder: Path) -> str:
    data = load(folder / "groundtruth.json")
    if data is None:
        return ""
    out = [f"{data['n_examples']} dev examples; a hit: {data['hit']}."]
    for convention, table in data["conventions"].items():
        default = " (the default)" if convention == data["default_convention"] else ""
        out += [
            "",
            f"Convention `{convention}`{default}: {table['rule']}.",
            "",
            "| method | top-1 (all layers) | top-3 (all layers) | top-1 best layer | top-3 best layer "
            "| tree connects | graph connects | top-1 touches a planted token | top-3 touches |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in table["methods"].items():
            out.append(
                f"| {name} | {r['top1']:.3f} | {r['top3']:.3f} | {r['best_layer_top1_rate']:.3f} (layer "
                f"{r['best_layer_top1']}) | {r['best_layer_top3_rate']:.3f} (layer {r['best_layer_top3']}) | "
                f"{r['tree_connects']:.3f} | {r['graph_connects']:.3f} | {r['touch1']:.3f} | "
                f"{r['touch3']:.3f} |"
            )
    return "\n".join(out)


def attack_tables(root: Path, tasks: list[str]) -> str:
    out = []
    for task in tasks:
        path = root / f"{task}-attack" / "attack.md"
        if path.is_file():
            data = load(root / f"{task}-attack" / "attack.json")
            overall = data["overall_accuracy"]
            controls = [a for row in overall["controls"] for a in row]
            out.append(
                f"\n**{task}**: overall accuracy clean {overall['clean']:.3f}; with triggers "
                + ", ".join(f"{a:.3f}" for a in overall["triggers"])
                + f"; random controls {min(controls):.3f}-{max(controls):.3f}\n"
            )
            out.append(path.read_text().strip())
    return "\n".join(out)


def tables(root: Path) -> dict[str, str]:
    """Every table, by the marker name that encloses it in docs/results.md."""
    tasks = [t for t in ("sst2", "rte", "mrpc", "cola") if (root / f"{t}-heads").exists()]
    part2 = [t for t in ("sst2", "rte", "mrpc", "cola") if (root / f"{t}-faithfulness").exists()]
    return {
        "TABLES_HEADS": heads_tables(root, tasks),
        "TABLE_STRUCTURAL": structural_table(root, tasks),
        "TABLE_EFFECTIVENESS": effectiveness_table(root, tasks),
        "TABLE_UNIVERSALITY": universality_table(root),
        "TABLE_FAITHFULNESS": faithfulness_table(root, part2),
        "TABLE_GROUNDTRUTH": groundtruth_table(root.parent / "quickstart-faithfulness")
        + "\n\n"
        + removal_line(root.parent / "quickstart-faithfulness"),
        "TABLE_GROUNDTRUTH_PLANTED": groundtruth_table(root.parent / "planted-faithfulness")
        + "\n\n"
        + removal_line(root.parent / "planted-faithfulness"),
        "TABLE_CROSSLAYER": cross_layer_table(
            root,
            part2,
            {
                "quickstart": root.parent / "quickstart-faithfulness",
                "planted pairs": root.parent / "planted-faithfulness",
            },
        ),
        "TABLES_ATTACK": attack_tables(root, ["sst2", "rte", "mrpc"]),
    }


def fill(document: Path, found: dict[str, str]) -> None:
    """Replace the text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` in ``document`` by the table NAME."""
    text = document.read_text(encoding="utf-8")
    for name, table in found.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if start in text and end in text and table.strip():
            head, rest = text.split(start, 1)
            text = head + start + "\n" + table.strip() + "\n" + end + rest.split(end, 1)[1]
    document.write_text(text, encoding="utf-8")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--fill=")]
    root = Path(args[0] if args else "results/minilm")
    found = tables(root)
    target = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--fill=")), None)
    if target:
        fill(Path(target), found)
        return
    for name, table in found.items():
        print(f"\n## {name}\n\n{table}")


if __name__ == "__main__":
    main()
