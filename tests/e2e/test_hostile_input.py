"""What a hostile tester tried: links and pipes planted in run directories, alias bombs and deep
nesting in configs and data, crafted GGUF headers, looping chat templates, leftovers of killed
jobs, and the small refusals. Each ends in one line, quickly, and nothing outside the run is
read or written."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventWriter, read_events
from loradeck.engine.runs.store import RunStore
from tests.conftest import ROOT, run_cli


def one_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("loradeck: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "internal error" not in lines[0]
    return lines[0]


def finished_run(name: str = "done"):
    """A run whose training finished (events only: no job, no model)."""
    run = RunStore().create(cfg.demo_config(), name=name)
    ev = EventWriter(run.events_path)
    ev.status("training", "training")
    ev.emit("metrics", step=4, max_steps=4, loss=1.0)
    ev.emit("done", adapter=str(run.adapter_dir))
    ev.status("done", "finished")
    return run


# ---- 3. run files are never opened through links or pipes -------------------------------------

def test_a_linked_lock_is_refused_and_the_users_file_left_alone(tmp_path):
    run = finished_run()
    victim = tmp_path / "notes.txt"
    victim.write_text("precious\n", encoding="utf-8")
    (run.dir / "job.lock").symlink_to(victim)
    with pytest.raises(LoradeckError, match="job.lock: is a link"):
        joblock.acquire(run.dir, run.id)
    r = run_cli(["merge", run.id], timeout=60)
    assert "job.lock" in one_line(r) or "adapter" in one_line(r)
    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_a_fifo_lock_blocks_no_listing_and_no_status(tmp_path):
    bad = finished_run("bad")
    good = finished_run("good")
    os.mkfifo(bad.dir / "job.lock")
    r = run_cli(["runs", "--json"], timeout=60)  # a blocked open would hang here
    assert r.returncode == 0, r.stderr
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows[good.id]["phase"] == "done" and rows[bad.id]["alive"] is False
    r = run_cli(["status", bad.id], timeout=60)
    assert r.returncode == 0, r.stderr
    with pytest.raises(LoradeckError, match="is a pipe"):
        joblock.acquire(bad.dir, bad.id)


def test_linked_events_are_neither_appended_to_nor_read(tmp_path):
    run = finished_run()
    good = finished_run("good")
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"type": "status", "phase": "done", "t": 1}\n', encoding="utf-8")
    run.events_path.unlink()
    run.events_path.symlink_to(outside)
    with pytest.raises(LoradeckError, match="events.jsonl: is a link"):
        EventWriter(run.events_path).log("hello")
    assert outside.read_text(encoding="utf-8").count("\n") == 1
    r = run_cli(["runs", "--json"], timeout=60)
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows[run.id]["phase"] == "damaged" and "is a link" in rows[run.id]["message"]
    assert rows[good.id]["phase"] == "done"
    os.unlink(run.events_path)
    os.mkfifo(run.events_path)
    with pytest.raises(LoradeckError, match="is a pipe"):
        read_events(run.events_path)


def test_a_linked_gguf_folder_gets_no_export(tmp_path):
    from loradeck.engine.publish import gguf_export

    run = finished_run()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run.dir / "gguf").symlink_to(elsewhere)
    with pytest.raises(LoradeckError, match="gguf: is a link"):
        gguf_export.export(run, ["f16"])
    assert list(elsewhere.iterdir()) == []


# ---- 4. bombs, nesting and huge numbers in configs and data ------------------------------------

BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize("key", ["model.name", "eval.prompts", "training.seed"])
def test_an_alias_bomb_in_a_config_file_is_one_line(tmp_path, key):
    section, name = key.split(".")
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB.replace("i: &i", "bomb: &i") + f"{section}:\n  {name}: *i\n",
                    encoding="utf-8")
    r = run_cli(["estimate", str(path)], timeout=60)
    line = one_line(r)
    assert "expands to more than 100,000 values" in line and len(line) < 400
    with pytest.raises(LoradeckError, match="expands to more than"):
        cfg.load(path)


def test_an_alias_bomb_in_set_is_one_line(tmp_path):
    nested = "[&a [x,x,x,x,x,x,x,x,x,x], " + ", ".join(
        f"&{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(6)) + "]"
    with pytest.raises(LoradeckError, match="--set: the YAML expands to more than"):
        cfg.from_overrides([f"eval.prompts={nested}"])
    config = tmp_path / "run.yaml"
    config.write_text(cfg.starter_text(demo=True), encoding="utf-8")
    line = one_line(run_cli(["estimate", str(config), "--set", f"eval.prompts={nested}"],
                            timeout=60))
    assert "expands to more than 100,000 values" in line


def test_self_reference_and_deep_nesting_are_one_line(tmp_path):
    with pytest.raises(LoradeckError, match="refers to the value that holds it"):
        cfg.safe_yaml("a: &a [1, *a]\n", "x.yaml")
    deep = tmp_path / "deep.yaml"
    deep.write_text("model:\n  name: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    line = one_line(run_cli(["estimate", str(deep)], timeout=60))
    assert "nests deeper than" in line and str(deep) in line


def test_huge_numbers_get_a_range_error_naming_the_key(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("lora:\n  r: " + "9" * 5000 + "\n", encoding="utf-8")
    line = one_line(run_cli(["estimate", str(path)], timeout=60))
    assert "lora.r: input should be less than or equal to 1024" in line
    assert "a number of about 5000 digits" in line and len(line) < 300
    line = one_line(run_cli(["estimate", str(path), "--set", "lora.r=8",
                             "--set", f"training.seed={10 ** 30}"], timeout=60))
    assert "training.seed: input should be less than or equal to 4294967295" in line
    with pytest.raises(LoradeckError, match="lora.alpha: input should be a finite number"):
        cfg.from_overrides(["lora.alpha=.inf"])


def test_a_deeply_nested_data_row_names_the_file_and_row(tmp_path):
    from loradeck.engine.data import files

    data = tmp_path / "rows.jsonl"
    good = json.dumps({"instruction": "hi", "response": "hello"})
    data.write_text(good + "\n" + '{"instruction": ' + "[" * 200_000 + "]" * 200_000 + "}\n",
                    encoding="utf-8")
    with pytest.raises(LoradeckError, match=rf"{data.name}:2: the JSON nests too deeply"):
        files.load(str(data))


@pytest.mark.parametrize("bad", [-4096, "big", float("inf"), 0, 2.5, True])
def test_impossible_sizes_in_config_json_are_refused_before_launch(tmp_path, demo_model, bad):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    data = json.loads((model / "config.json").read_text())
    data["hidden_size"] = bad
    (model / "config.json").write_text(json.dumps(data))
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name: {model}\n  quantization: none\n", encoding="utf-8")
    line = one_line(run_cli(["estimate", str(config)], timeout=120))
    assert "config.json: hidden_size must be a positive whole number" in line
    r = run_cli(["train", str(config), "--set", "training.max_steps=2"], timeout=120)
    assert "hidden_size must be a positive whole number" in one_line(r)
    assert RunStore().list() == []  # refused before any run was made


# ---- 5. crafted files do not hang ----------------------------------------------------------

def crafted_gguf(path: Path) -> Path:
    """52 bytes: one key whose array declares 2^61 uint8 elements."""
    key = b"gen."
    blob = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<II", 9, 0) + struct.pack("<Q", 2**61))
    path.write_bytes(blob)
    return path


def test_a_crafted_gguf_header_is_refused_at_once(tmp_path):
    from loradeck.engine.models.gguf_header import check_header

    bomb = crafted_gguf(tmp_path / "bomb.gguf")
    assert bomb.stat().st_size == 52
    with pytest.raises(LoradeckError, match="2,305,843,009,213,693,952 elements"):
        check_header(bomb)
    config = tmp_path / "run.yaml"
    config.write_text(f"model:\n  name: {bomb}\n  quantization: none\n", encoding="utf-8")
    line = one_line(run_cli(["train", str(config)], timeout=120))
    assert "not a valid GGUF file" in line and "bomb.gguf" in line


def test_a_real_gguf_header_passes_the_check(tmp_path):
    gguf = pytest.importorskip("gguf")
    from loradeck.engine.models.gguf_header import check_header

    path = tmp_path / "ok.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["a", "b", "<s>"])
    writer.add_array("x.ints", [1, 2, 3])
    import numpy as np

    writer.add_tensor("t", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    check_header(path)


def test_a_looping_chat_template_is_cut_off_in_one_line(demo_model, monkeypatch):
    import threading

    from transformers import AutoTokenizer

    from loradeck.engine.data import templates

    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.5)
    tok = AutoTokenizer.from_pretrained(demo_model)
    tok.chat_template = ("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}"
                         "{% endfor %}{{ messages[0]['content'] }}")
    renderer = templates.Renderer(tok)
    turns = [{"role": "user", "content": "hi"}]
    with pytest.raises(templates.TemplateTooSlow, match="ran past 0.5 s"):
        renderer.prompt(turns)
    caught: list[BaseException] = []  # the app renders previews in worker threads

    def in_thread():
        try:
            renderer.prompt(turns)
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and isinstance(caught[0], templates.TemplateTooSlow)


# ---- 7. leftovers and clobbering ---------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_export_out_refuses_files_system_folders_and_reports_it_did_not_write(tmp_path):
    from loradeck.engine.publish import gguf_export

    a_file = tmp_path / "file.gguf"
    a_file.write_text("x")
    with pytest.raises(LoradeckError, match="is a file, not a folder"):
        gguf_export.check_out_dir(a_file)
    for system in ("/etc", "/usr/lib", "/"):
        with pytest.raises(LoradeckError, match="is a system folder"):
            gguf_export.check_out_dir(Path(system))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for text in ('["a list"]', '{"files": []}', "not json"):
        (theirs / gguf_export.REPORT_NAME).write_text(text)
        with pytest.raises(LoradeckError, match="holds a file loradeck did not write"):
            gguf_export.check_out_dir(theirs)
        assert (theirs / gguf_export.REPORT_NAME).read_text() == text
    (theirs / "report.json").write_text('["someone else\'s"]')  # another tool's name: untouched
    (theirs / gguf_export.REPORT_NAME).unlink()
    assert gguf_export.check_out_dir(theirs) == theirs
    run = finished_run()
    line = one_line(run_cli(["export", run.id, "--out", str(a_file)], timeout=60))
    assert "is a file, not a folder" in line


def test_stale_export_folders_of_dead_processes_go(tmp_path):
    from loradeck.engine.runs import leftovers

    out = tmp_path / "gguf"
    out.mkdir()
    dead = out / f".tmp-{dead_pid()}"
    (dead / "source-f16.gguf").parent.mkdir()
    (dead / "source-f16.gguf").write_bytes(b"x" * 1000)
    alive = out / f".tmp-{os.getppid()}"
    alive.mkdir()
    mine = out / f".tmp-{os.getpid()}"
    mine.mkdir()
    assert leftovers.remove_stale(out, ".tmp-") == [dead]
    assert not dead.exists() and alive.exists() and mine.exists()


def test_export_during_a_merge_is_refused(tmp_path):
    from loradeck.engine.publish import gguf_export

    run = finished_run()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from loradeck.engine.runs import lock; "
         f"lock.acquire({str(run.dir)!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH",
                                                                                "")))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(joblock.AlreadyRunning, match="already running"):
            gguf_export.export(run, ["f16"])
    finally:
        holder.kill()
        holder.wait()


def test_a_merge_killed_between_its_renames_keeps_the_newest_copy(tmp_path):
    from loradeck.engine.publish import merge

    run = finished_run()
    pid = dead_pid()
    old = run.dir / f"{merge.OLD_PREFIX}{pid}"  # the former RUN/merged, moved aside
    old.mkdir()
    (old / "config.json").write_text('{"which": "old"}')
    time.sleep(0.05)
    new = run.dir / f"{merge.TMP_PREFIX}{pid}"  # the new merge, checked and marked
    new.mkdir()
    (new / "config.json").write_text('{"which": "new"}')
    (new / merge.MERGED_MARKER).write_text("{}")
    half = run.dir / f"{merge.TMP_PREFIX}{dead_pid()}"  # a merge killed half-way
    half.mkdir()
    assert merge.recover(run) == new
    assert json.loads((run.merged_dir / "config.json").read_text()) == {"which": "new"}
    assert [p.name for p in run.dir.iterdir() if p.name.startswith(".merged")] == []


@pytest.mark.parametrize("what", ["merging", "pushing"])
def test_a_killed_merge_or_push_leaves_the_training_phase(what):
    run = finished_run()
    EventWriter(run.events_path).status(what, f"{what} ...")  # then killed: no final status
    summary = run.summary()
    verb = what[:-3] if what == "pushing" else "merge"
    assert summary["phase"] == "done" and summary["interrupted"] is False
    assert f"the {verb} ended without a final status" in summary["message"]
    assert "resume" not in summary["message"]
    r = run_cli(["status", run.id], timeout=60)
    assert "failed" not in r.stdout and "done" in r.stdout


# ---- 8. small refusals ---------------------------------------------------------------------

def test_an_empty_run_reference_matches_nothing():
    run = finished_run()
    for ref in ("", " "):
        line = one_line(run_cli(["stop", ref], timeout=60))
        assert "an empty run reference matches no run" in line
    assert run.summary()["phase"] == "done"


@pytest.mark.slow
def test_a_target_the_model_lacks_fails_the_job_before_training(tmp_path):
    """demo:tiny on a fresh cache: the pre-launch check cannot read the model, the job can."""
    config = tmp_path / "run.yaml"
    config.write_text(cfg.starter_text(demo=True), encoding="utf-8")
    env = {"LORADECK_CACHE": str(tmp_path / "fresh-cache"), "OMP_NUM_THREADS": "1"}
    r = run_cli(["train", str(config), "--set", "lora.target_modules=[q_proj, nonexistent_proj]",
                 "--set", "training.max_steps=3"], env=env, timeout=300)
    assert r.returncode != 0, r.stdout
    assert "no module named nonexistent_proj in demo:tiny" in r.stdout + r.stderr
    run = RunStore().list()[0]
    events = run.events()
    assert not any(e["type"] == "metrics" for e in events)
    err = [e for e in events if e["type"] == "error"][-1]
    assert err["kind"] == "config" and "lora.target_modules" in err["message"]


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_refused(demo_model):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(demo_model).max_position_embeddings
    r = run_cli(["chat", "demo:tiny", "--prompt", "word " * (context * 2)], timeout=300)
    assert r.returncode != 0, r.stdout
    assert f"the model's context of {context:,}" in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("loradeck: ")]) == 1


def real_adapter(run, demo_model: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    peft_model.save_pretrained(run.adapter_dir)
    AutoTokenizer.from_pretrained(demo_model).save_pretrained(run.adapter_dir)


@pytest.mark.slow
def test_a_merge_on_a_full_disk_says_so_and_keeps_the_run(tmp_path, demo_model):
    """The run store on a small tmpfs (in a private mount namespace): the merged model does
    not fit. The one line is the disk's, and the run still reads done."""
    import shutil

    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=1m t {tmp_path}"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("no private mount namespace here (unshare -rm)")
    run = finished_run()
    real_adapter(run, demo_model)
    store, copy = run.dir.parent, tmp_path / "copy"
    used = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    script = (f"set -e; cp -a {store} {copy}; mount -t tmpfs -o size={used + 256 * 1024} t "
              f"{store}; cp -a {copy}/. {store}/; "
              f"{sys.executable} -m loradeck.tui.cli merge {run.id} || echo exit=$?; "
              f"{sys.executable} -m loradeck.tui.cli status {run.id}")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("loradeck: ")]
    assert "exit=1" in r.stdout, r.stdout + r.stderr
    assert lines and "disk is full" in lines[-1] and "internal error" not in r.stderr, r.stderr
    phase = next(ln for ln in r.stdout.split("exit=1")[1].splitlines() if ln.startswith("phase"))
    assert phase.split()[1] == "done", r.stdout  # the training's phase; the merge's failure
    assert "merge failed: no space left on the disk" in phase  # is said beside it
