"""The package layout (issue 17): the pure core and the stage packages import nothing from ms-swift."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The pure core: no ms-swift (the project's standard), checked in a fresh interpreter.
CORE = ["mcr_swift.entities", "mcr_swift.coords", "mcr_swift.answer", "mcr_swift.rewards", "mcr_swift.scoring",
        "mcr_swift.evaluation.parser", "mcr_swift.evaluation.metrics"]
#: Stage packages: importing one must stay cheap (no ms-swift, no torch).
STAGES = ["mcr_swift", "mcr_swift.data", "mcr_swift.synth", "mcr_swift.plugin", "mcr_swift.evaluation",
          "mcr_swift.reports", "mcr_swift.pipeline",
          # the D2 filter scores rollouts with the pure scoring, not the ms-swift ORM (issue 17)
          "mcr_swift.synth.cvo_filter"]


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
    p = _cli("swift-args", "infer")
    assert p.returncode == 2 and "invalid choice: 'infer'" in p.stderr and "mcr-swift recipe-args dry-run" in p.stderr


def test_tools_holds_no_command_wrappers():
    assert sorted(p.name for p in (REPO / "tools").iterdir() if p.name != "__pycache__") == [
        "bench_endpoint.py", "bench_metrics.py", "bench_predict.py", "bench_rewards.py", "gpu_check.sh", "setup.sh"]
