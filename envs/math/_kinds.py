"""The twelve problem kinds of `math`, and the hand calculator (`Mind`) the reasoner expert works with.

A kind knows how to word a problem, how to solve it by hand (through a `Mind` that writes every step
and, for the reasoner expert, may slip) and how to write a Python program for it (the coder expert).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

CATEGORIES = ("arithmetic", "modular", "combinatorics", "sequences", "word")
LEVELS = (1, 2, 3)


# --------------------------------------------------------------------------- the hand calculator

def _digits(x: int) -> int:
    return len(str(abs(x)))


def _nonzero_digits(x: int) -> int:
    return sum(ch != "0" for ch in str(abs(x)))


def _p_mul(a: int, b: int) -> float:
    """Chance of a slip in a by-hand product: grows with the digit products to write down."""
    small, big = sorted((abs(a), abs(b)), key=_nonzero_digits)
    if _nonzero_digits(small) <= 1:
        return min(0.9, max(0, _digits(big) - 4) * 0.05)
    return min(0.9, max(0, _nonzero_digits(small) * _digits(big) - 4) * 0.05)


def _p_add(a: int, b: int) -> float:
    return max(0, max(_digits(a), _digits(b)) - 4) * 0.03


class Mind:
    """Does arithmetic by hand and writes each step down.

    Without an rng it is exact (the generator uses it to compute answers). With
    an rng it may make one plausible slip per problem; every later step uses the
    wrong value, so the written work stays consistent with it.
    """

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng
        self.lines: list[str] = []
        self.slipped = False

    def note(self, line: str) -> None:
        self.lines.append(line)

    def _slip(self, p: float) -> bool:
        if self.rng is None or self.slipped or p <= 0:
            return False
        self.slipped = self.rng.random() < p
        return self.slipped

    def _drop_carry(self, value: int, low: int = 1) -> int:
        """A dropped carry: one digit at or above position `low` comes out one too small."""
        d = _digits(value)
        if d <= low:
            return value + 1
        return value - 10 ** self.rng.randint(low, d - 1)  # type: ignore[union-attr]

    def _mul(self, a: int, b: int) -> tuple[int, str]:
        big, small = (a, b) if _nonzero_digits(a) >= _nonzero_digits(b) else (b, a)
        slip = self._slip(_p_mul(a, b))
        if _nonzero_digits(small) <= 1:
            r = a * b
            return (self._drop_carry(r) if slip else r), ""
        # long multiplication by the digits of the shorter factor
        places = [int(ch) * 10 ** pos for pos, ch in enumerate(reversed(str(small))) if ch != "0"][::-1]
        parts = [big * p for p in places]
        if slip:
            j = self.rng.randrange(len(parts))
            low = _digits(places[j]) - 1
            parts[j] = self._drop_carry(parts[j] // 10 ** low) * 10 ** low
        work = " + ".join(f"{big} × {p}" for p in places) + " = " + " + ".join(map(str, parts))
        return sum(parts), work

    def mul(self, a: int, b: int) -> int:
        r, work = self._mul(a, b)
        self.note(f"{a} × {b} = {work + ' = ' if work else ''}{r}")
        return r

    def add(self, *xs: int) -> int:
        total = xs[0]
        for x in xs[1:]:
            slip = self._slip(_p_add(total, x))
            total = total + x
            if slip:
                total = self._drop_carry(total)
        self.note(" + ".join(map(str, xs)) + f" = {total}")
        return total

    def _sub(self, a: int, b: int) -> int:
        r = a - b
        if self._slip(_p_add(a, b)):  # a forgotten borrow
            r += 10 ** self.rng.randint(1, max(1, _digits(a) - 1))
        return r

    def sub(self, a: int, b: int) -> int:
        r = self._sub(a, b)
        self.note(f"{a} − {b} = {r}")
        return r

    def div(self, a: int, b: int) -> int:
        """An exact division; a slip gets one digit of the quotient wrong."""
        q = a // b
        if self._slip(max(0, _digits(a) - 4) * 0.04 * _digits(b)):
            k = self.rng.randint(0, _digits(q) - 1)
            q = q - 10 ** k if q > 10 ** k else q + 10 ** k
        self.note(f"{a} ÷ {b} = {q}")
        return q

    def floordiv(self, a: int, b: int) -> int:
        """How many multiples of b are at most a; a slip is the classic off-by-one."""
        q = a // b
        if self._slip(max(0, _digits(a) - 2) * 0.05):
            q += 1
        self.note(f"multiples of {b} up to {a}: ⌊{a} / {b}⌋ = {q}")
        return q

    def mod(self, a: int, m: int) -> int:
        if 0 <= a < m:
            self.note(f"{a} mod {m} = {a}")
            return a
        q = a // m
        qm, _ = self._mul(q, m)
        r = self._sub(a, qm)
        line = f"{a} mod {m}: {q} × {m} = {qm}, {a} − {qm} = {r}"
        j = r // m
        if j > 0:  # a slip pushed the remainder out of range: fix the quotient, keep the slip
            line += f"; that is not below {m}, so take away {j} more × {m}: {r - j * m}"
        elif j < 0:
            line += f"; that is negative, so add back {-j} × {m}: {r - j * m}"
        r -= j * m
        self.note(line)
        return r

    def keep(self, p: float) -> bool:
        """True unless a conceptual slip happens (e.g. n instead of n − 1)."""
        return not self._slip(p)


# --------------------------------------------------------------------------- problem kinds

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mateo",
         "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Vik", "Wen", "Yara", "Zoe")
GOODS = ("pens", "notebooks", "erasers", "rulers", "folders", "markers", "mugs", "candles", "plants",
         "lamps", "chairs", "boxes of tea", "bags of rice", "pairs of socks", "umbrellas", "cushions")
THINGS = ("books", "students", "cards", "songs", "colours", "players", "toppings", "flowers", "stamps")


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Kind:
    """One family of problems. Subclasses fill in the five methods."""

    name: str
    category: str

    def make(self, rng: random.Random, level: int) -> dict[str, Any]:
        raise NotImplementedError

    def text(self, p: dict[str, Any]) -> str:
        raise NotImplementedError

    def solve(self, p: dict[str, Any], mind: Mind) -> int:
        raise NotImplementedError

    def plan(self, p: dict[str, Any]) -> str:
        raise NotImplementedError

    def program(self, p: dict[str, Any]) -> str:
        raise NotImplementedError

    def flavor(self, p: dict[str, Any]) -> random.Random:
        """Wording choices are a function of the maths, so equal maths means equal text."""
        return random.Random(f"{self.name}:{json.dumps(p, sort_keys=True)}")


class Chain(Kind):
    name, category = "chain", "arithmetic"

    def make(self, rng, level):
        start = rng.randint(*[(2, 30), (100, 9999), (1000, 99999)][level - 1])
        value, ops = start, []
        for i in range(level + 1):
            op = rng.choice("+-*")
            if op == "*" and any(o == "*" for o, _ in ops):
                op = "+"
            term: Any
            if op == "*":
                term = rng.randint(*[(2, 9), (11, 999), (101, 9999)][level - 1])
                tv = term
            elif level > 1 and rng.random() < 0.5:
                term, tv = self._compound(rng, level)
            else:
                term = tv = rng.randint(*[(2, 30), (10, 999), (100, 9999)][level - 1])
            if op == "-" and tv >= value:
                op = "+"
            value = value + tv if op == "+" else value - tv if op == "-" else value * tv
            ops.append([op, term])
        return {"start": start, "ops": ops}

    @staticmethod
    def _compound(rng, level):
        if rng.random() < 0.5:
            x, y = rng.randint(*[(0, 0), (11, 99), (101, 9999)][level - 1]), rng.randint(3, [0, 9, 99][level - 1])
            return [x, "*", y], x * y
        d = rng.randint(3, [0, 12, 49][level - 1])
        q = rng.randint(*[(0, 0), (12, 99), (101, 999)][level - 1])
        return [q * d, "/", d], q

    @staticmethod
    def _term(term) -> str:
        return f"{term[0]} {term[1]} {term[2]}" if isinstance(term, list) else str(term)

    def expr(self, p) -> str:
        s = str(p["start"])
        for op, term in p["ops"]:
            if op == "*":
                s = f"({s}) * {term}" if " " in s else f"{s} * {term}"
            else:
                s = f"{s} {op} {self._term(term)}"
        return s

    def text(self, p):
        e = self.expr(p)
        return self.flavor(p).choice([f"Compute {e}.", f"What is {e}?", f"Evaluate {e}."])

    def solve(self, p, mind):
        mind.note(f"Work through {self.expr(p)} from left to right, doing products and quotients first.")
        value = p["start"]
        for op, term in p["ops"]:
            if isinstance(term, list):
                t = mind.mul(term[0], term[2]) if term[1] == "*" else mind.div(term[0], term[2])
            else:
                t = term
            value = mind.add(value, t) if op == "+" else mind.sub(value, t) if op == "-" else mind.mul(value, t)
        return value

    def plan(self, p):
        return "copy the expression into Python, with // for the exact divisions"

    def program(self, p):
        return f"print({self.expr(p).replace(' / ', ' // ')})"


class PowMod(Kind):
    name, category = "powmod", "modular"

    def make(self, rng, level):
        if level == 1:
            a, b = rng.randint(2, 12), rng.randint(2, 4)
            while a ** b > 30000:
                b -= 1
            return {"a": a, "b": b, "m": rng.randint(3, 40)}
        if level == 2:
            return {"a": rng.randint(2, 99), "b": rng.randint(8, 40), "m": rng.randint(30, 150)}
        return {"a": rng.randint(100, 9999), "b": rng.randint(100, 999), "m": rng.randint(60, 300)}

    def text(self, p):
        a, b, m = p["a"], p["b"], p["m"]
        return self.flavor(p).choice([f"What is the remainder when {a}^{b} is divided by {m}?",
                                      f"Compute {a}^{b} mod {m}.",
                                      f"Find {a} to the power {b}, modulo {m}."])

    def solve(self, p, mind):
        a, b, m = p["a"], p["b"], p["m"]
        if b <= 6:
            mind.note(f"Multiply by {a} {b - 1} times, reducing mod {m} after each step.")
            a0 = v = mind.mod(a, m)
            for _ in range(b - 1):
                v = mind.mod(mind.mul(v, a0), m)
            return v
        mind.note(f"Square and multiply, reducing mod {m} each time; {b} in binary is {b:b}.")
        base = mind.mod(a, m)
        result = None
        for i, bit in enumerate(reversed(f"{b:b}")):
            if i:
                mind.note(f"square for the 2^{i} power:")
                base = mind.mod(mind.mul(base, base), m)
            if bit == "1":
                result = base if result is None else mind.mod(mind.mul(result, base), m)
        return result if result is not None else 1

    def plan(self, p):
        return "three-argument pow does modular exponentiation exactly"

    def program(self, p):
        return f"print(pow({p['a']}, {p['b']}, {p['m']}))"


class LinMod(Kind):
    name, category = "linmod", "modular"
    RANGES = {1: ((2, 12), (2, 12), (0, 20), (3, 15)),
              2: ((100, 999), (10, 99), (10, 999), (10, 99)),
              3: ((1000, 9999), (100, 999), (100, 99999), (10, 999))}

    def make(self, rng, level):
        return dict(zip("abcm", (rng.randint(*r) for r in self.RANGES[level])))

    def text(self, p):
        a, b, c, m = p["a"], p["b"], p["c"], p["m"]
        return self.flavor(p).choice([f"What is the remainder when {a} * {b} + {c} is divided by {m}?",
                                      f"Compute ({a} * {b} + {c}) mod {m}."])

    def solve(self, p, mind):
        return mind.mod(mind.add(mind.mul(p["a"], p["b"]), p["c"]), p["m"])

    def plan(self, p):
        return "compute the number exactly, then take it modulo m with %"

    def program(self, p):
        return f"print(({p['a']} * {p['b']} + {p['c']}) % {p['m']})"


def _cancel(numer: list[int], denom: list[int]) -> list[int]:
    """Cancel every factor of the denominator against the numerator, prime by prime."""
    numer = list(numer)
    for d in denom:
        for prime in _primes(d):
            i = next(i for i, x in enumerate(numer) if x % prime == 0)
            numer[i] //= prime
    return [x for x in numer if x != 1]


def _primes(n: int) -> list[int]:
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    return out + ([n] if n > 1 else [])


def _product(mind: Mind, factors: list[int]) -> int:
    if not factors:
        return 1
    v = factors[0]
    for f in factors[1:]:
        v = mind.mul(v, f)
    return v


class Binom(Kind):
    name, category = "binom", "combinatorics"

    def make(self, rng, level):
        n = rng.randint(*[(4, 15), (15, 30), (25, 50)][level - 1])
        k = rng.randint(*[(2, 4), (4, 7), (5, 10)][level - 1])
        return {"n": n, "k": min(k, n - 1)}

    def text(self, p):
        n, k = p["n"], p["k"]
        fl = self.flavor(p)
        thing = fl.choice(THINGS)
        return fl.choice([f"In how many ways can you choose {k} of {n} different {thing} (order does not matter)?",
                          f"Compute the binomial coefficient C({n}, {k}).",
                          f"How many {k}-element subsets does a set of {n} elements have?"])

    def solve(self, p, mind):
        n, k = p["n"], p["k"]
        numer, denom = list(range(n, n - k, -1)), list(range(2, k + 1))
        left = _cancel(numer, denom)
        mind.note(f"C({n}, {k}) = ({' · '.join(map(str, numer))}) / ({k}!); cancelling {k}! leaves "
                  f"{' · '.join(map(str, left)) or '1'}.")
        return _product(mind, left)

    def plan(self, p):
        return "use math.comb for the binomial coefficient"

    def program(self, p):
        return f"import math\nprint(math.comb({p['n']}, {p['k']}))"


class Multiset(Kind):
    name, category = "multiset", "combinatorics"

    def make(self, rng, level):
        length = rng.randint(*[(4, 6), (10, 12), (13, 18)][level - 1])
        letters = rng.sample("ABCDEFGHIKLMNOPRSTU", rng.randint(2, 2 + level))
        return {"word": "".join(rng.choice(letters) for _ in range(length))}

    def text(self, p):
        w = p["word"]
        return self.flavor(p).choice([f"How many distinct arrangements of the letters {w} are there?",
                                      f"How many different strings can be made by rearranging all the letters "
                                      f"of {w}?"])

    def solve(self, p, mind):
        w = p["word"]
        counts = sorted(((w.count(ch), ch) for ch in set(w)), key=lambda t: (-t[0], t[1]))
        denom = [f for c, _ in counts for f in range(2, c + 1)]
        left = _cancel(list(range(2, len(w) + 1)), denom)
        shown = " · ".join(f"{c}! ({ch})" for c, ch in counts)
        mind.note(f"{len(w)} letters with repeats {shown}: {len(w)}! / ({shown}); cancelling leaves "
                  f"{' · '.join(map(str, left)) or '1'}.")
        return _product(mind, left)

    def plan(self, p):
        return "divide n! by the factorial of each letter's count (multinomial coefficient)"

    def program(self, p):
        return (f"import math\nword = {p['word']!r}\ncount = math.factorial(len(word))\n"
                "for letter in set(word):\n    count //= math.factorial(word.count(letter))\nprint(count)")


class Multiples(Kind):
    name, category = "multiples", "combinatorics"

    def make(self, rng, level):
        n = rng.randint(*[(20, 100), (100, 9999), (10000, 200000)][level - 1])
        hi = [9, 30, 50][level - 1]
        return {"n": n, "divs": sorted(rng.sample(range(2, hi + 1), 3 if level == 3 else 2))}

    def text(self, p):
        ds = p["divs"]
        which = f"{ds[0]} or {ds[1]}" if len(ds) == 2 else f"at least one of {ds[0]}, {ds[1]} and {ds[2]}"
        return f"How many integers from 1 to {p['n']} (inclusive) are divisible by {which}?"

    def solve(self, p, mind):
        n, ds = p["n"], p["divs"]
        mind.note("Inclusion-exclusion: add the multiples of each divisor, subtract those of each pair's lcm"
                  + (", add back those of the triple's lcm." if len(ds) == 3 else "."))
        total: int | None = None
        for size in range(1, len(ds) + 1):
            for group in _subsets(ds, size):
                lcm = math.lcm(*group)
                if size > 1 and math.gcd(*group) > 1 and not mind.keep(0.25 if n > 1000 else 0.0):
                    lcm = math.prod(group)  # the classic slip: product instead of lcm
                if size > 1:
                    mind.note(f"lcm({', '.join(map(str, group))}) = {lcm}")
                q = mind.floordiv(n, lcm)
                if total is None:
                    total = q
                else:
                    total = mind.add(total, q) if size % 2 else mind.sub(total, q)
        return total or 0

    def plan(self, p):
        return "count the numbers directly, checking divisibility"

    def program(self, p):
        return (f"divisors = {p['divs']}\n"
                f"print(sum(1 for x in range(1, {p['n']} + 1) if any(x % d == 0 for d in divisors)))")


def _subsets(xs: list[int], size: int) -> list[list[int]]:
    if size == 0:
        return [[]]
    return [[x] + rest for i, x in enumerate(xs) for rest in _subsets(xs[i + 1:], size - 1)]


class ArithSeq(Kind):
    name, category = "arithseq", "sequences"
    RANGES = {1: ((1, 20), (2, 9), (5, 12)), 2: ((10, 999), (11, 999), (20, 300)),
              3: ((100, 9999), (1001, 99999), (200, 9999))}

    def make(self, rng, level):
        return dict(zip(("a", "d", "n"), (rng.randint(*r) for r in self.RANGES[level])))

    def text(self, p):
        a, d, n = p["a"], p["d"], p["n"]
        first = ", ".join(str(a + i * d) for i in range(4))
        return f"The arithmetic sequence {first}, ... keeps the same difference. What is its {ordinal(n)} term?"

    def solve(self, p, mind):
        a, d, n = p["a"], p["d"], p["n"]
        mind.note(f"The first term is {a} and the difference is {d}.")
        steps = n - 1
        if not mind.keep(0.0 if n <= 12 else 0.12):
            steps = n  # off by one: counts n steps from the first term
        mind.note(f"The {ordinal(n)} term is {a} + {steps} × {d}.")
        return mind.add(a, mind.mul(steps, d))

    def plan(self, p):
        return "take the difference from the first two terms and extend the list until the wanted term"

    def program(self, p):
        return (f"terms = [{', '.join(str(p['a'] + i * p['d']) for i in range(4))}]\n"
                f"while len(terms) < {p['n']}:\n    terms.append(terms[-1] + terms[1] - terms[0])\n"
                "print(terms[-1])")


class GeomSeq(Kind):
    name, category = "geomseq", "sequences"
    RANGES = {1: ((1, 9), (2, 4), (4, 6)), 2: ((2, 20), (3, 9), (8, 12)), 3: ((2, 99), (3, 12), (10, 16))}

    def make(self, rng, level):
        return dict(zip(("a", "r", "n"), (rng.randint(*r) for r in self.RANGES[level])))

    def text(self, p):
        a, r, n = p["a"], p["r"], p["n"]
        first = ", ".join(str(a * r ** i) for i in range(4))
        return f"The geometric sequence {first}, ... keeps the same ratio. What is its {ordinal(n)} term?"

    def solve(self, p, mind):
        a, r, n = p["a"], p["r"], p["n"]
        mind.note(f"Each term is {r} times the previous one; start from {a} and multiply {n - 1} times.")
        v = a
        for _ in range(n - 1):
            v = mind.mul(v, r)
        return v

    def plan(self, p):
        return "take the ratio from the first two terms and extend the list until the wanted term"

    def program(self, p):
        return (f"terms = [{', '.join(str(p['a'] * p['r'] ** i) for i in range(4))}]\n"
                f"while len(terms) < {p['n']}:\n    terms.append(terms[-1] * terms[1] // terms[0])\n"
                "print(terms[-1])")


class Recurrence(Kind):
    name, category = "recurrence", "sequences"

    def make(self, rng, level):
        x_hi, (p_lo, p_hi), (q_lo, q_hi), n = [(9, (1, 1), (1, 1), (5, 8)), (20, (1, 4), (1, 4), (9, 13)),
                                               (50, (2, 5), (1, 5), (12, 16))][level - 1]
        return {"x1": rng.randint(1, x_hi), "x2": rng.randint(1, x_hi), "p": rng.randint(p_lo, p_hi),
                "q": rng.randint(q_lo, q_hi), "n": rng.randint(*n)}

    @staticmethod
    def _coef(c: int, term: str) -> str:
        return term if c == 1 else f"{c}·{term}"

    def text(self, p):
        rule = f"{self._coef(p['p'], 'a(k-1)')} + {self._coef(p['q'], 'a(k-2)')}"
        return (f"A sequence has a(1) = {p['x1']}, a(2) = {p['x2']}, and a(k) = {rule} for k ≥ 3. "
                f"What is a({p['n']})?")

    def solve(self, p, mind):
        prev2, prev = p["x1"], p["x2"]
        for k in range(3, p["n"] + 1):
            mind.note(f"a({k}):")
            u = mind.mul(p["p"], prev) if p["p"] != 1 else prev
            w = mind.mul(p["q"], prev2) if p["q"] != 1 else prev2
            prev2, prev = prev, mind.add(u, w)
        return prev

    def plan(self, p):
        return "extend the list with the rule until the wanted term"

    def program(self, p):
        rule = f"{self._coef(p['p'], 'a[-1]')} + {self._coef(p['q'], 'a[-2]')}".replace("·", " * ")
        return f"a = [{p['x1']}, {p['x2']}]\nwhile len(a) < {p['n']}:\n    a.append({rule})\nprint(a[-1])"


class Shop(Kind):
    name, category = "shop", "word"

    def make(self, rng, level):
        price, qty = [((1, 9), (1, 5)), ((10, 999), (11, 99)), ((100, 9999), (10, 999))][level - 1]
        n = level + 1
        prices = [rng.randint(*price) for _ in range(n)]
        qtys = [rng.randint(*qty) for _ in range(n)]
        cost = sum(a * b for a, b in zip(prices, qtys))
        step = [10, 100, 1000][level - 1]
        return {"prices": prices, "qtys": qtys, "budget": (cost // step + rng.randint(1, 5)) * step}

    def text(self, p):
        fl = self.flavor(p)
        who, goods = fl.choice(NAMES), fl.sample(GOODS, len(p["prices"]))
        items = [f"{q} {g} at ${c} each" for q, g, c in zip(p["qtys"], goods, p["prices"])]
        listed = ", ".join(items[:-1]) + f" and {items[-1]}"
        return f"{who} has ${p['budget']} and buys {listed}. How many dollars does {who} have left?"

    def solve(self, p, mind):
        costs = [mind.mul(q, c) for q, c in zip(p["qtys"], p["prices"])]
        return mind.sub(p["budget"], mind.add(*costs))

    def plan(self, p):
        return "add up quantity times price for every item and subtract from the budget"

    def program(self, p):
        cost = " + ".join(f"{q} * {c}" for q, c in zip(p["qtys"], p["prices"]))
        return f"print({p['budget']} - ({cost}))"


class Factory(Kind):
    name, category = "factory", "word"

    def make(self, rng, level):
        rate, hours, days = [((2, 12), (2, 8), (2, 5)), ((12, 999), (6, 12), (10, 99)),
                             ((1000, 9999), (8, 24), (100, 999))][level - 1]
        r, h = rng.randint(*rate), rng.randint(*hours)
        return {"rate": r, "hours": h, "rejects": rng.randint(1, max(1, r * h // 4)), "days": rng.randint(*days)}

    def text(self, p):
        who = self.flavor(p).choice(NAMES)
        return (f"{who}'s workshop makes {p['rate']} parts per hour and runs {p['hours']} hours a day. "
                f"Every day {p['rejects']} of the parts fail inspection. How many good parts does it make in "
                f"{p['days']} days?")

    def solve(self, p, mind):
        good = mind.sub(mind.mul(p["rate"], p["hours"]), p["rejects"])
        return mind.mul(good, p["days"])

    def plan(self, p):
        return "parts per day minus rejects, times the number of days"

    def program(self, p):
        return f"print(({p['rate']} * {p['hours']} - {p['rejects']}) * {p['days']})"


class Theatre(Kind):
    name, category = "theatre", "word"

    def make(self, rng, level):
        rows, seats, adult = [((2, 6), (3, 10), (5, 9)), ((10, 40), (10, 60), (11, 99)),
                              ((100, 999), (100, 999), (20, 999))][level - 1]
        r, s, pa = rng.randint(*rows), rng.randint(*seats), rng.randint(*adult)
        return {"rows": r, "seats": s, "adults": rng.randint(1, r * s - 1), "adult": pa,
                "child": rng.randint(1, pa - 1)}

    def text(self, p):
        venue = "theatre" if p["rows"] < 100 else "stadium"
        return (f"A {venue} has {p['rows']} rows of {p['seats']} seats, and every seat is sold. "
                f"{p['adults']} tickets are adult tickets at ${p['adult']} each; the rest are child tickets at "
                f"${p['child']} each. How many dollars do the ticket sales bring in?")

    def solve(self, p, mind):
        children = mind.sub(mind.mul(p["rows"], p["seats"]), p["adults"])
        return mind.add(mind.mul(p["adults"], p["adult"]), mind.mul(children, p["child"]))

    def plan(self, p):
        return "count the child tickets, then add the adult and child takings"

    def program(self, p):
        return f"print({p['adults']} * {p['adult']} + ({p['rows']} * {p['seats']} - {p['adults']}) * {p['child']})"


KINDS: dict[str, Kind] = {k.name: k for k in (Chain(), PowMod(), LinMod(), Binom(), Multiset(), Multiples(),
                                              ArithSeq(), GeomSeq(), Recurrence(), Shop(), Factory(), Theatre())}
BY_CATEGORY = {cat: [k for k in KINDS.values() if k.category == cat] for cat in CATEGORIES}
