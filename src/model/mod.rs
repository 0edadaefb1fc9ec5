//! The LLaMA model: shape, parameters, kernels, the training forward/backward pass, and inference.

pub mod aligned;
pub mod config;
pub mod infer;
pub mod kernels;
pub mod params;
pub mod train_model;
pub mod weights;

pub use config::ModelConfig;
pub use kernels::crossentropy::IGNORE_INDEX;
pub use params::ParamLayout;
pub use train_model::TrainModel;
