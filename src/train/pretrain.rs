//! The pretraining loop: one optimizer step = `grad_accum` micro-batches of forward + backward,
//! a finiteness check, gradient clipping and an AdamW update; evaluation, metrics and
//! checkpoints at their intervals. A resumed run continues exactly where the checkpoint left off.

use crate::data::{Manifest, RandomWindows, SequentialWindows};
use crate::model::{IGNORE_INDEX, ParamLayout, TrainModel, params::init_params};
use crate::train::checkpoint::{self, CheckpointData, TrainerState};
use crate::train::metrics::{self, Record};
use crate::train::optim::{AdamW, AdamWConfig, clip_grad_norm, grad_norm};
use crate::train::recipe::Recipe;
use crate::train::schedule::lr_at;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Config(#[from] crate::model::config::ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0}")]
    Setup(String),
    #[error(
        "stopped at step {step}: {count} steps in a row had a non-finite loss or gradient; \
         lower train.lr, raise train.warmup_steps or check the data; the last checkpoint is untouched"
    )]
    NonFinite { step: usize, count: usize },
}

/// How a finished (or already finished) run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub last_loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub checkpoint: Option<PathBuf>,
}

/// States before training which tools will load the model, and why not for the others.
fn report_portability(cfg: &crate::model::ModelConfig) {
    let reports = crate::export::portability(cfg);
    let loads: Vec<String> = reports.iter().filter(|r| r.loads()).map(|r| r.target.to_string()).collect();
    eprintln!("model: {}; loads in: {}", crate::export::portability::shape_line(cfg), loads.join(", "));
    for r in reports.iter().filter(|r| !r.loads()) {
        eprint!("{r}");
    }
}

