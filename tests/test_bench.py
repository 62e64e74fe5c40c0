"""The benchmark scripts: each one's CPU quick mode runs (at a tiny size) and writes its result.

Sizes are cut to the minimum (one repeat, two or three steps, a few keystrokes) and the pieces
that need no process of their own run in this one, so the file stays well under a minute of
work; the figures themselves are not judged here, only that they are there and sane.
"""

from __future__ import annotations

import json

import pytest

from bench import app_bench, chat_bench, overhead_bench, train_bench, workload

pytestmark = pytest.mark.slow


def _read(path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["machine"]["cpu"] and data["machine"]["versions"]["trl"]
    assert data["command"].startswith("python -m bench.")
    assert len(data["load_avg_end"]) == 3
    return data


def test_train_bench_quick_compares_notebook_and_loradeck(tmp_path, demo_model):
    out = tmp_path / "train.json"
    assert train_bench.main(["--mode", "quick", "--inline", "--repeats", "1", "--steps", "3",
                             "--warmup", "1", "--rows", "24", "--accum", "1",
                             "--arms", "notebook,loradeck,notebook+padding_free",
                             "--out", str(out)]) == 0
    data = _read(out)
    shape = data["shapes"]["demo:tiny"]
    for arm in ("notebook", "loradeck", "notebook+padding_free"):
        agg = shape["arms"][arm]
        assert agg["failed"] == []
        assert agg["tokens_per_second"]["median"] > 0
        assert agg["padded_tokens_per_second"]["median"] >= agg["tokens_per_second"]["median"]
        assert agg["peak_memory_gb"]["median"] > 0
        assert 0 < agg["mfu"]["median"] < 1
    # padding-free batches compute no pad position; the padded notebook batches do
    assert shape["arms"]["notebook+padding_free"]["pad_share"]["median"] == 0
    assert shape["arms"]["notebook"]["pad_share"]["median"] > 0
    base = shape["vs_notebook"]["notebook"]
    assert (base["speedup"], base["memory_ratio"]) == (1.0, 1.0)
    assert shape["vs_notebook"]["loradeck"]["speedup"] > 0
    assert data["peak_tflops"] > 0


def test_synthetic_rows_have_the_wide_length_spread(demo_model):
    from transformers import AutoTokenizer

    from bench.notebook_recipe import format_row

    tok = AutoTokenizer.from_pretrained(str(demo_model))
    rows = workload.synthetic_rows(300, tok, seed=3)
    assert rows == workload.synthetic_rows(300, tok, seed=3)  # deterministic
    lengths = [len(x) for x in tok([format_row(r, tok.eos_token) for r in rows])["input_ids"]]
    stats = workload.length_stats(lengths)
    assert stats["p90"] > 2 * stats["median"] and stats["median"] > 1.5 * stats["p10"]
    assert stats["padding_share"] > 0.3
    assert sum(1 for r in rows if r["context"]) < len(rows) / 2


def test_chat_bench_quick_worker_against_plain(tmp_path, demo_model):
    out = tmp_path / "chat.json"
    assert chat_bench.main(["--mode", "quick", "--inline", "--repeats", "2", "--new-tokens", "8",
                            "--arms", "worker-merged,plain-merged,plain-adapter",
                            "--out", str(out)]) == 0
    data = _read(out)
    assert data["setup"]["merge_check"].startswith("check:")  # engine.merge checked its result
    for arm in ("worker-merged", "plain-merged", "plain-adapter"):
        agg = data["arms"][arm]
        assert "error" not in agg, agg
        assert agg["ttft_s"]["median"] > 0
        assert agg["tokens_per_second"]["median"] > 0
        assert agg["tokens"] == [8, 8]
    assert data["compare"]["merged: worker/plain tokens_per_second"] > 0


def test_app_bench_quick_first_frame_and_latency(tmp_path):
    out = tmp_path / "app.json"
    assert app_bench.main(["--first-frame-runs", "1", "--typed", "4", "--switches", "1",
                           "--f1", "2", "--inline", "--out", str(out)]) == 0
    data = _read(out)
    ff = data["first_frame"]
    assert ff["loradeck"]["median"] > 0 and ff["bare"]["median"] > 0 and ff["ratio"] > 0
    lat = data["latency"]["loradeck"]
    for key in ("typing_under_load", "switch_screens_under_load", "f1_on_train_under_load"):
        assert lat[key]["missed"] == 0 and lat[key]["p50_ms"] > 0, (key, lat[key])
    assert lat["load"]["train_log_lines_after_1_5_s"] > 500  # the Train log really floods
    assert lat["load"]["reply_chars_per_second_seen"] > 0   # and the chat really streams
    assert data["latency"]["bare"]["idle_typing"]["missed"] == 0


def test_stream_worker_speaks_the_chat_protocol():
    import io

    from bench.stream_worker import StreamWorker

    out = io.StringIO()
    worker = StreamWorker(rate=2000, out=out)
    worker.run(io.StringIO('{"type": "load", "id": "load", "model": "x"}\n'))
    worker.stream("g1", 5)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert replies[0]["type"] == "loaded"
    assert [r["type"] for r in replies[1:]] == ["token"] * 5 + ["done"]
    assert replies[-1]["tokens"] == 5 and replies[-1]["id"] == "g1"


def test_overhead_bench_quick_runs_loradeck_and_plain(tmp_path, demo_model):
    out = tmp_path / "overhead.json"
    assert overhead_bench.main(["--mode", "quick", "--inline", "--repeats", "1", "--steps", "2",
                                "--rows", "16", "--quant", "none", "--set", "training.batch_size=2",
                                "--set", "training.grad_accum=1", "--out", str(out)]) == 0
    data = _read(out)
    for arm in ("loradeck", "plain"):
        assert data["arms"][arm]["failed"] == []
        assert data["arms"][arm]["train_runtime_s"]["median"] > 0
    assert data["raw"]["loradeck"][0]["steps"] == data["raw"]["plain"][0]["steps"] == 2
    assert data["overhead"]["train_loop_ratio"] > 0
