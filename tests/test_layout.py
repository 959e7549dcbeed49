"""The package layout (issue 17): the pure core and the stage packages import nothing from ms-swift."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The pure core: no ms-swift (the project's standard), checked in a fresh interpreter.
CORE = ["mcr_swift.entities", "mcr_swift.coords", "mcr_swift.answer", "mcr_swift.rewards",
        "mcr_swift.evaluation.parser", "mcr_swift.evaluation.metrics"]
#: Stage packages: importing one must stay cheap (no ms-swift, no torch).
STAGES = ["mcr_swift", "mcr_swift.data", "mcr_swift.synth", "mcr_swift.plugin", "mcr_swift.evaluation",
          "mcr_swift.reports", "mcr_swift.pipeline"]


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
    for name, (module, _) in COMMANDS.items():
        if module is not None:
            assert callable(importlib.import_module(module).main), name
