"""``loradeck export``: GGUF files written with gguf-py (K-quants by llama.cpp's quantizer),
their tokenizer and chat template inside, each loaded and checked in llama.cpp itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish import gguf_export
from loradeck.engine.runs.store import RunStore
from loradeck.engine.serve.replies import Finished, Token
from tests.conftest import run_cli
from tests.helpers.export import check_export, exported
from tests.helpers.jobs import JOB_ENV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("gguf-demo")]



@pytest.fixture(scope="module")
def demo_run(demo_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("export-home")
    r = run_cli(["train", "demo", "--set", "training.max_steps=4"],
                env={**JOB_ENV, "LORADECK_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return home, next((home / "runs").iterdir())


def test_demo_run_exports_f16_q8_0_and_q4_k_m_checked_in_llama_cpp(demo_run):
    home, run_dir = demo_run
    result = exported(home, run_dir.name, ["f16", "q8_0", "q4_k_m"])
    report = check_export(home, run_dir, result, ["f16", "q8_0", "q4_k_m"])
    assert "the run has no merged model yet: merging first" in result.stdout
    assert report["architecture"] == "llama" and report["pre_tokenizer"]
    assert "llama.cpp's quantizer" in result.stdout
    assert "Writing:" not in result.stderr  # no progress bar off a terminal
    assert "n_ctx_train" not in result.stdout + result.stderr  # no probe's context warning
    sizes = {r["type"]: r["bytes"] for r in report["files"]}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]


def test_a_failed_export_leaves_earlier_files_intact(demo_run, monkeypatch):
    home, run_dir = demo_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    run = RunStore().resolve(run_dir.name)
    if not (run.dir / "gguf" / f"{run.id}-q8_0.gguf").is_file():
        assert exported(home, run.id, ["q8_0"]).returncode == 0
    earlier = run.dir / "gguf" / f"{run.id}-q8_0.gguf"
    before = (earlier.stat().st_mtime_ns, earlier.stat().st_size)
    report_before = (run.dir / "gguf" / "loradeck-report.json").read_text()

    def broken(model_dir, out, quant, **kw):
        out.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = run.dir / "gguf" / f".tmp-{dead.pid}"  # an export killed mid-way left this
    killed.mkdir()
    (killed / "source-f16.gguf").write_bytes(b"x" * 4096)
    monkeypatch.setattr(gguf_export, "write_gguf", broken)
    with pytest.raises(OSError):
        gguf_export.export(run, ["q8_0", "q4_0"])
    assert (earlier.stat().st_mtime_ns, earlier.stat().st_size) == before
    assert not (run.dir / "gguf" / f"{run.id}-q4_0.gguf").exists()
    assert not list((run.dir / "gguf").glob(".tmp-*"))
    assert (run.dir / "gguf" / "loradeck-report.json").read_text() == report_before


def test_what_export_does_not_cover_is_one_line(demo_run, monkeypatch):
    with pytest.raises(LoradeckError) as info:
        gguf_export.supported("GPT2LMHeadModel")
    assert "does not cover GPT2LMHeadModel" in info.value.line()
    assert "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM" in info.value.line()
    home, run_dir = demo_run
    r = exported(home, run_dir.name, ["q3_xl"])
    assert r.returncode == 2 and "unknown GGUF type 'q3_xl'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_chat_worker_streams_from_the_gguf_through_llama_cpp_without_torch(demo_run):
    """``loradeck chat RUN --gguf f16`` and ``loradeck chat FILE.gguf``: the same greedy reply
    as the merged model in transformers, streamed by a worker that never imports torch."""
    from loradeck.engine.serve.client import ChatClient

    home, run_dir = demo_run
    if not (run_dir / "gguf" / f"{run_dir.name}-f16.gguf").is_file():
        assert exported(home, run_dir.name, ["f16"]).returncode == 0
    env = {**JOB_ENV, "LORADECK_HOME": str(home)}
    greedy = ["--prompt", "What is LoRA fine-tuning?", "--temperature", "0",
              "--repetition-penalty", "1.0", "--max-new-tokens", "12"]
    merged = run_cli(["chat", run_dir.name, *greedy], env=env, timeout=600)
    via_gguf = run_cli(["chat", run_dir.name, "--gguf", "f16", *greedy], env=env, timeout=600)
    assert merged.returncode == 0 and via_gguf.returncode == 0, via_gguf.stderr
    assert via_gguf.stdout.strip() and via_gguf.stdout == merged.stdout
    assert "f16 GGUF, llama.cpp" in via_gguf.stderr
    missing = run_cli(["chat", run_dir.name, "--gguf", "q6_k", *greedy], env=env, timeout=120)
    assert missing.returncode == 2 and f"loradeck export {run_dir.name} --quant q6_k" in \
        missing.stderr

    path = run_dir / "gguf" / f"{run_dir.name}-f16.gguf"
    with ChatClient() as client:
        info = client.start(model=str(path))
        assert info["backend"] == "llama.cpp" and info["stop_tokens"]
        replies = list(client.generate([{"role": "user", "content": "Hello"}],
                                       {"temperature": 0, "max_new_tokens": 6}))
    done = replies[-1]
    assert isinstance(done, Finished) and done.tokens >= 1
    assert done.torch_imported is False
    assert "".join(r.text for r in replies if isinstance(r, Token)) == done.text


def test_push_uploads_the_gguf_and_its_modelfile_privately(demo_run, tmp_path):
    from tests.helpers.hub_server import USER, hub_env, serve

    home, run_dir = demo_run
    if not (run_dir / "gguf" / f"{run_dir.name}-q8_0.gguf").is_file():
        assert exported(home, run_dir.name, ["q8_0"]).returncode == 0
    modelfile = (run_dir / "gguf" / f"{run_dir.name}-q8_0.Modelfile").read_text()
    assert modelfile.splitlines()[0] == f"FROM ./{run_dir.name}-q8_0.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    with serve(tmp_path / "hub") as hub:
        env = {**hub_env(hub), "LORADECK_HOME": str(home)}
        missing = run_cli(["push", run_dir.name, "--repo", f"{USER}/g", "--gguf", "q6_k"],
                          env=env, timeout=120)
        assert missing.returncode == 2 and "loradeck export" in missing.stderr
        assert not hub.requests_matching("/api/repos/create")  # refused before the Hub
        r = run_cli(["push", run_dir.name, "--repo", f"{USER}/tiny-gguf", "--gguf", "q8_0"],
                    env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        files = hub.files(f"{USER}/tiny-gguf")
        assert hub.repos[f"{USER}/tiny-gguf"].private
        name = f"{run_dir.name}-q8_0.gguf"
        assert files[name] == (run_dir / "gguf" / name).read_bytes()
        assert files[f"{run_dir.name}-q8_0.Modelfile"].decode() == modelfile
        readme = files["README.md"].decode()
        assert "## Run it locally (GGUF)" in readme and f"llama-cli -m {name}" in readme
        assert f"ollama create tiny-gguf -f {run_dir.name}-q8_0.Modelfile" in readme
        assert "config.json" in files  # the merged model goes up with it


def test_the_push_screen_exports_by_key_and_the_palette_offers_it(demo_run, monkeypatch):
    import asyncio

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.palette import binding_commands
    from tests.helpers.app import open_push_screen, small_demo_config, wait_for

    home, run_dir = demo_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    for stale in (run_dir / "gguf").glob(f"{run_dir.name}-q4_k_m.*"):
        stale.unlink()

    async def main():
        app = LoradeckApp(run_id=run_dir.name, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            screen = await open_push_screen(pilot)
            names = [name for name, *_ in binding_commands(screen, screen.BINDINGS)]
            assert "Export GGUF" in names  # the command palette lists the screen's keys
            from textual.widgets import Select

            assert screen.query_one("#push-gguf-type", Select).value == "q4_k_m"  # the default
            await pilot.press("ctrl+e")
            await wait_for(pilot, lambda: screen.busy is None and (
                run_dir / "gguf" / f"{run_dir.name}-q4_k_m.gguf").is_file(), 600,
                "the export", step=0.1)
            message = screen.query_one("#push-message")
            assert message.has_class("-success"), str(message.render())
            assert f"{run_dir.name}-q4_k_m.gguf" in str(message.render())

    asyncio.run(main())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
              if line.strip()]
    assert any(e["type"] == "log" and "checking" in e.get("text", "") for e in events)


def test_the_chat_screen_puts_the_gguf_beside_the_16_bit_model(demo_run, monkeypatch):
    """ctrl+f: the run's GGUF files one after the other in the left pane (llama.cpp), its
    merged model in the right (transformers), the same prompt to both, figures on each."""
    import asyncio

    from textual.widgets import Input

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.chat import ChatScreen
    from tests.helpers.app import small_demo_config, wait_for

    home, run_dir = demo_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    for quant in ("f16", "q8_0"):
        if not gguf_export.run_file(RunStore().resolve(run_dir.name), quant).is_file():
            assert exported(home, run_dir.name, [quant]).returncode == 0
    files = [p.name for p in gguf_export.run_files(RunStore().resolve(run_dir.name))]

    async def main():
        app = LoradeckApp(run_id=run_dir.name, draft=small_demo_config())
        async with app.run_test(size=(100, 32)) as pilot:
            await pilot.press("c")
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            for key, value in (("temperature", "0"), ("max_new_tokens", "8"),
                               ("repetition_penalty", "1.0")):
                screen.query_one(f"#set-{key}", Input).value = value
            shown = []
            while True:  # each exported type in turn, then off
                await pilot.press("ctrl+f")
                if screen.gguf_file is None:
                    break
                shown.append(Path(screen.gguf_file).name)
                if shown[-1].endswith("-f16.gguf"):
                    base = screen.query_one("#pane-base")
                    assert base.display and "GGUF f16 · llama.cpp" in str(base.border_title)
                    break
            assert shown == files[: len(shown)] and shown[-1].endswith("-f16.gguf")
            screen.query_one("#chat-prompt", Input).focus()
            await pilot.press(*"What is LoRA fine-tuning?", "enter")
            left, right = screen.query_one("#pane-base"), screen.query_one("#pane-tuned")
            await wait_for(pilot, lambda: left.replies() and left.replies()[-1].finished
                           and right.replies() and right.replies()[-1].finished, 300,
                           "both replies")
            gguf_reply, hf_reply = left.replies()[-1], right.replies()[-1]
            assert gguf_reply.done.torch_imported is False  # llama.cpp's worker
            assert gguf_reply.text and gguf_reply.text == hf_reply.text  # f16: greedy agrees
            assert "tok/s" in gguf_reply.stats and "tok/s" in hf_reply.stats
            assert [t.text for t in left.query("UserTurn")] == ["What is LoRA fine-tuning?"]
            while screen.gguf_file is not None:
                await pilot.press("ctrl+f")
            assert not screen.query_one("#pane-base").display

    asyncio.run(main())
