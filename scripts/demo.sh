#!/usr/bin/env bash
# The README's first command: set up, then build, inspect, verify, run and benchmark the built-in
# digits example (a small CNN trained in seconds on scikit-learn's digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EP=.venv/bin/edgepack
BUNDLE=dist/digits_cnn-1.0.0-x86_64

mkdir -p dist
.venv/bin/python -c "from edgepack.examples.digits import write_test_inputs; write_test_inputs('dist/digits-inputs.npz')"
$EP build edgepack/examples/digits.py:digits_cnn --target x86_64 -o dist --golden-inputs dist/digits-inputs.npz --force
$EP inspect "$BUNDLE"
$EP verify "$BUNDLE"
.venv/bin/python -c "import numpy as np; np.save('dist/x.npy', np.load('dist/digits-inputs.npz')['image'][0])"
$EP run "$BUNDLE" --input dist/x.npy -o dist/y.npy
.venv/bin/python -c "import numpy as np; print('predicted digit:', int(np.load('dist/y.npy').argmax()))"
echo "native loader, from the bundle alone (no Python):"
env -i "$BUNDLE/runtime/edgepack-run" verify
"$BUNDLE/runtime/edgepack-run" run --input dist/x.npy -o dist/y_native.npy
$EP bench "$BUNDLE" --compare onnxruntime --compare torch
