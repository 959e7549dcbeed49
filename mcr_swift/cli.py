"""``mcr-swift <command>``: one entry point for the project's tools (see README).

One top-level handler (`run_command`) for every command: a user's mistake -- a missing or unreadable
file, a bad JSON line, bytes that are not UTF-8, an unknown tag, a bad option value -- raises
ValueError or OSError inside the command, with a message naming the file and line; the handler prints
it as one line ``mcr-swift <command>: error: <message>`` on stderr and exits 2, without a traceback.
A bad flag or flag value (argparse) is one line too: ``mcr-swift <command>: error: <what> (see --help)``.
Ctrl-C exits 130. ``MCR_DEBUG=1`` in the environment re-raises instead, showing the full traceback.
Anything else is a bug in mcr-swift and keeps its traceback.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import List, Optional

#: command -> (module, help)
COMMANDS = {
    "plugin": (None, "print the plugin file to pass to swift --external_plugins"),
    "prepare": ("mcr_swift.data.prepare", "raw Twitter-GMNER / MNER-MI / gRefCOCO -> ms-swift JSONL datasets"),
    "tiny-model": ("mcr_swift.plugin.tiny", "build the tiny random Qwen2.5-VL checkpoint offline"),
    "evaluate": ("mcr_swift.evaluation.evaluate", "GMNER/MNER/EEG and bias metrics over swift infer output"),
    "synth": ("mcr_swift.synth.synthesize", "MRSI: build the multi-style CoT set D_R (templates, LLM, MLLM)"),
    "split": ("mcr_swift.synth.split", "D_R -> D1 (MRSI SFT) / D2 (CVO), by post, keeping the style mix"),
    "cvo-filter": ("mcr_swift.synth.cvo_filter", "App. D.3: sample G responses per D2 query, keep informative ones"),
    "report": ("mcr_swift.reports.report", "final report of a full-pipeline run folder (metrics, stage times, args)"),
    "pictures": ("mcr_swift.reports.pictures", "draw gold/predicted boxes and spans of chosen posts: PNGs + HTML page"),
    "bias-report": ("mcr_swift.reports.bias_report", "modality-bias report (N-Pre/Rec/F1, N-Count, confusion, worst cases)"),
    "curves": ("mcr_swift.reports.curves", "training curves of ms-swift runs (reward, terms, F1, length, entropy/KL) as PNG"),
    "baselines": ("mcr_swift.evaluation.baselines", "Table 1 end-to-end baselines (direct, CoT, CoT+3-shot) on an endpoint"),
    "predict": ("mcr_swift.evaluation.predict", "grounded entities of new posts (text + images) from a trained model"),
    "trained-posts": ("mcr_swift.evaluation.trained_posts", "the GMNER posts of D1 that MRSI trained on, one row per post (memorisation check)"),
    "preflight": ("mcr_swift.pipeline.preflight",
                  "measure every row's prompt/target tokens against max_length, completion cap, vLLM length; disk"),
    "serve": ("mcr_swift.pipeline.serve", "start|stop a background `swift deploy` (pid file, waits for /v1/models)"),
    "recipe-args": ("mcr_swift.pipeline.recipe_args", "recipe helpers: batch split, gpus, last-checkpoint, dry-run"),
    "swift-args": ("mcr_swift.pipeline.recipe_args:swift_args_main",
                   "stand-in for `swift sft|rlhf`: resolve the args into args.json without training"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: mcr-swift <command> [args]\n\ncommands:")
        for name, (_, help_) in COMMANDS.items():
            print(f"  {name:<14} {help_}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "plugin":
        from .plugin.registry import plugin_path
        print(plugin_path())
        return 0
    module_name, _, func = COMMANDS[cmd][0].partition(":")
    module = importlib.import_module(module_name)
    return run_command(cmd, getattr(module, func or "main"), rest)


#: Exceptions that mean bad input or a bad option value (their message names the file and line).
USER_ERRORS = (ValueError, OSError, UnicodeError)
#: Environment variable that shows the full traceback instead of the one-line error.
DEBUG_ENV = "MCR_DEBUG"


def user_error_message(e: BaseException) -> str:
    """One line for a user's mistake: the exception's message (OSError: ``<file>: <reason>``)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    elif isinstance(e, UnicodeDecodeError):
        msg = f"input is not UTF-8 text ({e})"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())  # one line


def _argparse_error_one_line(self, message: str):
    """`argparse.ArgumentParser.error` without the usage block: one line, exit 2."""
    self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")


def run_command(cmd: str, fn, argv: List[str]) -> int:
    """Run a command's ``main(argv)`` under the top-level handler (module docstring)."""
    import argparse
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    saved_error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error_one_line  # every command's parser, for this call
    try:
        return int(fn(argv) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mcr-swift {cmd}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"mcr-swift {cmd}: error: {user_error_message(e)} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 2
    finally:
        argparse.ArgumentParser.error = saved_error


if __name__ == "__main__":
    sys.exit(main())
