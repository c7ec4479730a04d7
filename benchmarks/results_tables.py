"""Markdown tables for docs/results.md from the results folders of benchmarks/reproduce_heads.sh.

python benchmarks/results_tables.py results/minilm > /tmp/tables.md
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
        out.append(f"\n**{task}** ({pruning['n_eval_examples']} dev examples; unpruned "
                   + ", ".join(f"{m} {pruning['unpruned'][m]:.3f}" for m in metrics) + ")\n")  # fmt: skip
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
                cells = [f"{curve[metrics[0]][i]:.3f} ± {curve[metrics[0] + '_std'][i]:.3f}"
                         for i in range(1, len(fr) - 1, 2)]  # fmt: skip
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
                out.append(f"| {task} | {row['fraction']:.1f} | {row['heads_removed']} | {row['parameters']:,} "
                           f"({row['parameters_ratio']:.3f}) | {row['latency_ratio']:.2f} |")  # fmt: skip
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


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/minilm")
    tasks = [t for t in ("sst2", "rte", "mrpc", "cola") if (root / f"{t}-heads").exists()]
    print("## Pruning curves\n" + heads_tables(root, tasks))
    print("\n## Structural pruning\n\n" + structural_table(root, tasks))
    print("\n## Effectiveness\n" + effectiveness_table(root, tasks))
    print("\n## Universality\n" + universality_table(root))


if __name__ == "__main__":
    main()
