"""`runner bench spec` without a server: its workload text, table and plot."""

from __future__ import annotations

import ast
from pathlib import Path

from runner.bench import report
from runner.bench.spec import copy_messages, module_source, table_rows
from runner.bench.workloads import Plan


def _run(label: str, copy_tps: float, drafted: float | None) -> dict:
    summary = {
        f"{kind}_{key}": value
        for kind in ("copy", "chat")
        for key, value in (
            ("decode_tps", copy_tps),
            ("stream_tps", copy_tps),
            ("draft_n", drafted),
            ("draft_accepted", drafted),
        )
    }
    return {"label": label, "summary": summary, "copy_outputs": ["abc"]}


def test_copy_prompt_is_a_valid_module_of_25_distinct_functions() -> None:
    tree = ast.parse(module_source())
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert len(names) == len(set(names)) == 25
    assert module_source() in copy_messages()[0]["content"]
    assert Plan(repeats=3).requests("spec") == 6 and Plan().tokens("spec") == 200


def test_spec_report(tmp_path: Path) -> None:
    runs = [_run("with", 60.0, 180.0), _run("without", 40.0, None)]
    text = report.table("spec", runs[0])
    assert "copy" in text and "60.0" in text and "abc" in text
    assert table_rows(runs[1])[1][3] == "-"  # a server that reports no draft counts
    assert report.ratios(runs)["copy_decode_tps"] == 1.5
    png = report.plot("spec", runs, tmp_path / "spec.png", "spec")
    assert png is None or png.stat().st_size > 0
