//! Training: AdamW, learning-rate schedule, the pretraining loop and checkpoints.
