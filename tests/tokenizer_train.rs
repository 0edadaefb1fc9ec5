//! Tokenizer training, special tokens, round trips over generated text, and input errors.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoucuo::data::Format;
use shoucuo::tokenizer::{CHATML_TEMPLATE, SPECIAL_TOKENS, Tok, TrainOptions, render_chatml, train};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tang-poems-sample.jsonl")
}

fn opts(inputs: Vec<PathBuf>, vocab_size: usize) -> TrainOptions {
    TrainOptions {
        inputs,
        format: Format::Jsonl,
        field: "text".into(),
        vocab_size,
        skip_bad: false,
        show_progress: false,
    }
}

#[test]
fn trains_a_loadable_tokenizer_with_special_tokens_and_chat_template() {
    let out = tempfile::tempdir().unwrap();
    let summary = train(&opts(vec![sample()], 400), out.path()).unwrap();
    assert!(summary.docs >= 400, "read {} docs", summary.docs);
    assert_eq!(summary.vocab_size, 400);
    let tok = Tok::load(out.path()).unwrap();
    assert_eq!(tok.vocab_size(), 400);
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(s), Some(i as u32), "{s}");
        assert_eq!(tok.encode(s), vec![i as u32], "{s} must encode as one token");
    }
    assert_eq!(tok.eos_id(), Some(0));
    assert_eq!(tok.chat_template().as_deref(), Some(CHATML_TEMPLATE));
    let chat = render_chatml(&[("user", "月")], true);
    let ids = tok.encode(&chat);
    assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
    assert_eq!(tok.decode(&ids), chat);
    // Merges were learnt: a frequent poem fragment takes fewer tokens than its UTF-8 bytes.
    assert!(tok.encode("明月").len() < "明月".len());
}

#[test]
fn digits_are_split_and_han_runs_do_not_merge_with_latin() {
    let tok = Tok::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tok_small")).unwrap();
    let ids = tok.encode("2024");
    assert_eq!(ids.len(), 4);
    let pieces: Vec<String> = tok.encode("abc明月").iter().map(|&i| tok.decode(&[i])).collect();
    assert!(!pieces.iter().any(|p| p.contains('c') && p.contains('明')), "{pieces:?}");
}

/// Random text from a mix of alphabets that stress byte-level BPE.
fn random_text(rng: &mut ChaCha8Rng) -> String {
    const POOLS: [&[char]; 6] = [
        &['床', '前', '明', '月', '光', '，', '。', '《', '》', '的', '是'],
        &['a', 'b', 'Z', ' ', '1', '9', '!', '\'', '"'],
        &['\n', '\r', '\t', '\u{0}', '\u{1}', '\u{7f}', '\u{200b}', '\u{feff}', ' '],
        &['🎉', '👨', '\u{200d}', '👩', '🇨', '🇳', '🌞'],
        &['𠀀', '𪚥', '䶮', '龘', '\u{2ebf0}', '\u{3134a}', '\u{fa0e}'],
        &['é', '\u{301}', 'ж', 'ع', 'ア', '한', '\u{10ffff}', '\u{e000}'],
    ];
    let len = rng.random_range(0..40);
    (0..len)
        .map(|_| {
            if rng.random_bool(0.1) {
                char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('?')
            } else {
                let pool = POOLS[rng.random_range(0..POOLS.len())];
                pool[rng.random_range(0..pool.len())]
            }
        })
        .collect()
}

#[test]
fn decode_encode_round_trips_any_utf8() {
    let tok = Tok::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tok_small")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    assert_eq!(tok.decode(&tok.encode("")), "");
    for _ in 0..3000 {
        let text = random_text(&mut rng);
        assert_eq!(tok.decode(&tok.encode(&text)), text, "round trip of {text:?}");
    }
}

#[test]
fn bad_input_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"好\"}\n{\"text\": \"坏\"\n").unwrap();
    let err = train(&opts(vec![bad.clone()], 300), &dir.path().join("tok")).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:2: invalid JSON", bad.display())), "{err}");
    assert!(err.ends_with("fix the line or pass --skip-bad"), "{err}");
    let mut o = opts(vec![bad], 300);
    o.skip_bad = true;
    let s = train(&o, &dir.path().join("tok")).unwrap();
    assert_eq!((s.docs, s.bad_lines), (1, 1));
    let too_small = train(&opts(vec![sample()], 100), &dir.path().join("tok2")).unwrap_err().to_string();
    assert!(too_small.contains("at least 260"), "{too_small}");
}
