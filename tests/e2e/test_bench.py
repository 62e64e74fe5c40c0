"""The benchmark scripts: each one's CPU quick mode runs (at a tiny size) and writes its result.

Sizes are cut to the minimum (one repeat, two or three steps, a few keystrokes) and the pieces
that need no process of their own run in this one, so the file stays well under a minute of
work; the figures themselves are not judged here, only that they are there and sane.
"""

from __future__ import annotations

import json
import shutil

import pytest

from bench import (
    app_bench,
    chat_bench,
    common,
    dpo_bench,
    overhead_bench,
    report,
    train_bench,
    workload,
)

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
    assert "partial" not in data  # a finished series
    # loradeck's memory estimate for the same config rides along, to set against a GPU's peak
    est = shape["arms"]["loradeck"]["estimate"]
    assert est["total_gb"] > 0 and est["trainable_params"] > 0
    assert shape["arms"]["notebook"]["estimate"] is None


def test_train_bench_writes_what_it_measured_after_every_run(tmp_path, monkeypatch):
    """A series cut short (a GPU lease's time limit) keeps the runs it finished."""
    out = tmp_path / "train.json"
    done: list[str] = []

    def one(a, arm, shape):
        if len(done) == 3:
            raise KeyboardInterrupt  # the series is stopped during its fourth run
        done.append(arm)
        return {"arm": arm, "tokens_per_second": 100.0 * len(done), "rows_per_second": 1.0,
                "peak_memory_gb": 1.0, "pad_share": 0.0, "matmul_params": 10}

    monkeypatch.setattr(train_bench, "one", one)
    with pytest.raises(KeyboardInterrupt):
        train_bench.main(["--mode", "quick", "--inline", "--repeats", "2", "--peak-tflops", "1",
                          "--arms", "notebook,loradeck", "--out", str(out)])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["partial"] is True
    arms = data["shapes"]["demo:tiny"]["arms"]
    assert (arms["notebook"]["runs"], arms["loradeck"]["runs"]) == (2, 1)
    assert arms["notebook"]["tokens_per_second"]["median"] == 200.0  # runs 1 and 3
    assert data["shapes"]["demo:tiny"]["vs_notebook"]["loradeck"]["speedup"] == 1.0
    assert "**partial**" in report.render(out)


def test_report_sets_the_memory_estimate_beside_the_measured_gpu_peak():
    est = {"weights_gb": 4.1, "lora_gb": 0.2, "activations_gb": 2.5, "logits_gb": 0.3,
           "context_gb": 0.75, "overhead_gb": 0.4, "total_gb": 8.25}
    arms = {"notebook": {"estimate": None, "peak_memory_gb": {"median": 9.0}},
            "loradeck": {"estimate": est, "peak_memory_gb": {"median": 7.5},
                         "peak_reserved_gb": {"median": 8.0}}}
    lines = "".join(report.estimate_lines(arms, "cuda"))
    assert "- loradeck: `loradeck estimate` 8.25 GB" in lines
    assert "measured peak allocated 7.50 GB, reserved 8.00 GB" in lines
    assert "notebook" not in lines
    assert report.estimate_lines(arms, "cpu") == []  # a CPU's resident set is no GPU peak


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
    assert data["setup"]["merge_check"].startswith("check:")  # loradeck.engine.publish.merge checked its result
    for arm in ("worker-merged", "plain-merged", "plain-adapter"):
        agg = data["arms"][arm]
        assert "error" not in agg, agg
        assert agg["ttft_s"]["median"] > 0
        assert agg["tokens_per_second"]["median"] > 0
        assert agg["tokens"] == [8, 8]
    assert data["compare"]["merged: worker/plain tokens_per_second"] > 0


def test_gguf_bench_quick_measures_export_and_the_chat_worker(tmp_path, demo_model):
    from bench import gguf_bench

    out = tmp_path / "gguf.json"
    assert gguf_bench.main(["--quick", "--out", str(out)]) == 0
    data = _read(out)
    assert [row["type"] for row in data["export"]] == ["f16", "q8_0"]
    assert all(row["loradeck_s"] > 0 and row["loradeck_bytes"] > 0 for row in data["export"])
    assert data["anchor"] is None  # no converter given: loradeck's side alone, and it says so
    chat = data["chat"]
    assert chat["worker_tokens"] == chat["plain_tokens"] == 16 and chat["ratio"] > 0


def test_app_bench_quick_first_frame_and_latency(tmp_path):
    out = tmp_path / "app.json"
    assert app_bench.main(["--first-frame-runs", "1", "--typed", "4", "--switches", "1",
                           "--f1", "2", "--inline", "--out", str(out)]) == 0
    data = _read(out)
    ff = data["first_frame"]
    assert ff["loradeck"]["median"] > 0 and ff["bare"]["median"] > 0 and ff["ratio"] > 0
    assert ff["settled_ratio"] >= ff["ratio"]
    parts = [row["part"] for row in ff["parts"]]  # where the first frame's time goes
    assert parts[0] == "spawn -> cli imported" and "app mounted -> first frame" in parts
    assert "arguments parsed -> textual imported" in parts
    lat = data["latency"]["loradeck"]
    # the figures are reported, not judged here: a loaded machine misses keys (docs/benchmarks.md)
    for key in ("typing_under_load", "switch_screens_under_load", "f1_on_train_under_load"):
        _latency_reported(lat[key])
    assert lat["load"]["train_log_lines_after_1_5_s"] > 500  # the Train log really floods
    assert lat["load"]["reply_chars_per_second_seen"] > 0   # and the chat really streams
    _latency_reported(data["latency"]["bare"]["idle_typing"])


