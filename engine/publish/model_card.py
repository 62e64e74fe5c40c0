"""The model card of a pushed run: Hub metadata, settings, final losses, loss table and chart.

Built from the run's config.yaml and events.jsonl only, so the app can preview it at any time.
Local paths are shown by their last part alone; the card holds no secret and no home directory.
Light module: huggingface_hub only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from loradeck.engine.models import demo
from loradeck.engine.runs.events import read_events
from loradeck.engine.runs.state import fold

CHART_FILE = "loss.svg"
MAX_TABLE_ROWS = 200
SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class LossPoint:
    step: int
    train: float | None = None
    eval: float | None = None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def loss_history(events: list[dict[str, Any]]) -> list[LossPoint]:
    """Train and eval loss per step, as the run's state folds them (one row per step)."""
    state = fold(events)
    return [LossPoint(step, state.train_losses.get(step), state.eval_losses.get(step))
            for step in sorted({*state.train_losses, *state.eval_losses})]


def final_losses(events: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(train, eval) loss at the end: the ``done`` event's when given, else the last logged."""
    history = loss_history(events)
    train = next((p.train for p in reversed(history) if p.train is not None), None)
    evl = next((p.eval for p in reversed(history) if p.eval is not None), None)
    for ev in events:
        if ev.get("type") == "done":
            done_train = _num(ev.get("train_loss", ev.get("loss")))
            done_eval = _num(ev.get("eval_loss"))
            train = done_train if done_train is not None else train
            evl = done_eval if done_eval is not None else evl
    return train, evl


def hub_id(name: str | None) -> str | None:
    """``name`` when it is a Hub repo id (not demo:tiny, not a local path), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or demo.is_demo(name) or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    if Path(name).expanduser().exists() or Path(name).suffix.lower() in (
            ".json", ".jsonl", ".csv", ".parquet", ".txt"):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _model_text(name: str) -> str:
    if demo.is_demo(name):
        return "`demo:tiny` (loradeck's small built-in test model)"
    return f"[`{name}`](/{name})" if hub_id(name) else \
        f"`{Path(name).name}` (a local model)"


def _dataset_text(path: str) -> str:
    if path.strip().lower() == "demo":
        return "the loradeck demo set (instruction / context / response rows, Korean and English)"
    if hub_id(path):
        return f"[`{path}`](/datasets/{path})"
    return f"`{Path(path).name}` (a local file)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line unicode chart of ``values`` (averaged down to ``width`` characters)."""
    if not values:
        return ""
    if len(values) > width:
        size = len(values) / width
        values = [sum(chunk) / len(chunk) for chunk in
                  (values[int(i * size):max(int((i + 1) * size), int(i * size) + 1)]
                   for i in range(width))]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))]
                   for v in values)


