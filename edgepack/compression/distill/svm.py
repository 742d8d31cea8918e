"""SVM student: a linear SVM (or an RBF SVM through a Nyström feature map) fitted to the teacher.

Fitted with scikit-learn on standardised features: `LinearSVC` on the teacher's classes, or one
`LinearSVR` per class on the teacher's scores (`fit_to="scores"`). The RBF kernel is approximated
with `components` Nyström landmarks (sklearn `Nystroem`), so the program's size is bounded by
components × (features + classes) whatever the number of support vectors an exact RBF SVM would
keep. The tensor program computes the decision function with the standardisation folded in:

    linear: x·W' + b'                                   (W' = W / s, b' = b − (m / s)·W)
    rbf:    exp(−γ·max(|z|² − 2 z·Cᵀ + |c|², 0))·(N·W) + b  with z = (x − m) / s
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgepack.errors import EdgepackError

OUTPUT_NAME = "decision"
MISSING_CLASS = np.float32(-1e30)  # a class the teacher never predicted on the training data: never chosen
KERNELS = ("linear", "rbf")
FIT_TO = ("labels", "scores")


@dataclass(frozen=True)
class SvmStudentConfig:
    """A linear or Nyström-RBF SVM fitted to the teacher's classes or scores."""

    kernel: str = "linear"
    fit_to: str = "labels"
    c: float = 1.0
    components: int = 100  # rbf: Nyström landmarks (the program holds components × features of them)
    gamma: float | None = None  # rbf: None is 1 / features (features are standardised)
    max_iter: int = 5000
    seed: int = 0
    augment: int = 0
    noise: float = 0.5

    kind = "svm"

    def check(self) -> None:
        if self.kernel not in KERNELS:
            raise EdgepackError(f"unknown SVM kernel '{self.kernel}'", f"use one of {', '.join(KERNELS)}")
        if self.fit_to not in FIT_TO:
            raise EdgepackError(f"unknown SVM fit target '{self.fit_to}'", f"use one of {', '.join(FIT_TO)}")
        if self.c <= 0 or (self.gamma is not None and self.gamma <= 0):
            raise EdgepackError(f"--svm-c {self.c} / --gamma {self.gamma} is not positive", "pass a positive value")
        if self.components < 2 or self.max_iter < 1:
            raise EdgepackError(f"--components {self.components} is below 2", "pass --components 2 or more (e.g. 100)")
        if self.augment < 0 or self.noise < 0:
            raise EdgepackError(f"--augment {self.augment} / --noise {self.noise} is negative", "pass 0 or more")

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class FittedSvm:
    """The fitted scaler, optional Nyström map and linear SVM(s); `decision` is the reference."""

    config: SvmStudentConfig
    mean: np.ndarray
    scale: np.ndarray
    nystroem: object | None
    model: object
    classes: np.ndarray  # teacher class of each decision column (all classes for fit_to="scores")
    n_classes: int

    def _mapped(self, features: np.ndarray) -> np.ndarray:
        z = (features.astype(np.float64) - self.mean) / self.scale
        return self.nystroem.transform(z) if self.nystroem is not None else z

    def decision(self, features: np.ndarray) -> np.ndarray:
        """sklearn's decision function (or predicted scores) on the teacher's class columns, float64."""
        mapped = self._mapped(features)
        raw = self.model.predict(mapped) if self.config.fit_to == "scores" else self.model.decision_function(mapped)
        raw = np.asarray(raw, np.float64)
        if raw.ndim == 1:  # binary: sklearn's one score s picks classes_[1] when s > 0
            raw = np.stack([-raw, raw], axis=1)
        full = np.full((len(features), self.n_classes), float(MISSING_CLASS))
        full[:, self.classes] = raw
        return full

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The fitted student's own class predictions."""
        if self.config.fit_to == "scores":
            return np.argmax(self.decision(features), axis=1).astype(np.int64)
        return self.model.predict(self._mapped(features)).astype(np.int64)

    def linear_part(self) -> tuple[np.ndarray, np.ndarray]:
        """W (mapped features × decision columns) and b, in float64."""
        if self.config.fit_to == "scores":
            weights = np.stack([est.coef_.ravel() for est in self.model.estimators_], axis=1)
            bias = np.array([float(np.ravel(est.intercept_)[0]) for est in self.model.estimators_])
        else:
            weights, bias = self.model.coef_.T.astype(np.float64), self.model.intercept_.astype(np.float64)
            if weights.shape[1] == 1:
                weights, bias = np.concatenate([-weights, weights], axis=1), np.concatenate([-bias, bias])
        return weights, bias

    @property
    def params(self) -> int:
        weights, bias = self.linear_part()
        size = weights.size + bias.size + 2 * self.mean.size
        if self.nystroem is not None:
            size += self.nystroem.components_.size + weights.shape[0] * self.n_classes - weights.size
        return int(size)


