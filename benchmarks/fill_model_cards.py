"""Write the do-no-harm results into the model cards of ``pretrained/``.

::

    mne-unfolded-sbl benchmark --do-no-harm --n-samples 100 --out dnh ...
    python benchmarks/fill_model_cards.py dnh --command "<the command above>"

Every registered model with rows in ``dnh/do-no-harm.csv`` gets its card's
"Benchmark" section replaced (:func:`~mne_unfolded_sbl.training.export.benchmark_section`).
"""

import argparse
import csv
import sys
from pathlib import Path

from mne_unfolded_sbl.core.weights import registry
from mne_unfolded_sbl.training.export import benchmark_section, set_benchmark_section

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def _rows(fname):
    with open(fname, newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="--out folder of the do-no-harm run")
    p.add_argument("--command", required=True, help="the command that made it")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    rows = _rows(folder / "do-no-harm.csv")
    agg = _rows(folder / "do-no-harm_aggregate.csv")
    done = []
    for key in registry():
        method = key.replace("_", "-")  # deep-cb_joint -> deep-cb-joint
        mine = [r for r in rows if r["model"] == method]
        card = PRETRAINED / f"{key}.md"
        if not mine or not card.is_file():
            continue
        section = benchmark_section(mine, [r for r in agg if r["model"] == method],
                                    args.command)
        set_benchmark_section(card, section)
        done.append(key)
    print(f"Filled the benchmark section of: {', '.join(done) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
