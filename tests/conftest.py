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


#: Fixtures that read the shared data: a test using one (directly or through another fixture) is marked
#: ``shared`` at collection, so a missing folder gives one message instead of a FileNotFoundError.
SHARED_FIXTURES = {"data_v2", "prepared"}


def shared_missing(path: Path = DATA_V2) -> str | None:
    """None when ``path`` (inside the shared folder) exists, else the one message naming what to do."""
    if Path(path).is_dir():
        return None
    where = (f"MCR_SHARED_DIR={SHARED}" if os.environ.get("MCR_SHARED_DIR")
             else f"expected ../shared beside the checkout, {SHARED}; or set MCR_SHARED_DIR to where it is")
    return f"needs the shared data: {path} not found ({where})"


def pytest_collection_modifyitems(items):
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("shared"):
            item.add_marker(pytest.mark.shared)


def pytest_runtest_setup(item):
    """A test marked ``shared`` (optionally ``shared(path)``) without the shared data: skipped with the
    reason, or failed under CI=true, where missing data is a broken setup that must not pass green."""
    for mark in item.iter_markers("shared"):
        reason = shared_missing(*mark.args[:1])
        if reason:
            if os.environ.get("CI", "").lower() in ("true", "1"):
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)


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
    reason = shared_missing(DATA_V2)   # normally caught before (the test is marked shared at collection)
    if reason:
        pytest.fail(reason, pytrace=False)
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
