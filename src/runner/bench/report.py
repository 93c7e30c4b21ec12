"""Benchmark output: machine description, JSON file, PNG plot (matplotlib, Agg) and the
short terminal table, with side-by-side ratios when two servers were measured."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """Platform, CPU, RAM, GPUs (nvidia-smi, when present) and llama-cpp-python's version."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import psutil

        info["cpu_count_physical"] = psutil.cpu_count(logical=False)
        info["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    for dist in ("llama-cpp-python", "runner"):
        try:
            info[dist.replace("-", "_") + "_version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist.replace("-", "_") + "_version"] = None
    info["gpus"] = _nvidia_gpus()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _nvidia_gpus() -> list[dict[str, str]]:
    if not shutil.which("nvidia-smi"):
        return []
    fields = "name,memory.total,driver_version,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = fields.split(",")
    return [
        dict(zip(keys, (c.strip() for c in line.split(",")), strict=False))
        for line in out.splitlines()
        if line.strip()
    ]


def ratios(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """First server's summary figures over the second's (None unless exactly two runs)."""
    if len(runs) != 2:
        return None
    a, b = runs[0]["summary"], runs[1]["summary"]
    return {
        key: a[key] / b[key]
        for key in a
        if isinstance(a[key], int | float) and isinstance(b.get(key), int | float) and b[key]
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ----- terminal table ------------------------------------------------------------------------


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        return f"{100 * value:.1f}%"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def table(workload: str, run: dict[str, Any]) -> str:
    """A few lines summing up one server's run."""
    s = run["summary"]
    if workload == "cache":
        keys = ("prompt_ms", "cache_n", "prompt_n", "ttft_ms")
        rows = [["", "prompt_ms", "cache_n", "prompt_n", "TTFT ms"]]
        rows += [[kind, *(_fmt(s[f"{kind}_{k}"]) for k in keys)] for kind in ("cold", "cached")]
        tail = (
            f"prompt speedup {_fmt(s['prompt_speedup'])}x (TTFT {_fmt(s['ttft_speedup'])}x), "
            f"system prompt ~{_fmt(s['prompt_tokens'])} tokens"
        )
        return _grid(rows) + "\n" + tail
    if workload == "concurrency":
        rows = [
            [
                "streams",
                "tok/s",
                "TTFT p50 ms",
                "TTFT p95 ms",
                "stream tok/s",
                "errors",
                "outside decode",
                "ubatches/step",
                "engine ms/step",
            ]
        ]
        for lv in run["levels"]:
            engine = lv["engine"] or {}
            rows.append(
                [
                    str(lv["concurrency"]),
                    _fmt(lv["throughput_tps"]),
                    _fmt(lv["ttft_p50_ms"]),
                    _fmt(lv["ttft_p95_ms"]),
                    _fmt(lv["stream_tps_mean"]),
                    str(lv["errors"]),
                    _fmt(engine.get("outside_decode_share"), pct=True),
                    _fmt(engine.get("ubatches_per_step")),
                    _fmt(engine.get("outside_ms_per_step")),
                ]
            )
        return _grid(rows)
    if workload == "spec":
        from .spec import table_rows

        hashes = ", ".join(run.get("copy_outputs", []))
        return _grid(table_rows(run)) + f"\ncopy output sha256: {hashes}"
    rows = [["turn", "prompt tokens", "computed", "reused", "reused %", "TTFT p50 ms", "errors"]]
    for t in run["turns"]:
        rows.append(
            [
                str(t["turn"]),
                str(t["prompt_tokens"]),
                str(t["computed"]),
                str(t["reused"]),
                _fmt(t["reused_share"], pct=True),
                _fmt(t["ttft_p50_ms"]),
                str(t["errors"]),
            ]
        )
    return _grid(rows)


def ratio_table(found: dict[str, float]) -> str:
    rows = [["figure", "A / B"]] + [[k, f"{v:.2f}"] for k, v in found.items()]
    return _grid(rows)


# ----- plot ----------------------------------------------------------------------------------


def plot(workload: str, runs: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Write a PNG; None when matplotlib is missing (`pip install runner[bench]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [r["label"] for r in runs]
    if workload == "concurrency":
        for run, label in zip(runs, labels, strict=True):
            xs = [lv["concurrency"] for lv in run["levels"]]
            axes[0].plot(xs, [lv["throughput_tps"] for lv in run["levels"]], "o-", label=label)
            p50 = [lv["ttft_p50_ms"] for lv in run["levels"]]
            p95 = [lv["ttft_p95_ms"] for lv in run["levels"]]
            line = axes[1].plot(xs, p50, "o-", label=f"{label} p50")[0]
            axes[1].plot(xs, p95, "s--", color=line.get_color(), label=f"{label} p95")
        levels = sorted({lv["concurrency"] for run in runs for lv in run["levels"]})
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(n) for n in levels])
            ax.set_xlabel("concurrent streams")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("aggregate output tokens/s")
        axes[0].set_ylim(bottom=0)
        axes[1].set_ylabel("time to first token (ms)")
    elif workload == "cache":
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            s = run["summary"]
            xs = [j + i * width for j in range(2)]
            axes[0].bar(
                xs, [s["cold_prompt_ms"] or 0, s["cached_prompt_ms"] or 0], width, label=labels[i]
            )
            axes[1].bar(
                xs, [s["cold_ttft_ms"] or 0, s["cached_ttft_ms"] or 0], width, label=labels[i]
            )
        for ax, ylabel in zip(
            axes, ("prompt_ms (server timings)", "TTFT ms (client)"), strict=True
        ):
            ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(2)], ["cold", "cached"])
            ax.set_ylabel(ylabel)
    elif workload == "spec":
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            s = run["summary"]
            xs = [j + i * width for j in range(2)]
            tps = [s["copy_decode_tps"] or 0, s["chat_decode_tps"] or 0]
            color = f"C{i}"
            axes[0].bar(xs, tps, width, color=color, label=labels[i])
            drafted = [s["copy_draft_n"] or 0, s["chat_draft_n"] or 0]
            kept = [s["copy_draft_accepted"] or 0, s["chat_draft_accepted"] or 0]
            axes[1].bar(xs, drafted, width, color=color, alpha=0.35, label=f"{labels[i]} drafted")
            axes[1].bar(xs, kept, width, color=color, label=f"{labels[i]} accepted")
        for ax, ylabel in zip(
            axes, ("decode tokens/s (server timings)", "draft tokens per request"), strict=True
        ):
            ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(2)], ["copy", "chat"])
            ax.set_ylabel(ylabel)
    else:
        width = 0.8 / len(runs)
        for i, run in enumerate(runs):
            xs = [t["turn"] + i * width for t in run["turns"]]
            computed = [t["computed"] for t in run["turns"]]
            reused = [t["reused"] for t in run["turns"]]
            axes[0].bar(xs, computed, width, label=f"{labels[i]} computed")
            axes[0].bar(xs, reused, width, bottom=computed, alpha=0.5, label=f"{labels[i]} reused")
            axes[1].plot(
                [t["turn"] for t in run["turns"]],
                [t["ttft_p50_ms"] for t in run["turns"]],
                "o-",
                label=labels[i],
            )
        turns = [t["turn"] for t in runs[0]["turns"]]
        for ax in axes:
            ax.set_xticks(turns)
        axes[0].set_xlabel("turn")
        axes[0].set_ylabel("prompt tokens (all users)")
        axes[1].set_xlabel("turn")
        axes[1].set_ylabel("TTFT p50 ms")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
