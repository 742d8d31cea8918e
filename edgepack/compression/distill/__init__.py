"""Knowledge distillation: a teacher (PyTorch or ONNX) into a smaller network or a decision tree.

    from edgepack.compression.distill import NetworkStudentConfig, TreeStudentConfig, distill
    result = distill("teacher.onnx", TreeStudentConfig(max_depth=8), "train.npz", "dist",
                     eval_data="test.npz", targets=("x86_64", "arm64"))
"""

from edgepack.compression.distill.network import EpochReport, NetworkStudentConfig, TrainingProgress, kd_loss
from edgepack.compression.distill.run import DistillPlan, DistillResult, distill, plan_distill, run_distill
from edgepack.compression.distill.teacher import Teacher, load_teacher
from edgepack.compression.distill.tree import TreeStudentConfig, tree_matrices, tree_to_onnx

__all__ = [
    "DistillPlan", "DistillResult", "EpochReport", "NetworkStudentConfig", "Teacher", "TrainingProgress",
    "TreeStudentConfig", "distill", "kd_loss", "load_teacher", "plan_distill", "run_distill", "tree_matrices", "tree_to_onnx",
]
