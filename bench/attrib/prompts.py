"""The prompts and metric of the attribution benchmarks (eap.py, verify.py):
8 clean prompts of 16 tokens, each corrupted at one position, and the
logit difference of two tokens."""
B, T = 8, 16
clean = [[(37 * b + 11 * t) % 40000 + 1000 for t in range(T)] for b in range(B)]
corrupt = [row[:] for row in clean]
for row in corrupt:
    row[T // 3] = (row[T // 3] + 777) % 40000 + 1000
TARGET, BASELINE = 1100, 1200
