//! `shoucuo bench memory`: how fast this machine reads a buffer of a given size with N threads —
//! the yardstick for `bench decode`'s `decode_gb_per_s` (small buffers come from cache, large ones
//! from DRAM). The buffer is allocated as the model's weights are: on a cache line, and from 2 MiB
//! on its own mapping with huge pages asked for.

use crate::model::aligned::Aligned;
use crate::model::infer::pool;
use anyhow::Context;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Buffer sizes in MiB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16,32,64,256")]
    pub mib: Vec<usize>,
    /// Passes over each buffer; the fastest counts.
    #[arg(long, default_value_t = 20)]
    pub passes: usize,
    /// Reading threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.passes >= 1 && a.mib.iter().all(|&m| m >= 1), "--passes and every --mib must be at least 1");
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global().context("setting --threads")?;
    }
    let threads = pool::pool().threads();
    eprintln!("bench memory: {threads} threads, best of {} passes", a.passes);
    let mut rates = Vec::new();
    for &mib in &a.mib {
        let mut buf = Aligned::<f32>::zeroed(mib * (1 << 20) / size_of::<f32>());
        buf.fill(1.0);
        let best = (0..a.passes)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(sum(&buf, threads));
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        let gb_per_s = (buf.len() * 4) as f64 / best / 1e9;
        eprintln!("{mib:>6} MiB: {gb_per_s:6.1} GB/s");
        rates.push(serde_json::json!({ "mib": mib, "gb_per_s": gb_per_s }));
    }
    println!("{}", serde_json::json!({ "bench": "memory", "threads": threads, "read": rates }));
    Ok(())
}

/// Σ x, each thread reading one contiguous share, on the inference thread pool (its threads stay
/// awake between passes, as between decode steps), with 64 running sums so the loads (not the adds)
/// set the pace.
fn sum(x: &[f32], threads: usize) -> f32 {
    let share = x.len().div_ceil(threads).max(1);
    let sums: Vec<AtomicU32> = (0..threads).map(|_| AtomicU32::new(0)).collect();
    pool::pool().run(x.len().div_ceil(share), |t| {
        let part = &x[t * share..((t + 1) * share).min(x.len())];
        let mut acc = [0f32; 64];
        for c in part.chunks_exact(64) {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        let s = acc.iter().sum::<f32>() + part.chunks_exact(64).remainder().iter().sum::<f32>();
        sums[t].store(s.to_bits(), Relaxed);
    });
    sums.iter().map(|s| f32::from_bits(s.load(Relaxed))).sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sum_reads_every_element_once_whatever_the_thread_count() {
        let x: Vec<f32> = (0..10_000).map(|i| (i % 7) as f32).collect();
        let want: f32 = x.iter().sum();
        for threads in [1, 2, 3, 8] {
            assert_eq!(super::sum(&x, threads), want, "{threads} threads");
        }
    }
}
