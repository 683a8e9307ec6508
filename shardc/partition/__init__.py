"""Choosing the cut: the partitioning problem as data, and its CP-SAT solver."""

from shardc.partition.problem import (
    PartitionProblem,
    Solution,
    StageConfig,
    StagePlan,
    score,
    violations,
)

__all__ = ["PartitionProblem", "Solution", "StageConfig", "StagePlan", "score", "violations"]