/// Trains the recipe's model on its prepared shards. With `resume`, continues from the newest
/// checkpoint of `train.out_dir`; without it, refuses to overwrite a run that has checkpoints.
pub fn pretrain(recipe: &Recipe, resume: bool) -> Result<RunSummary, TrainError> {
    let t = &recipe.train;
    let run_dir = t.out_dir.clone();
    let manifest = Manifest::load(&recipe.data.dir)?;
    let cfg = recipe.model_config(manifest.vocab_size);
    cfg.validate()?;
    if cfg.vocab_size < manifest.vocab_size {
        return Err(TrainError::Setup(format!(
            "model.vocab_size {} is smaller than the data's vocabulary ({}); remove model.vocab_size to take it from the data",
            cfg.vocab_size, manifest.vocab_size
        )));
    }
    report_portability(&cfg);
    std::fs::create_dir_all(&run_dir).map_err(|source| io(&run_dir, source))?;
    checkpoint::remove_partial_saves(&run_dir)?;

    let layout = ParamLayout::new(&cfg);
    let mut loader = RandomWindows::open(&recipe.data.dir, "train", t.seq_len, t.seed)?;
    let mut val = if t.eval_iters > 0 && manifest.splits.val.tokens > t.seq_len as u64 {
        Some(SequentialWindows::open(&recipe.data.dir, "val", t.seq_len)?)
    } else {
        None
    };
    let adam_cfg = AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay };
    let mut opt = AdamW::new(&layout, adam_cfg);
    let mut state = TrainerState { step: 0, adam_t: 0, tokens_seen: 0, bad_steps: 0, loader: loader.state() };
    let params = match (resume, checkpoint::load_latest(&run_dir)?) {
        (true, Some(ck)) => {
            if ck.cfg != cfg {
                return Err(TrainError::Setup(format!(
                    "{}: the checkpoint's model ({:?}) differs from the recipe's ({:?})",
                    ck.dir.display(),
                    ck.cfg,
                    cfg
                )));
            }
            loader.restore(&ck.state.loader)?;
            opt.m.copy_from_slice(&ck.adam_m);
            opt.v.copy_from_slice(&ck.adam_v);
            opt.t = ck.state.adam_t;
            state = ck.state;
            ck.params
        }
        (false, Some(ck)) => {
            return Err(TrainError::Setup(format!(
                "{} already holds checkpoints (newest: {}); pass --resume to continue it, or set train.out_dir to a new directory",
                run_dir.display(),
                ck.dir.display()
            )));
        }
        (_, None) => init_params(&cfg, &layout, t.seed),
    };
    let metrics_path = run_dir.join("metrics.jsonl");
    if state.step == 0 {
        let _ = std::fs::remove_file(&metrics_path);
    } else {
        metrics::truncate_after(&metrics_path, state.step)?;
    }

    let max_steps = recipe.max_steps();
    let recipe_toml = recipe.to_toml();
    let (bos, eos) = (Some(manifest.eos_id), Some(manifest.eos_id));
    let mut model = TrainModel::new(cfg.clone(), params, t.micro_batch, t.seq_len);
    let n = t.micro_batch * t.seq_len;
    let (mut tokens, mut targets) = (vec![0u32; n], vec![0u32; n]);
    let bar = progress_bar(max_steps, state.step);
    let mut summary =
        RunSummary { run_dir: run_dir.clone(), steps: state.step, last_loss: None, val_loss: None, checkpoint: None };
    let mut window_start = (Instant::now(), state.step);

    for step in state.step + 1..=max_steps {
        let lr = lr_at(step - 1, t.warmup_steps, max_steps, t.lr, t.min_lr);
        model.zero_grad();
        let mut loss = 0.0;
        for _ in 0..t.grad_accum {
            loader.next_batch(t.micro_batch, &mut tokens, &mut targets);
            loss += model.forward(&tokens, &targets) / t.grad_accum as f32;
            model.backward(1.0 / t.grad_accum as f32);
        }
        let norm =
            if t.grad_clip > 0.0 { clip_grad_norm(&mut model.grads, t.grad_clip) } else { grad_norm(&model.grads) };
        state.step = step;
        state.tokens_seen += recipe.tokens_per_step();
        let mut rec = Record { step, loss: Some(loss), lr: Some(lr), grad_norm: Some(norm), ..Record::default() };
        if loss.is_finite() && norm.is_finite() {
            opt.step(&mut model.params, &model.grads, lr);
            state.bad_steps = 0;
            summary.last_loss = Some(loss);
        } else {
            state.bad_steps += 1;
            rec.skipped = Some(format!("non-finite loss {loss} or grad norm {norm}; update skipped"));
            bar.println(format!("step {step}: {}", rec.skipped.as_deref().unwrap_or_default()));
            if state.bad_steps >= t.max_bad_steps {
                metrics::append(&metrics_path, &rec)?;
                return Err(TrainError::NonFinite { step, count: state.bad_steps });
            }
        }
        let eval_now = t.eval_interval > 0 && (step % t.eval_interval == 0 || step == max_steps);
        if let (true, Some(val)) = (eval_now, val.as_mut()) {
            let v = evaluate(&mut model, val, t.micro_batch, t.eval_iters, &mut tokens, &mut targets);
            rec.val_loss = Some(v);
            summary.val_loss = Some(v);
            bar.println(format!("step {step}: train loss {loss:.4}, val loss {v:.4}"));
        }
        let log_now = step % t.log_interval.max(1) == 0 || rec.val_loss.is_some() || rec.skipped.is_some();
        if log_now {
            let secs = window_start.0.elapsed().as_secs_f64().max(1e-9);
            let tps = (step - window_start.1) as f64 * recipe.tokens_per_step() as f64 / secs;
            rec.tokens_per_s = Some(tps as f32);
            window_start = (Instant::now(), step);
            metrics::append(&metrics_path, &rec)?;
            bar.set_message(format!("loss {loss:.4} | {:.0} tok/s", tps));
        }
        if rec.val_loss.is_some() {
            metrics::plot(&metrics::read(&metrics_path)?, &run_dir.join("loss.png"))?;
        }
        if step % t.save_interval.max(1) == 0 || step == max_steps {
            state.adam_t = opt.t;
            state.loader = loader.state();
            let ck = CheckpointData {
                cfg: &cfg,
                params: &model.params,
                adam_m: &opt.m,
                adam_v: &opt.v,
                state: &state,
                recipe_toml: &recipe_toml,
                tokenizer_dir: recipe.data.tokenizer.as_deref(),
                bos,
                eos,
            };
            summary.checkpoint = Some(checkpoint::save(&run_dir, &ck, t.keep_last)?);
        }
        bar.inc(1);
        summary.steps = step;
    }
    bar.finish();
    Ok(summary)
}

/// Mean validation loss over up to `iters` batches from the start of the split.
fn evaluate(
    model: &mut TrainModel,
    val: &mut SequentialWindows,
    batch: usize,
    iters: usize,
    tokens: &mut [u32],
    targets: &mut [u32],
) -> f32 {
    val.reset();
    let seq = tokens.len() / batch;
    let (mut sum, mut rows) = (0.0f64, 0usize);
    for _ in 0..iters {
        let n = val.next_batch(batch, tokens, targets);
        if n == 0 {
            break;
        }
        targets[n * seq..].fill(IGNORE_INDEX);
        tokens[n * seq..].fill(0);
        sum += model.loss(tokens, targets) as f64 * n as f64;
        rows += n;
    }
    if rows == 0 { f32::NAN } else { (sum / rows as f64) as f32 }
}

fn progress_bar(max_steps: usize, done: usize) -> ProgressBar {
    let bar = ProgressBar::new(max_steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} | ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar
}

fn io(path: &Path, error: std::io::Error) -> TrainError {
    TrainError::Io { path: path.display().to_string(), error }
}
