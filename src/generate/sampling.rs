//! Choosing the next token from logits: penalties, then temperature, top-k, top-p, min-p, then a
//! draw from the seeded RNG of the sequence (greedy when temperature is 0).

use crate::model::kernels::{exp_shifted, reduce_lanes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = none).
    pub min_p: f32,
    /// CTRL-style: logits of tokens already in the prompt or output are divided by this when
    /// positive, multiplied when negative (1 = off).
    pub repetition_penalty: f32,
    /// Subtracted from a token's logit once per time it was already generated (0 = off).
    pub frequency_penalty: f32,
    pub max_new_tokens: usize,
    /// Generation ends when one of these tokens is drawn (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Generation ends when the text contains one of these (the text is cut before it).
    pub stop_strings: Vec<String>,
    /// Prompt i draws from ChaCha8Rng(seed) on stream i: the same seed gives the same text,
    /// whatever the batch size.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            max_new_tokens: 256,
            stop_tokens: vec![],
            stop_strings: vec![],
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, max_new_tokens, ..Default::default() }
    }

    /// Rejects values that make no sense, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |ok: bool, m: &str| if ok { Ok(()) } else { Err(m.to_string()) };
        bad(self.temperature >= 0.0 && self.temperature.is_finite(), "temperature must be >= 0")?;
        bad(self.top_p > 0.0 && self.top_p <= 1.0, "top-p must be in (0, 1]")?;
        bad((0.0..1.0).contains(&self.min_p), "min-p must be in [0, 1)")?;
        bad(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(), "repetition-penalty must be > 0")?;
        bad(self.frequency_penalty.is_finite(), "frequency-penalty must be finite")?;
        bad(self.max_new_tokens > 0, "max-new-tokens must be at least 1")?;
        bad(self.stop_strings.iter().all(|s| !s.is_empty()), "a stop string is empty; every --stop needs some text")
    }
}

/// Per-sequence sampling state: its RNG and what it has seen.
pub struct SeqSampler {
    rng: ChaCha8Rng,
    /// Times each token was generated, and which tokens the prompt or output contain.
    generated: Vec<u32>,
    seen: Vec<bool>,
    touched: Vec<u32>,
}

impl SeqSampler {
    pub fn new(p: &SamplingParams, stream: u64, vocab: usize, prompt: &[u32]) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        rng.set_stream(stream);
        let mut s = SeqSampler { rng, generated: vec![0; vocab], seen: vec![false; vocab], touched: vec![] };
        prompt.iter().for_each(|&t| s.mark(t));
        s
    }

    fn mark(&mut self, t: u32) {
        if let Some(seen) = self.seen.get_mut(t as usize)
            && !*seen
        {
            *seen = true;
            self.touched.push(t);
        }
    }

    /// Records a chosen token.
    pub fn accept(&mut self, t: u32) {
        self.mark(t);
        if let Some(c) = self.generated.get_mut(t as usize) {
            *c += 1;
        }
    }
}

/// [vocab] scratch for drawing tokens, reused by any sequence, step after step.
pub struct Sampler {
    work: Vec<f32>,
    idx: Vec<u32>,
}

impl Sampler {
    pub fn new(vocab: usize) -> Self {
        Sampler { work: vec![0.0; vocab], idx: vec![0; vocab] }
    }

    /// Picks the next token of a sequence from its logits [vocab].
    pub fn sample(&mut self, logits: &[f32], p: &SamplingParams, seq: &mut SeqSampler) -> u32 {
        let w = &mut self.work[..logits.len()];
        w.copy_from_slice(logits);
        for &t in &seq.touched {
            let l = &mut w[t as usize];
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
            }
            *l -= p.frequency_penalty * seq.generated[t as usize] as f32;
        }
        if p.temperature <= 0.0 {
            return argmax(w);
        }
        // Softmax at this temperature (unnormalised: mass is tracked explicitly).
        let (_, total) = exp_shifted(w, 1.0 / p.temperature);
        // A draw from the whole distribution that lands among the kept tokens is a draw from the
        // kept tokens alone. At top-p 0.95 nearly every first draw does, and then nothing is
        // sorted; when draws keep missing (a small top-k on a flat distribution) the kept set
        // is built exactly.
        if total.is_finite() {
            for _ in 0..REJECTION_TRIES {
                let t = draw(w, seq.rng.random::<f32>() * total);
                if kept(w, t, p, total) {
                    return t;
                }
            }
        }
        sample_kept(w, &mut self.idx[..logits.len()], p, total, &mut seq.rng)
    }
}

