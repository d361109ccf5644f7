"""`math`: procedurally generated integer math problems, a python tool and two experts.

Five categories (arithmetic, modular, combinatorics, sequences, word problems)
at three difficulty levels. Every problem is one `Kind` with integer params.
A kind knows how to word the problem, how to solve it by hand (through a `Mind`
that writes every step and, for the reasoner expert, may slip) and how to
write a Python program for it (the coder expert).

Splits: each (category, level) pair has one seeded stream of problems. A
problem belongs to train/dev/test by a hash of its text, and each split takes
its problems round robin over the pairs, skipping repeated texts. So splits are
disjoint, balanced, and the same on every machine.

The package: `_kinds` (the problem kinds and the hand calculator), `_bank` (the task bank and its
splits), `_env` (the env, its python tool and the verifier) and `_experts`.
"""

from ._bank import COMBOS, SPLIT_SIZES, STREAM_SEED, Problem, _bank, make_problem, split_of
from ._env import MAX_OBS_CHARS, MAX_OBS_LINES, MathEnv, MathEpisode, check_answer, parse_answer
from ._experts import coder, reasoner
from ._kinds import (BY_CATEGORY, CATEGORIES, GOODS, KINDS, LEVELS, NAMES, THINGS, ArithSeq, Binom, Chain, Factory,
                     GeomSeq, Kind, LinMod, Mind, Multiples, Multiset, PowMod, Recurrence, Shop, Theatre, ordinal)

__all__ = [
    "BY_CATEGORY",
    "CATEGORIES",
    "COMBOS",
    "GOODS",
    "KINDS",
    "LEVELS",
    "MAX_OBS_CHARS",
    "MAX_OBS_LINES",
    "NAMES",
    "SPLIT_SIZES",
    "STREAM_SEED",
    "THINGS",
    "ArithSeq",
    "Binom",
    "Chain",
    "Factory",
    "GeomSeq",
    "Kind",
    "LinMod",
    "MathEnv",
    "MathEpisode",
    "Mind",
    "Multiples",
    "Multiset",
    "PowMod",
    "Problem",
    "Recurrence",
    "Shop",
    "Theatre",
    "check_answer",
    "coder",
    "make_problem",
    "ordinal",
    "parse_answer",
    "reasoner",
    "split_of",
]
