//! `shoucuo chat`: an interactive terminal chat (ChatML), or plain completion for a base model.

use super::generate::{RunArgs, SamplingArgs};
use crate::generate::chat::{Message, fit_history};
use crate::generate::{Caches, TextStream, generate_in};
use crate::train::checkpoint::is_pretraining_checkpoint;
use anyhow::bail;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// A system message put before the conversation (chat models only).
    #[arg(long)]
    pub system: Option<String>,
    /// chat: render the conversation with the ChatML template; complete: each line is a prompt
    /// to continue; auto: chat when the tokenizer has a chat template and ChatML tokens, except
    /// for shoucuo's pretraining checkpoints (base models: they never saw the template).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Chat,
    Complete,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (model, tok) = a.run.load(&a.model)?;
    let p = a.sampling.params(&tok)?;
    let chatml = tok.token_id("<|im_start|>").is_some() && tok.token_id("<|im_end|>").is_some();
    let pretrained = is_pretraining_checkpoint(&a.model);
    let (chat, why) = match a.mode {
        Mode::Chat if !chatml => bail!(
            "{}: --mode chat needs the tokens <|im_start|> and <|im_end|> in tokenizer.json; use --mode complete",
            a.model.display()
        ),
        Mode::Chat => (true, "chat mode (ChatML)"),
        Mode::Complete => (false, "plain completion mode, each line is a prompt"),
        Mode::Auto if !(chatml && has_chat_template(&a.model)) => {
            (false, "no chat template: plain completion mode, each line is a prompt")
        }
        // Only pretraining writes checkpoints here so far: a model trained to chat comes from elsewhere.
        Mode::Auto if pretrained => (
            false,
            "a pretraining checkpoint (a base model): plain completion mode, each line is a prompt; --mode chat for ChatML",
        ),
        Mode::Auto => (true, "chat mode (ChatML)"),
    };
    eprintln!("{why}; /reset clears the conversation, /exit (or Ctrl-D) quits");
    if !chat && a.system.is_some() {
        eprintln!("(--system applies to chat mode only; ignored)");
    }
    let ctx = model.cfg.max_seq_len;
    let fresh = || a.system.iter().map(|s| Message { role: "system".into(), content: s.clone() }).collect::<Vec<_>>();
    let mut history = fresh();
    // The conversation's KV cache, kept between turns: each turn prefills only what is new.
    let mut kept = Caches::default();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next().transpose()? else { break };
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        let ids = if chat {
            history.push(Message { role: "user".into(), content: line.to_string() });
            // leave room for at least a short answer; trim older turns to fit
            let reserve = p.max_new_tokens.clamp(1, ctx / 2);
            match fit_history(&mut history, ctx, reserve, |s| tok.encode(s)) {
                Some(ids) => ids,
                None => {
                    history.pop();
                    eprintln!("(message too long for the context window of {ctx} tokens; shorten it)");
                    continue;
                }
            }
        } else {
            let ids = tok.encode(line);
            if ids.is_empty() || ids.len() >= ctx {
                eprintln!("(prompt must have 1 to {} tokens; it has {})", ctx - 1, ids.len());
                continue;
            }
            print!("{line}");
            ids
        };
        let mut out = std::io::stdout().lock();
        let mut ts = TextStream::new(&tok, &p.stop_strings);
        let mut on_token = |_: usize, t: u32| {
            let _ = write!(out, "{}", ts.push(t)).and_then(|_| out.flush());
        };
        let g = generate_in(&mut kept, &model, &tok, &[ids], &p, 1, &mut on_token)?;
        writeln!(out, "{}", ts.finish())?;
        if chat && let Some(g) = g.into_iter().next() {
            history.push(Message { role: "assistant".into(), content: g.text });
        }
    }
    Ok(())
}

/// True when the model directory's tokenizer_config.json has a `chat_template`.
fn has_chat_template(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v.get("chat_template").is_some_and(|t| !t.is_null()))
}
