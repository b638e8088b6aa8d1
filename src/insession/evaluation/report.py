"""Writing an evaluation: ``metrics.json``, ``run.json``, ``report.md``, ``report.html`` and PNG plots.

The plots are drawn from the same numbers as the tables (``EvalResult.by_length`` and
``by_position``). They need matplotlib (the ``eval`` extra); without it the report says so and
everything else is still written.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from insession.evaluation.evaluate import ENGINE_NAMES, EvalResult

TABLE_KEYS = (
    "HR@10",
    "MRR@10",
    "NDCG@10",
    "HR@20",
    "MRR@20",
    "NDCG@20",
    "coverage@20",
    "popularity@20",
    "top1%share@20",
    "churn@20",
)


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.1%}" if pct else f"{value:.4f}"


def _plot(result: EvalResult, which: str, xlabel: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    table = result.by_length if which == "length" else result.by_position
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    for ax, key in zip(axes, ("HR@20", "MRR@20"), strict=True):
        labels: list[str] = []
        for name, rows in table.items():
            if not rows:
                continue
            labels = [str(r["bucket"]) for r in rows] if len(rows) > len(labels) else labels
            xs = list(range(len(rows)))
            style = "-" if name.startswith("insession") else "--"
            width = 2.4 if name == ENGINE_NAMES["joint"] else 1.3
            ax.plot(xs, [float(r[key]) for r in rows], style, marker="o", markersize=3, linewidth=width, label=name)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=min(len(names), 4), frameon=False)
    fig.suptitle(f"HR@20 and MRR@20 by {xlabel}", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_churn(curve: Sequence[dict[str, Any]], path: Path) -> bool:
    """Relevance (HR@20, MRR@20) against churn@20, one point per churn budget."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    xs = [p["churn@20"] for p in curve]
    for key, marker in (("HR@20", "o"), ("MRR@20", "s")):
        ax.plot(xs, [p[key] for p in curve], marker=marker, linestyle="", label=key)
        for p in curve:
            ax.annotate(
                str(p["budget"]), (p["churn@20"], p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("churn@20 between consecutive lists of a session")
    ax.set_ylabel("relevance")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Relevance vs churn, one point per churn budget", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sequence(run: dict[str, Any]) -> str:
    seq = run.get("sequence_model", {})
    if "off" in seq:
        return f"off ({seq['off']}); `--sequence` turns it on"
    return (
        f"on ({seq.get('transitions')} training transitions, {seq.get('loss')}; compare `insession` with "
        "`insession/no-sequence`)"
    )


def markdown(result: EvalResult, plots: Sequence[str], title: str) -> str:
    run = result.run
    rows = [[name, *(_fmt(values.get(k)) for k in TABLE_KEYS)] for name, values in result.metrics.items()]
    comp = run.get("comparisons", {})
    comp_rows = [[key, _fmt(value, pct=True)] for key, value in comp.items()]
    counts = [
        ("training events", run["train_events"]),
        ("test events", run["test_events"]),
        ("test sessions (≥ 2 known items)", run["test_sessions"]),
        ("of which with earlier sessions of the same user", run["test_sessions_with_earlier_history"]),
        ("pairs scored", run["pairs"]),
        ("test item events dropped (item unknown to training)", run["dropped_unknown_item_events"]),
        ("test sessions dropped (< 2 known items)", run["dropped_short_sessions"]),
        ("items in the model", run["items"]),
    ]
    parts = [
        f"# {title}",
        "",
        f"Split: {run['split']}. Protocol: {run['protocol']}.",
        f"Engine model `{run['model_version']}`, ranker: {run['ranker']}, sequence model: {_sequence(run)}.",
        "",
        "## Accuracy",
        "",
        _table(["model", *TABLE_KEYS], rows),
        "",
        "`insession` is the engine as served (joint); `insession/session-only` drops the user's earlier "
        "sessions, `insession/long-term-only` drops the current session. Coverage@20 is the share of the "
        "catalog shown in any list; popularity@20 the mean training popularity of listed items relative to "
        "the most popular item; top1%share@20 the share of all top-20 impressions taken by the 1% of the "
        "catalog shown most often; churn@20 the share of a list's top 20 not in the session's previous list.",
        "",
        "## Comparisons (relative)",
        "",
        _table(["comparison", "value"], comp_rows) if comp_rows else "(no engine run)",
        "",
        "## Data",
        "",
        _table(["", "count"], [[a, str(b)] for a, b in counts]),
        "",
    ]
    curve = run.get("churn_curve")
    if curve:
        parts += [
            "## Relevance vs churn",
            "",
            "Each row replays the joint engine with a churn budget against the list it showed for the "
            "session's previous pair (`keep_top` positions held unless beaten by 0.5 in score, at most "
            "`max_new` new items); churn@20 is the share of a list's top 20 not in the list before it.",
            "",
            _table(
                ["budget", "keep_top", "max_new", "churn@20", "HR@20", "MRR@20", "NDCG@20"],
                [
                    [
                        str(p["budget"]),
                        str(p.get("keep_top", 0)),
                        str(p.get("max_new", "-")),
                        *(_fmt(p[k]) for k in ("churn@20", "HR@20", "MRR@20", "NDCG@20")),
                    ]
                    for p in curve
                ],
            ),
            "",
        ]
    for name in plots:
        parts += [f"![{name}]({name})", ""]
    if not plots:
        parts += ["(plots skipped: matplotlib is not installed; `pip install 'insession[eval]'`)", ""]
    for label, table in (("session length", result.by_length), ("position in session", result.by_position)):
        joint = table.get(ENGINE_NAMES["joint"])
        if not joint:
            continue
        names = list(table)
        header = [label, "pairs", *(f"{n} MRR@20" for n in names)]
        lookup = {n: {str(r["bucket"]): r for r in rows} for n, rows in table.items()}
        body = [
            [
                str(r["bucket"]),
                str(r["pairs"]),
                *(_fmt(lookup[n].get(str(r["bucket"]), {}).get("MRR@20")) for n in names),
            ]
            for r in joint
        ]
        parts += [f"## MRR@20 by {label}", "", _table(header, body), ""]
    parts += [
        "## Timings (seconds)",
        "",
        _table(["stage", "s"], [[k, str(v)] for k, v in run["timings_s"].items()]),
        "",
    ]
    return "\n".join(parts)


def _md_to_html(text: str, title: str) -> str:
    """A small converter for the Markdown this module writes: headings, tables, images, paragraphs."""
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
    ]
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        line = lines[n]
        if line.startswith("|"):
            rows = []
            while n < len(lines) and lines[n].startswith("|"):
                if not lines[n].startswith("|---"):
                    rows.append([c.strip() for c in lines[n].strip("|").split("|")])
                n += 1
            out.append("<table>")
            for r, cells in enumerate(rows):
                tag = "th" if r == 0 else "td"
                out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            out.append("</table>")
            continue
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            out.append(f"<p><img src='{html.escape(src)}' alt='{html.escape(src)}'></p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('`', '')}</p>")
        n += 1
    out.append("</body></html>")
    return "\n".join(out)


def write(result: EvalResult, out: Path, title: str = "insession evaluation") -> dict[str, Path]:
    """Write every output file into ``out`` (created if missing); returns what was written, by role."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(result.metrics, indent=2, sort_keys=False) + "\n")
    written["metrics"] = metrics_path
    run: dict[str, Any] = {**result.run, "by_session_length": result.by_length, "by_position": result.by_position}
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    written["run"] = out / "run.json"
    plots = []
    for which, label in (("length", "session length"), ("position", "position in session")):
        name = f"by_{which}.png"
        if _plot(result, which, label, out / name):
            plots.append(name)
            written[f"plot_{which}"] = out / name
    if result.run.get("churn_curve") and _plot_churn(result.run["churn_curve"], out / "churn.png"):
        plots.append("churn.png")
        written["plot_churn"] = out / "churn.png"
    text = markdown(result, plots, title)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_md_to_html(text, title))
    written["report_md"] = out / "report.md"
    written["report_html"] = out / "report.html"
    return written
