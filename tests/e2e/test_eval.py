"""``loradeck eval`` end to end on demo:tiny: a run trained through the CLI beats its base on
its own held-out rows, every checkpoint is scored and the best one merged and chatted with,
an exported GGUF file is scored through llama.cpp, a pairwise judge (a stand-in server with
fixed verdicts, and a real ``loradeck api``) judges both orders, a local lm-eval task runs
on both models, and a run held by a training job is refused."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from loradeck.engine.enums import JudgeVerdict
from loradeck.engine.evals import arena
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import read_events
from loradeck.engine.runs.store import Run
from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV, adapter_checksum, of_type

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("eval-demo"), pytest.mark.timeout(900)]

TRAIN = ["--set", "training.max_steps=40", "--set", "training.save_steps=20",
         "--set", "training.eval_steps=20", "--set", "training.learning_rate=0.003"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, _session_env) -> tuple[dict[str, str], Run]:
    """demo:tiny trained for 40 steps on the demo rows, with checkpoints at 20 and 40."""
    home = tmp_path_factory.mktemp("eval-home")
    env = {**JOB_ENV, "LORADECK_HOME": str(home), "TQDM_DISABLE": "1"}
    r = run_cli(["train", "demo", *TRAIN], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return env, Run(next((home / "runs").iterdir()))


def eval_json(env: dict[str, str], *args: str, timeout: float = 600) -> dict:
    r = run_cli(["eval", *args, "--json"], env=env, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_a_tuned_run_beats_its_base_on_its_held_out_rows(tuned):
    env, run = tuned
    held = [json.loads(line) for line in (run.dir / "eval_rows.jsonl").read_text().splitlines()]
    info = next(e for e in of_type(run.events(), "info") if "eval_rows" in e)
    assert len(held) == info["eval_rows"] > 0  # the rows the run held out of training
    arena.record(run.dir, arena.Round(True), JudgeVerdict.A, "Q", {"A": "a", "B": "b"},
                 "adapter", "base")  # a blind vote on the Chat screen, reported too
    out = eval_json(env, run.id, "--checkpoints", "--max-new-tokens", "24")
    names = [m["name"] for m in out["models"]]
    assert names == ["base", "adapter", "checkpoint-20", "checkpoint-40"]
    scores = {m["name"]: m["scores"] for m in out["models"]}
    assert scores["adapter"]["chrf"] > scores["base"]["chrf"] + 5, scores
    assert scores["adapter"]["end_of_turn"] > scores["base"]["end_of_turn"]
    # the reference loss is the run's own eval loss: the same rows, tokens and template
    done = of_type(run.events(), "done")[-1]
    assert scores["adapter"]["loss"] == pytest.approx(done["eval_loss"], abs=2e-3)
    assert scores["base"]["loss"] > scores["adapter"]["loss"]
    assert out["best_checkpoint"]["name"] in ("checkpoint-20", "checkpoint-40")
    assert out["best_checkpoint"]["metric"] == "chrf"
    assert out["arena"]["wins"] == 1
    saved = json.loads(Path(out["path"]).read_text())
    assert [r["where"] for r in saved["rows"]] == [h["where"] for h in held]
    assert set(saved["rows"][0]["answers"]) == set(names)
    assert Path(out["path"]).with_suffix(".md").read_text().count("| checkpoint-") == 2
    ended = [e for e in of_type(run.events(), "eval") if e["stage"] == "done"]
    assert ended[-1]["models"] == out["models"] and ended[-1]["path"] == out["path"]
    assert any(e["stage"] == "answer" for e in of_type(run.events(), "eval"))
    assert run.state()["best_checkpoint"] == out["best_checkpoint"]["step"]
    # compare shows the last evaluation next to the losses
    from loradeck.engine.runs.compare import figure_rows, figures

    fig = figures(run)
    assert fig.eval_chrf == scores["adapter"]["chrf"]
    rows = {row[0]: row[1:] for row in figure_rows({"runs": [fig.__dict__, fig.__dict__]})}
    assert rows["best checkpoint"][0] == out["best_checkpoint"]["name"]
    # the table, for a person
    r = run_cli(["eval", run.id, "--rows", "2", "--max-new-tokens", "8"], env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "| model | chrF | BLEU | ROUGE-L |" in r.stdout and "saved: " in r.stdout


def test_a_checkpoint_is_merged_and_chatted_with_and_the_final_adapter_is_kept(tuned):
    env, run = tuned
    before = adapter_checksum(run.adapter_dir)
    r = run_cli(["merge", run.id, "--checkpoint", "20"], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(from checkpoint-20; the final adapter is as it was)" in r.stdout
    config = json.loads((run.merged_dir / "config.json").read_text())
    assert config["loradeck_checkpoint"] == "checkpoint-20"
    assert adapter_checksum(run.adapter_dir) == before
    r = run_cli(["chat", run.id, "--checkpoint", "20", "--prompt", "What is the capital of "
                 "France?", "--temperature", "0", "--max-new-tokens", "8"], env=env,
                timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checkpoint-20" in r.stderr + r.stdout
    r = run_cli(["merge", run.id, "--checkpoint", "7"], env=env)
    assert r.returncode == 2
    assert "no complete checkpoint at step 7" in r.stderr and "20, 40" in r.stderr
    r = run_cli(["export", run.id, "--checkpoint", "20", "--quant", "q8_0"], env=env,
                timeout=900)  # RUN/merged holds checkpoint-20 already: exported as it is
    assert r.returncode == 0, r.stdout + r.stderr
    assert "merging" not in r.stdout and (run.dir / "gguf" / f"{run.id}-q8_0.gguf").is_file()
    from loradeck.engine.publish.model_card import render_card

    card = render_card(run, adapter=False)
    assert "Merged from checkpoint-20" in card and "## Evaluation" in card
    r = run_cli(["merge", run.id], env=env, timeout=600)  # back to the final adapter
    assert "loradeck_checkpoint" not in json.loads((run.merged_dir / "config.json").read_text())


def test_an_exported_gguf_file_is_scored_through_llama_cpp(tuned):
    env, run = tuned
    r = run_cli(["export", run.id, "--quant", "q8_0"], env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = eval_json(env, run.id, "--gguf", "q8_0", "--max-new-tokens", "24")
    scores = {m["name"]: m["scores"] for m in out["models"]}
    assert set(scores) == {"base", "adapter", "gguf:q8_0"}
    assert scores["gguf:q8_0"]["loss"] is None  # llama.cpp answers; loss is transformers'
    # q8_0 keeps what the adapter learned: far above the base, near the 16-bit model
    assert scores["gguf:q8_0"]["chrf"] > scores["base"]["chrf"] + 5
    assert abs(scores["gguf:q8_0"]["chrf"] - scores["adapter"]["chrf"]) < 10
    answers = json.loads(Path(out["path"]).read_text())["rows"][0]["answers"]["gguf:q8_0"]
    assert answers["text"] and answers["tokens"] > 0


class StandInJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that always says ``REPLY`` and keeps what it was asked."""

    REPLY = "A"
    asked: list[str] = []
    keys: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "stand-in", "object": "model",
                                                "created": 0, "owned_by": "test"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).asked.append(body["messages"][-1]["content"])
        type(self).keys.append(self.headers.get("Authorization", ""))
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "stand-in",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant", "content": type(self).REPLY}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.mark.parametrize("reply, expected", [("A", (2, 0, 2, 0)), ("It depends.", (0, 0, 0, 4))])
def test_the_judge_hears_each_prompt_in_both_orders(tuned, reply, expected):
    """A judge that always says A: the tuned answer wins as A and loses as B, so position bias
    cancels; a judge that says anything else is counted invalid, never guessed."""
    env, run = tuned
    StandInJudge.REPLY, StandInJudge.asked, StandInJudge.keys = reply, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = eval_json({**env, "LORADECK_JUDGE_KEY": "judge-key"}, run.id, "--rows", "2",
                        "--max-new-tokens", "8", "--judge", url)
    finally:
        server.shutdown()
    j = out["judge"]
    assert (j["wins"], j["ties"], j["losses"], j["invalid"]) == expected
    assert len(StandInJudge.asked) == 4 and set(StandInJudge.keys) == {"Bearer judge-key"}
    saved = json.loads(Path(out["path"]).read_text())
    first, second = saved["judge"]["judgements"][:2]
    assert (first["row"], first["tuned_is_a"], second["row"], second["tuned_is_a"]) == \
        (0, True, 0, False)
    tuned_answer = saved["rows"][0]["answers"]["adapter"]["text"]
    a_then_b = [p.split("[Answer A]")[1] for p in StandInJudge.asked[:2]]
    assert a_then_b[0].index(tuned_answer) < a_then_b[0].index("[Answer B]")
    assert a_then_b[1].index(tuned_answer) > a_then_b[1].index("[Answer B]")
    if reply == "A":
        assert j["win_rate"] == 0.5 and j["interval_95"][0] < 0.5 < j["interval_95"][1]
        assert {m["name"]: m["scores"] for m in out["models"]}["adapter"]["judge"] == 0.5


