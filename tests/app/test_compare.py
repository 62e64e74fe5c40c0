"""Runs side by side: ``loradeck compare`` (a plotext chart, the config keys that differ, the
figures; --json for scripts) and the Runs screen's marks and Compare screen."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import run_cli
from tests.helpers.app import small_demo_config, wait_for
from tests.helpers.snapshots import (  # noqa: F401  (fixtures)
    two_runs,
)


def test_compare_prints_a_chart_the_config_differences_and_the_figures(loradeck_home):
    two_runs(loradeck_home)
    env = {"LORADECK_HOME": str(loradeck_home), "COLUMNS": "100"}
    r = run_cli(["compare", "run-a", "run-b"], env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "run-a-r8 train" in out and "run-b-r16 train" in out  # the legend
    assert "run-a-r8 train · ● eval" in out and "step" in out and "loss" in out  # eval, axes
    assert "\x1b[" not in out  # not a terminal: plain text
    diff = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith(("lora.", "training."))}
    assert diff == {"lora.r": ["8", "16"], "training.learning_rate": ["0.001", "0.002"]}
    final = next(line for line in out.splitlines() if line.startswith("final loss"))
    assert final.split()[2:] == ["2.7000", "2.2000"]
    assert "900" in next(line for line in out.splitlines() if line.startswith("tokens/s"))

    r = run_cli(["compare", "run-a", "run-b", "--json"], env=env)
    data = json.loads(r.stdout)
    assert [run["id"] for run in data["runs"]] == ["run-a-r8", "run-b-r16"]
    assert data["runs"][0]["train"][0] == [1, pytest.approx(6.6)]
    assert data["runs"][1]["final_loss"] == pytest.approx(2.2)
    assert data["config_diff"] == {"lora.r": [8, 16], "training.learning_rate": [0.001, 0.002]}

    r = run_cli(["compare", "run-a"], env=env)
    assert r.returncode == 2 and "compare needs two runs or more" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_runs_screen_marks_runs_and_compares_them(loradeck_home):
    from textual.widgets import DataTable
    from textual_plotext import PlotextPlot

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.compare import CompareScreen

    two_runs(loradeck_home)

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("r")
            runs = app.screen
            await wait_for(pilot, lambda: runs.loaded, 20, "the runs")
            assert runs.check_action("compare", ()) is None  # nothing marked yet
            await pilot.press("space", "down", "space")
            assert runs.marked == ["run-a-r8", "run-b-r16"]
            table = runs.query_one("#runs-table", DataTable)
            assert str(table.get_cell("run-a-r8", "run")).startswith("✓ ")
            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen)
                           and app.screen.data is not None, 20, "the comparison")
            screen = app.screen
            diff = screen.query_one("#compare-diff", DataTable)
            rows = [[str(c) for c in diff.get_row_at(i)] for i in range(diff.row_count)]
            assert ["lora.r", "8", "16"] in rows
            figures = screen.query_one("#compare-figures", DataTable)
            assert [str(c) for c in figures.get_row_at(0)] == ["final loss", "2.7000", "2.2000"]
            assert screen.query_one(PlotextPlot).plt is not None
            await pilot.press("escape")
            assert app.screen is runs

    asyncio.run(main())


