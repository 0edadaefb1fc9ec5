//! Corpus readers (txt, jsonl), cleaning and dedup, token shards + manifest, and training loaders.
