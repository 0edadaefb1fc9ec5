#!/usr/bin/env python3
"""Makes the tokenizer golden fixtures: trains a small tokenizer with OUR command on the bundled
sample slice, then records how transformers encodes and decodes a set of strings with it.

    cargo build --release
    ~/peers-venv/bin/python tools/make_tok_fixtures.py

Writes tests/fixtures/tok_small/{tokenizer.json,tokenizer_config.json} and tests/fixtures/tok_ids.json;
tests/tokenizer_fixtures.rs checks that shoucuo encodes, decodes and renders chats identically.
"""
import json
import os
import subprocess
import sys

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK_DIR = os.path.join(ROOT, "tests", "fixtures", "tok_small")
IDS = os.path.join(ROOT, "tests", "fixtures", "tok_ids.json")

TEXTS = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "《静夜思》 李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "Once upon a time, there was a little girl named Lily. She loved 123 flowers!",
    "小明今天买了3个苹果和12根香蕉，一共花了45.5元。Tom说：“OK, let's go!”",
    "今天天气真好🌞🌈，我们去公园玩吧！👨‍👩‍👧‍👦 🇨🇳",
    "生僻字：龘靐齉爩 𠀀𠀁𪚥 䶮 𰻝𰻝面",
    "日本語のテキスト、한국어 텍스트, русский текст, العربية, e\u0301te\u0301",
    "tabs\tand  double  spaces\r\nand\n\n\nnew lines   ",
    "control \u0001\u0002\u007f chars \u200b zero-width \ufeff bom",
    "<|im_start|>user\n写一首诗<|im_end|>\n<|im_start|>assistant\n春眠不觉晓<|endoftext|>",
    "",
    " ",
    "0123456789 2024年11月28日",
]

CHATS = [
    ([{"role": "user", "content": "写一首关于月亮的诗"}], True),
    ([{"role": "system", "content": "你是一位唐代诗人。"}, {"role": "user", "content": "春天"},
      {"role": "assistant", "content": "春眠不觉晓，处处闻啼鸟。"}], False),
]


def main():
    binary = os.path.join(ROOT, "target", "release", "shoucuo")
    subprocess.run([binary, "tokenizer", "train", "--input",
                    os.path.join(ROOT, "data", "tang-poems-sample.jsonl"),
                    "--vocab-size", "800", "--out", TOK_DIR], check=True)
    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    texts = []
    for t in TEXTS:
        ids = tok.encode(t, add_special_tokens=False)
        texts.append({"text": t, "ids": ids, "decoded": tok.decode(ids)})
    chats = []
    for messages, gen in CHATS:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        chats.append({"messages": [[m["role"], m["content"]] for m in messages],
                      "add_generation_prompt": gen, "rendered": rendered,
                      "ids": tok.encode(rendered, add_special_tokens=False)})
    out = {"vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
           "texts": texts, "chats": chats}
    with open(IDS, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {IDS}: {len(texts)} texts, {len(chats)} chats", file=sys.stderr)


if __name__ == "__main__":
    main()
