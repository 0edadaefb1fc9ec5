//! `metrics.jsonl`: one line per logged step (and per evaluation), and the loss-curve PNG.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub step: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_s: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f32>,
    /// Set on steps skipped because the loss or a gradient was not finite.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skipped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}:{line}: not a metrics record ({msg})")]
    Parse { path: String, line: usize, msg: String },
    #[error("{path}: cannot draw the plot ({msg})")]
    Plot { path: String, msg: String },
}

pub fn append(path: &Path, r: &Record) -> Result<(), MetricsError> {
    let io = |error| MetricsError::Io { path: path.display().to_string(), error };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    writeln!(f, "{}", serde_json::to_string(r).expect("records serialise")).map_err(io)
}

pub fn read(path: &Path) -> Result<Vec<Record>, MetricsError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| MetricsError::Io { path: p.clone(), error })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| MetricsError::Parse {
                path: p.clone(),
                line: i + 1,
                msg: e.to_string(),
            })
        })
        .collect()
}

/// Drops records after `step` (a resumed run rewrites them exactly).
pub fn truncate_after(path: &Path, step: usize) -> Result<(), MetricsError> {
    if !path.exists() {
        return Ok(());
    }
    let kept: String = read(path)?
        .iter()
        .filter(|r| r.step <= step)
        .map(|r| serde_json::to_string(r).expect("records serialise") + "\n")
        .collect();
    crate::train::checkpoint::write_atomic(path, kept.as_bytes())
        .map_err(|e| MetricsError::Io { path: path.display().to_string(), error: std::io::Error::other(e.to_string()) })
}

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");

/// Draws train loss (thin) and validation loss (thick) against step into a PNG.
pub fn plot(records: &[Record], png: &Path) -> Result<(), MetricsError> {
    let err = |e: &dyn std::fmt::Display| MetricsError::Plot { path: png.display().to_string(), msg: e.to_string() };
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let train: Vec<(f64, f64)> = records.iter().filter_map(|r| Some((r.step as f64, r.loss? as f64))).collect();
    let val: Vec<(f64, f64)> = records.iter().filter_map(|r| Some((r.step as f64, r.val_loss? as f64))).collect();
    let all = || train.iter().chain(&val);
    let max_step = all().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (lo, hi) = if lo <= hi { (lo.max(0.0) * 0.95, hi * 1.05 + 1e-3) } else { (0.0, 1.0) };

    let root = BitMapBackend::new(png, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss (nats/token)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_step, lo..hi)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(train, BLUE.stroke_width(1)))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val, RED.stroke_width(3)))
        .map_err(|e| err(&e))?
        .label("val")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: usize, loss: f32) -> Record {
        Record { step, loss: Some(loss), lr: None, grad_norm: None, tokens_per_s: None, val_loss: None, skipped: None }
    }

    #[test]
    fn append_read_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("metrics.jsonl");
        for s in 1..=5 {
            append(&f, &rec(s, 5.0 - s as f32)).unwrap();
        }
        truncate_after(&f, 3).unwrap();
        assert_eq!(read(&f).unwrap(), vec![rec(1, 4.0), rec(2, 3.0), rec(3, 2.0)]);
    }

    #[test]
    fn bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("metrics.jsonl");
        std::fs::write(&f, "{\"step\":1}\nnot json\n").unwrap();
        assert!(read(&f).unwrap_err().to_string().contains("metrics.jsonl:2"));
    }

    #[test]
    fn plot_writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("loss.png");
        let mut rs: Vec<Record> = (1..50).map(|s| rec(s, 8.0 / s as f32)).collect();
        rs[10].val_loss = Some(1.0);
        rs[40].val_loss = Some(0.5);
        plot(&rs, &png).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    }
}
