"""Merge a run's LoRA adapter into its base model: RUN/adapter + base -> RUN/merged.

The base is always loaded in 16-bit (bf16 on GPUs that have it; fp32 on CPU) for the merge, also
for runs trained on 4-bit or 8-bit weights: adapters are never merged into quantized weights.
The merged model is written to a temporary directory, reloaded from disk and checked against
base + adapter (greedy tokens on a few chat-templated prompts, largest logit difference), and
only then renamed to RUN/merged, so a failed merge leaves earlier results as they were.

Runnable as ``python -m loradeck.engine.publish.merge RUN_DIR`` (events go to the run's events.jsonl).
Heavy libraries are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.data import templates
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models.loading import free_memory
from loradeck.engine.runs import leftovers
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.lock import disk_full
from loradeck.engine.runs.state import fold
from loradeck.engine.runs.store import Run, RunStore
from loradeck.engine.system.process_exit import exit_now

CHECK_PROMPTS = (
    "What is LoRA fine-tuning?",
    "한국의 수도는 어디인가요?",
    "Write one sentence about the sea.",
)
CHECK_NEW_TOKENS = 16
ROUNDING_LOGIT_DIFF = {"bfloat16": 2.0, "float16": 0.5, "float32": 0.01}
TMP_PREFIX = ".merged-tmp-"
OLD_PREFIX = f"{TMP_PREFIX}old-"
MERGED_MARKER = "loradeck-complete.json"


@dataclass
class MergeCheck:
    """Merged model (reloaded from disk) against base + adapter on the check prompts."""

    prompts: int
    new_tokens: int
    tokens_match: bool
    max_logit_diff: float
    mismatches: list[str] = field(default_factory=list)
    dtype: str = "float32"  # what the merged weights were rounded to

    @property
    def expected_diff(self) -> float:
        """The largest logit difference that rounding the merged weights to ``dtype`` alone
        explains (W + BA rounded once to 8 mantissa bits in bf16, 11 in fp16)."""
        return ROUNDING_LOGIT_DIFF.get(self.dtype, ROUNDING_LOGIT_DIFF["float32"])

    @property
    def concern(self) -> bool:
        return self.max_logit_diff > self.expected_diff

    def verdict(self) -> str:
        """What the figures mean for the person: fine, or a concern and what to do."""
        if self.concern:
            return (f"a concern: logits differ by {self.max_logit_diff:.3g}, more than rounding "
                    f"to {self.dtype} explains (up to {self.expected_diff:g}); compare a few "
                    "answers of the merged model with base + adapter in loradeck chat before "
                    "using it")
        if self.tokens_match:
            return "fine: the merged model answers as base + adapter does"
        return (f"fine: within the range expected from rounding the merged weights to "
                f"{self.dtype} (up to {self.expected_diff:g}), which flips near-tie tokens")

    def line(self) -> str:
        figures = "same greedy tokens" if self.tokens_match else \
            f"greedy tokens differ on {len(self.mismatches)} of {self.prompts} prompts"
        return (f"check: {self.verdict()} ({figures} as base + adapter, {self.new_tokens} new "
                f"tokens each; largest logit difference {self.max_logit_diff:.3g})")


@dataclass
class MergeResult:
    path: Path
    base_model: str
    trained_quantization: str
    dtype: str
    device: str
    check: MergeCheck
    seconds: float
    int4_check: MergeCheck | None = None  # qalora: the merged INT4 model against base + adapter
    checkpoint: str | None = None  # merged from RUN/checkpoints/<this>, not the final adapter

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


CHECKPOINT_KEY = "loradeck_checkpoint"  # in the merged config.json: the checkpoint merged


def has_adapter(run: Run) -> bool:
    return (run.adapter_dir / "adapter_config.json").is_file()


def merged_from(run: Run) -> str | None:
    """The checkpoint RUN/merged was merged from (``checkpoint-N``), None for the final
    adapter (or no merged model)."""
    try:
        data = json.loads((run.merged_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(CHECKPOINT_KEY) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def needs_merge(run: Run, checkpoint: int | None) -> bool:
    """Is RUN/merged missing, or merged from another adapter than the one asked for?"""
    if not (run.merged_dir / "config.json").is_file():
        return True
    return checkpoint is not None and merged_from(run) != f"checkpoint-{checkpoint}"


def check_mergeable(run: Run, checkpoint: int | None = None) -> None:
    """Raise a one-line LoradeckError when ``run`` cannot be merged now."""
    if checkpoint is not None:
        run.checkpoint(checkpoint)
    elif not has_adapter(run):
        phase = run.summary().get("phase", "?")
        hint = ("its adapter/adapter_config.json is missing; train or resume the run again"
                if phase in ("done", "merged", "pushed") else
                "merge a run after its training is done")
        raise LoradeckError(f"run {run.id} has no adapter to merge (phase: {phase})",
                            kind="usage", where=str(run.adapter_dir), hint=hint)
    if run.alive() and not joblock.held_here(run.dir):
        raise joblock.AlreadyRunning(run.id, joblock.holder_pid(run.dir))


def _complete(folder: Path) -> float | None:
    """When a hidden merged copy was finished (its marker's time), or None when it was not:
    a new copy counts once checked and marked, an old one (a former RUN/merged) once it has
    its config.json."""
    marker = folder / MERGED_MARKER
    if marker.is_file():
        return marker.stat().st_mtime
    if folder.name.startswith(OLD_PREFIX) and (folder / "config.json").is_file():
        return (folder / "config.json").stat().st_mtime
    return None


def recover(run: Run) -> Path | None:
    """Put back RUN/merged when a merge was killed between its two renames (both complete
    copies hidden): the newest complete copy becomes RUN/merged. Then remove the copies that
    dead merges left. Returns the copy put back."""
    back = None
    if not run.merged_dir.exists():
        copies = [(t, d) for prefix in (TMP_PREFIX, OLD_PREFIX)
                  for d in leftovers.stale(run.dir, prefix) if (t := _complete(d)) is not None]
        if copies:
            back = max(copies)[1]
            os.replace(back, run.merged_dir)
    for prefix in (TMP_PREFIX, OLD_PREFIX):
        leftovers.remove_stale(run.dir, prefix)
    return back


def _check_messages(tokenizer, template: str = "auto") -> list[Any]:
    """The check prompts as token id tensors, each a one-turn chat rendered with the run's
    template as training rendered a prompt (templates.Renderer, special tokens added)."""
    templates.install(tokenizer, template)  # a run saved before templates travelled: as trained
    renderer = templates.Renderer(tokenizer)
    return [tokenizer(renderer.prompt([{"role": "user", "content": text}]),
                      return_tensors="pt")["input_ids"] for text in CHECK_PROMPTS]


def _greedy(model, prompts: list[Any], pad_id: int | None) -> list[tuple[list[int], Any, int, Any]]:
    """Per prompt: greedy new tokens, the whole sequence, the prompt length, and the logits
    that predicted the new tokens (fp32, CPU)."""
    import torch

    results = []
    with torch.inference_mode():
        for ids in prompts:
            ids = ids.to(model.device)
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=False, num_beams=1, max_new_tokens=CHECK_NEW_TOKENS,
                                 pad_token_id=pad_id, temperature=None, top_p=None, top_k=None,
                                 repetition_penalty=1.0)
            logits = model(input_ids=seq).logits[0, ids.shape[1] - 1:-1].float().cpu()
            results.append((seq[0, ids.shape[1]:].tolist(), seq.cpu(), ids.shape[1], logits))
    return results


def _compare(reference, model, prompts, dtype: str = "float32") -> MergeCheck:
    """Greedy decode with ``model`` and compare tokens and logits with ``reference``."""
    import torch

    pad_id = getattr(model.generation_config, "pad_token_id", None)
    ours = _greedy(model, prompts, pad_id)
    max_diff, mismatches = 0.0, []
    with torch.inference_mode():
        for i, ((ref_new, ref_seq, plen, ref_logits), (new, *_)) in enumerate(
                zip(reference, ours, strict=True)):
            logits = model(input_ids=ref_seq.to(model.device)).logits[0, plen - 1:-1]
            max_diff = max(max_diff, float((logits.float().cpu() - ref_logits).abs().max()))
            if new != ref_new:
                at = next((j for j, (a, b) in enumerate(zip(new, ref_new, strict=False)) if a != b),
                          min(len(new), len(ref_new)))
                mismatches.append(f"prompt {i + 1} from token {at + 1}")
    return MergeCheck(prompts=len(prompts), new_tokens=CHECK_NEW_TOKENS,
                      tokens_match=not mismatches, max_logit_diff=round(max_diff, 6),
                      mismatches=mismatches, dtype=dtype)


def _load_tokenizer(run: Run, section, adapter: Path | None = None):
    from transformers import AutoTokenizer

    from loradeck.engine.models.loading import load_tokenizer

    adapter = adapter or run.adapter_dir
    if (adapter / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(adapter,
                                            trust_remote_code=section.trust_remote_code)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok
    return load_tokenizer(section)


DTYPE_CHOICES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def base_dtype(section) -> str | None:
    """The dtype the base model's weights are saved in, as a model.compute_dtype choice (bf16,
    fp16, fp32); None when its config does not say or is not on this machine."""
    import json

    from loradeck.engine.models.layout import model_dir

    directory = model_dir(section.name, section.revision)
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    text = data.get("text_config") or data
    return DTYPE_CHOICES.get(str(text.get("dtype") or text.get("torch_dtype")
                                 or data.get("dtype") or data.get("torch_dtype")))


def merge_into(run: Run, tmp: Path, device: str, say: Callable[[str], None],
               adapter: Path | None = None) -> MergeResult:
    """Do the merge of ``adapter`` (by default RUN/adapter; a checkpoint's) into ``tmp`` and
    check it; returns the result (path still ``tmp``). The run is not touched (``merge``
    installs the result as RUN/merged; ``loradeck api`` serves it from a temporary
    directory)."""
    adapter = Path(adapter) if adapter else run.adapter_dir
    from peft import PeftModel

    from loradeck.engine.models.loading import compute_dtype, load_model, pick_device

    started = time.monotonic()
    config = run.config()
    trained_quant = config.model.quantization
    section = config.model.model_copy(update={"quantization": "none"})
    saved = base_dtype(config.model)
    if saved is not None:  # merged in the base's own dtype, on any device (PEFT computes the
        section = section.model_copy(update={"compute_dtype": saved})  # update in fp32 on CPU)
    dev = pick_device(device)
    dtype = save_dtype = compute_dtype(section, dev)
    qa = config.lora.variant == "qalora"
    if qa and dev == "cpu":  # the INT4 model is checked as llama.cpp runs it, in fp32; the
        section = section.model_copy(update={"compute_dtype": "fp32"})  # 16-bit form is saved
        dtype = compute_dtype(section, dev)                             # in the base's dtype
    dtype_name = str(dtype).replace("torch.", "")
    if trained_quant != "none":
        say(f"the run trained on {trained_quant} weights; loading the base in {dtype_name} for "
            "the merge (adapters are never merged into quantized weights)")
    say(f"loading {config.model.name} in {dtype_name} on {dev}")
    base = load_model(section, device=dev, quantization="none")
    tokenizer = _load_tokenizer(run, section, adapter)
    vocab = base.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        base.resize_token_embeddings(len(tokenizer))
    say(f"applying the adapter from {adapter}")
    if qa:
        from loradeck.engine.quant import qalora

        model = qalora.load_adapter(base, adapter, qalora.codes_file(run.dir))
    else:
        model = PeftModel.from_pretrained(base, adapter)
    model.eval()
    prompts = _check_messages(tokenizer, config.dataset.template)
    reference = _greedy(model, prompts, tokenizer.pad_token_id)
    int4_check = None
    if qa:
        say("folding the adapter into the INT4 offsets (codes and scales unchanged)")
        merged = qalora.fold(model)
        int4_check = _compare(reference, merged, prompts, "float16")  # fp16 offsets
        say(int4_check.line().replace("check:", "check (INT4, offsets folded):"))
        qalora.save_codes(tmp / qalora.CODES_FILE, qalora.int4_layers(merged),
                          config.lora.group_size)
        save_name = str(save_dtype).replace("torch.", "")
        say(f"writing the {save_name} dequantized form beside the INT4 codes")
        merged = qalora.dequantize_model(merged, save_dtype).to(save_dtype)
    else:
        say("merging (merge_and_unload)")
        merged = model.merge_and_unload()
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config
    merged.config.use_cache = True
    from_checkpoint = adapter.name \
        if adapter.resolve().parent == run.checkpoints_dir.resolve() else None
    if from_checkpoint:  # the merged model says which adapter it holds
        setattr(merged.config, CHECKPOINT_KEY, from_checkpoint)
    say("saving safetensors, config, generation config, tokenizer and chat template")
    merged.save_pretrained(tmp)
    if getattr(merged, "generation_config", None) is not None \
            and not (tmp / "generation_config.json").is_file():
        merged.generation_config.save_pretrained(tmp)
    templates.save_tokenizer(tokenizer, tmp)
    del model, merged, base
    free_memory()
    say("checking the saved merged model against base + adapter")
    reloaded = load_model(section.model_copy(update={"name": str(tmp), "revision": None}),
                          device=dev, quantization="none")
    reloaded.eval()
    check = _compare(reference, reloaded, prompts, str(save_dtype).replace("torch.", ""))
    del reloaded
    free_memory()
    return MergeResult(path=tmp, base_model=config.model.name, trained_quantization=trained_quant,
                       dtype=str(save_dtype).replace("torch.", ""), device=dev, check=check,
                       seconds=round(time.monotonic() - started, 2), int4_check=int4_check,
                       checkpoint=from_checkpoint)


def _install(run: Run, tmp: Path) -> Path:
    """Replace RUN/merged with ``tmp``, marked complete first; the old one is removed only once
    the new one is in (a crash between the renames is undone by ``recover``)."""
    target = run.merged_dir
    old = run.dir / f"{OLD_PREFIX}{os.getpid()}"
    (tmp / MERGED_MARKER).write_text(json.dumps({"t": time.time()}), encoding="utf-8")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _as_error(exc: BaseException) -> LoradeckError:
    if isinstance(exc, LoradeckError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if disk_full(exc):
        return LoradeckError("no space left on the disk while saving the merged model",
                             kind="disk", hint="free disk space (the merged model is the size "
                                               "of the base in 16-bit) and merge again")
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return LoradeckError(f"out of memory while merging: {text}", kind="oom",
                             hint="merge on the CPU: LORADECK_MERGE_DEVICE=cpu loradeck merge RUN")
    return LoradeckError(f"merge failed: {type(exc).__name__}: {text}", kind="internal")


def merge(run: Run, events: EventWriter | None = None, *, device: str | None = None,
          say: Callable[[str], None] | None = None, checkpoint: int | None = None
          ) -> MergeResult:
    """Merge RUN/adapter (or checkpoint ``checkpoint``'s adapter, the final one left as it
    is) into the 16-bit base, save RUN/merged, check it; events on the way.

    ``say`` receives each progress line (they also go to the events file as log events).
    ``device``: auto | cpu | cuda (default: $LORADECK_MERGE_DEVICE or auto). The run's job
    lock is held throughout (a push that merges first holds it already).
    """
    check_mergeable(run, checkpoint)
    with joblock.holding(run.dir, run.id):
        return _merge_locked(run, events, device, say, checkpoint)


def _merge_locked(run: Run, events: EventWriter | None, device: str | None,
                  say: Callable[[str], None] | None, checkpoint: int | None = None
                  ) -> MergeResult:
    events = events or EventWriter(run.events_path)
    device = device or os.environ.get("LORADECK_MERGE_DEVICE") or "auto"

    def tell(text: str) -> None:
        events.log(text)
        if say is not None:
            say(text)

    recover(run)
    tmp = run.dir / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        adapter = run.checkpoint(checkpoint) if checkpoint is not None else None
        what = f"checkpoint-{checkpoint}'s adapter" if adapter else "the adapter"
        events.status("merging", f"merging {what} into {run.config().model.name}")
        run.mark_process(os.getpid(), phase="merging")
        result = merge_into(run, tmp, device, tell, adapter=adapter)
        tell(result.check.line())
        if result.check.concern:
            events.log(f"merge check: {result.check.verdict()} "
                       f"({', '.join(result.check.mismatches) or 'same greedy tokens'})",
                       level="warning")
        result.path = _install(run, tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _as_error(exc)
        try:  # on a full disk these may fail too: the run then reads as before the merge
            prev_phase = fold(run.events()).restore_phase()
            events.error(**err.to_event())
            events.status(prev_phase, f"merge failed: {err.message}")
            run.update_state(phase=prev_phase)
        except OSError:
            pass
        if isinstance(exc, LoradeckError) or not isinstance(exc, Exception):
            raise
        raise err from exc
    events.emit("info", merge=result.to_dict())
    events.status("merged", f"merged model saved to {result.path}")
    run.update_state(phase="merged", merged=str(result.path))
    return result


def quiet_libraries() -> None:
    """No progress bars or info chatter from transformers in command output."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def merge_run(run: Run, events: EventWriter | None = None, checkpoint: int | None = None
              ) -> Path:
    """Merge ``run`` (see ``merge``) and return the path of RUN/merged."""
    return merge(run, events, checkpoint=checkpoint).path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loradeck.engine.publish.merge",
                                description="merge a run's adapter into its base model")
    p.add_argument("run", metavar="RUN_DIR", help="run directory, id or unique prefix")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--checkpoint", type=int, default=None, metavar="N")
    args = p.parse_args(argv)
    try:
        run = RunStore().resolve(args.run)
        check_mergeable(run, args.checkpoint)
        quiet_libraries()
        result = merge(run, device=args.device, say=lambda s: print(s, flush=True),
                       checkpoint=args.checkpoint)
    except LoradeckError as exc:
        print(f"loradeck merge: {exc.line()}", file=sys.stderr)
        return exc.kind.exit_status
    print(f"merged model: {result.path}")
    return 0


if __name__ == "__main__":
    exit_now(main())
