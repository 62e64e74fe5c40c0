"""Big data: files are read as streams, prepared into Arrow a chunk at a time with progress,
the eval split is capped, and a stop (or SIGTERM) during preparation ends the job as stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.prep_bench import write_rows
from loradeck.engine import config as cfg
from loradeck.engine.data import prep, readers
from loradeck.engine.runs.store import RunStore
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tok(demo_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".txt", ".parquet"])
def test_a_file_is_read_as_it_is_consumed(tmp_path, ext):
    """The first row comes before the file is read: the stream holds a buffer, not the file."""
    rows = [{"text": f"row number {i} " + "x" * 200} for i in range(20_000)]
    path = tmp_path / f"big{ext}"
    if ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif ext == ".csv":
        path.write_text("text\n" + "".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    elif ext == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    stream = readers.open_rows(str(path))
    first, where = next(stream.rows)
    assert first["text"].startswith("row number 0 ") and where in (f"{path}:1", f"{path}:2",
                                                                   f"{path} row 1")
    assert 0 < stream.read() < stream.size // 4, (stream.read(), stream.size)
    assert sum(1 for _ in stream.rows) == len(rows) - 1
    assert stream.read() >= stream.size * 0.99


def test_prepare_reports_progress_caps_the_eval_split_and_writes_arrow(tmp_path, tok,
                                                                       monkeypatch):
    monkeypatch.setattr(prep, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(prep, "READ_REPORT_ROWS", 1000)
    monkeypatch.setattr(prep, "PARALLEL_FROM", 2000)  # two processes on this set
    path = write_rows(tmp_path / "rows.jsonl", 3000)
    config = cfg.validate({"dataset": {"path": str(path), "eval_fraction": 0.2},
                           "eval": {"max_rows": 50}, "training": {"max_length": 64}})
    said: list[tuple[str, dict]] = []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prepared = prep.prepare(config, tok, run_dir=run_dir,
                            progress=lambda text, **fields: said.append((text, fields)))
    assert prepared.stats["rows"] == 3000 and prepared.stats["eval_rows"] == 50
    assert len(prepared.eval) == 50 and len(prepared.train) == 2950
    reads = [f for _, f in said if f.get("stage") == "read"]
    tokens = [f for _, f in said if f.get("stage") == "tokenize"]
    assert [f["prepared_rows"] for f in reads] == [1000, 2000, 3000]
    assert [f["prepared_rows"] for f in tokens] == [1000, 2000, 3000]
    assert said[0][0].startswith("preparing the data: read 1,000 rows (")
    assert "% of the file)" in said[0][0]
    assert any(p.suffix == ".arrow" for p in (run_dir / "data").rglob("*"))
    # the same rows, tokenized one at a time, give the same tokens and masks
    one = prep.prepare(config.model_copy(update={"training": config.training}), tok)
    assert one.train["input_ids"] == prepared.train["input_ids"]
    assert one.train["assistant_masks"] == prepared.train["assistant_masks"]


def test_a_stop_during_preparation_ends_it(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(prep, "READ_REPORT_ROWS", 500)
    path = write_rows(tmp_path / "rows.jsonl", 3000)
    config = cfg.validate({"dataset": {"path": str(path)}, "training": {"max_length": 64}})
    said: list[str] = []
    with pytest.raises(prep.PrepStopped):
        prep.prepare(config, tok, progress=lambda text, **_f: said.append(text),
                     should_stop=lambda: bool(said))
    assert len(said) == 1  # stopped at the first check after the request


def test_a_bad_row_far_into_a_file_is_named_by_the_job(tmp_path, tok, monkeypatch):
    from loradeck.engine.errors import LoradeckError

    monkeypatch.setattr(prep, "CHECK_ROWS", 100)
    path = write_rows(tmp_path / "rows.jsonl", 500)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"instruction": "no answer"}\n')
    config = cfg.validate({"dataset": {"path": str(path)}, "training": {"max_length": 64}})
    prep.check_dataset(config)  # the head of the file is fine
    with pytest.raises(LoradeckError, match=rf"{path}:501: "):
        prep.prepare(config, tok)


@pytest.mark.slow
def test_sigterm_while_preparing_stops_the_job(tmp_path, demo_model):
    """A detached job on a large file: SIGTERM while it reads the rows ends it as stopped,
    before training, long before the file is done."""
    path = write_rows(tmp_path / "rows.jsonl", 400_000)
    config = tmp_path / "run.yaml"
    config.write_text(cfg.starter_text(demo=True).replace("path: demo", f"path: {path}"),
                      encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "loradeck.tui.cli", "train", str(config),
                          "--detach"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = RunStore().list()[0]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        texts = [e.get("text", "") for e in run.events() if e["type"] == "log"]
        if any(t.startswith("preparing the data: read") for t in texts):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no progress line; events: {run.events()[-5:]}")
    os.kill(run.state()["pid"], signal.SIGTERM)
    while run.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    summary = run.summary()
    assert summary["phase"] == "stopped", summary
    assert "before training" in summary["message"]
    reads = [e for e in run.events() if e.get("stage") == "read"]
    assert reads and reads[-1]["prepared_rows"] < 400_000
