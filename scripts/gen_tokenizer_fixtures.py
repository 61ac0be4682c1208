#!/usr/bin/env python3
"""Generates tests/data/tokenizers: small tokenizer.json files in the styles of real model
families, plus the ids and decodes HF `tokenizers` gives for a set of inputs.

Each family's pipeline (normalizer, pre-tokenizer, model options, post-processor, decoder) is
the one its published tokenizer.json uses; the vocabularies are trained here with the BPE
trainer on a small corpus (the vocab test inputs of ../shared/testdata/tokenizer plus the extra
strings below) so the files stay small.

Outputs, per family <name>:
  <name>.tokenizer.json          the tokenizer
  <name>.tokenizer_config.json   bos/eos names and a chat template (some families only)
  <name>.expected.json           {"cases": [{"text", "ids", "ids_special", "decoded",
                                             "decoded_skip"}]} from HF tokenizers

It also writes src/atom/tokenizer/nfc_data.inc, the Unicode tables of atom's NFC normalizer
(canonical combining classes, canonical decompositions, which pairs compose), from Python's
unicodedata.

With --smollm2-gguf PATH (the SmolLM2-135M-Instruct GGUF), it also converts that model's
vocabulary with transformers into smollm2.tokenizer.json (compact JSON), setting the
pre-tokenizer of the published tokenizer.json, which the conversion does not reproduce.

Usage: python3 scripts/gen_tokenizer_fixtures.py [--smollm2-gguf PATH]
(needs the `tokenizers` package, and `transformers` for --smollm2-gguf)
"""

import argparse
import json
import pathlib
import tempfile
import unicodedata

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import AddedToken, Regex, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "tokenizers"
SHARED = ROOT.parent / "shared" / "testdata" / "tokenizer"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

EXTRA = [
    "",
    "Hello world",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\n\r\nand    runs     of spaces",
    "1 12 123 1234 12345 3.14159 1,000,000 ١٢٣ ½",
    "日本語のテキストと中文文本，还有한국어.",
    "emoji 🦙🚀👍🏽 and flags 🇫🇷 and ZWJ 👨‍👩‍👧",
    "def f(x):\n    return x ** 2  # square\n\nclass A:\n\tpass\n",
    "if (a != b && c <= d) { return std::max(a, b); }",
    "I'm sure you'll see they've done it, DON'T YOU'LL?",
    "naïve café résumé Ångström ﬁ ℌ",
    # decomposed (not NFC) forms: e + combining acute, A + ring, Hangul jamo
    "cafe\u0301 A\u030angstro\u0308m \u1100\u1161\u11a8 \u0915\u093c",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n  Hi<|im_end|>\n",
    "<s>[INST] Hello [/INST] Hi</s>",
    "text <s> in </s> the middle<unk>",
    "special at the end<|endoftext|>",
    "<|endoftext|><|endoftext|>  double",
    "a [MASK] token and [MASK]ed and x[MASK]y",
    "spaces before  <sep> and after <sep>  here",
    "Ġ and ▁ are ordinary characters here",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces",
    "   ",
    "\n",
    "x" * 300,
]


def shared_inputs():
    """The strings of every .inp file of ../shared/testdata/tokenizer, deduplicated."""
    texts = []
    for path in sorted(SHARED.glob("*.inp")):
        parts = path.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
        for p in parts:
            if p not in texts:
                texts.append(p)
    return texts


def corpus(inputs):
    lines = list(inputs) + EXTRA
    text = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else ""
    lines += text.splitlines()
    return lines


def added(content, special=True, lstrip=False, rstrip=False, normalized=None, single_word=False):
    return AddedToken(content, special=special, lstrip=lstrip, rstrip=rstrip,
                      normalized=(not special) if normalized is None else normalized,
                      single_word=single_word)


def train_byte_level(pre, specials, lines, vocab_size):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_special_tokens(specials)
    return tok


