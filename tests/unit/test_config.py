"""Config: defaults, YAML round trip, overrides and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from loradeck.engine import config as cfg
from loradeck.engine.enums import NotifyOn, values
from loradeck.engine.errors import LoradeckError
from tests.conftest import run_cli


def test_defaults_match_design():
    c = cfg.Config()
    assert c.model.name == "demo:tiny" and c.model.quantization == "auto"
    assert c.lora.r == 16 and c.lora.alpha == 32 and c.lora.target_modules == "all-linear"
    assert c.training.batch_size == 4 and c.training.grad_accum == 4
    assert c.dataset.eval_fraction == 0.1 and c.training.num_processes == 1


def test_round_trip(tmp_path):
    c = cfg.from_overrides(["lora.variant=dora", "training.max_steps=7",
                            "dataset.columns={instruction: q, response: a}",
                            "lora.target_modules=[q_proj, v_proj]"])
    path = cfg.save(c, tmp_path / "c.yaml")
    again = cfg.load(path)
    assert again == c
    assert again.dataset.columns == {"instruction": "q", "response": "a"}
    assert again.lora.target_modules == ["q_proj", "v_proj"]


def test_starter_configs_are_valid_and_commented(tmp_path):
    for demo in (False, True):
        text = cfg.starter_text(demo=demo)
        assert "# rank" in text and "# auto | none | 8bit | 4bit" in text
        c = cfg.validate(yaml.safe_load(text))
        assert c.model.name == "demo:tiny"
    assert cfg.demo_config().model.quantization == "none"


def test_fast_defaults_padding_free_on_liger_off_until_measured(tmp_path):
    c = cfg.Config()
    assert c.training.padding_free is True and c.training.liger == "off"
    for demo in (False, True):
        text = cfg.starter_text(demo=demo)
        assert "padding_free: true" in text and "liger: off" in text
        t = cfg.validate(yaml.safe_load(text)).training  # YAML reads a bare off as false
        assert t.padding_free is True and t.liger == "off"
    path = tmp_path / "c.yaml"
    path.write_text(cfg.starter_text())
    for value, want in (("on", "on"), ("auto", "auto"), ("off", "off"), ("true", "on")):
        assert cfg.load(path, [f"training.liger={value}"]).training.liger == want
    assert cfg.load(path, ["training.padding_free=false"]).training.padding_free is False
    with pytest.raises(LoradeckError, match="training.padding_free"):
        cfg.load(path, ["training.padding_free=sometimes"])


@pytest.mark.parametrize("override, key, allowed", [
    ("lora.variant=foo", "lora.variant", "'lora', 'rslora', 'dora' or 'qalora'"),
    ("training.bogus=1", "training.bogus", "allowed here: method, epochs"),
    ("model.quantization=3bit", "model.quantization", "'none', '8bit' or '4bit'"),
    ("training.batch_size=0", "training.batch_size", "greater than or equal to 1"),
    ("training.max_steps=0", "training.max_steps", "-1 (use epochs)"),
    ("training.num_processes=0", "training.num_processes", "'all' for every GPU"),
    ("training.liger=maybe", "training.liger", "'auto', 'on' or 'off'"),
    ("dataset.columns={question: q}", "dataset.columns", "unknown role"),
])
def test_bad_values_name_the_key(override, key, allowed, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(cfg.starter_text())
    with pytest.raises(LoradeckError) as info:
        cfg.load(path, [override])
    line = info.value.line()
    assert key in line and allowed in line and "\n" not in line
    assert info.value.kind == "config"


def test_unknown_section_and_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("modle:\n  name: x\n")
    with pytest.raises(LoradeckError, match="modle: unknown key; allowed here: model, dataset"):
        cfg.load(p)
    p.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(LoradeckError, match=r"c.yaml:\d+: not valid YAML"):
        cfg.load(p)


def test_init_cli_writes_starter(tmp_path):
    out = tmp_path / "run.yaml"
    r = run_cli(["init", str(out), "--demo"])
    assert r.returncode == 0, r.stderr
    demo = cfg.load(out).training
    assert (demo.max_steps, demo.learning_rate) == (300, 2e-3)
    r = run_cli(["init", str(out)])
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "file exists" in r.stderr
    assert "Traceback" not in r.stderr


def test_every_key_describes_itself_and_every_copy_is_generated():
    """The starter YAML, the LoRA screen's help and `train --help` all read the fields'
    descriptions: every key appears in each with its own text, multi-machine keys included."""
    from loradeck.tui.screens.lora import KNOBS

    text = cfg.starter_text()
    helped = run_cli(["train", "--help"]).stdout
    for key in cfg.keys():
        desc = cfg.field_of(key).description
        assert desc, key
        section, name = key.split(".", 1)
        written = name if name != "on" else "'on'"  # a bare on: is YAML's true
        assert f"  {written}: " in text and desc in text, key
        assert key in helped and desc.split(";")[0][:40] in " ".join(helped.split()), key
    assert cfg.load_text(text, "starter").notify.on == list(values(NotifyOn))
    assert cfg.load_text("notify:\n  on: [failed]\n", "bare").notify.on == ["failed"]
    for key in ("training.num_machines", "training.machine_rank", "training.main_process_ip"):
        assert key.split(".")[1] + ":" in text
    for knob in KNOBS:
        assert knob.help == cfg.field_of(knob.key).description
        if knob.kind == "choice":
            assert knob.choices == cfg.choices_of(knob.key) and knob.choices
    assert cfg.choices_of("model.quantization") == ("auto", "none", "8bit", "4bit")


def test_every_data_role_is_a_column_key_tools_included():
    from loradeck.engine.data import files
    from loradeck.engine.enums import DataRole, values

    config = cfg.from_overrides(["dataset.columns={messages: conversation, tools: functions}"])
    assert config.dataset.columns == {"messages": "conversation", "tools": "functions"}
    assert set(files.ROLES) == set(values(DataRole))
    with pytest.raises(LoradeckError, match="unknown role 'tool'"):
        cfg.from_overrides(["dataset.columns={tool: x}"])


def test_choice_lists_come_from_the_enums():
    from loradeck.engine.data import templates
    from loradeck.engine.enums import DatasetFormat, GGUFType, Quantization, Template, values
    from loradeck.engine.publish import gguf_export
    from loradeck.tui.screens import data

    assert cfg.choices_of("model.quantization") == values(Quantization)
    assert cfg.choices_of("dataset.format") == data.FORMATS == values(DatasetFormat)
    assert cfg.choices_of("dataset.template") == data.TEMPLATES == templates.TEMPLATES \
        == values(Template)
    assert gguf_export.QUANTS == values(GGUFType)
