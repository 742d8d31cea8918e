"""Front ends: what the user brings (ONNX file, `.pt2` program, `file.py:factory`) into a checked ONNX model."""
