#!/usr/bin/env python3
"""Builds data/tang-poems.jsonl.gz and data/tang-poems-sample.jsonl from the MIT npm package
chinese-poetry@2.0.1 (全唐诗). Re-runnable; the output is byte-for-byte deterministic.

    cd /tmp && npm pack chinese-poetry@2.0.1 && mkdir -p cp && tar xzf chinese-poetry-2.0.1.tgz -C cp
    pip install opencc
    python tools/build_corpus.py /tmp/cp/package data

Keeps regular-form poems only (五言/七言 绝句/律诗: 4 or 8 verses of 5 or 7 characters, every verse
followed by punctuation), converts traditional to simplified (OpenCC t2s), drops poems with any
character outside the CJK ideograph blocks in a verse (lost glyphs such as □ and editorial marks),
and drops exact duplicates of the poem body. The `text` field is the training document:

    《title》 author
    verse1，verse2。
    verse3，verse4。
"""
import glob
import gzip
import json
import os
import re
import sys

import opencc

PUNCT = "，。！？；："
FORMS = {(5, 4): "五言绝句", (7, 4): "七言绝句", (5, 8): "五言律诗", (7, 8): "七言律诗"}
SAMPLE_EVERY = 72  # ~500 poems in the test slice


def is_cjk(ch):
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x3134F
            or 0xF900 <= cp <= 0xFAFF)


def verses(paragraphs):
    """Splits the body into (verse, punctuation) pairs, or None when it is not clean."""
    body = "".join(p.strip() for p in paragraphs)
    parts = re.findall(r"([^%s]+)([%s])" % (PUNCT, PUNCT), body)
    if "".join(v + p for v, p in parts) != body:
        return None
    if not all(all(is_cjk(c) for c in v) for v, _ in parts):
        return None
    return parts


def form_of(parts):
    lengths = {len(v) for v, _ in parts}
    if len(lengths) != 1:
        return None
    return FORMS.get((lengths.pop(), len(parts)))


def main(pkg, out_dir):
    cc = opencc.OpenCC("t2s")
    files = sorted(glob.glob(os.path.join(pkg, "dist/quantangshi/poet.tang.*.json")),
                   key=lambda f: int(re.search(r"poet\.tang\.(\d+)\.json", f).group(1)))
    if not files:
        sys.exit(f"no dist/quantangshi/poet.tang.*.json under {pkg}")
    seen, poems, stats = set(), [], {"read": 0, "irregular": 0, "unclean": 0, "duplicate": 0}
    for f in files:
        for p in json.load(open(f, encoding="utf-8")):
            stats["read"] += 1
            parts = verses(p.get("paragraphs", []))
            if parts is None:
                stats["unclean"] += 1
                continue
            form = form_of(parts)
            if form is None:
                stats["irregular"] += 1
                continue
            lines = [cc.convert(parts[i][0] + parts[i][1] + parts[i + 1][0] + parts[i + 1][1])
                     for i in range(0, len(parts), 2)]
            if not all(all(is_cjk(c) for c in l if c not in PUNCT) for l in lines):
                stats["unclean"] += 1
                continue
            key = "\n".join(lines)
            if key in seen:
                stats["duplicate"] += 1
                continue
            seen.add(key)
            title = cc.convert(" ".join(p.get("title", "").split())) or "无题"
            author = cc.convert(p.get("author", "").strip()) or "佚名"
            text = f"《{title}》 {author}\n" + "\n".join(lines)
            poems.append({"title": title, "author": author, "form": form, "text": text})
    os.makedirs(out_dir, exist_ok=True)
    full = os.path.join(out_dir, "tang-poems.jsonl.gz")
    with open(full, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for p in poems:
            gz.write((json.dumps(p, ensure_ascii=False) + "\n").encode("utf-8"))
    sample = os.path.join(out_dir, "tang-poems-sample.jsonl")
    with open(sample, "w", encoding="utf-8", newline="\n") as out:
        for p in poems[::SAMPLE_EVERY]:
            out.write(json.dumps(p, ensure_ascii=False) + "\n")
    chars = sum(len(p["text"]) for p in poems)
    forms = {}
    for p in poems:
        forms[p["form"]] = forms.get(p["form"], 0) + 1
    print(json.dumps({"poems": len(poems), "chars": chars, "sample": len(poems[::SAMPLE_EVERY]),
                      "forms": forms, **stats}, ensure_ascii=False))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
