"""The Model, Data and LoRA screens driven by keys (Pilot), the app-level keys, and snapshots."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from textual.widgets import DataTable, Footer, Input, OptionList, Static

from loradeck.engine import config as cfg
from loradeck.engine.runs.store import RunStore
from loradeck.tui.app import SCREENS, LoradeckApp, screen_class
from loradeck.tui.screens import changed_config
from loradeck.tui.widgets import Field, NavBar
from tests.helpers.app import (  # noqa: F401  (an autouse fixture)
    same_on_every_machine,
    settle,
    wait_for,
)

SIZE = (100, 32)


def pilot_test(fn):
    """Run an async Pilot test function in its own event loop."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))
    return wrapper


def text_of(widget: Static) -> str:
    content = widget.content
    return getattr(content, "plain", str(content))


def app_with(**changes) -> LoradeckApp:
    return LoradeckApp(draft=changed_config(cfg.Config(), changes))


async def type_into(pilot, text: str) -> None:
    """Replace the focused Input's text by typing."""
    await pilot.press("home", "ctrl+k", *text)


# ---- the flow: Model -> Data -> LoRA by keys -------------------------------------------------

@pilot_test
async def test_model_data_lora_by_keys(demo_model, loradeck_home, tmp_path):
    app = app_with(**{"model.name": "someorg/some-model", "training.max_length": 256})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert app.current_mode == "model"
        options = screen.query_one("#models", OptionList)
        assert options.get_option_at_index(0).id == "demo:tiny"

        # typing in the input: screen keys (d, r, c, ...) type, they do not switch screens
        await pilot.press("slash", *"./dir-cd-rt")
        assert screen.query_one("#model-input", Input).value == "./dir-cd-rt"
        assert app.current_mode == "model"
        await pilot.press("enter")
        await settle(pilot)
        assert "model directory not found" in text_of(screen.query_one("#model-error", Static))
        assert app.draft.model.name == "someorg/some-model"

        # Escape leaves the input; then choose demo:tiny from the list
        await pilot.press("escape")
        assert app.focused is None
        await pilot.press("tab", "home", "enter")
        await settle(pilot)
        assert app.draft.model.name == "demo:tiny"
        saved = yaml.safe_load((loradeck_home / "draft.yaml").read_text(encoding="utf-8"))
        assert saved["model"]["name"] == "demo:tiny"
        info = text_of(screen.query_one("#model-info", Static))
        assert "LlamaForCausalLM" in info and "parameters" in info

        # Data: the demo set, its Korean rows and the rendered training text
        await pilot.press("d")
        await settle(pilot)
        assert app.current_mode == "data"
        data = app.screen
        table = data.query_one("#data-rows", DataTable)
        assert table.row_count == 42
        assert "프랑스의 수도는 어디인가요?" in [str(c) for c in table.get_row_at(1)]
        rendered = data.query_one("#data-rendered", Static)
        assert "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>" in \
            text_of(rendered)
        await pilot.press("down")
        assert "프랑스의 수도는 파리입니다." in text_of(rendered)
        counts = text_of(data.query_one("#data-counts", Static))
        assert "42 rows" in counts and "42 rows kept, 0 cut to max length 256" in counts
        assert "instruction=instruction" in text_of(data.query_one("#data-shape", Static))

        # the template, chosen by keys: path -> format -> template
        await pilot.press("slash", "tab", "tab", "enter", *"alpaca", "enter")
        await settle(pilot)
        assert app.draft.dataset.template == "alpaca"
        assert "### Instruction:\n프랑스의 수도는 어디인가요?" in text_of(rendered)
        assert "template alpaca" in text_of(data.query_one("#data-counts", Static))

        # LoRA: r validated as typed, the estimate, save and load
        await pilot.press("escape", "l")
        await settle(pilot)
        assert app.current_mode == "lora"
        lora = app.screen
        await pilot.press("tab", "tab", "tab")
        assert app.focused.id == "f-lora-r"
        r_field = lora.query_one("#field-lora-r", Field)
        await type_into(pilot, "0")
        assert r_field.error is not None and r_field.error.startswith("lora.r:")
        assert "greater than or equal to 1" in r_field.error
        assert app.draft.lora.r == 16  # the draft keeps the last valid value
        await type_into(pilot, "abc")
        assert r_field.error.startswith("lora.r:") and "integer" in r_field.error
        await type_into(pilot, "8")
        await settle(pilot)
        assert r_field.error is None and app.draft.lora.r == 8
        estimate = text_of(lora.query_one("#estimate", Static))
        assert "trainable" in estimate and "peak GPU memory" in estimate
        assert "update = alpha/r · BA = 32/8 = 4 · BA" in text_of(lora.query_one("#scale"))

        target = tmp_path / "saved.yaml"
        await pilot.press("escape", "slash")
        assert app.focused.id == "config-path"
        await type_into(pilot, str(target))
        await pilot.press("ctrl+s")
        assert cfg.load(target).lora.r == 8
        assert cfg.load(target).dataset.template == "alpaca"

        await pilot.press("escape", "tab", "tab", "tab", "tab")
        assert app.focused.id == "f-lora-r"
        await type_into(pilot, "32")
        assert app.draft.lora.r == 32
        await pilot.press("escape", "slash", "ctrl+o")
        assert app.draft.lora.r == 8
        assert lora.query_one("#f-lora-r", Input).value == "8"
        assert "loaded" in text_of(lora.query_one("#lora-status", Static))

        # Escape (nothing focused) goes back: LoRA -> Data -> Model
        await pilot.press("escape", "escape")
        assert app.current_mode == "data"
        await pilot.press("escape")
        assert app.current_mode == "model"


