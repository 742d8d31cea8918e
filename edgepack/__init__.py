"""edgepack: compile, package and verify ML models for edge devices with Apache TVM.

The public API (docs/api.md):

    import edgepack
    edgepack.quantize("model.onnx", "model.int8.onnx", "int8-dynamic")
    result = edgepack.build("model.int8.onnx", "x86_64", "dist")
    outputs = edgepack.load(result.bundle.path).run(inputs)

`build`, `quantize`, `prune`, `distill`, `tune`, `load` and `deploy` come from `edgepack.api`, which is
imported on first use: `import edgepack.runtime...` on a device must not pull in TVM's compiler or torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "build", "quantize", "prune", "distill", "tune", "load", "deploy", "quantization_config",
           "QualityGate", "ChannelPrune", "WeightPrune", "OnnxWeightPrune", "Magnitude", "Taylor", "FineTune",
           "TuneConfig", "EvaluationConfig", "BuildResult"]


def __getattr__(name: str):
    """The API's names, imported from edgepack.api when first asked for (PEP 562)."""
    if name in __all__:
        import importlib

        if name in ("build", "deploy"):  # callable submodules: edgepack.build(...) builds, edgepack.deploy(...) deploys
            return importlib.import_module(f"edgepack.{name}")
        return getattr(importlib.import_module("edgepack.api"), name)
    raise AttributeError(f"module 'edgepack' has no attribute '{name}'")
