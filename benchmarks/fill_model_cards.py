"""Write the do-no-harm results into the model cards of ``pretrained/``.

::

    mne-unfolded-sbl benchmark --do-no-harm --n-samples 100 --out dnh ...
    python benchmarks/fill_model_cards.py dnh --command "<the command above>"

Every registered model with rows in ``dnh/do-no-harm.csv`` gets its card's
"Benchmark" section replaced (:func:`~mne_unfolded_sbl.training.export.benchmark_section`).
A check run on the weights file before it was registered fills the card
of the registry key it became (the file and the registered copy have the
same sha256, checked)::

    python benchmarks/fill_model_cards.py dnh --command "..." \
        --model bias-cb_joint=training_state/bias-cb_joint2/bias-cb_joint.safetensors
"""

import argparse
import csv
import sys
from pathlib import Path

from mne_unfolded_sbl.core.weights import registry, sha256
from mne_unfolded_sbl.training.export import benchmark_section, set_benchmark_section

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"


def _rows(fname):
    with open(fname, newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="--out folder of the do-no-harm run")
    p.add_argument("--command", required=True, help="the command that made it")
    p.add_argument("--model", action="append", default=[], metavar="KEY=FILE",
                   help="rows of the weights file FILE (as passed to --methods) "
                        "fill the card of the registry key KEY")
    args = p.parse_args(argv)
    files = {}
    for item in args.model:
        key, sep, fname = item.partition("=")
        entry = registry().get(key)
        if not sep or entry is None:
            p.error(f"--model {item!r}: expected KEY=FILE with a registered KEY "
                    f"({', '.join(registry())})")
        if sha256(fname) != entry["sha256"]:
            p.error(f"--model {item!r}: {fname} is not the registered {key} "
                    "(sha256 differs)")
        files[key] = fname
    folder = Path(args.folder)
    rows = _rows(folder / "do-no-harm.csv")
    agg = _rows(folder / "do-no-harm_aggregate.csv")
    done = []
    for key in registry():
        method = key.replace("_", "-")  # deep-cb_joint -> deep-cb-joint
        names = {method}
        if key in files:  # as passed to --methods, or resolved to absolute
            names |= {files[key], str(Path(files[key]).resolve())}
        mine = [r for r in rows if r["model"] in names]
        card = PRETRAINED / f"{key}.md"
        if not mine or not card.is_file():
            continue
        section = benchmark_section(mine, [r for r in agg if r["model"] in names],
                                    args.command)
        set_benchmark_section(card, section)
        done.append(key)
    print(f"Filled the benchmark section of: {', '.join(done) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