def test_a_real_loradeck_api_judge_is_started_and_stopped(tuned):
    env, run = tuned
    out = eval_json(env, run.id, "--rows", "1", "--max-new-tokens", "8", "--judge", "demo:tiny")
    j = out["judge"]
    assert j["judge"] == "demo:tiny"
    assert j["wins"] + j["ties"] + j["losses"] + j["invalid"] == 2  # both orders, all counted
    left = [p for p in psutil.process_iter(["cmdline"])
            if "api" in (p.info["cmdline"] or []) and "demo:tiny" in (p.info["cmdline"] or [])]
    assert not left  # the judge's server went with the evaluation


def test_a_local_lm_eval_task_runs_on_the_base_and_the_tuned_model(tuned, tmp_path):
    env, run = tuned
    rows = [{"question": f"What is the capital of {c}?", "choices": [city, "Banana", "Seven"],
             "answer": 0} for c, city in (("France", "Paris"), ("Japan", "Tokyo"),
                                          ("Korea", "Seoul"))]
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "capitals.yaml").write_text(
        "task: loradeck_capitals\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{answer}}"\n'
        'doc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n'
        "    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    out = eval_json({**env, "HF_DATASETS_OFFLINE": "1"}, run.id, "--rows", "1",
                    "--max-new-tokens", "4", "--tasks", "loradeck_capitals", "--task-path",
                    str(tmp_path), "--limit", "3")
    tasks = out["tasks"]
    assert tasks["models"] == ["base", "adapter"] and tasks["limit"] == 3
    scores = tasks["scores"]["loradeck_capitals"]
    assert set(scores) == {"base", "adapter"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert tasks["metric"]["loradeck_capitals"] == "acc"
    r = run_cli(["eval", run.id, "--tasks", "no_such_task", "--task-path", str(tmp_path)],
                env=env)
    assert r.returncode == 2 and "unknown lm-eval task 'no_such_task'" in r.stderr


def test_eval_refuses_a_run_whose_training_job_holds_it_and_bad_input(tuned, tmp_path):
    env, run = tuned
    evals_before = sorted((run.dir / "eval").glob("*.json"))
    fd = joblock.acquire(run.dir, run.id)  # as a training job holds it
    try:
        r = run_cli(["eval", run.id, "--rows", "1"], env=env)
    finally:
        joblock.release(run.dir)
        del fd
    assert r.returncode == 2 and "has a job running" in r.stderr
    assert "--while-training" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "?"}\n', encoding="utf-8")
    r = run_cli(["eval", run.id, "--prompts", str(bad)], env=env)
    assert r.returncode != 0 and f"{bad}:2" in r.stderr
    r = run_cli(["eval", run.id, "--gguf", "q4_0"], env=env)
    assert r.returncode == 2 and "no q4_0 GGUF file" in r.stderr
    r = run_cli(["eval", run.id, "--metric", "judge"], env=env)
    assert r.returncode == 2 and "--metric judge needs a judge" in r.stderr
    assert sorted((run.dir / "eval").glob("*.json")) == evals_before  # nothing written
    assert not [e for e in read_events(run.events_path) if e.get("type") == "error"
                and "job running" in e.get("message", "")]


def test_the_best_checkpoint_by_the_judge(tuned):
    """--metric judge: each checkpoint is judged against the base too, and the best win rate
    picks the checkpoint."""
    env, run = tuned
    StandInJudge.REPLY, StandInJudge.asked, StandInJudge.keys = "A", [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = eval_json(env, run.id, "--rows", "1", "--max-new-tokens", "4", "--checkpoints",
                        "--metric", "judge", "--judge", url)
    finally:
        server.shutdown()
    assert len(StandInJudge.asked) == 3 * 2  # the adapter and two checkpoints, both orders
    scores = {m["name"]: m["scores"] for m in out["models"]}
    assert scores["checkpoint-20"]["judge"] == scores["checkpoint-40"]["judge"] == 0.5
    assert out["best_checkpoint"] == {"name": "checkpoint-20", "step": 20, "metric": "judge",
                                      "value": 0.5}  # the earliest of equals
