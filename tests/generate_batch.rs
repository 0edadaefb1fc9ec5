//! Batched generation on tiny random models: batched greedy equals one-at-a-time greedy for ragged
//! prompts, seeded sampling is reproducible, kept KV caches reuse shared prefixes, stop conditions
//! and bad input.

use shoucuo::generate::{Caches, Finish, GenerateError, Generation, SamplingParams, generate, generate_in};
use shoucuo::model::config::ModelConfig;
use shoucuo::model::infer::{InferModel, Quant};
use shoucuo::model::params::{ParamLayout, init_params};
use shoucuo::tokenizer::Tok;

const V: usize = 64;

fn cfg() -> ModelConfig {
    ModelConfig {
        vocab_size: V,
        dim: 32,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 12,
        ffn_hidden: 40,
        max_seq_len: 48,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    }
}

fn model(q: Quant) -> InferModel {
    let c = cfg();
    let p: Vec<f32> = init_params(&c, &ParamLayout::new(&c), 9).into_iter().map(|v| v * 6.0).collect();
    InferModel::new(&c, &p, q).unwrap()
}

/// A word-level tokenizer whose tokens are "w0".."w63" (decoded joined by spaces).
fn tok(dir: &std::path::Path) -> Tok {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..V).map(|i| (format!("w{i}"), i.into())).collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    Tok::load(dir).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    [vec![5], vec![1, 2, 3, 4, 5, 6, 7], vec![60, 2], vec![9, 9, 9, 9], vec![33, 12, 40, 41, 42], vec![7, 8, 9]]
        .into_iter()
        .collect()
}

fn run(m: &InferModel, t: &Tok, p: &SamplingParams, b: usize) -> Vec<Generation> {
    generate(m, t, &prompts(), p, b, &mut |_, _| {}).unwrap()
}

#[test]
fn batched_greedy_equals_one_at_a_time_for_ragged_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    for q in [Quant::F32, Quant::Q8] {
        let m = model(q);
        // stop on token 3: some sequences end early, freeing their slot for the next prompt
        let p = SamplingParams { stop_tokens: vec![3], ..SamplingParams::greedy(20) };
        let one = run(&m, &t, &p, 1);
        assert_eq!(one.len(), 6);
        for b in [2, 4, 6, 16] {
            assert_eq!(run(&m, &t, &p, b), one, "{q:?} batch {b}");
        }
        let lens: Vec<usize> = one.iter().map(|g| g.tokens.len()).collect();
        assert!(lens.iter().all(|&n| n <= 20));
        assert!(one.iter().any(|g| g.finish == Finish::Length), "{lens:?}");
    }
}

#[test]
fn seeded_sampling_is_reproducible_across_batch_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    let m = model(Quant::F32);
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 20,
        top_p: 0.9,
        min_p: 0.02,
        repetition_penalty: 1.1,
        frequency_penalty: 0.2,
        max_new_tokens: 16,
        seed: 42,
        ..Default::default()
    };
    let a = run(&m, &t, &p, 1);
    assert_eq!(a, run(&m, &t, &p, 1));
    assert_eq!(a, run(&m, &t, &p, 4));
    assert_ne!(a, run(&m, &t, &SamplingParams { seed: 43, ..p.clone() }, 4));
    let greedy = run(&m, &t, &SamplingParams::greedy(16), 4);
    assert_ne!(a, greedy, "sampling at temperature 1 should not be greedy");
}

#[test]
fn streamed_tokens_are_the_returned_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    let m = model(Quant::F32);
    let p = SamplingParams { stop_tokens: vec![3], ..SamplingParams::greedy(12) };
    let mut seen = vec![vec![]; prompts().len()];
    let out = generate(&m, &t, &prompts(), &p, 3, &mut |i, tk| seen[i].push(tk)).unwrap();
    let want: Vec<Vec<u32>> = out.iter().map(|g| g.tokens.clone()).collect();
    assert_eq!(seen, want);
}

#[test]
fn stop_string_cuts_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    let m = model(Quant::F32);
    let free = run(&m, &t, &SamplingParams::greedy(10), 2);
    // stop at the third generated word of prompt 0
    let words: Vec<&str> = free[0].text.split(' ').collect();
    assert!(words.len() >= 3, "{:?}", free[0].text);
    let stop = words[2].to_string();
    let p = SamplingParams { stop_strings: vec![stop.clone()], ..SamplingParams::greedy(10) };
    let out = run(&m, &t, &p, 2);
    assert_eq!(out[0].finish, Finish::StopString);
    assert!(!out[0].text.contains(&stop));
    assert!(free[0].text.starts_with(&out[0].text));
}

