//! Learning-rate schedule: linear warm-up, then cosine decay to `min_lr` at `max_steps`.

/// The learning rate for 0-based optimizer step `step`.
pub fn lr_at(step: usize, warmup: usize, max_steps: usize, max_lr: f32, min_lr: f32) -> f32 {
    if step < warmup {
        return max_lr * (step + 1) as f32 / warmup as f32;
    }
    if max_steps <= warmup {
        return max_lr;
    }
    let progress = ((step - warmup) as f32 / (max_steps - warmup) as f32).min(1.0);
    min_lr + 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()) * (max_lr - min_lr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_min() {
        assert_eq!(lr_at(0, 10, 100, 1.0, 0.1), 0.1);
        assert_eq!(lr_at(9, 10, 100, 1.0, 0.1), 1.0);
        assert!((lr_at(10, 10, 100, 1.0, 0.1) - 1.0).abs() < 1e-6);
        assert!((lr_at(55, 10, 100, 1.0, 0.1) - 0.55).abs() < 1e-6);
        assert!((lr_at(100, 10, 100, 1.0, 0.1) - 0.1).abs() < 1e-6);
        assert!(lr_at(40, 10, 100, 1.0, 0.1) > lr_at(41, 10, 100, 1.0, 0.1));
    }
}
