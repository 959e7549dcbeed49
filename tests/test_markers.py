"""Unit and integration tests stay separated: a test that runs a real ``swift`` command (ms-swift on the
tiny model, its engine, or its argument resolution) or a pipeline recipe for real carries the ``swift``
marker, directly or through the helpers and fixtures it uses, and no other test does; the fast unit run
is ``pytest -m "not swift"``. Read from the test files' source (no test is run)."""
from __future__ import annotations

import ast
import re

from tests.conftest import REPO

#: a real ms-swift run: the console script, its deploy server, its engine, its argument classes
SWIFT_CALLS = re.compile(r"\b(swift_bin|SwiftDeploy|LocalBackend|swift_args_json)\(|_encode_labels\.py")
#: a recipe run from the repository with the real ``swift`` (not --dry-run, not SWIFT=echo, not a copied wrapper)
RECIPE_RUN = re.compile(r'\["bash", (f?"recipes/|str\(REPO / "recipes")')


def _marks(node) -> set:
    names = set()
    for d in getattr(node, "decorator_list", []) + ([node.value] if isinstance(node, ast.Assign) else []):
        for sub in ast.walk(d):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) \
                    and sub.value.attr == "mark":
                names.add(sub.attr)
    return names


def integration_status():
    """{file::test: (runs swift or a recipe, marked swift)} over tests/test_*.py."""
    out = {}
    for path in sorted((REPO / "tests").glob("test_*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        module_marks = set()
        funcs = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
                module_marks |= _marks(node)
            if isinstance(node, ast.FunctionDef):
                funcs[node.name] = node
        heavy = {}

        def is_heavy(name, seen=()):
            if name in heavy:
                return heavy[name]
            node = funcs[name]
            text = ast.get_source_segment(source, node)
            direct = bool(SWIFT_CALLS.search(text)) or (
                bool(RECIPE_RUN.search(text)) and "cwd=REPO" in text and '"SWIFT": "echo"' not in text
                and '"--dry-run"' not in text)
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {a.arg for a in node.args.args}
            heavy[name] = direct or any(is_heavy(u, seen + (name,)) for u in used
                                        if u in funcs and u != name and u not in seen)
            return heavy[name]

        for name, node in funcs.items():
            if name.startswith("test_"):
                out[f"{path.name}::{name}"] = (is_heavy(name), "swift" in module_marks | _marks(node))
    return out


def test_every_swift_run_is_marked_swift_and_only_those():
    status = integration_status()
    unmarked = sorted(t for t, (heavy, marked) in status.items() if heavy and not marked)
    overmarked = sorted(t for t, (heavy, marked) in status.items() if marked and not heavy)
    assert (unmarked, overmarked) == ([], [])
    # the rule sees the known integration tests (a rule that finds nothing would pass trivially)
    for known in ["test_swift_sft.py::test_swift_sft_trains_on_registered_gmner",
                  "test_stage_recipes.py::test_sft_trains_on_the_fallback_dataset_and_records_its_checkpoint",
                  "test_full_pipeline.py::test_full_pipeline_on_cpu_then_resume",
                  "test_recipes.py::test_sft_args_json_is_app_e4"]:
        assert status[known][0], known
    for unit in ["test_recipes.py::test_mrsi_defaults_are_the_papers", "test_swift_sft.py::test_plugin_file_and_cli",
                 "test_recipes.py::test_the_paper_run_is_the_config_itself",
                 "test_pipeline.py::test_a_second_run_on_a_locked_folder_stops_at_once"]:
        assert status[unit] == (False, False), unit
