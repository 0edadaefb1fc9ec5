//! Training: AdamW, learning-rate schedule, the pretraining loop and checkpoints.

pub mod checkpoint;
pub mod metrics;
pub mod optim;
pub mod pretrain;
pub mod recipe;
pub mod schedule;