def fit_svm(features: np.ndarray, classes: np.ndarray, scores: np.ndarray, config: SvmStudentConfig) -> FittedSvm:
    """Standardise, map (RBF: Nyström), then fit LinearSVC on classes or LinearSVR per class on scores."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.svm import LinearSVC, LinearSVR

    n_classes = scores.shape[1]
    present = np.unique(classes)
    if config.fit_to == "labels" and len(present) < 2:
        raise EdgepackError("the teacher predicts one class on all the training data",
                            "pass training data on which the teacher predicts several classes")
    data = features.astype(np.float64)
    mean, scale = data.mean(axis=0), data.std(axis=0)
    scale[scale == 0] = 1.0
    z = (data - mean) / scale
    nystroem = None
    if config.kernel == "rbf":
        gamma = config.gamma if config.gamma is not None else 1.0 / z.shape[1]
        nystroem = Nystroem(kernel="rbf", gamma=gamma, n_components=min(config.components, len(z)), random_state=config.seed)
        z = nystroem.fit_transform(z)
    if config.fit_to == "scores":
        model = MultiOutputRegressor(LinearSVR(C=config.c, max_iter=config.max_iter, random_state=config.seed, dual="auto"))
        model.fit(z, scores.astype(np.float64))
        columns = np.arange(n_classes)
    else:
        model = LinearSVC(C=config.c, max_iter=config.max_iter, random_state=config.seed, dual="auto")
        model.fit(z, classes)
        columns = model.classes_.astype(np.int64)
    return FittedSvm(config, mean, scale, nystroem, model, columns, n_classes)


def svm_constants(svm: FittedSvm) -> dict[str, np.ndarray]:
    """The program's float32 constants, standardisation folded in where it is linear."""
    weights, bias = svm.linear_part()
    full_w = np.zeros((weights.shape[0], svm.n_classes))
    full_b = np.full(svm.n_classes, float(MISSING_CLASS))
    full_w[:, svm.classes], full_b[svm.classes] = weights, bias
    if svm.nystroem is None:
        return {"W": (full_w / svm.scale[:, None]).astype(np.float32),
                "b": (full_b - (svm.mean / svm.scale) @ full_w).astype(np.float32)}
    landmarks = svm.nystroem.components_
    return {"mean": svm.mean.astype(np.float32), "inv_scale": (1.0 / svm.scale).astype(np.float32),
            "ones": np.ones((landmarks.shape[1], 1), np.float32), "Ct": (-2.0 * landmarks.T).astype(np.float32),
            "c2": (landmarks ** 2).sum(axis=1).astype(np.float32), "zero": np.zeros(1, np.float32),
            "neg_gamma": np.array([-svm.nystroem.gamma], np.float32),
            "W": (svm.nystroem.normalization_.T @ full_w).astype(np.float32), "b": full_b.astype(np.float32)}


def svm_nodes() -> tuple[list, list]:
    """(linear nodes, rbf nodes) computing the decision function from 'features'."""
    from onnx import helper

    from edgepack.compression.distill.program import FEATURES

    linear = [helper.make_node("MatMul", [FEATURES, "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], [OUTPUT_NAME])]
    rbf = [
        helper.make_node("Sub", [FEATURES, "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["z_squared"]),
        helper.make_node("MatMul", ["z_squared", "ones"], ["z_norm"]),  # |z|², one column
        helper.make_node("MatMul", ["z", "Ct"], ["cross"]),  # −2 z·Cᵀ
        helper.make_node("Add", ["cross", "z_norm"], ["partial"]),
        helper.make_node("Add", ["partial", "c2"], ["distance_raw"]),
        helper.make_node("Max", ["distance_raw", "zero"], ["distance"]),
        helper.make_node("Mul", ["distance", "neg_gamma"], ["exponent"]),
        helper.make_node("Exp", ["exponent"], ["kernel"]),
        helper.make_node("MatMul", ["kernel", "W"], ["kw"]),
        helper.make_node("Add", ["kw", "b"], [OUTPUT_NAME]),
    ]
    return linear, rbf


def svm_to_onnx(svm: FittedSvm, spec, path, doc: str = "", version: str | None = None):
    """Write the SVM's decision function as an ONNX tensor program; returns `path`."""
    from edgepack.compression.distill.program import write_program

    linear, rbf = svm_nodes()
    nodes = rbf if svm.nystroem is not None else linear
    return write_program(nodes, svm_constants(svm), spec, OUTPUT_NAME, svm.n_classes, path, f"svm_{svm.config.kernel}", doc, version)


def svm_cost(svm: FittedSvm) -> dict:
    """What the student costs per sample: multiply-adds and exponentials."""
    weights, _ = svm.linear_part()
    features = svm.mean.size
    if svm.nystroem is None:
        return {"macs": int(features * svm.n_classes), "exps": 0}
    components = svm.nystroem.components_.shape[0]
    return {"components": int(components), "macs": int(components * (features + svm.n_classes) + 2 * features),
            "exps": int(components)}
