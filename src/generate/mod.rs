//! Sampling and (batched) generation on top of the KV-cache inference path.
//!
//! [`generate`] keeps up to `batch_size` sequences in flight: each new prompt is prefilled alone
//! (GEMM), then all live sequences advance together, one token each per step, through one batched
//! pass over the weights. A sequence that finishes (stop token, stop string, max tokens, full
//! context) frees its slot for the next prompt, whose prefill skips what it shares with the
//! slot's cache; [`generate_in`] keeps the caches between calls (a chat's turns).

pub mod chat;
pub mod sampling;

use crate::model::infer::pool::pool;
use crate::model::infer::{InferError, InferModel, KvCache, Scratch};
use crate::tokenizer::Tok;
pub use sampling::{Sampler, SamplingParams, SeqSampler};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt {index} is empty; give at least one token of text")]
    EmptyPrompt { index: usize },
    #[error(
        "prompt {index} has {len} tokens but the context window is {cap}; shorten it (or pass a model with a longer max_position_embeddings)"
    )]
    PromptTooLong { index: usize, len: usize, cap: usize },
    #[error("invalid sampling settings: {0}")]
    Params(String),
    #[error(transparent)]
    Infer(#[from] InferError),
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// One of `stop_tokens` was drawn.
    StopToken,
    /// The text reached one of `stop_strings`.
    StopString,
    /// `max_new_tokens` were generated.
    Length,
    /// The context window is full.
    Context,
}

/// One finished sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated tokens (a final stop token is not included).
    pub tokens: Vec<u32>,
    /// Their text, cut before the first stop string.
    pub text: String,
    pub finish: Finish,
}

