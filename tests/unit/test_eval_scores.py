"""Evaluation's pure parts: scores from sacrebleu and rouge-score, the judge's verdicts and
tally, eval rows from a file, the best checkpoint, the report's table and the arena votes."""

from __future__ import annotations

import json

import pytest

from loradeck.engine.enums import JudgeVerdict
from loradeck.engine.errors import LoradeckError
from loradeck.engine.evals import arena, judge, report, rows, scores
from loradeck.engine.evals.scores import Answer


def test_a_korean_answer_gets_a_rouge_l_above_zero():
    """rouge-score's default tokenizer keeps a-z and 0-9 only: a Korean answer would score 0."""
    from rouge_score import rouge_scorer

    answer, reference = "한국의 수도는 서울입니다.", "한국의 수도는 서울입니다."
    default = rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure
    assert default == 0.0  # what the library does on its own
    assert scores.rouge_l([answer], [reference]) == 1.0
    assert 0 < scores.rouge_l(["한국의 수도는 부산입니다."], [reference]) < 1
    assert scores.WordTokenizer().tokenize("東京は大きい") == ["東", "京", "は", "大", "き", "い"]


def test_scores_of_one_model():
    answers = [Answer("The capital of France is Paris.", 8, True),
               Answer("the   CAPITAL of japan is tokyo.", 8, True),
               Answer("blue blue blue blue", 16, False)]
    refs = ["The capital of France is Paris.", "The capital of Japan is Tokyo.",
            "The sky is blue."]
    out = scores.score(answers, refs, loss=1.23456)
    assert out["exact"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["end_of_turn"] == pytest.approx(2 / 3, abs=1e-4)
    assert out["answer_tokens"] == pytest.approx(32 / 3, abs=0.1)
    assert out["loss"] == 1.2346
    assert 0 < out["chrf"] < 100 and 0 < out["bleu"] < 100
    assert "json_valid" not in out  # the references are not JSON
    worse = scores.score([Answer("no", 1, True)] * 3, refs)
    assert worse["chrf"] < out["chrf"] and worse["rouge_l"] < out["rouge_l"]


def test_json_valid_rate_when_the_references_are_json():
    refs = ['{"a": 1}', '[1, 2]']
    out = scores.score([Answer('{"a": 1}', 5, True), Answer("[1, 2", 4, False)], refs)
    assert out["json_valid"] == 0.5


def test_rows_without_a_reference_have_no_reference_scores():
    out = scores.score([Answer("hello", 1, True)], [None])
    assert out["chrf"] is None and out["exact"] is None and out["end_of_turn"] == 1.0


@pytest.mark.parametrize("reply, verdict", [
    ("A", JudgeVerdict.A), ("b", JudgeVerdict.B), ("Tie", JudgeVerdict.TIE), ("[[A]]", JudgeVerdict.A),
    ("B.", JudgeVerdict.B), ("Verdict: tie", JudgeVerdict.TIE), ("Reasoning...\nA", JudgeVerdict.A),
    ("A is better", JudgeVerdict.INVALID), ("Both", JudgeVerdict.INVALID), ("", JudgeVerdict.INVALID),
    (None, JudgeVerdict.INVALID), ("AB", JudgeVerdict.INVALID)])
def test_verdicts_are_parsed_and_never_guessed(reply, verdict):
    assert judge.parse_verdict(reply) == verdict


def test_each_prompt_is_judged_in_both_orders_so_position_bias_cancels():
    """A judge that always says A: the tuned model wins as A and loses as B, so it is even."""
    template = judge.load_template(None)
    asked: list[str] = []

    def always_a(prompt: str) -> str:
        asked.append(prompt)
        return "A"

    eval_rows = [rows.EvalRow("x:1", messages=[{"role": "user", "content": "Q1"}], reference="R1"),
                 rows.EvalRow("x:2", messages=[{"role": "user", "content": "Q2"}])]
    out = judge.judge_pairs(always_a, template, eval_rows, ["tuned 1", "tuned 2"],
                            ["base 1", "base 2"], judge="stub", tuned_name="adapter",
                            other_name="base")
    assert (out.tally.wins, out.tally.losses, out.tally.ties) == (2, 2, 0)
    assert out.tally.win_rate() == 0.5
    assert len(asked) == 4
    assert asked[0].index("tuned 1") < asked[0].index("base 1")  # tuned as A first
    assert asked[1].index("base 1") < asked[1].index("tuned 1")  # then as B
    assert "R1" in asked[0] and "[Reference answer]" not in asked[2]
    low, high = out.to_dict()["interval_95"]
    assert low < 0.5 < high


def test_wilson_interval():
    assert judge.wilson(0, 0) is None
    low, high = judge.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert judge.wilson(10, 10)[1] == 1.0


def test_a_broken_judge_template_is_one_line(tmp_path):
    bad = tmp_path / "judge.jinja"
    bad.write_text("{% if %}", encoding="utf-8")
    with pytest.raises(LoradeckError) as err:
        judge.load_template(bad)
    assert "judge.jinja:1" in err.value.line() and "\n" not in err.value.line()


def test_prompt_files_and_their_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "Hi", "reference": "Hello"}) + "\n\n"
                 + json.dumps({"messages": [{"role": "user", "content": "Q"},
                                            {"role": "assistant", "content": "A"}]}) + "\n",
                 encoding="utf-8")
    got = rows.from_file(f)
    assert [(r.text, r.reference) for r in got] == [("Hi", "Hello"), ("Q", "A")]
    assert got[1].messages == [{"role": "user", "content": "Q"}]
    f.write_text('{"prompt": "ok"}\n{"question": "?"}\n', encoding="utf-8")
    with pytest.raises(LoradeckError) as err:
        rows.from_file(f)
    assert err.value.where == f"{f}:2"
    f.write_text('{"prompt": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(LoradeckError, match="line 2 is not JSON"):
        rows.from_file(f)


def test_the_best_checkpoint_by_each_metric():
    models = [{"name": "base", "scores": {"chrf": 90.0, "loss": 0.1}},
              {"name": "checkpoint-5", "scores": {"chrf": 40.0, "loss": 2.0}},
              {"name": "checkpoint-10", "scores": {"chrf": 55.0, "loss": 1.5}},
              {"name": "checkpoint-15", "scores": {"chrf": 55.0, "loss": 1.7}}]
    assert report.best_checkpoint(models, "chrf")["name"] == "checkpoint-10"  # earliest of equals
    assert report.best_checkpoint(models, "loss") == {"name": "checkpoint-10", "step": 10,
                                                      "metric": "loss", "value": 1.5}
    assert report.best_checkpoint(models, "judge") is None
    table = report.markdown_table(models)
    assert "| base | **90.0** |" in table and "**0.100**" in table


def test_a_jobs_pending_request_is_no_result(tmp_path):
    folder = tmp_path / report.EVAL_DIR
    folder.mkdir()
    (folder / ".request-20261206-101010-7.json").write_text('{"checkpoints": true}')
    assert report.results(tmp_path) == [] and report.latest(tmp_path) is None
    (folder / "20261206-101011.json").write_text('{"models": []}')
    assert report.latest(tmp_path) == {"models": []}


def test_arena_votes_are_counted_for_the_tuned_side(tmp_path):
    for a_is_tuned, vote in ((True, JudgeVerdict.A), (False, JudgeVerdict.A), (False, JudgeVerdict.B),
                             (True, JudgeVerdict.TIE)):
        arena.record(tmp_path, arena.Round(a_is_tuned), vote, "Q", {"A": "x", "B": "y"},
                     "adapter", "base")
    t = arena.tally(tmp_path)
    assert (t.wins, t.losses, t.ties) == (2, 1, 1)
    assert arena.summary(tmp_path)["win_rate"] == 0.625
    assert arena.summary(tmp_path / "none") is None


def test_an_evaluation_reads_as_one_log_line_and_its_progress_as_none():
    from loradeck.tui.event_text import event_text

    done = {"type": "eval", "stage": "done", "path": "/r/eval/x.json", "rows": 4,
            "models": [{"name": "base", "scores": {"chrf": 1.04}},
                       {"name": "adapter", "scores": {"chrf": 17.86}}],
            "best_checkpoint": {"name": "checkpoint-40"}, "judge": {"win_rate": 0.75}}
    assert event_text(done) == ("evaluated on 4 rows: base chrF 1.0, adapter chrF 17.9; best "
                                "checkpoint-40; judge win rate 75%")
    assert event_text(done, full=True).endswith("(/r/eval/x.json)")
    assert event_text({"type": "eval", "stage": "answer", "model": "base", "done": 1,
                       "total": 4}) is None


def test_eval_events_are_checked_and_folded():
    from loradeck.engine.runs.events import EventError, checked
    from loradeck.engine.runs.state import fold

    with pytest.raises(EventError, match="unknown eval stage"):
        checked("eval", {"stage": "thinking"})
    with pytest.raises(EventError, match=r"eval \(done\) lacks path"):
        checked("eval", {"stage": "done", "rows": 1, "models": []})
    with pytest.raises(EventError, match=r"eval \(answer\) lacks total"):
        checked("eval", {"stage": "answer", "model": "base", "done": 1})
    going = checked("eval", {"stage": "answer", "model": "base", "done": 1, "total": 2})
    ended = checked("eval", {"stage": "done", "path": "p", "rows": 2, "models": []})
    assert fold([going]).eval_running and not fold([going, ended]).eval_running
    assert fold([going, ended]).last_eval["path"] == "p"
    failed = checked("error", {"kind": "internal", "message": "x", "hint": ""})
    assert not fold([going, failed]).eval_running
