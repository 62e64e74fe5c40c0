"""The queue's pure parts: sweeps, GPU slots and the SQLite store (order, moves, removals,
adds from several processes at once)."""

from __future__ import annotations

import multiprocessing

import pytest

from loradeck.engine.enums import QueueState
from loradeck.engine.errors import LoradeckError
from loradeck.engine.queue import slots, sweep
from loradeck.engine.queue.store import QueueStore


def test_sweeps_give_the_cartesian_product_and_names_that_say_their_values():
    swept = sweep.parse(["training.learning_rate=1e-4,2e-4", "lora.r=8,16"])
    combos = sweep.combinations(swept)
    assert combos == [{"training.learning_rate": "1e-4", "lora.r": "8"},
                      {"training.learning_rate": "1e-4", "lora.r": "16"},
                      {"training.learning_rate": "2e-4", "lora.r": "8"},
                      {"training.learning_rate": "2e-4", "lora.r": "16"}]
    assert sweep.run_name("demo-tiny", combos[1]) == "demo-tiny-learning_rate-1e-4-r-16"
    assert sweep.combinations([]) == [{}]
    for bad in (["lr"], ["lr="], ["=1,2"]):
        with pytest.raises(LoradeckError, match="is not KEY=V1,V2"):
            sweep.parse(bad)
    with pytest.raises(LoradeckError, match="twice"):
        sweep.parse(["lora.r=8", "lora.r=16"])


def test_gpu_slots_one_run_per_gpu_set_and_one_at_a_time_without_gpus():
    gpus = ["0", "1", "2", "3"]
    assert slots.assign(gpus, [], 2, 0) == ["0", "1"]
    assert slots.assign(gpus, [["0", "1"]], 2, 1) == ["2", "3"]
    assert slots.assign(gpus, [["0", "1"], ["2", "3"]], 2, 2) is None  # never shared
    assert slots.assign(gpus, [["2", "3"]], 2, 1) == ["0", "1"]
    assert slots.assign(gpus, [], "all", 0) == gpus
    assert slots.assign(gpus, [["1"]], "all", 1) is None
    assert slots.assign(gpus, [], 8, 0) == gpus  # more than there are: all of them
    assert slots.assign([], [], "all", 0) == [] and slots.assign([], [[]], 1, 1) is None


def test_the_store_keeps_order_moves_and_removes(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    store.add(["a", "b", "c"])
    store.add(["d"], sweep="s", values=[{"lora.r": "8"}])
    assert [e.run_id for e in store.entries()] == ["a", "b", "c", "d"]
    assert store.get("d").sweep == "s" and store.get("d").sweep_values == {"lora.r": "8"}
    store.move("d", 1)
    assert [e.run_id for e in store.entries()] == ["d", "a", "b", "c"]
    store.move("a", 99)
    assert [e.run_id for e in store.entries()] == ["d", "b", "c", "a"]
    assert store.claim_next().run_id == "d"
    assert store.get("d").state == QueueState.STARTING
    with pytest.raises(LoradeckError, match="not waiting"):
        store.cancel("d")
    store.cancel("b")
    assert store.get("b").state == QueueState.CANCELLED and store.get("b").ended
    with pytest.raises(LoradeckError, match="no entry"):
        store.move("zz", 1)
    store.set_flag("stopped", "1")
    assert store.flag("stopped") == "1"
    store.set_flag("stopped", None)
    assert store.flag("stopped") is None


def _add_many(path: str, prefix: str) -> None:
    store = QueueStore(__import__("pathlib").Path(path))
    for i in range(20):
        store.add([f"{prefix}{i}"])


def test_adds_from_several_processes_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    QueueStore(tmp_path / "q.sqlite3")
    procs = [multiprocessing.get_context("spawn").Process(target=_add_many, args=(path, p))
             for p in "xyz"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    ids = [e.run_id for e in QueueStore(tmp_path / "q.sqlite3").entries()]
    assert sorted(ids) == sorted(f"{p}{i}" for p in "xyz" for i in range(20))
    assert len({e.position for e in QueueStore(tmp_path / "q.sqlite3").entries()}) == 60
