"""``loradeck push`` end to end against the local Hub-protocol server (tests/helpers/hub_server.py).

Every push runs the real CLI in a subprocess pointed at the server with HF_ENDPOINT; what was
pushed is downloaded back with huggingface_hub, loaded with transformers and generates.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from loradeck.engine import config as cfg
from loradeck.engine.data import templates
from loradeck.engine.runs.events import EventWriter, read_events
from loradeck.engine.runs.store import Run, RunStore
from tests.conftest import ROOT, run_cli
from tests.helpers.hub_server import (
    ORG,
    OTHER_USER,
    TOKEN,
    USER,
    HubServer,
    hub_env,
    serve,
)

MERGED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "README.md", "loss.svg"}
DECOYS = ("optimizer.pt", "train.log", ".secret", "pytorch_model.bin", "training_args.bin",
          "rng_state.pkl", "scheduler.pt", "notes.txt")


@pytest.fixture
def hub(tmp_path: Path):
    with serve(tmp_path / "hub") as server:
        yield server


@pytest.fixture(scope="session")
def trained(demo_model: Path, tmp_path_factory) -> Path:
    """A merged model (demo:tiny saved with save_pretrained) and a LoRA adapter, built once."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("trained")
    tok = AutoTokenizer.from_pretrained(demo_model)
    model = AutoModelForCausalLM.from_pretrained(demo_model)
    model.save_pretrained(root / "merged")
    templates.save_tokenizer(tok, root / "merged")  # as training and merge save it
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, so base and base+adapter differ
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(root / "adapter")
    templates.save_tokenizer(tok, root / "adapter")
    return root


def make_run(trained: Path, overrides: list[str] | None = None, merged: bool = True) -> Run:
    """A finished run with merged/ and adapter/, loss events, and decoys that must stay home."""
    run = RunStore().create(cfg.from_overrides(overrides, base=cfg.demo_config()), name="pushme")
    shutil.copytree(trained / "adapter", run.adapter_dir)
    if merged:
        shutil.copytree(trained / "merged", run.merged_dir)
    ev = EventWriter(run.events_path)
    ev.status("training", "training")
    for step in range(2, 21, 2):
        ev.emit("metrics", step=step, max_steps=20, loss=round(3.0 - step * 0.05, 4))
        if step % 10 == 0:
            ev.emit("metrics", step=step, max_steps=20, eval_loss=round(3.2 - step * 0.04, 4))
    ev.emit("done", adapter=str(run.adapter_dir), train_loss=2.0, eval_loss=2.4)
    ev.status("done", "finished")
    run.log_path.write_text("step 2 loss 2.9\n", encoding="utf-8")
    for folder in (run.merged_dir, run.adapter_dir):
        folder.mkdir(exist_ok=True)
        for name in DECOYS:
            (folder / name).write_bytes(b"decoy")
        cp = folder / "checkpoints" / "checkpoint-10"
        cp.mkdir(parents=True)
        (cp / "model.safetensors").write_bytes(b"decoy")
        (cp / "optimizer.pt").write_bytes(b"decoy")
    cp = run.checkpoints_dir / "checkpoint-10"
    cp.mkdir(parents=True)
    (cp / "adapter_model.safetensors").write_bytes(b"decoy")
    return run


@pytest.fixture
def run(trained: Path) -> Run:
    return make_run(trained)


@pytest.fixture
def online(monkeypatch):
    """For pushes in this process: what HF_HUB_OFFLINE=0 and HF_HUB_DISABLE_XET=1 do in a
    subprocess (huggingface_hub reads both at import; the server speaks LFS, not Xet)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)


def push(hub: HubServer, run: Run, repo: str, *flags: str, token: str | None = TOKEN,
         **extra: str):
    return run_cli(["push", run.id, "--repo", repo, *flags], env=hub_env(hub, token, **extra),
                   timeout=120)


def one_line(proc) -> str:
    """The single error line of a failed command."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("loradeck: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def download(hub: HubServer, repo: str, dest: Path, monkeypatch, token: str | bool = TOKEN
             ) -> Path:
    import huggingface_hub
    from huggingface_hub import snapshot_download

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return Path(snapshot_download(repo, endpoint=hub.url, token=token, local_dir=dest))