/// Draws from the whole distribution before building the kept set exactly.
const REJECTION_TRIES: usize = 3;

/// Tokens per block of [`draw`]: each block's sum vectorises; only the hit block is walked.
const DRAW_BLOCK: usize = 64;

/// The first token at which the running sum of the weights `w` reaches `r` (the last token if
/// rounding leaves `r` above the total).
fn draw(w: &[f32], mut r: f32) -> u32 {
    for (b, block) in w.chunks(DRAW_BLOCK).enumerate() {
        let s = reduce_lanes(block, 0.0, |a, b| a + b);
        if r <= s {
            // summed in another order, the walk may fall short by rounding: then its last token
            let i = block.iter().position(|&x| {
                r -= x;
                r <= 0.0
            });
            return (b * DRAW_BLOCK + i.unwrap_or(block.len() - 1)) as u32;
        }
        r -= s;
    }
    w.len().saturating_sub(1) as u32
}

/// Whether token t survives min-p, top-k and top-p. Ranking tokens by weight, ties by index:
/// fewer than top_k come before t, their weight is below top_p of the total, and t's weight is
/// at least min_p of the largest (which is 1). The weight before t is summed in another order
/// than [`sample_kept`]'s, so a token within rounding of the top-p cut may be kept by one and not
/// the other.
fn kept(w: &[f32], t: u32, p: &SamplingParams, total: f32) -> bool {
    let (t, wt) = (t as usize, w[t as usize]);
    if wt < p.min_p {
        return false;
    }
    if p.top_k == 0 && p.top_p >= 1.0 {
        return true;
    }
    let (n0, m0) = count_and_mass(&w[..t], |x| x >= wt);
    let (n1, m1) = count_and_mass(&w[t + 1..], |x| x > wt);
    (p.top_k == 0 || n0 + n1 < p.top_k) && (p.top_p >= 1.0 || m0 + m1 < p.top_p * total)
}

/// How many weights pass `pick`, and their sum (in 16 lanes, so that it vectorises).
fn count_and_mass(w: &[f32], pick: impl Fn(f32) -> bool) -> (usize, f32) {
    let (mut n, mut m) = ([0u32; 16], [0f32; 16]);
    let chunks = w.chunks_exact(16);
    let tail = chunks.remainder().iter().filter(|&&x| pick(x));
    let (tn, tm) = tail.fold((0, 0.0), |(n, m), &x| (n + 1, m + x));
    for c in chunks {
        for i in 0..16 {
            let hit = pick(c[i]);
            n[i] += u32::from(hit);
            m[i] += if hit { c[i] } else { 0.0 };
        }
    }
    (tn + n.iter().sum::<u32>() as usize, tm + m.iter().sum::<f32>())
}

/// Draws from the kept tokens (see [`kept`]) after gathering them into `idx` [vocab]: weights `w`
/// [vocab] summing to `total`.
fn sample_kept(w: &[f32], idx: &mut [u32], p: &SamplingParams, total: f32, rng: &mut ChaCha8Rng) -> u32 {
    // Candidates: min-p keeps p >= min_p * pmax (pmax is 1 here); top-p cannot keep a token
    // below (1 - top_p) / (V - 1) of the mass, so those never need sorting.
    let floor = (p.min_p).max(if p.top_p < 1.0 { (1.0 - p.top_p) / (w.len() - 1).max(1) as f32 * total } else { 0.0 });
    // Branch-free compaction: whether a token passes the floor is unpredictable. `idx` is
    // [vocab] from the start, so nothing is cleared or grown per token.
    let mut n = 0;
    for (i, &x) in w.iter().enumerate() {
        idx[n] = i as u32;
        n += usize::from(x >= floor);
    }
    let by_prob = |a: &u32, b: &u32| w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b));
    if p.top_k > 0 && p.top_k < n {
        idx[..n].select_nth_unstable_by(p.top_k - 1, by_prob);
        n = p.top_k;
    }
    if p.top_p < 1.0 {
        n = top_p_cut(&mut idx[..n], w, p.top_p * total);
    }
    let cand = &idx[..n];
    let mass: f32 = cand.iter().map(|&i| w[i as usize]).sum();
    let mut r = rng.random::<f32>() * mass;
    for &i in cand {
        r -= w[i as usize];
        if r <= 0.0 {
            return i;
        }
    }
    cand.last().copied().unwrap_or_else(|| argmax(w))
}

