"""A stand-in for the ``swift`` command (tests only): records, per call, the sub-command, its arguments
and the image-resolution environment it was started with (to ``$MCR_STUB_LOG``, one JSON line each),
and leaves what the pipeline expects of the real command:

* ``sft`` / ``rlhf``: ``<output_dir>/v0-20260101-000000/checkpoint-1`` and an ``args.json``;
* ``export``: the ``--output_dir`` folder with a ``config.json``;
* ``infer``: ``--result_path`` with one row per row of the registered dataset, answering ``[]``;
* ``deploy``: an OpenAI-compatible server on ``--port`` answering ``<answer>[]</answer>``, with the
  "Uvicorn running" line `mcr_swift.serve` reads.

No model is loaded; it proves what each stage *would* be started with, not what it computes."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcr_swift.serve import RESIZE_VARS  # noqa: E402

ANSWER = "<think>x</think>\n<answer>\n[]\n</answer>"


def opt(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def dataset_file(spec: str) -> Path:
    from mcr_swift.registry import DATASETS
    name, _, subset = spec.partition(":")
    folder, _subsets, default = DATASETS[name][:3]
    return Path(os.environ.get("MCR_DATA_DIR", "mcr_data")) / folder / f"{subset or default}.jsonl"


def main(argv) -> int:
    cmd, rest = argv[0], argv[1:]
    with open(os.environ["MCR_STUB_LOG"], "a") as f:
        f.write(json.dumps({"cmd": cmd, "argv": rest,
                            "env": {k: os.environ[k] for k in RESIZE_VARS if os.environ.get(k)}}) + "\n")
    if cmd in ("sft", "rlhf"):
        run = Path(opt(rest, "--output_dir")) / "v0-20260101-000000"
        (run / "checkpoint-1").mkdir(parents=True, exist_ok=True)
        (run / "args.json").write_text(json.dumps({"stub": True}))
    elif cmd == "export":
        out = Path(opt(rest, "--output_dir"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
    elif cmd == "infer":
        rows = []
        for spec in opt(rest, "--val_dataset").split():
            for line in dataset_file(spec).read_text().splitlines():
                r = json.loads(line)
                rows.append({"response": ANSWER, "messages": r["messages"], "images": r.get("images", [])})
        Path(opt(rest, "--result_path")).write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif cmd == "deploy":
        from tests._fake_openai import FakeOpenAI
        fake = FakeOpenAI(lambda body: [ANSWER] * int(body.get("n") or 1),
                          model=opt(rest, "--served_model_name", "policy"))
        with fake:
            print(f"Uvicorn running on {fake.base_url.rsplit('/v1', 1)[0]} (stub)", flush=True)
            while True:
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
