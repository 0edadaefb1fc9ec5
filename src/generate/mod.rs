//! Sampling and (batched) generation on top of the KV-cache inference path.
