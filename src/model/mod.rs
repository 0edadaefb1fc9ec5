//! The LLaMA model: shape, parameters, kernels, the training forward/backward pass, and inference.

pub mod config;
pub mod infer;
pub mod params;
pub mod weights;

pub use config::ModelConfig;
pub use params::ParamLayout;
