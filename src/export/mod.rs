//! Sharing models: HF directories, GGUF for llama.cpp/ollama, and import of existing Llama checkpoints.