@pilot_test
async def test_lora_screen_turns_padding_free_batches_off_and_on_by_keys(demo_model,
                                                                        loradeck_home):
    """The benchmarks' fast default has its own switch on the LoRA screen, saved in the draft."""
    app = app_with(**{"model.name": "demo:tiny"})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("l")
        await settle(pilot)
        lora = app.screen
        box = lora.query_one("#f-training-padding_free")
        assert app.draft.training.padding_free is True and box.value is True
        box.focus()
        await pilot.press("space")
        await settle(pilot)
        assert box.value is False and app.draft.training.padding_free is False
        saved = yaml.safe_load((loradeck_home / "draft.yaml").read_text(encoding="utf-8"))
        assert saved["training"]["padding_free"] is False
        await pilot.press("space")
        await settle(pilot)
        assert app.draft.training.padding_free is True


LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}


@pytest.fixture
def cached_model():
    """A model config in the Hugging Face cache, laid out as the Hub client writes it."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--loradeck-test--llama-7b"
    commit = "0123456789abcdef0123456789abcdef01234567"
    blob = repo / "blobs" / "c0ffee"
    blob.parent.mkdir(parents=True)
    blob.write_text(json.dumps(LLAMA_7B), encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to("../../blobs/c0ffee")
    return "loradeck-test/llama-7b"


@pilot_test
async def test_cached_model_listed_with_size_and_estimated(cached_model, demo_model):
    app = app_with(**{"model.quantization": "4bit"})
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        options = app.screen.query_one("#models", OptionList)
        ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
        assert ids == ["demo:tiny", cached_model]
        row = Console(width=50)
        with row.capture() as shown:
            row.print(options.get_option_at_index(1).prompt)
        assert shown.get().split()[-1].endswith("B")  # its size, at the right
        await pilot.press("down")
        await settle(pilot)
        info = text_of(app.screen.query_one("#model-info", Static))
        assert "LlamaForCausalLM" in info and "6.7B" in info
        await pilot.press("enter")
        assert app.draft.model.name == cached_model
        await pilot.press("l")
        await settle(pilot)
        estimate = text_of(app.screen.query_one("#estimate", Static))
        assert "trainable 40.0M of 6.7B" in estimate
        assert "fits: 16 GB ✓ 24 ✓" in estimate and "peak GPU memory ~" in estimate
        # a 7B model in 16 bits: fits 24 GB at batch 4, not at 16; the estimate says what would
        await pilot.press("tab", "tab", "enter", "up", "up", "enter")
        await settle(pilot)
        assert app.draft.model.quantization == "none"
        estimate = text_of(app.screen.query_one("#estimate", Static))
        assert "fits: 16 GB ✗ 24 ✓" in estimate
        await pilot.press(*["tab"] * 9)  # the Training method field comes first
        assert app.focused.id == "f-training-batch_size"
        await type_into(pilot, "16")
        await settle(pilot)
        estimate = text_of(app.screen.query_one("#estimate", Static))
        assert "16 GB ✗ 24 ✗" in estimate and "for a 24 GB GPU:" in estimate
        assert "try model.quantization=4bit" in estimate


@pilot_test
async def test_invalid_choices_and_presets(demo_model):
    app = app_with(**{"model.quantization": "8bit"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("l")
        await settle(pilot)
        screen = app.screen
        # dora with 8-bit is refused, naming the key
        await pilot.press("tab", "enter", "down", "down", "enter")
        assert app.draft.lora.variant == "lora"
        err = screen.query_one("#field-lora-variant", Field).error
        assert err is not None and err.startswith("lora.variant:") and "8bit" in err

        # a preset fills the form and the draft
        await pilot.press("shift+tab", "enter", "down", "down", "enter")
        await settle(pilot)
        assert app.draft.model.quantization == "4bit"
        assert app.draft.training.grad_accum == 4 and app.draft.training.max_length == 1024
        assert screen.query_one("#f-training-max_length", Input).value == "1024"
        assert screen.query_one("#field-lora-variant", Field).error is None


@pilot_test
async def test_data_errors_shown_in_place_with_row_numbers(demo_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [{"instruction": "Hi", "response": "Hello"}, {"instruction": "Bye", "response": ""},
            {"instruction": "안녕", "response": "안녕하세요"}]
    bad.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                   encoding="utf-8")
    app = app_with(**{"dataset.path": str(bad), "model.name": "someorg/not-downloaded"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await settle(pilot)
        screen = app.screen
        errors = text_of(screen.query_one("#data-errors", Static))
        assert errors.startswith("bad.jsonl:2: empty response")  # the full path is above
        assert screen.query_one("#data-path", Input).value == str(bad)
        assert screen.query_one("#data-rows", DataTable).row_count == 3
        # the tokenizer of a model that is not downloaded cannot load offline: said in place
        counts = text_of(screen.query_one("#data-counts", Static))
        assert counts == "no token counts: the rows cannot be rendered (see above)"
        rendered = text_of(screen.query_one("#data-rendered", Static))
        assert rendered.startswith("cannot render:") and "someorg/not-downloaded" in rendered

        # a missing file, typed in
        await pilot.press("slash")
        await type_into(pilot, str(tmp_path / "nope.jsonl"))
        await pilot.press("enter")
        await settle(pilot)
        assert "dataset file not found" in text_of(screen.query_one("#data-errors", Static))
        assert app.draft.dataset.path == str(tmp_path / "nope.jsonl")
        assert app.is_running


@pilot_test
async def test_column_mapping_edited_by_keys(demo_model, tmp_path):
    data = tmp_path / "odd.csv"
    data.write_text("ask,reply,note\n무엇?,이것.,x\nWhat?,This.,y\n", encoding="utf-8")
    app = app_with(**{"dataset.path": str(data), "training.max_length": 64})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await settle(pilot)
        screen = app.screen
        assert "unknown dataset shape; columns found: ask, reply, note" in text_of(
            screen.query_one("#data-errors", Static))
        # path -> format -> template -> instruction -> response: pick the columns by keys
        await pilot.press("slash", "tab", "tab", "tab")
        assert app.focused.id == "map-instruction"
        await pilot.press("enter", *"ask", "enter")
        await settle(pilot)
        assert app.draft.dataset.columns == {"instruction": "ask"}
        app.screen.query_one("#map-response").focus()
        await pilot.press("enter", *"reply", "enter")
        await settle(pilot)
        assert app.draft.dataset.columns == {"instruction": "ask", "response": "reply"}
        assert not screen.query_one("#data-errors", Static).display
        assert "instruction=ask, response=reply" in text_of(screen.query_one("#data-shape"))
        assert "<|im_start|>user\n무엇?<|im_end|>" in text_of(
            screen.query_one("#data-rendered", Static))
        assert "2 rows" in text_of(screen.query_one("#data-counts", Static))


# ---- app-level keys, palette, modes ----------------------------------------------------------

@pilot_test
async def test_screen_keys_greyed_and_in_the_palette(demo_model, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    app = LoradeckApp(demo=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        active = app.screen.active_bindings
        assert active["m"].enabled is False  # already on Model: greyed out
        assert active["d"].enabled and active["l"].enabled
        assert app.check_action("back", ()) is None  # nowhere to go back to yet
        assert all(b.binding.id for b in active.values() if b.binding.show)

        await pilot.press("ctrl+p", *"LoRA", "enter")
        await settle(pilot)
        assert app.current_mode == "lora"
        # the screen's own commands are in the palette too
        await pilot.press("escape", "ctrl+p", *"Save YAML", "enter")
        await settle(pilot)
        assert cfg.load(tmp_path / "loradeck.yaml") == app.draft


@pilot_test
async def test_draft_kept_between_starts_and_a_bad_one_ignored(loradeck_home):
    app = LoradeckApp(demo=True)
    async with app.run_test(size=SIZE) as pilot:
        app.set_draft(changed_config(app.draft, {"lora.r": 4}))
        await pilot.pause()
    assert LoradeckApp().draft.lora.r == 4 and LoradeckApp().draft.model.name == "demo:tiny"

    (loradeck_home / "draft.yaml").write_text("lora:\n  r: zero\n", encoding="utf-8")
    app = LoradeckApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.draft == cfg.Config()
        shown = [n.message for n in app._notifications]
        assert any(m.startswith(f"{loradeck_home / 'draft.yaml'}: lora.r:") for m in shown)


def test_modes_are_the_real_screens():
    names = {"model": "ModelScreen", "data": "DataScreen", "lora": "LoraScreen",
             "train": "TrainScreen", "chat": "ChatScreen", "eval": "EvalScreen",
             "push": "PushScreen",
             "runs": "RunsScreen"}
    assert [m for m, _k, _l in SCREENS] == list(names)
    assert set(LoradeckApp.MODES) == set(names)
    for mode, name in names.items():
        cls = screen_class(mode)
        assert cls.__name__ == name and cls.__module__ == f"loradeck.tui.screens.{mode}"


@pilot_test
async def test_attach_opens_the_run_on_train(demo_model):
    run = RunStore().create(cfg.demo_config())
    app = LoradeckApp(run_id=run.id)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: getattr(app.screen, "run_id", None) == run.id, 30,
                       "the Train screen mounted on the run")  # not torn down mid-mount
        assert app.current_mode == "train" and app.current_run_id == run.id
    app = LoradeckApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.open_run(run.id)
        await wait_for(pilot, lambda: getattr(app.screen, "run_id", None) == run.id, 30,
                       "the switch to the run")
        assert app.current_mode == "train" and app.current_run_id == run.id


@pilot_test
async def test_usable_at_80x24(demo_model):
    app = LoradeckApp(demo=True)
    async with app.run_test(size=(80, 24)) as pilot:
        for key in ("m", "d", "l"):
            await pilot.press("escape", key)
            await pilot.pause(0.1)
            screen = app.screen
            assert screen.query_one(NavBar).region.y == 0
            assert screen.query_one(Footer).region.y == 23
            if key == "d":
                assert screen.query_one("#data-rows").region.height >= 4
                assert screen.query_one("#data-render-box").region.height >= 3
        last = app.screen.query_one("#f-training-save_steps", Input)
        last.focus()  # the form scrolls to keep the focused field in view
        await wait_for(pilot, lambda: 0 < last.region.y < 23, 5, "the field scrolled into view")
        assert last.region.right <= 80
        assert "checkpoints" in text_of(app.screen.query_one("#help-line", Static))


@pilot_test
async def test_keys_remapped_from_settings(demo_model):
    from loradeck.tui import settings

    settings.update_settings(keymap={"go.data": "f3"})
    app = LoradeckApp(demo=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        assert app.current_mode == "model"
        await pilot.press("f3")
        await pilot.pause()
        assert app.current_mode == "data"
        assert " f3 Data " in app.screen.query_one(NavBar).build().plain


# ---- snapshots --------------------------------------------------------------------------------


@pilot_test
async def test_the_lora_screen_offers_qalora_with_its_trade_off_and_group_size(demo_model):
    app = app_with(**{"model.quantization": "4bit"})
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("l")
        await settle(pilot)
        lora = app.screen
        await pilot.press("tab")
        assert app.focused.id == "f-lora-variant"
        await pilot.press("enter", "down", "down", "down", "enter")  # lora -> qalora
        await settle(pilot)
        assert app.draft.lora.variant == "qalora"
        # picking qalora frees the base from bitsandbytes, and says so
        assert app.draft.model.quantization == "none"
        assert "model.quantization set to none" in text_of(lora.query_one("#lora-status"))
        help_text = text_of(lora.query_one("#help-line", Static))
        assert "slightly coarser update" in help_text and "no second quantization" in help_text
        # back to 4-bit is refused while qalora is on, in one line on that field
        await pilot.press("tab", "enter", "down", "down", "enter")
        await settle(pilot)
        assert app.draft.model.quantization == "none"
        error = lora.query_one("#field-model-quantization", Field).error
        assert error and "must be none with lora.variant qalora" in error
        # the group size: a choice of 32, 64, 128, kept as a number
        await pilot.press("tab", "tab", "tab", "tab", "tab")
        assert app.focused.id == "f-lora-group_size"
        assert "32 = GGUF Q4_1 blocks" in text_of(lora.query_one("#help-line", Static))
        await pilot.press("enter", "down", "enter")
        await settle(pilot)
        assert app.draft.lora.group_size == 64


@pilot_test
async def test_fast_typing_in_a_lora_field_keeps_every_key(demo_model):
    """End, BSpace, 3, 2 arriving at once (as a fast typist or a paste over SSH sends them):
    the field ends as 32 and so does the draft (it once became 83, then 836)."""
    from textual import events

    app = app_with(**{"lora.r": 8})
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("l")
        await settle(pilot)
        field = app.screen.query_one("#f-lora-r", Input)
        field.focus()
        await pilot.pause()
        for key, char in (("end", None), ("backspace", None), ("3", "3"), ("2", "2")):
            app.post_message(events.Key(key, char))  # no pause between them
        await settle(pilot)
        assert field.value == "32" and app.draft.lora.r == 32
        for key, char in (("home", None), ("delete", None), ("delete", None),
                          *((c, c) for c in "128"), ("end", None), ("backspace", None)):
            app.post_message(events.Key(key, char))
        await settle(pilot)
        assert field.value == "12" and app.draft.lora.r == 12
