"""Export a run's merged model to GGUF files for llama.cpp, then check them in llama.cpp.

Built on the libraries made for it: the file is written with gguf-py (llama.cpp's own ``gguf``
package: ``GGUFWriter``, the tensor name map, its quantizers for q8_0, q4_0 and q4_1, its
``SpecialVocab`` for merges, special ids and the chat template, and its ``SentencePieceVocab``);
the K-quants come from llama.cpp's quantizer through llama-cpp-python (``llama_model_quantize``)
applied to the f16 file. Byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM) and SentencePiece
ones (Llama 2, Mistral: their tokenizer.model). A BPE pre-tokenizer type is found by what the
tokenizer does to a probe text: each type llama.cpp knows is tried in llama.cpp itself, and the
first that tokenizes the probe as transformers does is kept.

Every file is written under a temporary name and renamed once whole, so a failed export leaves
earlier files intact; then it is loaded in llama.cpp and run next to the merged model in
transformers (RUN/gguf/loradeck-report.json).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loradeck.engine.enums import GGUFType, values
from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish.gguf_checks import (
    CHECK_NEW_TOKENS,
    EXACT,
    check_file,
    reference_results,
)
from loradeck.engine.publish.gguf_tensors import (
    WRITTEN_BY_GGUF_PY,
    int4_codes,
    quantize_with_llama_cpp,
    write_gguf,
)
from loradeck.engine.publish.gguf_vocab import find_pre_tokenizer, sentencepiece_model, vocab_kind
from loradeck.engine.runs import leftovers
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs import run_files as safe_io
from loradeck.engine.runs.store import Run

QUANTS = values(GGUFType)
DEFAULT_QUANT = "q4_k_m"
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                 "Qwen2ForCausalLM": "qwen2"}
EVAL_ROWS = 4


def supported(architecture: str) -> str:
    """The GGUF architecture for a transformers one, or one line naming what is supported."""
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        raise LoradeckError(f"GGUF export does not cover {architecture}", kind="model",
                            where="model.name",
                            hint=f"it covers {', '.join(sorted(ARCHITECTURES))}")
    return arch


def run_file(run: Run, quant: str, out_dir: Path | None = None) -> Path:
    """Where ``run``'s GGUF file of type ``quant`` is written: RUN/gguf/<run-id>-<Q>.gguf."""
    return (Path(out_dir) if out_dir else run.dir / "gguf") / f"{run.id}-{quant}.gguf"


def run_files(run: Run) -> list[Path]:
    """``run``'s exported GGUF files, the default type first, then in QUANTS order."""
    order = [DEFAULT_QUANT] + [q for q in QUANTS if q != DEFAULT_QUANT]
    return [run_file(run, q) for q in order if run_file(run, q).is_file()]


def quant_of(path: Path) -> str:
    """The type named in an exported file's name (<run-id>-<Q>.gguf)."""
    return next((q for q in QUANTS if path.name.endswith(f"-{q}.gguf")), "gguf")


def exported_file(run: Run, quant: str) -> Path:
    """``run``'s exported file of type ``quant``; one line naming the export to run when it
    is missing."""
    path = run_file(run, quant)
    if not path.is_file():
        raise LoradeckError(f"run {run.id} has no {quant} GGUF file", kind="usage",
                            where=str(path.parent),
                            hint=f"export it first: loradeck export {run.id} --quant {quant}")
    return path


def check_quants(quants: list[str]) -> list[str]:
    bad = [q for q in quants if q not in QUANTS]
    if bad:
        raise LoradeckError(f"unknown GGUF type {bad[0]!r}", kind="usage", where="--quant",
                            hint=f"use one of {', '.join(QUANTS)}")
    return list(dict.fromkeys(quants or [DEFAULT_QUANT]))


# ---- the whole export -----------------------------------------------------------------------

REPORT_NAME = "loradeck-report.json"
WORK_PREFIX = ".tmp-"
WRITTEN_BY = "loradeck gguf export"
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/run", "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/run")


def report_path(out_dir: Path) -> Path:
    return Path(out_dir) / REPORT_NAME


def check_out_dir(out_dir: Path) -> Path:
    """Refuse an ``--out`` that is a file, a system folder, or holds a report loradeck did not
    write, in one line; the folder (made when missing)."""
    out_dir = Path(out_dir).expanduser()
    real = out_dir.resolve()
    if real == Path("/") or any(real == Path(d) or real.is_relative_to(d) for d in SYSTEM_DIRS):
        raise LoradeckError("is a system folder", kind="usage", where=f"--out {out_dir}",
                            hint="export into a folder of your own, e.g. --out ~/gguf")
    if out_dir.exists() and not out_dir.is_dir():
        raise LoradeckError("is a file, not a folder", kind="usage", where=f"--out {out_dir}",
                            hint="give a folder (it is made when missing)")
    report = report_path(out_dir)
    if (report.exists() or report.is_symlink()) and not _read_report(report):
        raise LoradeckError("holds a file loradeck did not write", kind="usage",
                            where=str(report), hint="move it away, or export into another "
                            "folder with --out")
    safe_io.real_dir(out_dir)
    return out_dir


