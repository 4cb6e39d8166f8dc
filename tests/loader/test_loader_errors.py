#!/usr/bin/python3
"""Loader error cases: each corrupts a copy of a good checkpoint one way and
expects `npp forward` to fail (exit 1, no crash) with its specific message,
naming the file and, where there is one, the tensor.

    test_loader_errors.py NPP MODEL_DIR
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

NPP, GOOD = sys.argv[1], sys.argv[2]


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def pack(header_bytes, data):
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def dump(header):
    return json.dumps(header).encode()


def tensors(header):
    return [k for k in header if k != "__metadata__"]


def by_offset(header):
    return sorted(tensors(header), key=lambda k: header[k]["data_offsets"][0])


# Each case: (name, function(header, data) -> file bytes, expected substrings)
def truncated(h, d):
    return pack(dump(h), d[:-100])


def header_past_end(h, d):
    return struct.pack("<Q", 10**9) + dump(h) + d


def bad_json(h, d):
    hb = dump(h)
    return pack(b"{not json" + b" " * (len(hb) - 9), d)


def overlapping(h, d):
    # Two tensors of the same size: the bias claims the weight's bytes.
    h["h.0.ln_1.bias"]["data_offsets"] = list(h["h.0.ln_1.weight"]["data_offsets"])
    return pack(dump(h), d)


def out_of_range(h, d):
    last = by_offset(h)[-1]
    b, e = h[last]["data_offsets"]
    h[last]["data_offsets"] = [b + 8, e + 8]
    return pack(dump(h), d)


def wrong_dtype_size(h, d):
    h["h.0.ln_1.weight"]["dtype"] = "F16"
    return pack(dump(h), d)


def wrong_shape(h, d):
    C = h["h.0.attn.c_attn.weight"]["shape"][0]
    h["h.0.attn.c_attn.weight"]["shape"] = [3 * C, C]
    return pack(dump(h), d)


def remove(h, d, name):
    b, e = h[name]["data_offsets"]
    size = e - b
    del h[name]
    for k in tensors(h):
        ob, oe = h[k]["data_offsets"]
        if ob >= e:
            h[k]["data_offsets"] = [ob - size, oe - size]
    return h, d[:b] + d[e:]


def missing(h, d):
    h, d = remove(h, d, "h.1.mlp.c_fc.bias")
    return pack(dump(h), d)


def duplicate_key(h, d):
    hb = dump(h)
    # Repeat the first tensor's entry under the same key: invalid JSON object.
    first = tensors(h)[0]
    extra = (', "%s": ' % first).encode() + json.dumps(h[first]).encode()
    hb = hb[:-1] + extra + b"}"
    return pack(hb, d)


def duplicate_prefixed(h, d):
    # "wte.weight" and "transformer.wte.weight" name the same tensor.
    h2, d2 = remove(h, d, "ln_f.bias")
    C = len(d) - len(d2)
    h2["transformer.ln_f.weight"] = {"dtype": h["ln_f.weight"]["dtype"],
                                     "shape": h["ln_f.weight"]["shape"],
                                     "data_offsets": [len(d2), len(d2) + C]}
    h2["ln_f.bias"] = {"dtype": h["ln_f.weight"]["dtype"], "shape": h["ln_f.weight"]["shape"],
                       "data_offsets": [len(d2) + C, len(d2) + 2 * C]}
    return pack(dump(h2), d2 + d[:C] + d[:C])


def too_short(h, d):
    return b"\x01\x02\x03"


def unknown_dtype(h, d):
    h["ln_f.bias"]["dtype"] = "Q4"
    return pack(dump(h), d)


def gap(h, d):
    h, d = remove(h, d, "ln_f.bias")
    return pack(dump(h), d + b"\0" * 4)  # trailing bytes nobody owns


def unexpected(h, d):
    h["h.9.attn.c_attn.weight"] = h.pop("h.1.attn.c_attn.weight")
    return pack(dump(h), d)


def not_object(h, d):
    return pack(b"[1, 2, 3]", d)


def int_dtype(h, d):
    h["ln_f.bias"]["dtype"] = "I32"  # same size as F32, not a float
    return pack(dump(h), d)


def overflow_shape(h, d):
    h["ln_f.bias"]["shape"] = [2**62, 2**62]
    return pack(dump(h), d)


CASES = [
    ("truncated file", truncated, ["model.safetensors", "past the end of the data", "truncated"]),
    ("header length past the end", header_past_end,
     ["model.safetensors", "header length 1000000000 runs past the end of the file"]),
    ("bad JSON", bad_json, ["model.safetensors", "header is not valid JSON"]),
    ("overlapping offsets", overlapping, ["model.safetensors", "overlap tensor"]),
    ("out-of-range offsets", out_of_range, ["model.safetensors", "past the end of the data"]),
    ("wrong dtype size", wrong_dtype_size,
     ["model.safetensors", "'h.0.ln_1.weight'", "F16 x", "need"]),
    ("wrong shape", wrong_shape,
     ["model.safetensors", "'h.0.attn.c_attn.weight'", "but config.json implies"]),
    ("missing tensor", missing, ["model.safetensors", "'h.1.mlp.c_fc.bias' is missing"]),
    ("duplicate name (JSON key)", duplicate_key,
     ["model.safetensors", "header is not valid JSON", "duplicate object key"]),
    ("duplicate name (with prefix)", duplicate_prefixed,
     ["model.safetensors", "'transformer.ln_f.weight' duplicates 'ln_f.weight'"]),
    ("file too short", too_short, ["model.safetensors", "too short for a header"]),
    ("unknown dtype", unknown_dtype, ["model.safetensors", "'ln_f.bias'", "unknown dtype \"Q4\""]),
    ("bytes after the last tensor", gap, ["model.safetensors", "bytes of data after the last tensor"]),
    ("unexpected tensor", unexpected,
     ["model.safetensors", "'h.9.attn.c_attn.weight' is not part of a 2-layer GPT-2"]),
    ("header not an object", not_object, ["model.safetensors", "header is not a JSON object"]),
    ("integer dtype", int_dtype, ["model.safetensors", "'ln_f.bias'", "dtype I32 is not supported"]),
    ("shape overflow", overflow_shape, ["model.safetensors", "'ln_f.bias'", "overflows"]),
]

CONFIG_CASES = [
    ("config not JSON", "{", ["config.json", "not valid JSON"]),
    ("config missing n_layer", {"n_head": 4, "n_embd": 64, "vocab_size": 50257, "n_positions": 128},
     ["config.json", "missing \"n_layer\""]),
    ("config bad n_embd", {"n_layer": 2, "n_head": 3, "n_embd": 64, "vocab_size": 50257,
                           "n_positions": 128}, ["config.json", "not a multiple of n_head"]),
    ("config shape mismatch", {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 50257,
                               "n_positions": 64}, ["'wpe.weight'", "shape [128, 64]",
                                                    "implies [64, 64]"]),
    ("config activation", {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 50257,
                           "n_positions": 128, "activation_function": "relu"},
     ["activation_function \"relu\" is not supported"]),
]


def run_case(tmp, name, expect):
    p = subprocess.run([NPP, "forward", "--model", tmp, "--ids", "1,2,3"],
                       capture_output=True, text=True)
    msg = p.stderr.strip()
    ok = p.returncode == 1 and all(s in msg for s in expect)
    print("%s %-30s exit %d: %s" % ("ok  " if ok else "FAIL", name, p.returncode, msg))
    if not ok:
        print("     expected exit 1 and all of %s" % expect)
    return ok


def main():
    h0, d0 = read(os.path.join(GOOD, "model.safetensors"))
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in os.listdir(GOOD):
            shutil.copy(os.path.join(GOOD, f), tmp)
        st = os.path.join(tmp, "model.safetensors")
        good_cfg = open(os.path.join(GOOD, "config.json")).read()
        # The untouched copy must load: the cases below differ only by their fault.
        p = subprocess.run([NPP, "forward", "--model", tmp, "--ids", "1,2,3"], capture_output=True)
        assert p.returncode == 0, p.stderr
        for name, fn, expect in CASES:
            h, d = json.loads(json.dumps(h0)), d0
            open(st, "wb").write(fn(h, d))
            if run_case(tmp, name, expect):
                passed += 1
            else:
                failed += 1
        shutil.copy(os.path.join(GOOD, "model.safetensors"), st)
        for name, cfg, expect in CONFIG_CASES:
            open(os.path.join(tmp, "config.json"), "w").write(
                cfg if isinstance(cfg, str) else json.dumps(cfg))
            if run_case(tmp, name, expect):
                passed += 1
            else:
                failed += 1
        open(os.path.join(tmp, "config.json"), "w").write(good_cfg)
        os.remove(os.path.join(tmp, "merges.txt"))
        if run_case(tmp, "tokenizer file missing", ["merges.txt are missing"]):
            passed += 1
        else:
            failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
