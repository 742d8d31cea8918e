"""Drift that means something, in both servers: per input and feature, the population stability index
against the bundle's golden inputs when they are real data, "no baseline" when they are random;
/healthz and `edgepack monitor` (also --follow) say "drifting" and which features.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgepack.deploy import deploy
from edgepack.runtime import loader
from test_serve_limits import SERVERS, Served

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def real_data_bundle(bundles, tmp_path_factory) -> Path:
    """good1 with 200 golden cases drawn from N(0, 1) (golden.origin "user": real data, a baseline)."""
    bundle = tmp_path_factory.mktemp("drift") / "tiny-real"
    shutil.copytree(bundles["good1"], bundle, symlinks=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = loader.load(bundles["good1"])
    rng = np.random.default_rng(7)
    cases = []
    for index in range(200):
        x = rng.standard_normal((1, 4)).astype(np.float32)
        (bundle / "golden" / f"r{index}").mkdir()
        pair = []
        for kind, array in (("input_0", x), ("output_0", model.run([x])[0])):
            rel = f"golden/r{index}/{kind}.npy"
            np.save(bundle / rel, array)
            data = (bundle / rel).read_bytes()
            manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            pair.append([rel])
        cases.append({"inputs": pair[0], "outputs": pair[1]})
    manifest["golden"]["cases"] = cases
    manifest["golden"]["origin"] = "user"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def _get(url: str) -> dict | str:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read().decode()
    return json.loads(body) if body.startswith("{") else body


def _post(url: str, x: np.ndarray) -> None:
    request = urllib.request.Request(f"{url}/v1/infer", data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


@pytest.mark.parametrize("kind", SERVERS)
def test_drift_per_feature_against_real_golden_data(kind, real_data_bundle, tmp_path, cli):
    device = tmp_path / "device"
    deploy(real_data_bundle, str(device))
    server = Served(kind, device / "tiny" / "current")
    try:
        rng = np.random.default_rng(11)
        for _ in range(200):
            _post(server.url, rng.standard_normal((1, 4)).astype(np.float32))
        assert _get(f"{server.url}/healthz")["status"] == "ok"
        for _ in range(100):  # feature 2 moves by 3 standard deviations
            x = rng.standard_normal((1, 4)).astype(np.float32)
            x[0, 2] += 3.0
            _post(server.url, x)
        health = _get(f"{server.url}/healthz")
        assert health["status"] == "drifting" and health["drifting"] == {"x": [2]}, health
        assert "x[2]" in health["problems"][0]
        metrics = _get(f"{server.url}/metrics")
        psi = {line.split('feature="')[1].split('"')[0]: float(line.split()[-1])
               for line in metrics.splitlines() if line.startswith("edgepack_input_psi{")}
        assert psi["2"] > 0.25 and max(psi["0"], psi["1"], psi["3"]) < 0.25, psi
        shown = cli("monitor", device, "--follow", "--times", "2", "--interval", "0.2")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.count("requests: 300 ok") == 2  # refreshed
        assert "x: drifting in feature(s) 2 (psi" in shown.stdout
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("kind", SERVERS)
def test_random_golden_inputs_are_no_baseline(kind, bundles, tmp_path, cli):
    device = tmp_path / "device"
    deploy(bundles["good1"], str(device))
    server = Served(kind, device / "tiny" / "current")
    try:
        for _ in range(30):
            _post(server.url, np.full((1, 4), 50.0, dtype=np.float32))
        assert _get(f"{server.url}/healthz")["status"] == "ok"
        metrics = _get(f"{server.url}/metrics")
        assert 'edgepack_input_drift_baseline{model="tiny",version="1.0.0",input="x"} 0' in metrics
        assert all(line.endswith(" NaN") for line in metrics.splitlines() if line.startswith("edgepack_input_psi{"))
        shown = cli("monitor", device)
        assert "x: no baseline" in shown.stdout, shown.stdout
    finally:
        assert server.stop() == 0
