"""The shape of the code that the layout promises: workers report through typed messages,
class names say one thing each, and the hooks into Textual stay in their one module."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("engine", "tui", "themes")


def _modules(*folders: str) -> list[tuple[Path, ast.Module]]:
    paths = [p for f in folders for p in ([ROOT / f] if f.endswith(".py")
                                          else sorted((ROOT / f).rglob("*.py")))]
    return [(path, ast.parse(path.read_text())) for path in paths]


def test_class_names_are_unique_and_none_is_called_worker():
    seen: dict[str, list[str]] = defaultdict(list)
    for path, tree in _modules(*PACKAGES):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                seen[node.name].append(str(path.relative_to(ROOT)))
    assert "Worker" not in seen, seen.get("Worker")
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


def test_screen_workers_are_declared_with_group_and_description():
    """Every worker of a screen is a ``@work(exclusive=True, group=..., description=...)``
    method: none is started by name with run_worker and matched on its name later."""
    problems = []
    for path, tree in _modules("tui"):
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "run_worker":
                problems.append(f"{where}:{node.lineno}: run_worker")
            if isinstance(node, ast.Attribute) and node.attr == "name" and isinstance(
                    node.value, ast.Name) and node.value.id == "worker":
                problems.append(f"{where}:{node.lineno}: matches a worker by name")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "work":
                    keys = {k.arg for k in deco.keywords}
                    missing = {"exclusive", "group", "description"} - keys
                    if missing:
                        problems.append(f"{where}:{node.lineno}: {node.name} lacks {missing}")
    assert not problems, "\n".join(problems)


def test_no_hand_kept_generation_counters():
    found = [f"{p.relative_to(ROOT)}" for p, _ in _modules("tui")
             if "_generation" in p.read_text()]
    assert found == []


def test_train_and_runs_screens_report_through_messages():
    from textual.message import Message

    from loradeck.tui.screens.model import ModelScreen
    from loradeck.tui.screens.runs import RunsScreen
    from loradeck.tui.screens.train import TrainScreen

    for screen, names in ((TrainScreen, ("Polled", "PollFailed", "JobChanged")),
                          (RunsScreen, ("Collected", "ActionDone")),
                          (ModelScreen, ("Scanned", "Described"))):
        for name in names:
            assert issubclass(getattr(screen, name), Message), (screen.__name__, name)


def _threaded_workers(tree: ast.Module):
    """``@work(thread=True, ...)`` methods: they run off the UI thread (async workers run on
    its event loop, between its other tasks)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "work" \
                        and any(k.arg == "thread" and getattr(k.value, "value", False)
                                for k in deco.keywords):
                    yield node


def _self_target(target: ast.AST) -> bool:
    """``self.x = ...``, ``self.x[k] = ...``: state of the screen, written."""
    while isinstance(target, (ast.Subscript, ast.Attribute)):
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                and target.value.id == "self":
            return True
        target = target.value
    return False


def test_every_screen_changes_state_in_handlers_never_in_workers():
    """Workers return data through typed messages; the ``@on`` handlers change state. No
    screen reads ``worker.result``, and no thread worker assigns to the screen or its dicts
    (nor folds events into them)."""
    problems = []
    for path, tree in _modules("tui/screens", "tui/app.py"):
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "result" and (
                    getattr(node.value, "id", "") == "worker"
                    or getattr(node.value, "attr", "") == "worker"):
                problems.append(f"{where}:{node.lineno}: reads worker.result")
        for fn in _threaded_workers(tree):
            for node in ast.walk(fn):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                if any(_self_target(t) for t in targets):
                    problems.append(f"{where}:{node.lineno}: {fn.name} writes the screen's "
                                    "state from its worker")
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                        "feed", "fold"):
                    problems.append(f"{where}:{node.lineno}: {fn.name} folds from its worker")
    assert not problems, "\n".join(problems)


def test_one_module_per_command_each_a_class_and_cli_only_loops():
    import importlib

    from loradeck.engine.enums import GGUFType, values
    from loradeck.engine.serve import params as chat_params
    from loradeck.tui import cli
    from loradeck.tui.commands.base import Command

    modules = sorted(p.stem for p in (ROOT / "tui" / "commands").glob("*.py")
                     if p.stem not in ("__init__", "base"))
    assert sorted([*cli.COMMANDS, "app"]) == modules
    for name in modules:
        command = importlib.import_module(f"loradeck.tui.commands.{name}").COMMAND
        assert isinstance(command, Command) and command.name == name, name
        assert type(command).run is not Command.run, name
    # nothing in cli.py names a command's flags: it only loops over the commands
    tree = ast.parse((ROOT / "tui" / "cli.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", "") in ("add_parser", "add_argument")]
    assert all(getattr(c.args[0], "value", "").startswith("--") for c in calls
               if c.func.attr == "add_argument"), "cli.py adds a command's arguments"
    assert not [c for c in calls if c.func.attr == "add_parser"]
    parser = cli.build_parser()
    chat = parser._subparsers._group_actions[0].choices["chat"]  # argparse's own tables
    flags = {a.dest for a in chat._actions}
    assert set(chat_params.FIELDS) <= flags  # the sampling flags are ChatParams' fields
    export = parser._subparsers._group_actions[0].choices["export"]
    quant = next(a for a in export._actions if a.dest == "quant")
    assert all(q in quant.help for q in values(GGUFType))


def test_tests_are_grouped_by_kind_and_share_helpers_not_each_other():
    tests = ROOT / "tests"
    loose = sorted(p.name for p in tests.glob("test_*.py"))
    assert loose == [], f"test modules outside unit/, app/ and e2e/: {loose}"
    kinds = {p.relative_to(tests).parts[0] for p in tests.rglob("test_*.py")}
    assert kinds == {"unit", "app", "e2e"}, kinds
    imports = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, tree in _modules("tests")
               for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").split(".")[-1].startswith("test_")]
    assert imports == [], "test modules import from each other: " + ", ".join(imports)


def test_one_snapshot_module_per_screen():
    from loradeck.tui.app import SCREENS

    snapshots = ROOT / "tests" / "app" / "snapshots"
    elsewhere = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                 if "snap_compare(" in p.read_text() and p.parent != snapshots
                 and p.name != "test_architecture.py"]
    assert elsewhere == [], elsewhere
    for name, _key, _title in SCREENS:
        module = snapshots / f"test_{name}_screen.py"
        assert module.is_file() and "snap_compare" in module.read_text(), module
