"""The training stream: epoch plan, frame transforms, normalization and the rank-sharded,
resumable ``TrainingStream``."""
