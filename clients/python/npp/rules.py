"""Patterns and rules that read like the original library's predicates.

    from npp.rules import last, contains, path
    which  = [(contains("a1"), 1)]          # paths through a1 read input 1
    branch = [(last("a1"), True)]           # split the residual stream at a1

Patterns combine with & (all), | (any) and ~ (not). `path(glob)` takes a
path glob as the server understands it (docs/jobs.md): `*`, `?`, `[...]`
within a name, `**` across names, `{a,b}` alternatives.
"""


class Pattern:
    """A matcher over paths; compiles to the JSON the server reads."""

    def __init__(self, matcher, negate=False):
        self._m = matcher  # a glob string or a dict {"any"|"all": [...]}
        self._neg = negate

    def to_json(self):
        if isinstance(self._m, str):
            return {"match": self._m, "not": True} if self._neg else self._m
        d = dict(self._m)
        if self._neg:
            d["not"] = True
        return d

    def _rule(self):
        j = self.to_json()
        return {"match": j} if isinstance(j, str) else dict(j)

    def __and__(self, other):
        return Pattern({"all": [self.to_json(), _pattern(other).to_json()]})

    def __or__(self, other):
        return Pattern({"any": [self.to_json(), _pattern(other).to_json()]})

    def __invert__(self):
        return Pattern(self._m, not self._neg)

    def __repr__(self):
        return "Pattern(%r)" % (self.to_json(),)


def _pattern(p):
    return p if isinstance(p, Pattern) else Pattern(str(p))


def path(glob):
    """The path matches this glob, e.g. path("ln_final/a9/a9.head/a9.head6/**")."""
    return Pattern(glob)


def last(name):
    """The path ends at `name` (the original's path[-1] == name)."""
    return Pattern("**/" + name)


def contains(name):
    """`name` is somewhere on the path (the original's name in path)."""
    return Pattern("**/%s/**" % name)


def anything():
    """Every path."""
    return Pattern("**")


def rules(pairs, key):
    """[(pattern, value), ...] -> the server's rule list; key is "split" or
    "input". First match wins, as on the server."""
    out = []
    for p, v in pairs:
        r = _pattern(p)._rule()
        r[key] = v
        out.append(r)
    return out


def activation_patch(node, positions=None, from_input=1, into=0):
    """Preset: the node's value from input `from_input`, the rest from `into`
    (nodes: emb, a{i}, f{i} (the residual stream), a{i}.head, a{i}.head{h},
    a{i}.head{h}.q|k|v, f{i}.head)."""
    p = {"type": "activation_patch", "node": node, "from": from_input, "into": into}
    if positions is not None:
        p["positions"] = list(positions)
    return p


def path_patch(senders, receivers, from_input=1, into=0):
    """Preset: Wang et al. path patching, direct paths from senders to
    receivers (ln_final, a{i}.head{h}[.q|.k|.v], a{i}.head, f{i}.head)."""
    as_list = lambda x: [x] if isinstance(x, str) else list(x)  # noqa: E731
    return {"type": "path_patch", "senders": as_list(senders), "receivers": as_list(receivers),
            "from": from_input, "into": into}


def ablate(node, value="zero", of=None, positions=None, into=0):
    """Preset: the node's value zeroed ("zero") or replaced by input `of`'s
    batch mean ("mean", default of = into) on every path (nodes: emb, a{i},
    f{i}, a{i}.head, a{i}.head{h}, f{i}.head)."""
    p = {"type": "ablate", "node": node, "value": value, "into": into}
    if of is not None:
        p["of"] = of
    if positions is not None:
        p["positions"] = list(positions)
    return p


def steer(node, vector, scale=1.0, positions=None, into=0):
    """Preset: scale x vector added to the node's value on every path. vector:
    the model's width of numbers (a list, or a numpy array: sent as base64)."""
    if hasattr(vector, "astype"):
        import base64
        raw = vector.astype("<f4").tobytes()
        vector = {"base64": base64.b64encode(raw).decode(), "shape": [len(raw) // 4]}
    else:
        vector = [float(x) for x in vector]
    p = {"type": "steer", "node": node, "vector": vector, "scale": scale, "into": into}
    if positions is not None:
        p["positions"] = list(positions)
    return p
