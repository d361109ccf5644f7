"""Quality of span-aware curriculum SFT (issue 4 evidence), on math with the embedded SmolLM2-135M.

Trains on expert:coder trajectories from the train split at one token budget for every variant
(`--tokens`, with `train`'s defaults otherwise) and evaluates each on the same held-out test tasks:
  base                          the untrained student
  coder: plain SFT              --reason-weight 1 --act-weight 1 --answer-weight 1
  coder: span-aware SFT         train's defaults (weights 1 / 2 / 2, no curriculum)
  coder: span-aware SFT + curriculum (paced)   the default weights, --curriculum complexity
  coder: span-aware SFT + staged:3 curriculum  the default weights, --curriculum staged:3 (cumulative stages)
  teacher expert:coder          for reference
Rows are appended to bench/results/quality-<tokens>.jsonl as each variant finishes, so a cut-off run keeps what it has.

    python bench/sft_quality.py [--tokens 50000] [--test-tasks 100] [--sandbox nsjail]
"""

from __future__ import annotations

import warnings

from _quality import CODER_STUDENT, STUDENT, arguments, evaluated, report, teacher_run, trained

VARIANTS = {
    "coder: plain SFT": dict(reason_weight=1.0, act_weight=1.0, answer_weight=1.0),
    CODER_STUDENT: {},
    "coder: span-aware SFT + curriculum (paced)": dict(curriculum="complexity"),
    "coder: span-aware SFT + staged:3 curriculum": dict(curriculum="staged:3"),
}
# "(paced)": trained since a curriculum longer than the step budget is thinned evenly, easy to hard; rows named
# "coder: span-aware SFT + curriculum" are from before, when the budget cut it after its easiest rows


def main() -> None:
    args = arguments(__doc__)
    warnings.simplefilter("ignore")
    coder = teacher_run(args, "expert:coder")
    specs = {name: trained(args, name, [coder], **weights) for name, weights in VARIANTS.items()}
    specs["teacher expert:coder"] = "expert:coder"
    specs["base"] = STUDENT  # last: the base model writes every token it may, so its eval costs the most
    rows = [evaluated(args, name, spec) for name, spec in specs.items()]
    report(args, rows, "sft-quality")


if __name__ == "__main__":
    main()
