"""Shared fixtures: the shared data folder, a tiny Qwen2.5-VL built offline, prepared rows."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MCR_SHARED_DIR", REPO.parent / "shared"))
DATA_V2 = SHARED / "data" / "twitter_gmner_v2"
DATA_V1 = SHARED / "data" / "twitter_gmner_v1"
#: Resize bound used by the CPU tests: at most 64 merged image tokens per image.
TINY_MAX_PIXELS = 28 * 28 * 64


def swift_bin() -> str:
    """The `swift` console script of the interpreter running the tests."""
    return str(Path(sys.executable).with_name("swift"))


@pytest.fixture(autouse=True)
def _environ_is_restored():
    """CLI mains run in-process set resize variables (MAX_PIXELS, ...) as their processes should;
    no test may leak them into the next one (or into the subprocesses it starts)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def data_v2() -> Path:
    if not DATA_V2.is_dir():
        pytest.fail(f"{DATA_V2} not found: the shared data must sit beside the checkout "
                    f"(or set MCR_SHARED_DIR)")
    return DATA_V2


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from mcr_swift.plugin.tiny import build_tiny_qwen25vl
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "tiny-qwen2_5_vl")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, data_v2) -> Path:
    """First 24 posts of each split prepared with stand-in images; returns the MCR_DATA_DIR."""
    from mcr_swift.data.prepare import prepare_twitter_gmner
    base = tmp_path_factory.mktemp("prepared")
    prepare_twitter_gmner(data_v2, base / "data", standin_dir=base / "images", limit=24, progress=False)
    return base / "data"
