//! Training a byte-level BPE tokenizer with pre-tokenization suited to Chinese.

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::chat::CHATML_TEMPLATE;
use crate::data::{DataError, DocReader, Format};

pub const EOS: &str = "<|endoftext|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const PAD: &str = "<|pad|>";
/// Special tokens in id order: `<|endoftext|>` = 0, `<|im_start|>` = 1, `<|im_end|>` = 2, `<|pad|>` = 3.
pub const SPECIAL_TOKENS: [&str; 4] = [EOS, IM_START, IM_END, PAD];

/// Pre-tokenization: a run of Han characters (with an optional leading space) stays one piece,
/// other letters group into words, every digit stands alone, punctuation groups, and whitespace
/// runs split off as in GPT-style tokenizers. Pieces are then mapped to bytes (byte-level BPE), so
/// any UTF-8 text is encodable.
const SPLIT_REGEX: &str =
    r" ?\p{Han}+|[^\r\n\p{L}\p{N}]?[\p{L}&&\P{Han}]+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What to train on and how large a vocabulary to learn.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub inputs: Vec<PathBuf>,
    pub format: Format,
    /// JSON field holding the text (jsonl only).
    pub field: String,
    /// Vocabulary size including the 256 byte tokens and the 4 special tokens.
    pub vocab_size: usize,
    pub skip_bad: bool,
    pub show_progress: bool,
}

/// What a training run read and produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    pub docs: u64,
    pub bytes: u64,
    pub bad_lines: u64,
    pub vocab_size: usize,
}

/// Trains a tokenizer on the documents of `opts.inputs` and writes `tokenizer.json` and
/// `tokenizer_config.json` into `out_dir` (created if missing).
pub fn train(opts: &TrainOptions, out_dir: &Path) -> Result<TrainSummary, DataError> {
    let min_vocab = 256 + SPECIAL_TOKENS.len();
    if opts.vocab_size < min_vocab {
        return Err(DataError::Tokenizer(format!(
            "--vocab-size {} is too small; it must be at least {min_vocab} (256 bytes + {} special tokens)",
            opts.vocab_size,
            SPECIAL_TOKENS.len()
        )));
    }
    let mut tokenizer = empty_tokenizer()?;
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(opts.vocab_size)
        .show_progress(opts.show_progress)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();

    let mut reader = DocReader::new(opts.inputs.clone(), opts.format, &opts.field, opts.skip_bad);
    let mut first_error = None;
    let mut docs = 0u64;
    let texts = reader.by_ref().map_while(|d| match d {
        Ok(d) => {
            docs += 1;
            Some(d.text)
        }
        Err(e) => {
            first_error = Some(e);
            None
        }
    });
    tokenizer.train(&mut trainer, texts).map_err(|e| DataError::Tokenizer(e.to_string()))?;
    if let Some(e) = first_error {
        return Err(e);
    }
    if docs == 0 {
        return Err(DataError::Empty("the inputs hold no document".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let tok_path = out_dir.join("tokenizer.json");
    let tmp = out_dir.join(".tokenizer.json.tmp");
    tokenizer.save(&tmp, true).map_err(|e| DataError::Tokenizer(format!("{}: {e}", tmp.display())))?;
    crate::data::manifest::sync_and_rename(&tmp, &tok_path)?;
    crate::data::manifest::write_atomic(&out_dir.join("tokenizer_config.json"), tokenizer_config().as_bytes())?;
    Ok(TrainSummary {
        docs,
        bytes: reader.bytes_read(),
        bad_lines: reader.bad_lines(),
        vocab_size: tokenizer.get_vocab_size(true),
    })
}

fn empty_tokenizer() -> Result<Tokenizer, DataError> {
    let split = Split::new(SplitPattern::Regex(SPLIT_REGEX.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| DataError::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ]);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// `tokenizer_config.json`: what transformers needs besides `tokenizer.json`.
fn tokenizer_config() -> String {
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": null,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1_000_000_000u64,
        "chat_template": CHATML_TEMPLATE,
    });
    let mut s = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    s.push('\n');
    s
}
