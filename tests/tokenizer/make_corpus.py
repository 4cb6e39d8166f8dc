#!/usr/bin/env python3
"""Writes the tokenizer test corpus (a JSON list of strings) to argv[1].
Deterministic: fixed samples plus seeded random mixes of fragments from
many scripts. Characters come only from blocks assigned long ago, so the
Unicode versions of PCRE2 and of Node's ICU agree on them."""
import json
import random
import sys

FIXED = [
    "", " ", "  ", "\t", "\n", "\n\n", " \n ", "a", "A", "Hello world", "hello  world",
    "Hello, world!", " leading space", "trailing space ", "  both  ", "\ttab\tseparated\t",
    "line one\nline two\r\nline three\r", "multiple\n\n\nnewlines", "mixed \t\n \t whitespace",
    "I'm here", "I'M HERE", "you're", "YOU'RE", "we've", "WE'VE", "he'll", "HE'LL", "she'd",
    "SHE'D", "it's", "IT'S", "don't", "DON'T", "can't stop won't stop", "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D", "rock'n'roll", "O'Neil's", "''quoted''", "it''s",
    "<|endoftext|>", "before<|endoftext|>after", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
    "<|endoftext", "endoftext|>", "12345", "3.14159", "-42", "1,000,000", "2024-11-27",
    "0x1F600", "1e-5", "99 bottles", "a1b2c3", "number123word", "½ ¼ ¾", "x² + y³ = z⁴",
    "١٢٣٤٥", "１２３", "Ⅻ Ⅳ", "!!!", "???", "...", "!?!?", "---", "===", "***", "~~~",
    "(parenthesised)", "[brackets]", "{braces}", "<angle>", "@user #hashtag $100 %50 ^_^ &&",
    "a.b,c;d:e", "foo_bar-baz", "path/to/file.txt", "https://example.com/a?b=c&d=e",
    "email@example.com", "C:\\Windows\\System32", "`code`", "\"double\" 'single'",
    "naïve café résumé", "Ångström Øre Æsir", "Straße", "façade", "piñata jalapeño",
    "e\u0301 combining acute", "n\u0303", "Z\u0351\u0336a\u0358lgo", "ﬁ ligature",
    "Ελληνικά γράμματα", "Русский текст", "Українська мова", "עברית", "العربية",
    "हिन्दी भाषा", "ภาษาไทย", "日本語のテキスト", "カタカナ", "中文字符", "한국어 텍스트",
    "混合 mixed テキスト", "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇺🇸🇫🇷", "❤️", "emoji 🎉 party",
    "☃ snowman", "→ arrow ←", "€100 £50 ¥1000", "©®™", "∑∫∂√∞", "αβγ δεζ",
    "\u00a0nbsp\u00a0", "em\u2003space", "ideographic\u3000space", "\ufeffbom", "line\u2028sep",
    "para\u2029sep", "nel\u0085char", "ctrl\x01\x02\x1f", "zero\u200bwidth", "\u200d",
    "tab\t\ttabs", "    indented code", "\n    indented\n        more",
    "trailing newline\n", "trailing spaces   ", "   ", "\t\t\t", "\n \n \n",
    "UPPER lower MiXeD", "CamelCaseWord", "snake_case_word", "ALLCAPS", "a" * 200,
    "ab" * 100, " " * 50 + "x", "1" * 60, "!" * 40, "の" * 30, "😀" * 20,
]

FRAGMENTS = [
    "the", " The", "cat", " sat", " on", " mat", "Hello", "World", "'s", "'LL", "n't",
    " ", "  ", "\t", "\n", " \n", "\r\n", ",", ".", "!", "?", "...", "--", "\"", "'", "(", ")",
    "0", "42", "3.5", "1000", "٣", "²", "½", "é", "ü", "ß", "ñ", "Ω", "Ж", "ש", "ع", "क", "ก",
    "日", "本", "語", "한", "글", "カ", "😀", "👍", "🇯🇵", "€", "→", "<|endoftext|>", "\u00a0",
    "\u3000", "\ufeff", "\u0301", "\u200b", "_", "-", "/", "\\", "@", "#", "$", "%",
]

RANGES = [
    (0x41, 0x5A), (0x61, 0x7A), (0x30, 0x39), (0xC0, 0xD6), (0xD8, 0xF6), (0x3B1, 0x3C9),
    (0x410, 0x44F), (0x5D0, 0x5EA), (0x627, 0x63A), (0x905, 0x939), (0xE01, 0xE2E),
    (0x3041, 0x3094), (0x30A1, 0x30FA), (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0x1F600, 0x1F64F),
    (0x21, 0x2F), (0x3A, 0x40), (0x2200, 0x22FF), (0x660, 0x669), (0xFF10, 0xFF19),
]


def random_string(r):
    kind = r.randrange(3)
    if kind == 0:
        return "".join(r.choice(FRAGMENTS) for _ in range(r.randint(1, 12)))
    if kind == 1:
        out = []
        for _ in range(r.randint(1, 8)):
            lo, hi = r.choice(RANGES)
            out.append("".join(chr(r.randint(lo, hi)) for _ in range(r.randint(1, 6))))
            out.append(r.choice([" ", "", "  ", "\n", "\t", ", ", "'s ", "'T "]))
        return "".join(out)
    words = ["alpha", "Beta", "GAMMA", "don't", "I'm", "we'RE", "123", "4.5", "x", "ёж", "über"]
    seps = [" ", "  ", "\t", "\n", " \n  ", "", ". ", "! ", "... "]
    s = "".join(r.choice(words) + r.choice(seps) for _ in range(r.randint(1, 10)))
    return r.choice(["", " ", "\n", "  "]) + s + r.choice(["", " ", "\n", "\t "])


def main():
    r = random.Random(20261127)
    corpus = list(FIXED)
    while len(corpus) < 600:
        corpus.append(random_string(r))
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=0)
    print("corpus: %d strings -> %s" % (len(corpus), sys.argv[1]))


if __name__ == "__main__":
    main()
