"""Knowledge distillation: a teacher (PyTorch or ONNX) into a smaller network, a decision tree, an SVM or a rule set.

    from edgepack.compression.distill import NetworkStudentConfig, SvmStudentConfig, TreeStudentConfig, distill
    result = distill("teacher.onnx", SvmStudentConfig(kernel="rbf"), "train.npz", "dist",
                     eval_data="test.npz", targets=("x86_64", "arm64"))
"""

from edgepack.compression.distill.network import EpochReport, NetworkStudentConfig, TrainingProgress, kd_loss
from edgepack.compression.distill.rules import RuleSetStudentConfig
from edgepack.compression.distill.run import DistillPlan, DistillResult, distill, plan_distill, run_distill
from edgepack.compression.distill.svm import SvmStudentConfig
from edgepack.compression.distill.teacher import Teacher, load_teacher
from edgepack.compression.distill.tree import TreeStudentConfig, tree_matrices, tree_to_onnx

__all__ = [
    "DistillPlan", "DistillResult", "EpochReport", "NetworkStudentConfig", "RuleSetStudentConfig", "SvmStudentConfig", "Teacher",
    "TrainingProgress", "TreeStudentConfig", "distill", "kd_loss", "load_teacher", "plan_distill", "run_distill", "tree_matrices",
    "tree_to_onnx",
]
