"""tools/bench_endpoint.py in its short mode: the real `synth` and `cvo-filter` against a simulated
batched server and a simulated rate-limited API. Only what does not depend on the machine's speed is
asserted: nothing lost, nothing paid twice, the limit rises above its start against the batched
server and is cut on 429s (the short mode's rate limits sit below what the start asks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_endpoint_short(tmp_path, data_v2):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "tools" / "bench_endpoint.py"), "--short", "--work",
                        str(tmp_path / "work"), "--json-out", str(out), "--data", str(data_v2)], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stdout + p.stderr
    results = {r["case"]: r for r in json.loads(out.read_text())}
    assert sorted(results) == ["cvo-filter / batched", "cvo-filter / rate-limited", "synth / batched",
                               "synth / rate-limited"]
    for name, r in results.items():
        assert r["rc"] == 0 and r["lost"] == 0 and r["paid_twice"] == 0, (name, r)
        assert r["requests"] == (300 if name.startswith("synth") else 120)
        assert r["client"]["mode"] == "adaptive" and r["client"]["start"] == 8
    for name in ("synth / batched", "cvo-filter / batched"):
        r = results[name]
        assert r["client"]["peak"] > 8 and r["server_peak_in_flight"] > 8, r  # rose above its start
        assert r["rejected_429"] == 0 and r["client"]["overload_cuts"] == 0
    for name in ("synth / rate-limited", "cvo-filter / rate-limited"):
        r = results[name]
        assert r["rejected_429"] > 0 and r["client"]["overload_cuts"] >= 1, r  # fell on 429s
        assert r["client"]["final"] < r["client"]["peak"] or r["client"]["final"] < 8, r
    assert "share" in p.stdout and "paid 2x" in p.stdout