/// Generates a continuation for every prompt, `batch_size` sequences at a time.
/// `on_token(i, token)` is called for each new token of prompt i as it is drawn (for streaming;
/// a final stop token is not reported). Results come back in prompt order.
pub fn generate(
    model: &InferModel,
    tok: &Tok,
    prompts: &[Vec<u32>],
    p: &SamplingParams,
    batch_size: usize,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>, GenerateError> {
    generate_in(&mut Caches::default(), model, tok, prompts, p, batch_size, on_token)
}

/// KV caches kept from one [`generate_in`] call to the next (for one model), with the tokens each
/// holds: a prompt that begins with a cache's tokens — a chat's next turn, prompts that share a
/// system prompt — prefills only the rest. The logits are the same as from a fresh prefill.
#[derive(Default)]
pub struct Caches {
    caches: Vec<KvCache>,
    /// The tokens in each cache, in order (as many as its length).
    held: Vec<Vec<u32>>,
    reused: usize,
}

impl Caches {
    /// Prompt tokens not prefilled because a cache already held them, over all calls.
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// Empties every cache (their memory is kept).
    fn forget(&mut self) {
        self.held.iter_mut().for_each(Vec::clear);
        self.caches.iter_mut().for_each(KvCache::clear);
    }
}

/// [`generate`] with KV caches kept in `kept` between calls. After an error the caches are
/// emptied (a failed step may have filled part of one).
pub fn generate_in(
    kept: &mut Caches,
    model: &InferModel,
    tok: &Tok,
    prompts: &[Vec<u32>],
    p: &SamplingParams,
    batch_size: usize,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>, GenerateError> {
    run(kept, model, tok, prompts, p, batch_size, on_token).inspect_err(|_| kept.forget())
}

/// The body of [`generate_in`], which empties the caches when this fails.
fn run(
    kept: &mut Caches,
    model: &InferModel,
    tok: &Tok,
    prompts: &[Vec<u32>],
    p: &SamplingParams,
    batch_size: usize,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>, GenerateError> {
    p.validate().map_err(GenerateError::Params)?;
    let cfg = &model.cfg;
    let cap = cfg.max_seq_len;
    for (index, pr) in prompts.iter().enumerate() {
        if pr.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if pr.len() >= cap {
            return Err(GenerateError::PromptTooLong { index, len: pr.len(), cap });
        }
    }
    let b = batch_size.clamp(1, prompts.len().max(1));
    let mut scratch = Scratch::new(model, b.max(64));
    while kept.caches.len() < b {
        kept.caches.push(KvCache::new(cfg, cap, model.kv));
        kept.held.push(vec![]);
    }
    let Caches { caches, held, reused } = kept;
    let caches = &mut caches[..b];
    // One sampler ([vocab] scratch) per pool thread: the live sequences draw in parallel.
    let mut samplers: Vec<Mutex<Sampler>> =
        (0..pool().threads()).map(|_| Mutex::new(Sampler::new(cfg.vocab_size))).collect();
    let mut slots: Vec<Option<Live>> = (0..b).map(|_| None).collect();
    let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut next = 0;
    let mut rows: Vec<(usize, u32)> = Vec::with_capacity(b);
    let drawn: Vec<AtomicU32> = (0..b).map(|_| AtomicU32::new(0)).collect();
    loop {
        for (si, slot) in slots.iter_mut().enumerate() {
            while slot.is_none() && next < prompts.len() {
                let (i, prompt) = (next, &prompts[next]);
                next += 1;
                let (cache, held) = (&mut caches[si], &mut held[si]);
                // Keep the prefix the cache shares with the prompt, less at least the prompt's
                // last token, whose logits start the continuation.
                let same = held.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
                cache.truncate(same);
                held.truncate(same);
                *reused += same;
                let logits = model.prefill(&mut scratch, cache, &prompt[same..])?;
                held.extend_from_slice(&prompt[same..]);
                let seq = SeqSampler::new(p, i as u64, cfg.vocab_size, prompt);
                let scan = (!p.stop_strings.is_empty()).then(|| StopScan::new(tok, &p.stop_strings));
                let mut live = Live { index: i, seq: Mutex::new(seq), tokens: vec![], scan };
                let t = lock(&mut samplers[0]).sample(logits, p, lock(&mut live.seq));
                match live.push(t, p, tok, cache.len(), cap, on_token) {
                    Some(g) => out[i] = Some(g),
                    None => *slot = Some(live),
                }
            }
        }
        rows.clear();
        rows.extend(slots.iter().enumerate().filter_map(|(si, s)| s.as_ref().map(|l| (si, l.last()))));
        if rows.is_empty() {
            break;
        }
        let logits = model.decode(&mut scratch, caches, &rows)?;
        rows.iter().for_each(|&(si, t)| held[si].push(t));
        sample_rows(&slots, &samplers, logits, cfg.vocab_size, p, &drawn[..rows.len()]);
        for (&(si, _), t) in rows.iter().zip(&drawn) {
            let t = t.load(Relaxed);
            let Some(live) = slots[si].as_mut() else { continue };
            if let Some(g) = live.push(t, p, tok, caches[si].len(), cap, on_token) {
                out[live.index] = Some(g);
                slots[si] = None;
            }
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// The next token of every live slot into `drawn` (in slot order, as the rows of `logits`:
/// [live, vocab]), drawn on the inference pool, task t with sampler t taking every nt-th row:
/// sampling a row (softmax, top-p) can cost as much as a small model's share of the step, and each
/// row has its own RNG stream, so the order does not matter. Allocates nothing.
fn sample_rows(
    slots: &[Option<Live>],
    samplers: &[Mutex<Sampler>],
    logits: &[f32],
    vocab: usize,
    p: &SamplingParams,
    drawn: &[AtomicU32],
) {
    let live = drawn.len();
    assert!(
        logits.len() == live * vocab && slots.iter().flatten().count() == live,
        "one row of logits per live sequence"
    );
    let nt = samplers.len().min(live);
    pool().run(nt, |t| {
        let mut sampler = samplers[t].lock().unwrap_or_else(|e| e.into_inner());
        for (j, l) in slots.iter().flatten().enumerate().skip(t).step_by(nt) {
            let mut seq = l.seq.lock().unwrap_or_else(|e| e.into_inner());
            drawn[j].store(sampler.sample(&logits[j * vocab..(j + 1) * vocab], p, &mut seq), Relaxed);
        }
    });
}

/// The value in a mutex this thread holds alone (a poisoned one is still usable: the samplers
/// keep no invariant across a panic).
fn lock<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

/// A sequence in flight.
struct Live<'a> {
    index: usize,
    /// Locked only while the pool draws the sequence's token ([`sample_rows`]).
    seq: Mutex<SeqSampler>,
    tokens: Vec<u32>,
    /// Watches the text for stop strings (when there are any).
    scan: Option<StopScan<'a>>,
}

impl Live<'_> {
    fn last(&self) -> u32 {
        self.tokens.last().copied().unwrap_or(0)
    }

    /// Takes token `t`; returns the result when the sequence is finished. `filled`: positions
    /// already in the cache (the new token still needs one more).
    fn push(
        &mut self,
        t: u32,
        p: &SamplingParams,
        tok: &Tok,
        filled: usize,
        cap: usize,
        on_token: &mut dyn FnMut(usize, u32),
    ) -> Option<Generation> {
        let done = |tokens: &mut Vec<u32>, finish| {
            let text = cut_at_stop(tok.decode(tokens), &p.stop_strings);
            Some(Generation { tokens: std::mem::take(tokens), text, finish })
        };
        if p.stop_tokens.contains(&t) {
            return done(&mut self.tokens, Finish::StopToken);
        }
        self.tokens.push(t);
        lock(&mut self.seq).accept(t);
        on_token(self.index, t);
        if self.scan.as_mut().is_some_and(|scan| scan.push(&self.tokens, None)) {
            return done(&mut self.tokens, Finish::StopString);
        }
        if self.tokens.len() >= p.max_new_tokens {
            return done(&mut self.tokens, Finish::Length);
        }
        if filled >= cap {
            return done(&mut self.tokens, Finish::Context);
        }
        None
    }
}

/// Cuts `text` before the earliest occurrence of any stop string.
pub fn cut_at_stop(mut text: String, stops: &[String]) -> String {
    if let Some(at) = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(at);
    }
    text
}

/// Finds stop strings in the text of a growing token sequence without decoding all of it again
/// for every token: each token's new text is read off a decode of a few tokens around it (the
/// earlier ones give the context that decoders such as SentencePiece's need), and only a tail that
/// could still begin a stop string is kept. Where that short decode does not extend its context's
/// text (a decoder that rewrites earlier text, e.g. a replacement across tokens after fusing
/// them), the new text is read off a decode of the whole sequence instead; text already passed on
/// cannot be rewritten, so for such decoders the scan is approximate (byte-level BPE and
/// SentencePiece decoders never rewrite), while the finished text is cut from one full decode.
pub struct StopScan<'a> {
    tok: &'a Tok,
    stops: &'a [String],
    /// Tokens whose text has been taken (`ids[..done]`), and that text's length in bytes.
    done: usize,
    taken: usize,
    /// Taken text not yet passed on: the longest suffix that is a proper prefix of a stop string.
    held: String,
    stopped: bool,
}

/// Tokens before the first untaken one decoded with it, as context.
const CONTEXT: usize = 4;

impl<'a> StopScan<'a> {
    pub fn new(tok: &'a Tok, stops: &'a [String]) -> Self {
        StopScan { tok, stops, done: 0, taken: 0, held: String::new(), stopped: false }
    }

    /// Reads the text of the sequence so far, `ids` (one token more than at the last call);
    /// moves the text that now surely precedes any stop string to `out` (or drops it), and
    /// returns whether a stop string has been reached (then the text runs up to it, and later
    /// calls add nothing).
    pub fn push(&mut self, ids: &[u32], out: Option<&mut String>) -> bool {
        if self.stopped {
            return true;
        }
        let before = self.held.len();
        self.append_untaken(ids);
        // An incomplete UTF-8 character at the end waits for its next bytes, but the text before
        // it may already hold a stop string.
        let whole = !self.held[before..].ends_with('\u{FFFD}');
        let seen = &self.held[..self.held.trim_end_matches('\u{FFFD}').len()];
        let stop = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| seen.find(s.as_str())).min();
        let pass = if let Some(at) = stop {
            self.stopped = true;
            at
        } else if !whole {
            self.held.truncate(before);
            return false;
        } else {
            (self.done, self.taken) = (ids.len(), self.taken + self.held.len() - before);
            let held = &self.held;
            let keep = self
                .stops
                .iter()
                .filter_map(|s| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && held.ends_with(&s[..k])))
                .max()
                .unwrap_or(0);
            held.len() - keep
        };
        if let Some(out) = out {
            out.push_str(&self.held[..pass]);
        }
        self.held.drain(..pass);
        self.stopped
    }

    /// Appends to `held` the text of `ids[done..]` as it continues the text taken so far.
    fn append_untaken(&mut self, ids: &[u32]) {
        let from = self.done.saturating_sub(CONTEXT);
        let context = self.tok.decode(&ids[from..self.done]);
        let text = self.tok.decode(&ids[from..]);
        match text.strip_prefix(context.as_str()) {
            Some(new) => self.held.push_str(new),
            None => self.held.push_str(self.tok.decode(ids).get(self.taken..).unwrap_or_default()),
        }
    }
}

