//! `shoucuo bench …`: machine-readable speed measurements (human lines on stderr, one JSON line on stdout).

pub mod data;
pub mod decode;
pub mod memory;
pub mod train;

/// Peak resident set size of this process in MiB (Linux `VmHWM`), or 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