#[test]
fn q8_greedy_mostly_agrees_with_f32() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    let p = SamplingParams::greedy(8);
    let (a, b) = (run(&model(Quant::F32), &t, &p, 6), run(&model(Quant::Q8), &t, &p, 6));
    // stated bound: at least half of the first 8 greedy tokens agree, summed over prompts
    let agree: usize =
        a.iter().zip(&b).map(|(x, y)| x.tokens.iter().zip(&y.tokens).take_while(|(p, q)| p == q).count()).sum();
    assert!(agree * 2 >= 8 * a.len(), "common greedy prefix {agree} of {}", 8 * a.len());
}

#[test]
fn too_long_or_empty_prompts_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    let m = model(Quant::F32);
    let long = vec![vec![1u32; 48]];
    let err = generate(&m, &t, &long, &SamplingParams::greedy(4), 1, &mut |_, _| {}).unwrap_err();
    assert!(matches!(err, GenerateError::PromptTooLong { index: 0, len: 48, cap: 48 }), "{err}");
    assert!(err.to_string().contains("context window"));
    let err = generate(&m, &t, &[vec![]], &SamplingParams::greedy(4), 1, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // a prompt that nearly fills the window ends on the context, not with a panic
    let out = generate(&m, &t, &[vec![1u32; 46]], &SamplingParams::greedy(10), 1, &mut |_, _| {}).unwrap();
    assert_eq!(out[0].finish, Finish::Context);
    assert_eq!(out[0].tokens.len(), 3, "46 in the cache + 2 decoded fill 48; the 3rd is drawn but never fed");
}

#[test]
fn kept_caches_reuse_shared_prefixes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok(dir.path());
    let m = model(Quant::F32);
    let greedy = SamplingParams::greedy(8);
    let seeded = SamplingParams { temperature: 1.0, top_p: 0.9, seed: 5, ..SamplingParams::greedy(8) };
    let fresh =
        |prompts: &[Vec<u32>], p: &SamplingParams, b: usize| generate(&m, &t, prompts, p, b, &mut |_, _| {}).unwrap();
    for p in [&greedy, &seeded] {
        // a chat: the next turn's prompt is the last prompt, its answer and more
        let mut kept = Caches::default();
        let turn1 = vec![5, 6, 7];
        let g1 = generate_in(&mut kept, &m, &t, std::slice::from_ref(&turn1), p, 1, &mut |_, _| {}).unwrap();
        assert_eq!((g1[0].finish, kept.reused_tokens()), (Finish::Length, 0));
        let turn2: Vec<u32> = [&turn1[..], &g1[0].tokens[..], &[11, 12]].concat();
        let g2 = generate_in(&mut kept, &m, &t, std::slice::from_ref(&turn2), p, 1, &mut |_, _| {}).unwrap();
        assert_eq!(g2, fresh(std::slice::from_ref(&turn2), p, 1));
        // the cache held the prompt and every answer token but the last (drawn, never fed)
        assert_eq!(kept.reused_tokens(), turn1.len() + g1[0].tokens.len() - 1);
        // the same prompt again: all but its last token reused
        let before = kept.reused_tokens();
        let g3 = generate_in(&mut kept, &m, &t, std::slice::from_ref(&turn2), p, 1, &mut |_, _| {}).unwrap();
        assert_eq!((g3, kept.reused_tokens() - before), (g2, turn2.len() - 1));

        // a batch sharing a system prompt: slots reuse it from the prompts they held before
        let prompts: Vec<Vec<u32>> = (0..6).map(|i| vec![40, 41, 42, 43, 20 + i, 30 + i]).collect();
        let mut kept = Caches::default();
        let batched = generate_in(&mut kept, &m, &t, &prompts, p, 2, &mut |_, _| {}).unwrap();
        assert_eq!(batched, fresh(&prompts, p, 1));
        assert_eq!(kept.reused_tokens(), 4 * 4, "4 prompts after the first 2 reuse 4 tokens each");

        // an error empties the caches: nothing is reused after it
        let long = vec![1; cfg().max_seq_len];
        assert!(generate_in(&mut kept, &m, &t, &[long], p, 1, &mut |_, _| {}).is_err());
        let before = kept.reused_tokens();
        generate_in(&mut kept, &m, &t, &prompts[..1], p, 1, &mut |_, _| {}).unwrap();
        assert_eq!(kept.reused_tokens(), before);
    }
}