/// Turns a stream of tokens into printable text pieces: holds back an incomplete UTF-8 character
/// and anything that could still become a stop string.
pub struct TextStream<'a> {
    tok: &'a Tok,
    stops: &'a [String],
    scan: StopScan<'a>,
    tokens: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tok, stops: &'a [String]) -> Self {
        TextStream { tok, stops, scan: StopScan::new(tok, stops), tokens: vec![], printed: 0 }
    }

    /// Adds a token; returns the text that is now safe to print.
    pub fn push(&mut self, t: u32) -> String {
        self.tokens.push(t);
        let mut piece = String::new();
        self.scan.push(&self.tokens, Some(&mut piece));
        self.printed += piece.len();
        piece
    }

    /// The rest of the text once the sequence is done (decoded in full once, cut at a stop string).
    pub fn finish(&mut self) -> String {
        let text = cut_at_stop(self.tok.decode(&self.tokens), self.stops);
        let rest = text.get(self.printed..).unwrap_or_default().to_string();
        self.printed = text.len().max(self.printed);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn tok() -> Tok {
        Tok::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tok_small")).unwrap()
    }

    /// Token sequences: Chinese text (multi-byte characters, some split over tokens) and random
    /// ids (byte tokens that form invalid or incomplete UTF-8, special tokens).
    fn sequences(tok: &Tok) -> Vec<Vec<u32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let vocab = tok.vocab_size() as u32;
        let mut seqs = vec![tok.encode("汤姆和杰瑞是好朋友，他们一起去公园玩。<|im_end|>然后……“你好！”")];
        seqs.extend((0..40).map(|_| (0..60).map(|_| rng.random_range(0..vocab)).collect::<Vec<u32>>()));
        seqs
    }

    /// Stop strings taken from the text: 1 to 3 characters from a random place (so they span
    /// tokens and split characters), sometimes with a second stop that never occurs. U+FFFD is
    /// left out: the full decode shows an incomplete last character as U+FFFD, which the scan
    /// (rightly) waits to see completed.
    fn stops_for(text: &str, rng: &mut impl Rng) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let starts: Vec<usize> = (0..chars.len()).filter(|&i| chars[i] != '\u{FFFD}').collect();
        let at = starts[rng.random_range(0..starts.len())];
        let len = rng.random_range(1..=3);
        let stop: String = chars[at..].iter().take(len).take_while(|&&c| c != '\u{FFFD}').collect();
        if rng.random_bool(0.5) { vec!["never".into(), stop] } else { vec![stop] }
    }

    #[test]
    fn stop_scan_stops_at_the_token_where_the_full_text_first_holds_a_stop_string() {
        let tok = tok();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut stopped = 0;
        for seq in sequences(&tok) {
            // a space: byte tokens such as " \xe6\x9d" complete it and begin a character at once
            for stops in [stops_for(&tok.decode(&seq), &mut rng), vec![" ".into()]] {
                let want = (0..seq.len()).find(|&k| stops.iter().any(|s| tok.decode(&seq[..=k]).contains(s.as_str())));
                let mut scan = StopScan::new(&tok, &stops);
                let got = (0..seq.len()).position(|k| scan.push(&seq[..=k], None));
                assert_eq!(got, want, "stops {stops:?} in {:?}", tok.decode(&seq));
                stopped += got.is_some() as usize;
            }
        }
        assert!(stopped > 60, "only {stopped} of 82 scans reached their stop string");
    }

    #[test]
    fn text_stream_prints_the_full_decode_cut_at_the_first_stop_string() {
        let tok = tok();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for seq in sequences(&tok) {
            let text = tok.decode(&seq);
            for stops in [vec![], stops_for(&text, &mut rng), vec![" ".into()]] {
                let mut ts = TextStream::new(&tok, &stops);
                let mut printed: String = seq.iter().map(|&t| ts.push(t)).collect();
                printed += &ts.finish();
                assert_eq!(printed, cut_at_stop(text.clone(), &stops), "stops {stops:?}");
            }
        }
    }
}
