"""report.md, its plots, and the result table, from a run folder's files alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedlab.errors import RunError


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    path = Path(run_dir)
    try:
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError as exc:
        raise RunError(f"{path}: no summary.json; is this a finished fedlab run folder?") from exc
    except ValueError as exc:
        raise RunError(f"{path / 'summary.json'} is not valid JSON ({exc})") from exc
    metrics: list[dict[str, Any]] = []
    mpath = path / "metrics.jsonl"
    if mpath.exists():
        for i, line in enumerate(mpath.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    metrics.append(json.loads(line))
                except ValueError as exc:
                    raise RunError(f"{mpath}: line {i} is not valid JSON") from exc
    return summary, metrics


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):.3f}"


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per training regime (federated, pooled training, each lab
    alone), one column per test set (each lab's test rows, and all of them pooled)."""
    fed = summary.get("federated", {})
    labs = list(fed.get("labs", {}))
    header = ["trained", *labs, "pooled test"]
    regimes: list[tuple[str, dict[str, Any]]] = [("federated", fed)]
    base = summary.get("baselines")
    if base:
        regimes.append(("pooled data", base["pooled_training"]))
        for lab, res in base["local_only"].items():
            regimes.append((f"{lab} alone", res))
    rows = []
    for name, res in regimes:
        rows.append([name]
                    + [_fmt(res.get("labs", {}).get(lab, {}).get("accuracy")) for lab in labs]
                    + [_fmt(res.get("pooled_test", {}).get("accuracy"))])
    return header, rows


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(summary)
    t = Table(title=f"Test accuracy: {summary.get('federation')} "
                    f"({summary.get('rounds_completed')}/{summary.get('rounds')} rounds, "
                    f"{'secure' if summary.get('secure') else 'plain'} aggregation)")
    for h in header:
        t.add_column(h, justify="left" if h == "trained" else "right")
    for r in rows:
        t.add_row(*r)
    console = Console(width=max(100, Console().width))
    console.print(t)
    priv = summary.get("privacy")
    if priv:
        spent = ", ".join(f"{lab} {eps:.3g}" for lab, eps in sorted(priv["epsilon_spent"].items()))
        console.print(f"Differential privacy ({priv['mode']}-level, delta {priv['delta']:g}, "
                      f"target epsilon {priv['target_epsilon']:g}): epsilon spent per lab: "
                      f"{spent or 'none'}")


def _series(metrics: list[dict[str, Any]], lab: str, key: str) -> tuple[list[int], list[float]]:
    pts = {}
    for m in metrics:
        if m.get("kind") == "eval" and m.get("lab") == lab and m.get(key) is not None:
            pts[int(m["round"])] = float(m[key])
    rounds = sorted(pts)
    return rounds, [pts[r] for r in rounds]


def write_report(run_dir: str | Path) -> Path:
    """Write report.md and accuracy/loss plots (PNG) into the run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(run_dir)
    summary, metrics = load_run(path)
    labs = list(summary.get("federated", {}).get("labs", {}))
    base = summary.get("baselines")
    for key, fname in (("accuracy", "accuracy.png"), ("loss", "loss.png")):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        r, v = _series(metrics, "pooled", key)
        ax.plot(r, v, "-o", color="black", lw=2, ms=3, label="federated, pooled test")
        for lab in labs:
            r, v = _series(metrics, lab, key)
            ax.plot(r, v, "-", lw=1, alpha=0.8, label=f"federated, {lab} test")
        if base:
            ax.axhline(base["pooled_training"]["pooled_test"][key], color="tab:green", ls="--",
                       label="pooled training, pooled test")
            local = [b["pooled_test"][key] for b in base["local_only"].values()]
            ax.axhline(sum(local) / len(local), color="tab:red", ls=":",
                       label="one lab alone (mean), pooled test")
        ax.set_xlabel("round (0 = initial model)")
        ax.set_ylabel(f"test {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path / fname)
        plt.close(fig)

    header, rows = table_rows(summary)
    md = [f"# Run {summary.get('run')}", "",
          f"- federation: **{summary.get('federation')}** ({summary.get('mode')})",
          f"- rounds completed: {summary.get('rounds_completed')} of {summary.get('rounds')}",
          f"- aggregation: {'secure (masked updates)' if summary.get('secure') else 'plain'}; "
          f"strategy {summary.get('strategy')}; model {summary.get('model')}",
          f"- final model SHA-256: `{summary.get('model_sha256')}`",
          f"- steady round: {summary.get('seconds', {}).get('steady_round', float('nan')):.2f} s",
          "", "## Test accuracy", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "![accuracy per round](accuracy.png)", "", "![loss per round](loss.png)", ""]
    rounds = [m for m in metrics if m.get("kind") == "round"]
    if rounds:
        md += ["## Rounds", "", "| round | seconds | aggregated | contributors | dropped | note |",
               "|---|---|---|---|---|---|"]
        for m in rounds:
            md.append(f"| {m['round']} | {m['seconds']:.2f} | {m['aggregated']} | "
                      f"{', '.join(m.get('contributors', []))} | "
                      f"{', '.join(m.get('dropped', [])) or '-'} | {m.get('reason') or ''} |")
    out = path / "report.md"
    out.write_text("\n".join(md) + "\n")
    return out