/// Reorders `idx` so that its first m tokens are the m most likely (by weight `w`), for the
/// smallest m whose weights reach `target`, and returns m (all of `idx` if they never do).
/// A selection halving its range each time: O(len) where sorting the candidates of a
/// high-entropy model was most of a batched sampling step.
fn top_p_cut(idx: &mut [u32], w: &[f32], target: f32) -> usize {
    let by_prob = |a: &u32, b: &u32| w[*b as usize].total_cmp(&w[*a as usize]).then(a.cmp(b));
    let mass = |s: &[u32]| s.iter().map(|&i| w[i as usize]).sum::<f32>();
    // idx[..lo] is kept; the cut lies in lo+1..=hi, and idx[lo..hi] outweigh the rest one by one.
    let (mut lo, mut hi, mut need) = (0, idx.len(), target);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        idx[lo..hi].select_nth_unstable_by(mid - lo, by_prob);
        let upper = mass(&idx[lo..mid]);
        if upper >= need {
            hi = mid;
        } else {
            need -= upper;
            lo = mid;
        }
    }
    hi
}

/// Index of the first largest value (NaN ignored; 0 if there is none). One pass in 16 independent
/// lanes, so it vectorises (one running best would be a serial chain through the vocabulary):
/// each lane keeps its largest value and the chunk where it first saw it; NaN never compares
/// greater, so it is skipped.
pub fn argmax(v: &[f32]) -> u32 {
    const L: usize = 16;
    let (mut best, mut chunk_at) = ([f32::NEG_INFINITY; L], [0u32; L]);
    let chunks = v.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, x) in chunks.enumerate() {
        for i in 0..L {
            let gt = x[i] > best[i];
            best[i] = if gt { x[i] } else { best[i] };
            chunk_at[i] = if gt { c as u32 } else { chunk_at[i] };
        }
    }
    let lanes = (0..L).map(|i| (best[i], chunk_at[i] as usize * L + i));
    let tail = tail.iter().enumerate().map(|(i, &x)| (x, v.len() - tail.len() + i));
    // the largest, the first of equals; nothing above -inf (all -inf or NaN): the first -inf
    let found = lanes
        .chain(tail)
        .filter(|(x, _)| *x > f32::NEG_INFINITY)
        .reduce(|a, b| if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) { b } else { a });
    found.map(|(_, i)| i).unwrap_or_else(|| v.iter().position(|&x| x == f32::NEG_INFINITY).unwrap_or(0)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(logits: &[f32], p: &SamplingParams, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(logits.len());
        let mut seq = SeqSampler::new(p, 0, logits.len(), &[]);
        (0..n).map(|_| s.sample(logits, p, &mut seq)).collect()
    }

    /// The definition: the first index of the largest non-NaN value (0 for none).
    fn first_largest(v: &[f32]) -> u32 {
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        v.iter().position(|&x| x == max).unwrap_or(0) as u32
    }

    #[test]
    fn argmax_is_the_definition_at_every_length_with_ties_nan_and_infinities() {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 3.0];
        for n in 0..70 {
            for seed in 0..40u32 {
                // few distinct values, so ties across lanes, chunks and the tail are common
                let mut v: Vec<f32> = (0..n as u32).map(|i| ((i * 7 + seed * 13) % 5) as f32).collect();
                for k in 0..(seed % 4) as usize {
                    if n > 0 {
                        v[(seed as usize * 31 + k * 17) % n] = special[(seed as usize + k) % special.len()];
                    }
                }
                if seed == 39 {
                    // nothing above -inf: the first -inf
                    v.iter_mut()
                        .enumerate()
                        .for_each(|(i, x)| *x = if i % 3 == 0 { f32::NAN } else { f32::NEG_INFINITY });
                }
                assert_eq!(argmax(&v), first_largest(&v), "{v:?}");
            }
        }
    }

    #[test]
    fn argmax_is_the_first_largest_past_the_vector_lanes() {
        let mut v: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        v[77] = 5.0;
        v[90] = 5.0;
        assert_eq!(argmax(&v), 77, "ties go to the first");
        v[3] = f32::NAN;
        assert_eq!(argmax(&v), 77, "NaN is ignored");
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }

    #[test]
    fn top_p_cut_keeps_the_smallest_most_likely_set_reaching_the_mass() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for n in [1usize, 2, 7, 100, 3000] {
            let w: Vec<f32> = (0..n).map(|_| rng.random::<f32>().powi(8)).collect();
            let total: f32 = w.iter().sum();
            for top_p in [0.1f32, 0.5, 0.9, 0.99] {
                let target = top_p * total;
                let mut sorted: Vec<u32> = (0..n as u32).collect();
                sorted.sort_by(|a, b| w[*b as usize].total_cmp(&w[*a as usize]));
                let mut acc = 0.0;
                let want = sorted.iter().position(|&i| {
                    acc += w[i as usize];
                    acc >= target
                });
                let mut idx: Vec<u32> = (0..n as u32).collect();
                let m = top_p_cut(&mut idx, &w, target);
                // the same count of the most likely tokens as sorting all and cutting the running sum
                let want = want.map_or(n, |j| j + 1);
                assert_eq!(m, want, "n {n} top_p {top_p}");
                let mut kept = idx[..m].to_vec();
                kept.sort_by(|a, b| w[*b as usize].total_cmp(&w[*a as usize]));
                assert_eq!(kept, sorted[..m], "n {n} top_p {top_p}: not the {m} most likely");
            }
        }
        // nothing to keep; a target the weights never reach keeps them all
        assert_eq!(top_p_cut(&mut [], &[], 1.0), 0);
        assert_eq!(top_p_cut(&mut [0, 1, 2], &[0.2, 0.3, 0.1], 0.7), 3);
    }

    #[test]
    fn draw_finds_the_first_token_whose_running_sum_reaches_r() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in [1usize, 63, 64, 65, 1000] {
            let w: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
            let total: f64 = w.iter().map(|&x| x as f64).sum();
            for _ in 0..200 {
                let r = rng.random::<f32>() * total as f32;
                let mut acc = 0.0f64;
                let want = w.iter().position(|&x| {
                    acc += x as f64;
                    acc >= r as f64
                });
                assert_eq!(draw(&w, r), want.unwrap_or(n - 1) as u32, "n {n} r {r}");
            }
            assert_eq!(draw(&w, 2.0 * total as f32), n as u32 - 1, "past the total: the last token");
        }
    }

    #[test]
    fn kept_is_the_sorted_prefix_and_the_exact_path_keeps_the_same_set() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for n in [1usize, 17, 300] {
            // multiples of 1/8 with the largest 1, as after the shift by the maximum: many ties,
            // and every sum exact, so both paths must agree token by token
            let mut w: Vec<f32> = (0..n).map(|_| (1 + rng.random_range(0..8)) as f32 / 8.0).collect();
            w[n / 2] = 1.0;
            let total: f32 = w.iter().sum();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
            for (top_k, top_p, min_p) in [(0, 1.0, 0.0), (5, 1.0, 0.0), (0, 0.5, 0.0), (0, 0.9, 0.3), (3, 0.7, 0.0)] {
                let p = SamplingParams { temperature: 1.0, top_k, top_p, min_p, ..Default::default() };
                let mut before = 0.0;
                let mut want = vec![false; n];
                for (rank, &t) in order.iter().enumerate() {
                    let in_k = top_k == 0 || rank < top_k;
                    want[t] = in_k && (top_p >= 1.0 || before < top_p * total) && w[t] >= min_p;
                    before += w[t];
                }
                let got: Vec<bool> = (0..n as u32).map(|t| kept(&w, t, &p, total)).collect();
                assert_eq!(got, want, "n {n} {p:?}");
                // the exact path's candidates (via its last step: each kept token is drawable)
                let mut idx = vec![0u32; n];
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                let drawn: std::collections::BTreeSet<u32> =
                    (0..40_000).map(|_| sample_kept(&w, &mut idx, &p, total, &mut rng)).collect();
                let want: std::collections::BTreeSet<u32> = (0..n as u32).filter(|&t| want[t as usize]).collect();
                assert_eq!(drawn, want, "n {n} {p:?}");
            }
        }
    }

    #[test]
    fn draws_follow_the_kept_distribution_whether_rejection_hits_or_falls_back() {
        // rejection nearly always hits (top-p over a peaked distribution) / nearly always falls
        // back (top-2 of 200 nearly equal tokens)
        let peaked: Vec<f32> = (0..50).map(|i| -0.15 * i as f32).collect();
        let flat: Vec<f32> = (0..200).map(|i| -0.001 * i as f32).collect();
        for (logits, top_k, top_p) in [(peaked, 0, 0.8f32), (flat, 2, 1.0)] {
            let p = SamplingParams { temperature: 1.0, top_k, top_p, ..Default::default() };
            let w: Vec<f32> = logits.iter().map(|&l| l.exp()).collect();
            let mut cum = 0.0;
            let kept: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let keep = (top_k == 0 || i < top_k) && cum < top_p * w.iter().sum::<f32>();
                    cum += x;
                    if keep { x } else { 0.0 }
                })
                .collect();
            let mass: f32 = kept.iter().sum();
            let n = 40_000;
            let mut count = vec![0usize; w.len()];
            draws(&logits, &p, n).into_iter().for_each(|t| count[t as usize] += 1);
            for (t, &k) in kept.iter().enumerate() {
                let (want, got) = ((k / mass) as f64, count[t] as f64 / n as f64);
                let sigma = (want * (1.0 - want) / n as f64).sqrt();
                assert!(
                    (got - want).abs() <= 5.0 * sigma + 1e-9,
                    "token {t}: {got} vs {want} (top-k {top_k}, top-p {top_p})"
                );
            }
        }
    }

    #[test]
    fn greedy_takes_argmax_and_penalties_move_it() {
        let l = [1.0, 3.0, 2.0, -1.0];
        let p = SamplingParams::greedy(1);
        assert_eq!(draws(&l, &p, 1), [1]);
        let mut s = Sampler::new(4);
        let rp = SamplingParams { repetition_penalty: 2.0, ..p.clone() };
        let mut seq = SeqSampler::new(&rp, 0, 4, &[1]);
        assert_eq!(s.sample(&l, &rp, &mut seq), 2, "3/2 < 2");
        let fp = SamplingParams { frequency_penalty: 0.6, ..p };
        let mut seq = SeqSampler::new(&fp, 0, 4, &[]);
        seq.accept(1);
        assert_eq!(s.sample(&l, &fp, &mut seq), 1, "one count: 3-0.6 > 2");
        seq.accept(1);
        assert_eq!(s.sample(&l, &fp, &mut seq), 2, "two counts: 3-1.2 < 2");
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_candidates() {
        let l = [2.0, 1.9, 1.8, 0.0, -2.0];
        let base = SamplingParams { temperature: 1.0, top_p: 1.0, ..Default::default() };
        let all: std::collections::BTreeSet<u32> = draws(&l, &base, 2000).into_iter().collect();
        assert_eq!(all.len(), 5, "every token is drawn sometimes: {all:?}");
        let k2 = SamplingParams { top_k: 2, ..base.clone() };
        assert!(draws(&l, &k2, 500).iter().all(|&t| t < 2));
        // probs ~ .35 .31 .28 .05 .006: top-p .5 keeps the first two
        let tp = SamplingParams { top_p: 0.5, ..base.clone() };
        assert!(draws(&l, &tp, 500).iter().all(|&t| t < 2));
        let mp = SamplingParams { min_p: 0.5, ..base };
        let got: std::collections::BTreeSet<u32> = draws(&l, &mp, 500).into_iter().collect();
        assert_eq!(got, [0, 1, 2].into());
    }

    #[test]
    fn same_seed_same_draws_other_seed_other_draws() {
        let l: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { temperature: 1.0, top_p: 1.0, seed: 7, ..Default::default() };
        assert_eq!(draws(&l, &p, 50), draws(&l, &p, 50));
        assert_ne!(draws(&l, &p, 50), draws(&l, &SamplingParams { seed: 8, ..p }, 50));
    }
}