def llama3(lines):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    specials = [added(t) for t in ["<|begin_of_text|>", "<|end_of_text|>",
                                   "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]]
    tok = train_byte_level(pre, specials, lines, 1500)
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True
    # Whole words that the merges cannot build: with ignore_merges they come out as one token.
    # They take the ids after the trained vocabulary; the added tokens move up behind them
    # (HF numbers added tokens that are not in the model's vocabulary from its size on).
    vocab = data["model"]["vocab"]
    for word in ["\u0120dsdfhu", "tuijk", "\u0120\u00d0\u00bd\u00d0\u00b5\u00d1\u012b\u00d0\u00be"]:
        if word not in vocab:
            vocab[word] = len(vocab)
    for i, t in enumerate(data["added_tokens"]):
        t["id"] = len(vocab) + i
    # A non-special added token that is matched on normalized text, eats spaces on both sides
    # and only stands alone as a word.
    data["added_tokens"].append({"id": len(vocab) + len(data["added_tokens"]), "content": "[MASK]",
                                 "single_word": True, "lstrip": True, "rstrip": True,
                                 "normalized": False, "special": False})
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {
                 "id": "<|begin_of_text|>", "ids": [vocab_id(data, "<|begin_of_text|>")],
                 "tokens": ["<|begin_of_text|>"]}}},
        ]}
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                       "use_regex": True}
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
              "chat_template": "{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                               "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"}
    return data, config


def vocab_id(data, content):
    for t in data["added_tokens"]:
        if t["content"] == content:
            return t["id"]
    return data["model"]["vocab"][content]


def qwen2(lines):
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    specials = [added(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]]
    tok = train_byte_level(pre, specials, lines, 1200)
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    config = {"bos_token": None, "eos_token": {"content": "<|im_end|>", "special": True},
              "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n"
                               "{{ m.content }}<|im_end|>\n{% endfor %}"}
    return data, config


def smollm(lines):
    # GPT-2 / StarCoder / SmolLM2: Digits(individual) then ByteLevel with its own regex.
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    specials = [added(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]]
    tok = train_byte_level(pre, specials, lines, 1000)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    # Merges written as "a b" strings (older files), where the others use [a, b] pairs.
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    return data, None


def gpt2_prefix(lines):
    # ByteLevel(add_prefix_space=true): every piece gets a leading space before splitting.
    pre = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    specials = [added("<|endoftext|>")]
    tok = train_byte_level(pre, specials, lines, 800)
    tok.decoder = decoders.ByteLevel()
    return json.loads(tok.to_str()), None


def train_spm_style(lines, vocab_size, pre):
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                  limit_alphabet=200)
    tok.train_from_iterator(lines, trainer=trainer)
    data = json.loads(tok.to_str())
    # As in Llama-2's file, only <unk>, <s>, </s> are added tokens; byte tokens are vocab only.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    return data


def llama2(lines):
    # Legacy SentencePiece converted to BPE (Llama-2, Mistral v1): the normalizer escapes
    # spaces, no pre-tokenizer, byte fallback for characters outside the vocabulary.
    data = train_spm_style(lines, 1200, pre_tokenizers.Split(Regex(r"\u2581[^\u2581]*"),
                                                             behavior="merged_with_next"))
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    data["pre_tokenizer"] = None
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
    return data, config