def export(run: Run, quants: list[str], *, out_dir: Path | None = None,
           say: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Export ``run``'s merged model (merging first when needed) to one GGUF file per type,
    check each in llama.cpp, and write the report; returns the report. The run's job lock is
    held throughout: no merge, push or training runs beside it."""
    quants = check_quants(quants)
    out_dir = check_out_dir(out_dir if out_dir else run.dir / "gguf")
    if run.alive() and not joblock.held_here(run.dir):
        raise joblock.AlreadyRunning(run.id, joblock.holder_pid(run.dir))
    with joblock.holding(run.dir, run.id):
        return _export_locked(run, quants, out_dir, say)


def check_rows(run_config: Any, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """The rows both models are scored on (held-out rows first), as (token ids, mask of the
    scored tokens): the run's SFT rows, or its method's rows (DPO, KTO, ORPO, GRPO)."""
    if str(run_config.training.method) != "sft":
        from loradeck.engine.train import method_data

        return method_data.token_rows(run_config, tokenizer, EVAL_ROWS)
    from loradeck.engine.data import prep as dataset_prep

    prepared = dataset_prep.prepare(run_config, tokenizer)
    rows = prepared.eval if prepared.eval is not None else prepared.train
    return [(r["input_ids"][:512], r["assistant_masks"][:512])
            for r in rows.select(range(min(EVAL_ROWS, len(rows))))]


def _export_locked(run: Run, quants: list[str], out_dir: Path, say: Callable[[str], None]
                   ) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from loradeck.engine.publish import merge as merging
    from loradeck.engine.quant import int4

    gone = leftovers.remove_stale(out_dir, WORK_PREFIX)
    if gone:
        say(f"removed {len(gone)} temporary folder(s) left by an export that was stopped")
    merging.recover(run)
    if not run.merged_dir.is_dir():
        say("the run has no merged model yet: merging first")
        merging.merge_run(run)
    model_dir = run.merged_dir
    config = AutoConfig.from_pretrained(model_dir)
    arch = supported((config.architectures or ["?"])[0])
    run_config = run.config()
    from loradeck.engine.models.layout import model_dir as base_model_dir

    try:
        base_dir = base_model_dir(run_config.model.name, run_config.model.revision)
    except LoradeckError:
        base_dir = None
    sp_model = sentencepiece_model(model_dir, base_dir)
    kind = vocab_kind(model_dir, sp_model)
    sp_model = sp_model if kind == "spm" else None
    work = out_dir / f"{WORK_PREFIX}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        if sp_model is None:
            say("finding the pre-tokenizer type by a probe text, in llama.cpp")
            pre = find_pre_tokenizer(model_dir, tokenizer, arch, work)
            say(f"pre-tokenizer: {pre}")
        else:
            pre = "default"
            say(f"SentencePiece vocabulary from {sp_model}")
        eval_rows = check_rows(run_config, tokenizer)
        say("running the merged model in transformers, for the checks")
        reference = reference_results(model_dir, eval_rows, run_config.dataset.template)
        written: dict[str, Path] = {}
        exact_files: dict[str, bool] = {}
        qa = int4_codes(model_dir)
        f16_tmp: Path | None = None
        for quant in quants:
            started = time.monotonic()
            final = run_file(run, quant, out_dir)
            tmp = work / final.name
            say(f"writing {final.name}")
            exact = qa is not None and quant == "q4_1" and qa[0] == int4.BLOCK
            if exact:
                say("q4_1: the QA-LoRA codes, scales and folded offsets go straight into Q4_1 "
                    "blocks; nothing is re-quantized")
            elif qa is not None and quant == "q4_1":
                say(f"q4_1: the QA-LoRA codes are in groups of {qa[0]}, so they are re-blocked "
                    f"into Q4_1's groups of {int4.BLOCK} (a second quantization)")
            if quant in WRITTEN_BY_GGUF_PY:
                write_gguf(model_dir, tmp, quant, pre=pre, arch=arch, say=say,
                           int4=qa[1] if exact else None, sp_model=sp_model)
                exact_files[quant] = exact
            else:
                if f16_tmp is None:
                    f16_tmp = work / "source-f16.gguf"
                    write_gguf(model_dir, f16_tmp, "f16", pre=pre, arch=arch, say=say,
                               sp_model=sp_model)
                say(f"{quant}: llama.cpp's quantizer")
                quantize_with_llama_cpp(f16_tmp, tmp, quant)
            os.replace(tmp, final)
            write_modelfile(final, stop_tokens(tokenizer, run_config.dataset.template))
            written[quant] = final
            say(f"{final.name}: {final.stat().st_size:,} bytes in "
                f"{time.monotonic() - started:.1f} s")
        results = []
        for quant, path in written.items():
            say(f"checking {path.name} in llama.cpp")
            results.append(check_file(path, quant, reference, tokenizer, sp_model)
                           | ({"int4_exact": exact_files.get(quant, False)} if qa else {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"written_by": WRITTEN_BY, "run": run.id, "architecture": arch,
              "tokenizer": kind, "pre_tokenizer": pre, "check_prompts": 3,
              "new_tokens": CHECK_NEW_TOKENS, "eval_rows": len(eval_rows), "files": results}
    previous = _read_report(report_path(out_dir))
    kept = [f for f in previous.get("files", []) if isinstance(f, dict)
            and f.get("type") not in written]
    report["files"] = kept + results
    tmp_report = out_dir / f".{REPORT_NAME}.{os.getpid()}.tmp"
    safe_io.write_text(tmp_report, json.dumps(report, indent=2) + "\n")
    os.replace(tmp_report, report_path(out_dir))
    bad = [r["file"] for r in results if r["type"] in EXACT
           and not (r["greedy_match"] and r["tokenizer_ids_match"])]
    if bad:
        raise LoradeckError(f"{bad[0]} does not match the merged model in llama.cpp",
                            kind="model", where=str(report_path(out_dir)),
                            hint="the report names what differs")
    return report


def stop_tokens(tokenizer: Any, template: str = "auto") -> list[str]:
    """The texts of the tokens a reply stops at: the template's end of turn and the eos."""
    from loradeck.engine.data import templates

    ids = templates.end_of_turn_ids(tokenizer, template) | {tokenizer.eos_token_id}
    return [tokenizer.convert_ids_to_tokens(i) for i in sorted(i for i in ids if i is not None)]


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_suffix(".Modelfile")


def write_modelfile(gguf_file: Path, stops: list[str]) -> Path:
    """A minimal Ollama Modelfile beside the file: ``ollama create NAME -f <it>``."""
    lines = [f"FROM ./{gguf_file.name}"] + [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    path = modelfile_path(gguf_file)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_report(path: Path) -> dict[str, Any]:
    """A report loradeck wrote at ``path``; {} for anything else (missing, a link, not JSON,
    not ours)."""
    try:
        data = json.loads(safe_io.read_bytes(path))
    except (OSError, ValueError, RecursionError, LoradeckError):
        return {}
    return data if isinstance(data, dict) and data.get("written_by") == WRITTEN_BY else {}


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as a person reads it: one line per file."""
    lines = []
    for r in report.get("files", []):
        gap = r.get("eval_loss_gap")
        lines.append(
            f"{r['file']}: {r['bytes'] / 1e6:.1f} MB; tokenizer "
            f"{'same ids' if r['tokenizer_ids_match'] else 'DIFFERENT ids'}; greedy "
            f"{r['greedy_prompts_matching']}/{report.get('check_prompts', 3)} prompts the same "
            f"({100 * r['greedy_token_agreement']:.0f}% of tokens); eval loss "
            f"{r['eval_loss']} (merged {r['eval_loss_merged']}"
            + (f", gap {gap:+.4f})" if gap is not None else ")"))
    return lines


def main(argv: list[str] | None = None) -> int:
    """``python -m loradeck.engine.publish.gguf_export RUN_DIR [--quant Q]... [--web]``, as the
    app runs it: its lines go to the run's events.jsonl as log events, and to stdout.
    ``--web`` writes the browser page (RUN/web) around the first type's file instead."""
    import argparse
    import sys

    from loradeck.engine.runs.events import EventWriter
    from loradeck.engine.runs.store import RunStore

    p = argparse.ArgumentParser(prog="python -m loradeck.engine.publish.gguf_export")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--quant", action="append", default=None)
    p.add_argument("--web", action="store_true")
    args = p.parse_args(argv)
    try:
        run = RunStore().resolve(args.run)
        events = EventWriter(run.events_path)

        def say(line: str) -> None:
            events.log(line)
            print(line, flush=True)

        if args.web:
            from loradeck.engine.publish import web_export

            web_export.export_web(run, check_quants(args.quant or [])[0], say=say)
            say(web_export.serve_hint(run.id))
            return 0
        report = export(run, args.quant or [], say=say)
        for line in report_lines(report):
            say(line)
    except LoradeckError as exc:
        print(f"loradeck: {exc.line()}", file=sys.stderr, flush=True)
        return exc.kind.exit_status
    return 0


if __name__ == "__main__":
    from loradeck.engine.system.process_exit import exit_now

    exit_now(main())
