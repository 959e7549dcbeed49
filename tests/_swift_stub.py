"""A stand-in for the ``swift`` command, for tests of what ``mcr-swift pipeline`` runs (no training).

Installed as an executable (``SWIFT=<it>`` for ``mcr-swift pipeline``), it reads a stage config given
first as ms-swift does and appends one JSON line per call to ``$SWIFT_STUB_LOG``:
``{"cmd": "sft", "args": {"--flag": "value", ...}, "argv": [...], "env": {...}}`` (``env``: the variables of
``ENV_KEYS`` and every image-resolution variable that is set, ``mcr_swift.pipeline.serve.RESIZE_VARS``) and leaves
what the next stage reads:

* ``sft`` / ``rlhf``: loads every ``--dataset`` as the plugin's loader does (so a dataset that does not
  resolve fails the stage, and answer-only subsets are derived), then leaves
  ``<output_dir>/v0-20260101-000000/checkpoint-1/`` and an ``args.json`` beside it;
* ``export``: ``<output_dir>/config.json``;
* ``infer``: ``--result_path`` with one row per row of ``--val_dataset`` (read from $MCR_DATA_DIR through
  the registry, answer-only subsets derived as the real loader does), each answered
  ``<answer>\\n[]\\n</answer>``;
* ``deploy``: an OpenAI-compatible server on ``--port`` answering every chat request with that answer
  (``n`` choices), until killed.
"""
from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWER = "<answer>\n[]\n</answer>"
ENV_KEYS = ("MCR_INSTRUCTION", "MAX_PIXELS", "MCR_DATA_DIR", "NPROC_PER_NODE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mcr_swift.pipeline.serve import RESIZE_VARS  # noqa: E402


def parse(argv):
    args, key = {}, None
    for w in argv:
        if w.startswith("--"):
            key = w
            args[key] = ""
        elif key is not None:
            args[key] = w if not args[key] else args[key] + " " + w
    return args


def dataset_rows(spec: str):
    from mcr_swift.plugin.registry import DATASETS, data_dir
    if spec.endswith(".jsonl"):                     # a file given directly
        return [json.loads(l) for l in Path(spec).read_text().splitlines() if l.strip()]
    name, _, subset = spec.split("#")[0].partition(":")
    folder, _subsets, default = DATASETS[name]
    subset = subset or default
    path = data_dir() / folder / f"{subset}.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def serve(port: int, name: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": name, "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            n = int(body.get("n") or 1)
            self._send({"id": "x", "object": "chat.completion", "created": 0, "model": name,
                        "choices": [{"index": i, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": ANSWER}} for i in range(n)],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"Uvicorn running on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


def expand_config(argv):
    """A stage config given first (``swift sft cfg.yaml --flag v``) read as ms-swift 4.6 reads it
    (swift/cli/main.py): its ENV fills unset variables, its keys become flags before the given ones."""
    if not argv or not argv[0].endswith((".yaml", ".yml")):
        return argv
    import yaml
    config = yaml.safe_load(Path(argv[0]).read_text())
    for k, v in (config.pop("ENV", None) or {}).items():
        os.environ.setdefault(k, str(v))
    words = []
    for k, v in config.items():
        words += [f"--{k}", *([str(x) for x in v] if isinstance(v, list) else [str(v)])]
    return words + argv[1:]


def main() -> int:
    argv = expand_config(sys.argv[2:])
    cmd, args = sys.argv[1], parse(argv)
    with open(os.environ["SWIFT_STUB_LOG"], "a") as f:
        env = {k: os.environ.get(k) for k in ENV_KEYS}
        env.update({k: os.environ[k] for k in RESIZE_VARS if os.environ.get(k)})
        f.write(json.dumps({"cmd": cmd, "args": args, "argv": argv, "config": sys.argv[2] if argv != sys.argv[2:] else None,
                            "env": env}) + "\n")
    if cmd in ("sft", "rlhf"):
        for spec in args["--dataset"].split():
            if not dataset_rows(spec):
                raise SystemExit(f"swift stub: dataset {spec} is empty")
        run = Path(args["--output_dir"]) / "v0-20260101-000000"
        (run / "checkpoint-1").mkdir(parents=True, exist_ok=True)
        keep = {k[2:]: v for k, v in args.items() if k in ("--model", "--template", "--dataset", "--adapters", "--learning_rate")}
        (run / "args.json").write_text(json.dumps(keep))
    elif cmd == "export":
        out = Path(args["--output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
    elif cmd == "infer":
        rows = dataset_rows(args["--val_dataset"])
        with open(args["--result_path"], "w") as f:
            for r in rows:
                r = {**r, "messages": [m for m in r["messages"] if m["role"] != "assistant"], "response": ANSWER}
                f.write(json.dumps(r) + "\n")
    elif cmd == "deploy":
        serve(int(args["--port"]), args.get("--served_model_name") or "policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
