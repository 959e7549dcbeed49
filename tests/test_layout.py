"""The package layout (issues 17, 24): the pure core and the stage packages import nothing from ms-swift,
and imports run only down the layers (`LAYERS`)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The pure core: no ms-swift (the project's standard), checked in a fresh interpreter.
CORE = ["mcr_swift.core.entities", "mcr_swift.core.coords", "mcr_swift.core.answer", "mcr_swift.core.rewards", "mcr_swift.core.scoring",
        "mcr_swift.core.parser", "mcr_swift.core.metrics"]
#: Stage packages: importing one must stay cheap (no ms-swift, no torch).
STAGES = ["mcr_swift", "mcr_swift.data", "mcr_swift.synth", "mcr_swift.plugin", "mcr_swift.evaluation",
          "mcr_swift.reports", "mcr_swift.pipeline",
          # the D2 filter scores rollouts with the pure scoring, not the ms-swift ORM (issue 17)
          "mcr_swift.synth.cvo_filter"]


#: The layers, lowest first: a module imports only from its own unit and the layers before it. Units
#: in one layer sit side by side and import nothing from each other (synth and evaluation both build on
#: data and the endpoint client; plugin and pipeline both drive ms-swift). A unit is a module or a
#: package with everything below it; ``mcr_swift`` itself is the package's front (``__init__.py``).
LAYERS = [
    ["mcr_swift.core"],
    ["mcr_swift.jsonl", "mcr_swift.files", "mcr_swift.prompts", "mcr_swift.endpoint", "mcr_swift.runs"],
    ["mcr_swift.data"],
    ["mcr_swift.synth", "mcr_swift.evaluation"],
    ["mcr_swift.reports"],
    ["mcr_swift.plugin", "mcr_swift.pipeline"],
    ["mcr_swift.cli", "mcr_swift"],
]
#: Inside the core, the same rule (data model, then coordinates and answer format, then parser and
#: rewards, then metrics and one completion's score).
CORE_LAYERS = [
    ["mcr_swift.core.entities", "mcr_swift.core.argtypes"],
    ["mcr_swift.core.columns", "mcr_swift.core.coords", "mcr_swift.core.answer"],
    ["mcr_swift.core.parsing", "mcr_swift.core.rewards"],
    ["mcr_swift.core.parser", "mcr_swift.core.metrics"],
    ["mcr_swift.core.scoring"],
    ["mcr_swift.core"],
]


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = REPO):
    """(line, imported module) of every ``mcr_swift`` import in a file, function-level ones too."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t == "mcr_swift" or t.startswith("mcr_swift."):
                yield node.lineno, t


def _unit(module: str, layers):
    """(layer index, unit) of the longest unit that holds ``module``, or None."""
    best = None
    for i, units in enumerate(layers):
        for u in units:
            inside = module == u or (u != "mcr_swift" and module.startswith(u + "."))  # the front is one file
            if inside and (best is None or len(u) > len(best[1])):
                best = (i, u)
    return best


def layer_violations(layers, within: str = "", root: Path = REPO):
    bad = []
    for path in sorted((root / "mcr_swift").rglob("*.py")):
        src = _unit(_module_name(path, root), layers)
        if src is None or (within and not _module_name(path, root).startswith(within)):
            continue
        for line, target in imports_of(path, root):
            dst = _unit(target, layers)
            if dst is None or dst[1] == src[1] or dst[0] < src[0]:
                continue
            where = f"{path.relative_to(root)}:{line}"
            bad.append(f"{where}: {src[1]} imports {target} ({'same layer' if dst[0] == src[0] else 'a higher layer'})")
    return bad


def test_every_module_has_a_layer():
    homeless = [_module_name(p) for p in (REPO / "mcr_swift").rglob("*.py")
                if _unit(_module_name(p), LAYERS) is None]
    assert not homeless


def test_imports_run_down_the_layers():
    assert layer_violations(LAYERS) == []


def test_core_imports_run_down_its_layers():
    assert layer_violations(CORE_LAYERS, within="mcr_swift.core") == []


def test_layer_check_sees_back_and_side_imports(tmp_path):
    # the check is not vacuous: lazy imports up from the core and across a layer are caught, and
    # imports down the layers or inside a unit are not
    files = {"core/x.py": "def f():\n    from ..evaluation.predict import main\n    from .entities import Entity\n",
             "synth/y.py": "import mcr_swift.evaluation.reading\nfrom ..data import rows\nfrom . import split\n"}
    for rel, text in files.items():
        (tmp_path / "mcr_swift" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "mcr_swift" / rel).write_text(text)
    assert layer_violations(LAYERS, root=tmp_path) == [
        "mcr_swift/core/x.py:2: mcr_swift.core imports mcr_swift.evaluation.predict (a higher layer)",
        "mcr_swift/synth/y.py:1: mcr_swift.synth imports mcr_swift.evaluation.reading (same layer)"]


