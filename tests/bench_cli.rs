//! The `bench` commands' contract: human lines on stderr, one JSON object as the last stdout line.

use std::process::Command;

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_shoucuo")).arg("bench").args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("valid JSON")
}

#[test]
fn bench_memory_reports_a_positive_rate_for_each_size() {
    let j = bench_json(&["memory", "--mib", "1,2", "--passes", "2", "--threads", "2"]);
    assert_eq!(j["bench"], "memory");
    assert_eq!(j["threads"], 2);
    let read = j["read"].as_array().unwrap();
    assert_eq!(read.iter().map(|r| r["mib"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(read.iter().all(|r| r["gb_per_s"].as_f64().unwrap() > 0.0));
}

#[test]
fn bench_decode_reports_the_fields_the_docs_name() {
    let j = bench_json(&["decode", "--preset", "tiny", "--quant", "q8", "--batch", "2", "--prompt", "4", "--gen", "4"]);
    for k in ["prefill_tokens_per_s", "decode_tokens_per_s", "aggregate_tokens_per_s", "peak_rss_mib"] {
        assert!(j[k].as_f64().unwrap() > 0.0, "{k}: {}", j[k]);
    }
    assert_eq!(j["batch"], 2);
}
