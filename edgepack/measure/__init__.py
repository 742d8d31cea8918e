"""Measurements shared by the stages: ONNX Runtime as reference engine, and model quality on the user's data."""