def _loaded_after(modules):
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted({n.split('.')[0] for n in sys.modules} & {'swift', 'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.strip()


def test_core_imports_no_ms_swift():
    assert _loaded_after(CORE) == "[]"


@pytest.mark.parametrize("package", STAGES)
def test_stage_package_import_is_cheap(package):
    assert _loaded_after([package]) == "[]"


def test_plugin_folder_holds_only_the_plugin_file():
    # ms-swift puts the plugin file's folder on sys.path: nothing else may live there.
    from mcr_swift import plugin_path
    folder = Path(plugin_path()).parent
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == ["mcr_swift_plugin.py"]


def test_every_command_module_has_a_main():
    import importlib
    from mcr_swift.cli import COMMANDS
    for name, (target, _) in COMMANDS.items():
        if target is not None:
            module, _, func = target.partition(":")
            assert callable(getattr(importlib.import_module(module), func or "main")), name


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mcr_swift.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_recipe_helpers_are_commands():
    # the recipes call these through the one entry point
    p = _cli("recipe-args", "batch", "--batch", "16", "--nproc", "4", "--nnodes", "1", "--max-per-device", "2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[1:] == ["NPROC_PER_NODE=4", "NNODES=1", "WORLD_PROCS=4", "PER_DEVICE_BATCH_SIZE=2",
                                    "GRAD_ACC=2"]
    p = _cli("recipe-args", "batch", "--batch", "6", "--nproc", "4", "--nnodes", "1")
    assert p.returncode == 2 and p.stdout == ""
    p = _cli("serve", "stop", "--pid-file", str(REPO / "no-such-dir" / "server.pid"))  # nothing to stop
    assert p.returncode == 0, p.stderr
    p = _cli("stage", "infer")
    assert p.returncode == 2 and "invalid choice: 'infer'" in p.stderr
    assert "swift-args" not in __import__("mcr_swift.cli").cli.COMMANDS   # test scaffolding lives in tests/


def test_tools_holds_no_command_wrappers():
    assert sorted(p.name for p in (REPO / "tools").iterdir() if p.name != "__pycache__") == [
        "bench_endpoint.py", "bench_metrics.py", "bench_predict.py", "bench_rewards.py", "bench_stage_repeat.py",
        "gpu_check.sh", "setup.sh"]


def environment_writes(root: Path = REPO):
    """``file:line`` of every write to ``os.environ`` (item assignment or deletion, ``setdefault``,
    ``update``, ``pop``, ``clear``, ``os.putenv``) in the package."""
    found = []
    for path in sorted((root / "mcr_swift").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            env = None
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                env = next((t for t in targets if isinstance(t, ast.Subscript)
                            and ast.unparse(t.value) == "os.environ"), None)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = ast.unparse(node.func.value)
                if (owner == "os.environ" and node.func.attr in ("setdefault", "update", "pop", "clear", "popitem")
                        or owner == "os" and node.func.attr in ("putenv", "unsetenv")):
                    env = node
            if env is not None:
                found.append(f"{path.relative_to(root / 'mcr_swift').as_posix()}:{node.lineno}")
    return found


#: The writes to os.environ that stay (issue 24 §3: settings are parameters; the environment is written
#: only where ms-swift, in this process, reads nothing else), by file -> how many.
ENVIRONMENT_WRITERS = {
    "evaluation/predict.py": 2,      # predict's in-process engine: MAX_PIXELS / MIN_PIXELS for qwen-vl-utils
    "plugin/registry.py": 1,         # inside ms-swift: QWENVL_BBOX_FORMAT=plain for its Qwen templates
}


def test_no_module_writes_the_environment_but_the_allowed_ones():
    from collections import Counter
    got = Counter(w.rpartition(":")[0] for w in environment_writes())
    assert dict(got) == ENVIRONMENT_WRITERS, environment_writes()


def test_environment_write_check_sees_writes(tmp_path):
    (tmp_path / "mcr_swift").mkdir()
    (tmp_path / "mcr_swift" / "x.py").write_text(
        "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\nx = os.environ.get('C')\n"
        "def f(env=dict(os.environ)):\n    env['D'] = '4'\n    del os.environ['A']\n")
    assert environment_writes(tmp_path) == ["x.py:2", "x.py:3", "x.py:7"]
