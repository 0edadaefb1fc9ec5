//! Training: AdamW, learning-rate schedule, the pretraining loop and checkpoints.

pub mod checkpoint;
pub mod metrics;
pub mod recipe;