def mistral_metaspace(lines):
    # legacy=false SentencePiece conversion: Metaspace pre-tokenizer (prepend_scheme first,
    # no split) and Metaspace decoder; no normalizer.
    data = train_spm_style(lines, 1000, pre_tokenizers.Split(Regex(r"\u2581[^\u2581]*"),
                                                             behavior="merged_with_next"))
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                             "prepend_scheme": "first", "split": False}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    data["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                       "split": False}
    data["added_tokens"].append({"id": max(data["model"]["vocab"].values()) + 1,
                                 "content": "<sep>", "single_word": False, "lstrip": True,
                                 "rstrip": False, "normalized": False, "special": True})
    return data, None


def metaspace_split_lower(lines):
    # Metaspace(always, split=true) after a Lowercase + Replace normalizer, with a Digits
    # pre-tokenizer in front; exercises the remaining components on a small vocabulary.
    data = train_spm_style(lines, 900, pre_tokenizers.Split(Regex(r"\u2581[^\u2581]*"),
                                                            behavior="merged_with_next"))
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"String": "\t"}, "content": "    "}]}
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False},
        {"type": "Split", "pattern": {"String": "!"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"Regex": "[,.;]"}, "behavior": "MergedWithPrevious",
         "invert": False},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
         "split": True}]}
    data["model"]["fuse_unk"] = False
    data["model"]["byte_fallback"] = False
    data["post_processor"] = None
    data["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                       "split": True}
    return data, None


def smollm2_from_gguf(gguf_path):
    from transformers import AutoTokenizer
    gguf = pathlib.Path(gguf_path).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        data = json.loads((pathlib.Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": True}]}
    return data


def write_family(name, data, config, texts, compact=False):
    if compact:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(data, ensure_ascii=False, indent=1)
    tok = Tokenizer.from_str(text)  # also checks that the edited file still loads
    (OUT / f"{name}.tokenizer.json").write_text(text, encoding="utf-8")
    if config is not None:
        (OUT / f"{name}.tokenizer_config.json").write_text(
            json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    cases = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        cases.append({
            "text": t,
            "ids": ids,
            "ids_special": tok.encode(t, add_special_tokens=True).ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        })
    (OUT / f"{name}.expected.json").write_text(
        json.dumps({"cases": cases}, ensure_ascii=False, indent=0), encoding="utf-8")
    print(f"{name}: vocab {tok.get_vocab_size()}, {len(cases)} cases")


FAMILIES = {
    "llama3": llama3,
    "qwen2": qwen2,
    "smollm": smollm,
    "gpt2-prefix": gpt2_prefix,
    "llama2": llama2,
    "mistral-metaspace": mistral_metaspace,
    "metaspace-split-lower": metaspace_split_lower,
}


def write_nfc_table():
    ccc = []
    decomp = []
    for cp in range(0x110000):
        c = chr(cp)
        k = unicodedata.combining(c)
        if k:
            ccc.append((cp, k))
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<"):
            parts = [int(x, 16) for x in d.split()]
            assert len(parts) in (1, 2)
            second = parts[1] if len(parts) == 2 else 0
            # A primary composite: the pair composes back to it under NFC.
            composes = second != 0 and unicodedata.normalize("NFC", chr(parts[0]) + chr(second)) == c
            decomp.append((cp, parts[0], second, composes))
    lines = [
        "// Generated by scripts/gen_tokenizer_fixtures.py from the Unicode "
        f"{unicodedata.unidata_version} data",
        "// of Python's unicodedata; do not edit.",
        "// kNfcCcc: {code point, canonical combining class} for classes other than 0.",
        "// kNfcDecomp: {code point, first, second (0 if none), composes back under NFC}.",
        "// Both sorted by code point. Hangul syllables are handled by algorithm, not listed.",
        "constexpr NfcCcc kNfcCcc[] = {",
    ]
    lines += [f"    {{0x{cp:X}, {k}}}," for cp, k in ccc]
    lines += ["};", "constexpr NfcDecomp kNfcDecomp[] = {"]
    lines += [f"    {{0x{cp:X}, 0x{a:X}, 0x{b:X}, {'true' if c else 'false'}}},"
              for cp, a, b, c in decomp]
    lines += ["};", ""]
    (ROOT / "src" / "atom" / "tokenizer" / "nfc_data.inc").write_text("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smollm2-gguf", help="SmolLM2-135M-Instruct GGUF to convert")
    args = parser.parse_args()
    write_nfc_table()
    OUT.mkdir(parents=True, exist_ok=True)
    inputs = shared_inputs()
    lines = corpus(inputs)
    texts = inputs + [t for t in EXTRA if t not in inputs]
    for name, build in FAMILIES.items():
        data, config = build(lines)
        write_family(name, data, config, texts)
    if args.smollm2_gguf:
        write_family("smollm2", smollm2_from_gguf(args.smollm2_gguf), None, texts, compact=True)

if __name__ == "__main__":
    main()
