"""The compiler: an ONNX model into a TVM library and weights for one target (tuning, schedules, CUDA)."""
