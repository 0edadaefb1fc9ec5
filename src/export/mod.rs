//! Sharing models: HF directories, GGUF for llama.cpp/ollama, and import of existing Llama checkpoints.

pub mod gguf;
pub mod hf;
pub mod import;
pub mod portability;

pub use hf::{ExportError, export_hf};
pub use portability::{Target, TargetReport, portability};