def loss_svg(points: list[LossPoint]) -> str | None:
    """A small SVG line chart of train (solid) and eval (dashed) loss by step; None if no data."""
    train = [(p.step, p.train) for p in points if p.train is not None]
    evl = [(p.step, p.eval) for p in points if p.eval is not None]
    if not train and not evl:
        return None
    w, h, left, right, top, bottom = 640, 300, 60, 20, 30, 40
    steps = [s for s, _ in train + evl]
    losses = [v for _, v in train + evl]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(losses), max(losses)
    pad = (y1 - y0) * 0.05 or max(abs(y1) * 0.05, 0.05)
    y0, y1 = y0 - pad, y1 + pad

    def x(step: float) -> float:
        return left + (step - x0) / ((x1 - x0) or 1) * (w - left - right) if x1 > x0 \
            else (left + w - right) / 2

    def y(value: float) -> float:
        return top + (y1 - value) / (y1 - y0) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="training and eval loss by step" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
           f'<text x="{left}" y="18" font-size="14" fill="#111827">loss by step</text>']
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        yy = y(value)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{w - right}" y2="{yy:.1f}" '
                   'stroke="#e5e7eb"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" '
                   f'fill="#4b5563">{value:.3f}</text>')
    for step in sorted({x0, (x0 + x1) // 2, x1}):
        out.append(f'<text x="{x(step):.1f}" y="{h - bottom + 16}" text-anchor="middle" '
                   f'fill="#4b5563">{step}</text>')
    out.append(f'<text x="{(left + w - right) / 2:.1f}" y="{h - 6}" text-anchor="middle" '
               'fill="#4b5563">step</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#9ca3af"/>')
    out.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" '
               'stroke="#9ca3af"/>')
    for series, colour, dash in ((train, "#2563eb", ""), (evl, "#ea580c", ' stroke-dasharray="6 4"')):
        if len(series) > 1:
            pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in series)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"{dash}/>')
        if len(series) <= 40:
            out += [f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>'
                    for s, v in series]
    legend = [("train loss", "#2563eb", train), ("eval loss", "#ea580c", evl)]
    lx = w - right - 200
    for i, (label, colour, _series) in enumerate(item for item in legend if item[2]):
        out.append(f'<rect x="{lx + i * 100}" y="5" width="14" height="4" fill="{colour}"/>')
        out.append(f'<text x="{lx + i * 100 + 20}" y="12" fill="#111827">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _table_rows(points: list[LossPoint]) -> tuple[list[LossPoint], int]:
    """At most MAX_TABLE_ROWS rows: every k-th point plus the last, and k."""
    if len(points) <= MAX_TABLE_ROWS:
        return points, 1
    k = math.ceil(len(points) / MAX_TABLE_ROWS)
    rows = points[::k]
    if rows[-1] is not points[-1]:
        rows.append(points[-1])
    return rows, k


def card_data(run, adapter: bool) -> ModelCardData:
    """The card's YAML metadata: base model, datasets, library, tags."""
    config = run.config()
    base = hub_id(config.model.name)
    dataset = hub_id(config.dataset.path)
    tags = ["loradeck", "qlora" if config.model.quantization == "4bit" else "lora"]
    if config.training.method != "sft":
        tags.append(str(config.training.method))
    if adapter:
        tags.append("peft")
    data: dict[str, Any] = dict(library_name="peft" if adapter else "transformers",
                                pipeline_tag="text-generation", tags=tags)
    if base:
        data["base_model"] = base
        data["base_model_relation"] = "adapter" if adapter else "finetune"
    if dataset:
        data["datasets"] = [dataset]
    return ModelCardData(**data)


def _usage(repo_id: str, adapter: bool, tokenizer_repo: str) -> str:
    load = ("from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")\n'
            if adapter else
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")\n')
    return ("```python\n" + load +
            f'tokenizer = AutoTokenizer.from_pretrained("{tokenizer_repo}")\n'
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,\n"
            '                                       return_dict=True, return_tensors="pt")\n'
            "output = model.generate(**inputs, max_new_tokens=128)\n"
            'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], '
            "skip_special_tokens=True))\n```\n")


def _gguf_usage(repo: str, files: list[str]) -> list[str]:
    """How to run the pushed GGUF files on one's own machine: llama.cpp and Ollama."""
    first = files[0]
    modelfile = first[: -len(".gguf")] + ".Modelfile"
    return ["## Run it locally (GGUF)", "",
            f"GGUF files for llama.cpp and Ollama: {', '.join(f'`{f}`' for f in files)}. "
            "Each carries the tokenizer and the chat template the model was trained with.", "",
            "```sh", f"hf download {repo} {first} {modelfile} --local-dir .",
            f"llama-cli -m {first} -cnv            # llama.cpp, chat in the terminal",
            f"ollama create {repo.split('/')[-1]} -f {modelfile}",
            f"ollama run {repo.split('/')[-1]}", "```", ""]


def _web_usage(repo: str, page: dict[str, Any]) -> list[str]:
    """How to open the pushed browser page (``web/``): any static server, or a Space."""
    name = repo.split("/")[-1]
    return ["## Run it in your browser", "",
            f"`web/` is a chat page that runs `{page['file']}` ({page.get('quant')}) in the "
            "browser that opens it, with wllama (llama.cpp in WebAssembly: WebGPU when the "
            "browser has it, CPU threads otherwise). Nothing typed into it leaves that "
            "machine, and it loads nothing from any other site.", "",
            "```sh", f'hf download {repo} --include "web/*" --local-dir .',
            "python3 -m http.server 8008 --bind 127.0.0.1 --directory web",
            "# open http://127.0.0.1:8008/ (one CPU thread without cross-origin isolation)",
            "```", "",
            "Served with the headers `Cross-Origin-Opener-Policy: same-origin` and "
            "`Cross-Origin-Embedder-Policy: require-corp`, it uses several threads. "
            "`web/README.md` sets them for a static Space: upload the folder as one with "
            f"`hf upload you/{name}-chat web . --repo-type space`.", ""]


def _eval_section(run, adapter: bool) -> list[str]:
    """The run's last evaluation (``loradeck eval``) as a table, when there is one."""
    from loradeck.engine.evals import report

    result = report.latest(run.dir)
    if not result or not result.get("models"):
        return []
    out = ["## Evaluation", "",
           f"Greedy answers to {len(result.get('rows') or [])} prompts "
           f"({result.get('source')}), at most {result.get('max_new_tokens')} new tokens "
           "each, scored with `loradeck eval` (chrF and BLEU by sacrebleu, ROUGE-L by "
           "rouge-score).", "", report.markdown_table(result["models"]), ""]
    judge = result.get("judge")
    if judge and judge.get("win_rate") is not None:
        low, high = judge["interval_95"]
        out += [f"A pairwise judge ({judge['judge']}), each prompt in both orders: "
                f"{judge['tuned']} wins {judge['win_rate']:.0%} against {judge['against']} "
                f"(95% interval {low:.0%}–{high:.0%}; {judge['wins']} wins, {judge['ties']} "
                f"ties, {judge['losses']} losses, {judge['invalid']} invalid).", ""]
    return out


METHOD_TEXT = {"sft": "supervised fine-tuning on the answers",
               "dpo": "DPO: preferring the chosen answer to the rejected one",
               "orpo": "ORPO: SFT with an odds-ratio preference term",
               "kto": "KTO: answers labelled good or bad",
               "grpo": "GRPO: rewards on its own sampled answers"}


def _stages(config, events: list[dict[str, Any]]) -> list[str]:
    """How it was trained when not plain SFT: the method, and both stages when this run
    trained further the adapter of another."""
    method = str(config.training.method)
    source = next((e for e in events if e.get("type") == "log" and e.get("adapter_from")), None)
    if method == "sft" and source is None:
        return []
    if source is None:
        return [f"Trained with {METHOD_TEXT[method]}.", ""]
    first = "an earlier adapter"
    if source.get("source_run"):
        first_method = _method_of(source["source_run"])
        first = (f"{first_method.upper()} in run {source['source_run']}"
                 + (f" ({source['source_checkpoint']})" if source.get("source_checkpoint")
                    else ""))
    return [f"Trained in two stages: first {first}, then {METHOD_TEXT[method]}, training "
            "that adapter further.", ""]


def _method_of(run_id: str) -> str:
    from loradeck.engine.errors import LoradeckError
    from loradeck.engine.runs.store import RunStore

    try:
        return str(RunStore().resolve(run_id).config().training.method)
    except LoradeckError:
        return "sft"


def render_card(run, adapter: bool, *, repo_id: str | None = None,
                gguf: list[str] | None = None, web: dict[str, Any] | None = None) -> str:
    """The README.md pushed with the run (also what the app previews)."""
    config = run.config()
    events = read_events(run.events_path)
    history = loss_history(events)
    train_loss, eval_loss = final_losses(events)
    m, d, lora, t = config.model, config.dataset, config.lora, config.training
    repo = repo_id or "<namespace>/<name>"
    what = "LoRA adapter" if adapter else "merged model"
    method = {"4bit": "QLoRA: the base model was quantized to 4-bit NF4 with double quantization",
              "8bit": "LoRA on an 8-bit quantized base",
              "none": "LoRA on a 16-bit base"}.get(m.quantization, "LoRA")
    tokenizer_repo = repo if (not adapter or (run.adapter_dir / "tokenizer_config.json").is_file()
                              ) else (hub_id(m.name) or m.name)
    steps = history[-1].step if history else None
    lines = [f"# {repo.split('/')[-1]}", "",
             f"A {what} fine-tuned from {_model_text(m.name)} on {_dataset_text(d.path)} with "
             f"loradeck ({method}).", ""]
    lines += _stages(config, events)
    from loradeck.engine.publish.merge import merged_from

    checkpoint = None if adapter else merged_from(run)
    if checkpoint:
        from loradeck.engine.evals import report

        best = (report.latest(run.dir) or {}).get("best_checkpoint") or {}
        why = f" (the best by {best['metric']} in `loradeck eval`)" \
            if best.get("name") == checkpoint else ""
        lines += [f"Merged from {checkpoint}, a checkpoint of this run{why}, not its final "
                  "adapter.", ""]
    if not adapter:
        lines += ["The adapter is merged into the base weights"
                  + (" reloaded in 16-bit (never into the 4-bit weights)"
                     if m.quantization != "none" else "") + ", so it loads without PEFT.", ""]
    lines += ["## Results", "", "| metric | value |", "|---|---|",
              f"| final train loss | {_fmt(train_loss)} |",
              f"| final eval loss | {_fmt(eval_loss)} |",
              f"| steps | {steps if steps is not None else 'n/a'} |"]
    key = fold(events).key_figure()
    if key is not None:
        lines.append(f"| final {key[0]} ({t.method}) | {key[1]:.4f} |")
    lines.append("")
    if history:
        lines += [f"![train and eval loss by step]({CHART_FILE})", ""]
        trains = [p.train for p in history if p.train is not None]
        evals = [p.eval for p in history if p.eval is not None]
        if trains:
            lines.append(f"train loss `{sparkline(trains)}` {_fmt(trains[0])} → "
                         f"{_fmt(trains[-1])}  ")
        if evals:
            lines.append(f"eval loss `{sparkline(evals)}` {_fmt(evals[0])} → {_fmt(evals[-1])}")
        lines.append("")
    lines += _eval_section(run, adapter)
    lines += ["## Use it", "", _usage(repo, adapter, tokenizer_repo)]
    if gguf:
        lines += _gguf_usage(repo, gguf)
    if web:
        lines += _web_usage(repo, web)
    targets = lora.target_modules if isinstance(lora.target_modules, str) \
        else ", ".join(lora.target_modules)
    lines += ["## LoRA settings", "", "| setting | value |", "|---|---|",
              f"| base model | {_model_text(m.name)} |",
              f"| quantization | {m.quantization} |",
              f"| r | {lora.r} |", f"| alpha | {lora.alpha:g} |",
              f"| dropout | {lora.dropout:g} |", f"| target modules | {targets} |",
              f"| variant | {lora.variant} |", f"| bias | {lora.bias} |", ""]
    length = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    procs = t.num_processes if isinstance(t.num_processes, int) else None
    effective = t.batch_size * t.grad_accum * (procs or 1)
    lines += ["## Training settings", "", "| setting | value |", "|---|---|",
              f"| method | {t.method} |",
              f"| dataset | {_dataset_text(d.path)} |",
              f"| format / template | {d.format} / {d.template} |",
              f"| eval fraction | {d.eval_fraction:g} |",
              f"| length | {length} |",
              f"| batch size × grad accum | {t.batch_size} × {t.grad_accum}"
              f" (effective {effective}{'' if procs else ' per GPU'}) |",
              f"| learning rate | {t.learning_rate:g} ({t.scheduler}, warmup {t.warmup_ratio:g}) |",
              f"| weight decay | {t.weight_decay:g} |",
              f"| max length | {t.max_length} |", f"| packing | {str(t.packing).lower()} |",
              f"| seed | {t.seed} |", ""]
    if history:
        rows, k = _table_rows(history)
        lines += ["## Loss by step", ""]
        if k > 1:
            lines += [f"Every {k}th logged step and the last one.", ""]
        lines += ["| step | train loss | eval loss |", "|---:|---:|---:|"]
        lines += [f"| {p.step} | {_fmt(p.train) if p.train is not None else ''} | "
                  f"{_fmt(p.eval) if p.eval is not None else ''} |" for p in rows]
        lines.append("")
    body = "\n".join(lines)
    content = f"---\n{card_data(run, adapter).to_yaml()}\n---\n\n{body}"
    return str(ModelCard(content))


def write_card(run, adapter: bool, folder: str | Path, *, repo_id: str | None = None,
               gguf: list[str] | None = None, web: dict[str, Any] | None = None
               ) -> list[Path]:
    """Write README.md (and loss.svg when there is loss data) into ``folder``."""
    folder = Path(folder)
    written = [folder / "README.md"]
    written[0].write_text(render_card(run, adapter, repo_id=repo_id, gguf=gguf, web=web),
                          encoding="utf-8")
    svg = loss_svg(loss_history(read_events(run.events_path)))
    if svg:
        (folder / CHART_FILE).write_text(svg, encoding="utf-8")
        written.append(folder / CHART_FILE)
    return written