def _latency_reported(summary: dict) -> None:
    """A latency summary with its counts and figures (whatever they are on this machine)."""
    assert summary["n"] > 0 and 0 <= summary["missed"] <= summary["n"], summary
    assert len(summary["values_ms"]) == summary["n"] - summary["missed"], summary
    if summary["values_ms"]:
        assert 0 < summary["p50_ms"] <= summary["max_ms"], summary


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


def test_dpo_bench_quick_runs_loradeck_and_plain_trl(tmp_path, demo_model):
    out = tmp_path / "dpo.json"
    assert dpo_bench.main(["--mode", "quick", "--repeats", "1", "--steps", "2", "--rows", "16",
                           "--out", str(out)]) == 0
    data = _read(out)
    for arm in ("loradeck", "plain"):
        raw = data["raw"][arm][0]
        assert "error" not in raw, raw
        assert raw["steps"] == 2 and raw["train_runtime_s"] > 0 and raw["peak_memory_gb"] > 0
        assert raw["tokens_per_second"] > 0
    assert data["ratios"]["tokens_per_second"] > 0 and data["ratios"]["peak_memory"] > 0


@pytest.mark.skipif(not (shutil.which("npm") and shutil.which("chromium")
                         and shutil.which("chromedriver")),
                    reason="npm, chromium and chromium-driver are needed")
def test_web_bench_times_the_page_against_loradeck_chat(tmp_path):
    from bench import web_bench
    from tests.helpers.web import wllama_or_skip

    wllama_or_skip()
    out = tmp_path / "web.json"
    assert web_bench.main(["--repeats", "1", "--max-tokens", "4", "--out", str(out)]) == 0
    data = _read(out)
    web, chat = data["raw"]["web"][0], data["raw"]["chat"][0]
    assert web["load_s"] > 0 and web["to_first_token_s"] > web["load_s"]
    assert chat["ttft_s"] is not None and chat["to_first_token_s"] > 0
    assert data["ratios"]["to_first_token_s"] > 0


def test_gpu_series_script_checks_the_libraries_and_keeps_to_its_budget(tmp_path):
    """bench/gpu_run.sh (the one command a GPU lease runs), dry and with no time left: it
    loads every library the series needs, then skips each step rather than overrun."""
    import os
    import subprocess

    env = dict(os.environ, GPU_RUN_DRY="1", GPU_RUN_BUDGET="0", OUT=str(tmp_path))
    proc = subprocess.run(["bash", str(common.ROOT / "bench" / "gpu_run.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "gpu_run.log").read_text()
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets",
                 "loradeck.engine.config"):
        assert f"\n{name} " in log
    assert log.count(": skipped, 0s left of the budget") == 3
    assert "results: none" in log
    assert (tmp_path / "nvidia-smi.txt").is_file()


@pytest.mark.xdist_group("qalora-bench")
def test_qalora_bench_quick_carries_two_arms_to_gguf_and_compares_them(tmp_path, demo_model):
    from bench import qalora_bench

    out = tmp_path / "qalora.json"
    assert qalora_bench.main(["--quick", "--out", str(out)]) == 0
    model = _read(out)["models"][0]
    a, b = model["arms"]["a_qalora_g32"], model["arms"]["b_qlora_nf4"]
    assert a["deployed"]["q4_1"]["exact_int4"] and not b["deployed"]["q4_1"]["exact_int4"]
    assert set(b["deployed"]) == {"q4_1", "q4_k_m"}
    for arm in (a, b):
        assert arm["eval_loss_trained"] > 0 and arm["training"]["tokens_per_second"] > 0
        assert arm["training"]["peak_memory_gb"] > 0
    targets = model["targets"]
    assert {"gap_target_met", "loss_target_met", "memory_ratio", "speed_ratio"} <= set(targets)


def test_prep_bench_quick_prepares_the_same_rows_both_ways(tmp_path, demo_model):
    from bench import prep_bench

    out = tmp_path / "prep.json"
    assert prep_bench.main(["--quick", "--rows", "3000", "--out", str(out)]) == 0
    data = _read(out)
    for arm in prep_bench.ARMS:
        assert data[arm]["rows"] == 3000 and data[arm]["seconds"] > 0, data[arm]
        assert data[arm]["peak_rss_gb"] > 0
    assert data["time_ratio"] > 0 and data["peak_rss_ratio"] > 0


def test_api_bench_quick_times_the_endpoint_against_chat(tmp_path, demo_model):
    from bench import api_bench

    out = tmp_path / "api.json"
    assert api_bench.main(["--new-tokens", "4", "--repeats", "1", "--concurrent", "2",
                           "--out", str(out)]) == 0
    data = _read(out)
    gguf = data["backends"]["llama.cpp"]
    assert gguf["endpoint_over_chat"]["ttft"] > 0
    assert gguf["endpoint"]["at_once"]["tokens"] == 2 * 4  # each request its whole answer
    hf = data["backends"]["transformers"]
    assert hf["endpoint"]["one_after_another"]["wall_s"] > 0
    assert "endpoint_continuous_batching" in hf  # its figures, or the error it met


def test_eval_bench_quick_times_batched_against_one_at_a_time(tmp_path, demo_model):
    from bench import eval_bench

    out = tmp_path / "eval.json"
    assert eval_bench.main(["--rows", "4", "--new-tokens", "4", "--batch-size", "2",
                            "--repeats", "1", "--out", str(out)]) == 0
    data = _read(out)
    figs = data["figures"]
    assert figs["batched"]["rows_per_s"]["median"] > 0
    assert figs["one_at_a_time"]["rows_per_s"]["median"] > 0
    assert figs["batched"]["answer_tokens"] == figs["one_at_a_time"]["answer_tokens"]
    assert figs["batched_over_one_at_a_time"] > 0
    assert data["settings"]["batch_size"] == 2 and data["machine"]["versions"]["torch"]
