//! shoucuo (手搓): build small language models from scratch on one machine, and run them fast.
//!
//! Reading order follows the data: `tokenizer` → `data` → `model` → `train` → `generate` → `export`.

pub mod bench;
pub mod cli;
pub mod data;
pub mod export;
pub mod generate;
pub mod model;
pub mod tokenizer;
pub mod train;
