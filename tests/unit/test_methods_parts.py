"""The pure parts of the preference and reward methods: GRPO's built-in rewards, each on its
own; the rows of each method read, normalized and refused; the method sections of the config;
the figures kept from a Trainer's log."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.data import method_rows
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.state import fold
from loradeck.engine.train import rewards
from loradeck.engine.train.methods import method_figures


@pytest.mark.parametrize("completion, answer, same", [
    ("2 plus 3 is 5.", "5", True),
    ("The sum is 5.0", "5", True),
    ("Working...\n#### 1,234", "1234", True),
    ("so \\boxed{42} it is", "42", True),
    ("Answer: Paris", "paris", True),
    ("2 plus 3 is 6.", "5", False),
    ("nothing here", "5", False),
    ("Answer: Lyon", "Paris", False),
])
def test_exact_answer(completion, answer, same):
    assert rewards.exact_answer([completion], answer=[answer]) == [1.0 if same else 0.0]


def test_exact_answer_needs_an_answer_column():
    with pytest.raises(LoradeckError, match="needs an 'answer' column"):
        rewards.exact_answer(["5"])


def test_the_other_builtins():
    assert rewards.regex(r"^<answer>\d+</answer>$")(["<answer>5</answer>", "5"]) == [1.0, 0.0]
    assert rewards.json_valid(completions=['{"a": 1}', "{a: 1}", " [1, 2] "]) == [1.0, 0.0, 1.0]
    assert rewards.max_length(10)(["short", "x" * 15, "x" * 30]) == [1.0, 0.5, 0.0]
    assert rewards.contains("Paris")(["in Paris", "in Lyon"]) == [1.0, 0.0]


def test_rewards_are_named_as_trl_logs_them(tmp_path):
    built = rewards.build(["exact_answer", "regex:a", "regex:b", "max_length:5", "contains:x",
                           "json_valid"])
    assert [f.__name__ for f in built] == ["exact_answer", "regex", "regex_2", "max_length",
                                           "contains", "json_valid"]
    path = tmp_path / "mine.py"
    path.write_text("def short(completions, **kw):\n    return [float(len(c) < 3) for c in "
                    "completions]\n")
    (fn,) = rewards.build([f"{path}:short"])
    assert fn.__name__ == "short" and fn(["ab", "abcd"]) == [1.0, 0.0]


def test_a_reward_file_is_checked_without_running_it(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("raise SystemExit('ran')\ndef other(completions): return []\n")
    with pytest.raises(LoradeckError, match="defines no function 'short'"):
        rewards.check_file(f"{path}:short")
    config = cfg.from_overrides(["training.method=grpo", f"grpo.rewards=[{path}:other]"])
    with pytest.raises(LoradeckError, match="would run your Python code"):
        rewards.check(config, allowed=False)
    assert rewards.check(config, allowed=True) == [
        f"grpo.rewards: running your reward code: {path}:other"]


def section(path, max_rows=None):
    return SimpleNamespace(path=str(path), split="train", max_rows=max_rows)


def test_pairs_as_text_and_as_ultrafeedback_conversations(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
            {"prompt": "Sum?", "chosen": [{"role": "user", "content": "Sum?"},
                                          {"role": "assistant", "content": "4"}],
             "rejected": [{"role": "user", "content": "Sum?"},
                          {"role": "assistant", "content": "5"}]},
            {"chosen": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Capital of France?"},
                        {"role": "assistant", "content": "Paris"}],
             "rejected": [{"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "Rome"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = method_rows.read(section(path), "dpo")
    assert read.shape == "pairs" and read.total_rows == 3
    assert read.rows[0] == {"prompt": [{"role": "user", "content": "Hi?"}],
                            "chosen": "Hello!", "rejected": "Go away."}
    assert read.rows[1]["chosen"] == "4" and read.rows[1]["prompt"][-1]["content"] == "Sum?"
    assert read.rows[2]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert method_rows.read(section(path, max_rows=1), "dpo").rows == read.rows[:1]


def test_unpaired_and_prompt_rows(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text('{"prompt": "a", "completion": "b", "label": "True"}\n')
    assert method_rows.read(section(path), "kto").rows[0]["label"] is True
    path = tmp_path / "g.jsonl"
    path.write_text('{"prompt": "2+2?", "answer": 4, "level": "easy"}\n')
    row = method_rows.read(section(path), "grpo").rows[0]
    assert row == {"prompt": [{"role": "user", "content": "2+2?"}], "answer": 4,
                   "level": "easy"}


@pytest.mark.parametrize("rows, method, said", [
    ([{"messages": [{"role": "user", "content": "a"}]}], "dpo",
     "training.method dpo needs prompt, chosen, rejected in each row; this dataset has rows "
     "for SFT (messages)"),
    ([{"prompt": "a", "chosen": "b"}], "orpo", "needs prompt, chosen, rejected"),
    ([{"prompt": "a", "completion": "b", "label": 1}], "kto",
     "x.jsonl:1: 'label' must be true or false (got 1)"),
    ([{"prompt": "a", "chosen": "b", "rejected": [{"role": "user", "content": "a"}]}], "dpo",
     "x.jsonl:1: column 'rejected' must end with the assistant's answer"),
    ([{"prompt": "", "chosen": "b", "rejected": "c"}], "dpo",
     "x.jsonl:1: the prompt is empty or does not end with a user turn"),
    ([{"question": "a"}], "grpo", "training.method grpo needs prompt in each row"),
])
def test_bad_rows_are_one_line_naming_the_row(tmp_path, rows, method, said):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LoradeckError) as err:
        method_rows.read(section(path), method)
    assert said in err.value.line()


def test_the_method_sections_and_their_refusals():
    c = cfg.from_overrides(["training.method=dpo", "preference.loss_type=ipo"])
    assert (c.training.method, c.preference.beta, c.preference.loss_type) == ("dpo", 0.1, "ipo")
    for bad, said in ((["training.method=dpo", "training.packing=true"],
                       "training.packing: only for training.method sft"),
                      (["preference.loss_type=nope"], "preference.loss_type: must be one of"),
                      (["grpo.rewards=[nope]"], "unknown reward 'nope'")):
        with pytest.raises(LoradeckError) as err:
            cfg.from_overrides(bad)
        assert said in err.value.line()


def test_the_method_figures_kept_and_folded():
    logs = {"loss": 0.5, "rewards/margins": 1.25, "rewards/accuracies": 1.0,
            "logits/chosen": -0.1, "eval_rewards/margins": 2.0}
    assert method_figures("dpo", logs) == {"rewards/margins": 1.25, "rewards/accuracies": 1.0,
                                           "eval_rewards/margins": 2.0}
    grpo = {"reward": 0.5, "rewards/exact/mean": 0.25, "rewards/exact/std": 0.1,
            "clip_ratio/low_mean": 0.0}
    assert set(method_figures("grpo", grpo)) == {"reward", "rewards/exact/mean",
                                                 "rewards/exact/std"}
    assert method_figures("sft", logs) == {}
    state = fold([{"type": "info", "method": "dpo"},
                  {"type": "metrics", "step": 1, "loss": 0.7,
                   "figures": {"rewards/margins": 0.0}},
                  {"type": "metrics", "step": 2, "loss": 0.5,
                   "figures": {"rewards/margins": 1.5, "eval_rewards/margins": 9.0}}])
    assert state.figures == {"rewards/margins": {1: 0.0, 2: 1.5}}
    assert state.key_figure() == ("reward margin", 1.5)


def test_the_estimate_counts_what_each_method_adds():
    from loradeck.engine.train import estimate

    shape = estimate.shape_from_config({
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 128256})
    sft = estimate.estimate(shape, cfg.from_overrides([]))
    dpo = estimate.estimate(shape, cfg.from_overrides(["training.method=dpo"]))
    grpo = estimate.estimate(shape, cfg.from_overrides([
        "training.method=grpo", "grpo.rewards=[json_valid]", "grpo.max_completion_length=256"]))
    assert dpo.weights_gb == sft.weights_gb  # the reference is the base: no second copy
    assert dpo.activations_gb > 1.9 * sft.activations_gb  # chosen and rejected in one batch
    assert grpo.activations_gb > sft.activations_gb * (1024 + 256) / 1024
    assert any("KV cache" in n for n in grpo.notes)
    assert any("no second copy of the weights" in n for n in dpo.notes)
    orpo = estimate.estimate(shape, cfg.from_overrides(["training.method=orpo"]))
    kto = estimate.estimate(shape, cfg.from_overrides(["training.method=kto"]))
    assert orpo.weights_gb == kto.weights_gb == sft.weights_gb
    assert orpo.activations_gb > 1.9 * sft.activations_gb and kto.activations_gb > \
        sft.activations_gb
    assert any(n.startswith("orpo: no reference model") for n in orpo.notes)
    assert not any("reference model is the base" in n for n in orpo.notes)


def test_held_out_rows_keep_the_good_answer_as_the_reference():
    from loradeck.engine.evals.rows import from_example
    from loradeck.engine.train.method_data import held_out_example

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    pair = from_example(held_out_example({"prompt": prompt, "chosen": "5", "rejected": "6"}),
                        "pairs.jsonl:4")
    assert (pair.messages, pair.reference, pair.where) == (prompt, "5", "pairs.jsonl:4")
    good = from_example(held_out_example({"prompt": prompt, "completion": "5", "label": True}),
                        "x")
    bad = from_example(held_out_example({"prompt": prompt, "completion": "6", "label": False}),
                       "x")
    assert (good.reference, bad.reference, bad.messages) == ("5", None, prompt)