def greedy(model_dir: Path, adapter: Path | None = None) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir if adapter is None else adapter)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    msgs = [{"role": "user", "content": "What is LoRA?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True,
                                  return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def card_meta(readme: str) -> dict:
    return yaml.safe_load(readme.split("---")[1])


def test_push_merged_private_then_download_load_generate(hub, run, trained, tmp_path,
                                                          monkeypatch):
    proc = push(hub, run, f"{USER}/tiny-chat")
    assert proc.returncode == 0, proc.stderr
    url = f"{hub.url}/{USER}/tiny-chat"
    assert proc.stdout.strip().splitlines()[-1] == url
    assert "uploading 8 files" in proc.stdout

    create = hub.requests_matching("/api/repos/create")[0].json()
    assert create["visibility"] == "private" and hub.repos[f"{USER}/tiny-chat"].private
    # the allow-list: exactly the model files and the card; no decoy, no checkpoint
    assert set(hub.files(f"{USER}/tiny-chat")) == MERGED_FILES

    # the template the run trained with travels with the pushed model, in both places
    pushed = hub.files(f"{USER}/tiny-chat")
    trained_template = (trained / "merged" / "chat_template.jinja").read_text()
    assert pushed["chat_template.jinja"].decode() == trained_template
    assert json.loads(pushed["tokenizer_config.json"])["chat_template"] == trained_template
    local = download(hub, f"{USER}/tiny-chat", tmp_path / "dl", monkeypatch)
    assert greedy(local) == greedy(trained / "merged")
    assert len(greedy(local)) > 0

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):  # private: nobody else sees it
        hf_hub_download(f"{USER}/tiny-chat", "config.json", endpoint=hub.url, token=False,
                        local_dir=tmp_path / "anon")

    events = read_events(run.events_path)
    phases = [e["phase"] for e in events if e["type"] == "status"]
    assert phases[-2:] == ["pushing", "pushed"]
    assert any(e["type"] == "log" and url in e["text"] for e in events)

    # the model card: metadata, settings, final losses, the loss table and the chart
    files = hub.files(f"{USER}/tiny-chat")
    readme = files["README.md"].decode()
    meta = card_meta(readme)
    assert meta["library_name"] == "transformers" and "loradeck" in meta["tags"]
    assert "lora" in meta["tags"] and meta["pipeline_tag"] == "text-generation"
    assert "| step | train loss | eval loss |" in readme
    assert "| 10 | 2.5000 | 2.8000 |" in readme and "| 20 | 2.0000 | 2.4000 |" in readme
    assert "| 2 | 2.9000 |  |" in readme
    assert "| final train loss | 2.0000 |" in readme and "| final eval loss | 2.4000 |" in readme
    assert "| r | 16 |" in readme and "| alpha | 32 |" in readme and "all-linear" in readme
    assert "![train and eval loss by step](loss.svg)" in readme
    svg = ET.fromstring(files["loss.svg"])
    polylines = [el for el in svg.iter() if el.tag.endswith("polyline")]
    assert len(polylines) == 2 and len(polylines[0].get("points").split()) == 10
    assert str(run.dir) not in readme and str(Path.home()) not in readme  # no local paths


def test_public_flag_makes_a_public_repo(hub, run, tmp_path, monkeypatch):
    proc = push(hub, run, f"{ORG}/open-model", "--public")
    assert proc.returncode == 0, proc.stderr
    assert hub.requests_matching("/api/repos/create")[0].json()["visibility"] == "public"
    assert hub.repos[f"{ORG}/open-model"].private is False
    import huggingface_hub
    from huggingface_hub import hf_hub_download

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    path = hf_hub_download(f"{ORG}/open-model", "config.json", endpoint=hub.url, token=False,
                           local_dir=tmp_path / "anon")
    assert json.loads(Path(path).read_text())["model_type"] == "llama"



def test_visibility_of_an_existing_repo(hub, run, online):
    from loradeck.engine.errors import LoradeckError
    from loradeck.engine.publish.hub import push_run

    hub.add_repo(f"{USER}/was-private", private=True)  # an earlier private push, now published
    lines: list[str] = []
    push_run(run, "was-private", public=True, token=TOKEN, endpoint=hub.url,
             progress=lines.append)
    assert f"made {USER}/was-private public" in lines
    assert hub.repos[f"{USER}/was-private"].private is False
    assert set(hub.files(f"{USER}/was-private")) == MERGED_FILES
    # the other way round is refused: a private push never updates a public repo
    with pytest.raises(LoradeckError) as info:
        push_run(run, "was-private", token=TOKEN, endpoint=hub.url)
    assert "already exists and is public" in info.value.line()
    assert "--public" in info.value.line()


def test_adapter_push_through_the_job_entry_point(hub, demo_model, trained, tmp_path,
                                                  monkeypatch):
    """``python -m loradeck.engine.publish.hub RUN_DIR --adapter``: the process the app starts and follows.

    The run's config names a Hub base and 4-bit quantization (a QLoRA run); its adapter
    weights are the demo:tiny ones, which is all a push looks at.
    """
    import os
    import subprocess

    base = "mistralai/Mistral-7B-v0.3"
    run = make_run(trained, [f"model.name={base}", "model.quantization=4bit",
                             "dataset.path=someone/korean-dolly"])

    env = dict(os.environ, PYTHONPATH=str(ROOT), **hub_env(hub))
    proc = subprocess.run([sys.executable, "-m", "loradeck.engine.publish.hub", str(run.dir), "--repo",
                           f"{USER}/tiny-lora", "--adapter"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"{hub.url}/{USER}/tiny-lora"  # flushed at the end
    files = hub.files(f"{USER}/tiny-lora")
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                          "loss.svg", "tokenizer.json", "tokenizer_config.json",
                          "chat_template.jinja"}
    readme = files["README.md"].decode()
    meta = card_meta(readme)
    assert meta["library_name"] == "peft" and {"peft", "qlora", "loradeck"} <= set(meta["tags"])
    assert meta["base_model"] == base and meta["base_model_relation"] == "adapter"
    assert meta["datasets"] == ["someone/korean-dolly"]
    assert "AutoPeftModelForCausalLM" in readme and "4-bit NF4" in readme
    # the pushed adapter names its Hub base, not a local path
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == base

    local = download(hub, f"{USER}/tiny-lora", tmp_path / "dl", monkeypatch)
    tokens = greedy(demo_model, adapter=local)
    assert tokens == greedy(demo_model, adapter=trained / "adapter")
    assert tokens != greedy(demo_model)  # the adapter really changes the model


def test_push_merges_first_when_the_run_has_no_merged_model(hub, trained, online):
    """In-process, as the app's push job calls it: no RUN/merged yet, so it merges first."""
    from loradeck.engine.publish.hub import push_run

    run = make_run(trained, merged=False)
    assert not (run.merged_dir / "config.json").exists()
    lines: list[str] = []
    url = push_run(run, "merged-on-push", token=TOKEN, endpoint=hub.url, progress=lines.append)
    assert url == f"{hub.url}/{USER}/merged-on-push"
    assert "no merged model yet: merging the adapter into the base first" in lines
    assert (run.merged_dir / "config.json").is_file()
    assert set(hub.files(f"{USER}/merged-on-push")) == MERGED_FILES
    phases = [e["phase"] for e in read_events(run.events_path) if e["type"] == "status"]
    assert phases[-4:] == ["pushing", "merging", "merged", "pushed"]


def test_running_push_again_after_an_interruption_completes_it(hub, run):
    hub.fail(0, times=100, match="/commit/")  # the connection drops at every commit
    first = push(hub, run, "resumable")
    line = one_line(first)
    assert "broke off" in line and "same push again" in line
    assert hub.repos[f"{USER}/resumable"].head[1] == {}  # nothing committed
    assert len(hub.requests_matching("/_lfs/", method="PUT")) == 1  # the weights went up
    phases = [e["phase"] for e in read_events(run.events_path) if e["type"] == "status"]
    assert phases[-2:] == ["pushing", "done"]  # the run is still done, with an error event

    hub.clear_failures()
    second = push(hub, run, "resumable")
    assert second.returncode == 0, second.stderr
    assert "exists: updating it" in second.stdout
    assert set(hub.files(f"{USER}/resumable")) == MERGED_FILES
    assert len(hub.requests_matching("/_lfs/", method="PUT")) == 1  # not sent twice
    assert hub.repos[f"{USER}/resumable"].private


@pytest.mark.parametrize("status,match", [(429, "/api/repos/create"), (500, "/commit/"),
                                          (503, "/api/whoami-v2")])
def test_rate_limit_and_server_errors_are_retried(hub, run, online, status, match):
    from loradeck.engine.publish.hub import push_run

    hub.fail(status, times=2, match=match)
    lines: list[str] = []
    push_run(run, "retried", token=TOKEN, endpoint=hub.url, progress=lines.append,
             backoff=0.01)
    assert sum(f"HTTP {status}; retrying" in line for line in lines) == 2
    assert [r.status for r in hub.requests_matching(match)][:3] == [status, status, 200]
    assert set(hub.files(f"{USER}/retried")) == MERGED_FILES


def test_errors_from_the_cli_are_one_line(hub, run, tmp_path):
    line = one_line(push(hub, run, "x", token="hf_wrongTokenXYZ"))
    assert "the Hub rejected the token (401" in line and "hf auth login" in line
    line = one_line(push(hub, run, "x", token=None, HF_HOME=str(tmp_path / "empty-hf-home")))
    assert line == ("loradeck: no Hub token found "
                    "(log in with `hf auth login` or set HF_TOKEN)")
    assert not hub.requests_matching("/api/repos/create")


def test_push_errors_name_what_went_wrong(hub, run, online, monkeypatch):
    import huggingface_hub

    from loradeck.engine.errors import LoradeckError
    from loradeck.engine.publish.hub import push_run

    hub.add_repo(f"{OTHER_USER}/taken")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"

    def failure(repo: str, endpoint: str = hub.url) -> LoradeckError:
        with pytest.raises(LoradeckError) as info:
            push_run(run, repo, token=TOKEN, endpoint=endpoint, backoff=0.01)
        assert "\n" not in info.value.line()
        return info.value

    err = failure(f"{OTHER_USER}/mine-now")
    assert err.kind == "auth" and "403" in err.line() and "write access" in err.line()
    err = failure("nobody-known/model")
    assert "404" in err.line() and "check the name" in err.line()
    err = failure(f"{OTHER_USER}/taken")
    assert "taken" in err.line() and "another --repo" in err.line()
    err = failure("bad name!")
    assert err.kind == "usage" and "not a valid repo name" in err.line()
    err = failure("x", endpoint=closed)
    assert err.kind == "network" and "cannot reach the Hub" in err.line()
    hub.fail(429, times=100, match="/api/repos/create")
    err = failure("limited")
    assert "rate limited by the Hub (429) after 5 tries" in err.line() and "wait" in err.line()
    hub.clear_failures()
    hub.fail(502, times=100, match="/commit/")
    err = failure("down")
    assert "Hub server error (502) after 5 tries" in err.line()
    assert "same push again" in err.line()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    err = failure("x")
    assert "offline mode" in err.line() and "unset HF_HUB_OFFLINE" in err.line()

    assert f"{OTHER_USER}/mine-now" not in hub.repos and "nobody-known/model" not in hub.repos
    errors = [e for e in read_events(run.events_path) if e["type"] == "error"]
    assert len(errors) == 8 and {e["kind"] for e in errors} == {"auth", "usage", "network"}
    assert [e["phase"] for e in read_events(run.events_path) if e["type"] == "status"][-1] \
        == "done"


def test_token_never_written_nor_printed(hub, run, loradeck_home):
    outputs = []
    hub.fail(500, times=1, match="/commit/")
    proc = push(hub, run, "leak-check")
    assert proc.returncode == 0 and "HTTP 500; retrying" in proc.stdout
    outputs += [proc.stdout, proc.stderr]
    proc = push(hub, run, "x", token=TOKEN[:-1] + "Q")  # a wrong token is not echoed either
    assert "401" in proc.stderr
    outputs += [proc.stdout, proc.stderr]
    assert len(hub.requests) > 8
    for text in outputs:
        assert TOKEN not in text and TOKEN[:-1] not in text
    files = [p for p in loradeck_home.rglob("*") if p.is_file()]
    assert run.events_path in files and len(files) > 20
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    for name, data in hub.files(f"{USER}/leak-check").items():
        assert TOKEN.encode() not in data, name
    # on the wire the token travels only in Authorization headers
    for req in hub.requests:
        assert TOKEN not in req.path + json.dumps(req.query)
        assert TOKEN.encode() not in req.body
        assert all(TOKEN not in v for k, v in req.headers.items() if k != "authorization")


def test_push_while_the_run_trains_is_refused_before_the_hub_and_leaves_the_phase(hub, run):
    """A job holds the run (this process stands in for it): the push says so in one line,
    sends nothing to the Hub and writes nothing into the run."""
    from loradeck.engine.runs import lock as joblock

    training = EventWriter(run.events_path)
    training.status("training", "training again")
    before = run.events_path.read_bytes()
    joblock.acquire(run.dir, run.id)
    try:
        res = push(hub, run, "me/model")
    finally:
        joblock.release(run.dir)
    line = one_line(res)
    assert f"run {run.id} is still running" in line and "push after it finishes" in line, line
    assert hub.requests == []
    assert run.events_path.read_bytes() == before
    assert run.summary()["phase"] == "failed"  # its job is gone now: killed, as before the push


def plant_page(run: Run) -> Path:
    """A browser page's files in RUN/web, as ``export --web`` leaves them (small stand-ins)."""
    web = run.dir / "web"
    (web / "wllama").mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "chat.js", "wllama/index.js", "wllama/wllama.wasm",
                 "page.gguf"):
        if not (web / name).is_symlink():
            (web / name).write_bytes(b"page file " + name.encode())
    (web / "loradeck-web.json").write_text(json.dumps({"file": "page.gguf", "quant": "q8_0"}))
    return web


@pytest.mark.parametrize("planted", ["merged/x.safetensors", "merged/tokenizer.model",
                                     "gguf/RUN-f16.gguf", "web/wllama/wllama.wasm",
                                     "web/page.gguf"])
def test_a_link_that_leaves_the_run_is_refused_before_anything_goes_up(hub, run, tmp_path,
                                                                       planted):
    """Links planted in the run to a secret file outside it: the push names the link in one
    line, makes no repo and uploads nothing; a link inside the run still goes up."""
    secret = tmp_path / "shadow"
    secret.write_text("root:secret-hash:19000::::::\n", encoding="utf-8")
    link = run.dir / planted.replace("RUN", run.id)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    flags = ["--gguf", "f16"] if planted.startswith("gguf/") else []
    if planted.startswith("web/"):
        plant_page(run)
        flags = ["--web"]
    line = one_line(push(hub, run, "me-model", *flags))
    assert f"{link}: is a link to {secret}, outside the run directory" in line, line
    assert not any(req.method == "POST" and "/repos/create" in req.path for req in hub.requests)
    assert not any(b"secret-hash" in req.body for req in hub.requests)


def test_push_web_without_a_page_names_the_export_to_run_and_makes_no_repo(hub, run):
    line = one_line(push(hub, run, "no-page", "--web"))
    assert "the run has no browser page yet" in line and "loradeck export RUN --web" in line
    assert not any("/repos/create" in req.path for req in hub.requests)
    # a manifest that names a file outside the page is no page either
    plant_page(run)
    (run.dir / "web" / "loradeck-web.json").write_text(json.dumps({"file": "../config.yaml"}))
    assert "no browser page yet" in one_line(push(hub, run, "no-page", "--web"))


def test_a_link_inside_the_run_goes_up_as_the_file(hub, run):
    inside = run.dir / "extra.safetensors"
    shutil.copy(run.merged_dir / "model.safetensors", inside)
    (run.merged_dir / "model-copy.safetensors").symlink_to(inside)
    assert push(hub, run, "inside-link").returncode == 0
    files = hub.files(f"{USER}/inside-link")
    assert files["model-copy.safetensors"] == inside.read_bytes()


def test_push_of_a_checkpoint_merges_it_first_and_the_card_says_so(hub, trained, online):
    """``push --checkpoint N``: RUN/merged (the final adapter's) is merged again from the
    checkpoint's adapter, the card names it, and the final adapter is left as it was."""
    from loradeck.engine.errors import LoradeckError
    from loradeck.engine.publish.hub import push_run
    from loradeck.engine.runs.store import COMPLETE_MARKER

    run = make_run(trained)
    cp = run.checkpoints_dir / "checkpoint-10"
    shutil.rmtree(cp)
    shutil.copytree(trained / "adapter", cp)
    (cp / COMPLETE_MARKER).write_text("{}", encoding="utf-8")
    final = (run.adapter_dir / "adapter_model.safetensors").read_bytes()
    lines: list[str] = []
    with pytest.raises(LoradeckError, match="--checkpoint pushes a merged model"):
        push_run(run, "cp-adapter", token=TOKEN, endpoint=hub.url, adapter=True, checkpoint=10)
    push_run(run, "from-checkpoint", token=TOKEN, endpoint=hub.url, checkpoint=10,
             progress=lines.append)
    assert "merging checkpoint-10's adapter into the base first" in lines
    assert json.loads((run.merged_dir / "config.json").read_text())["loradeck_checkpoint"] \
        == "checkpoint-10"
    card = hub.files(f"{USER}/from-checkpoint")["README.md"].decode()
    assert "Merged from checkpoint-10" in card
    assert (run.adapter_dir / "adapter_model.safetensors").read_bytes() == final
