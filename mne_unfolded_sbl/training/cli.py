"""``mne-unfolded-sbl train``: train, resume, export weights or lead fields.

Examples::

    mne-unfolded-sbl train --config configs/tiny_cpu.toml --out runs/tiny
    mne-unfolded-sbl train --config configs/deep-cb_joint.toml --resume \\
        --device cuda --max-minutes 25          # exit status 75: resume again
    mne-unfolded-sbl train --config configs/deep-cb_joint.toml \\
        --export-leadfield leadfields/          # .npz for a machine without MNE
    python -m mne_unfolded_sbl.training --config cfg.toml   # no MNE needed
    torchrun --nproc_per_node=4 -m mne_unfolded_sbl.training --config cfg.toml
"""

import argparse
import sys

import tomllib


def add_arguments(parser):
    """Add the ``train`` options to an :class:`argparse.ArgumentParser`."""
    parser.add_argument("--config", help="training configuration (TOML)")
    parser.add_argument("--out", help="run folder (default: out_dir of the config)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in the run folder")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--max-minutes", type=float, dest="max_minutes",
                        help="stop cleanly with a checkpoint after this wall time "
                             "(exit status 75; resume with --resume)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (TOML value), repeatable")
    parser.add_argument("--export-only", action="store_true",
                        help="only write weights + model card from the checkpoint")
    parser.add_argument("--export-leadfield", metavar="DIR",
                        help="only write the training/validation lead fields of "
                             "the config to DIR as .npz (needs MNE)")
    parser.add_argument("--register", nargs="?", const="auto", metavar="KEY",
                        help="add the exported weights to pretrained/registry.json "
                             "(KEY default: <model>_<joint|source>)")
    return parser


def overrides_from_args(args):
    """Config overrides from the parsed ``--set``/``--device``/... options."""
    out = {}
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    if args.device:
        out["device"] = args.device
    if args.max_minutes is not None:
        out["max_minutes"] = args.max_minutes
    if args.threads is not None:
        out["num_threads"] = args.threads
    if args.no_progress:
        out["progress"] = False
    if args.out:
        out["out_dir"] = args.out
    return out


def _config_from_checkpoint(out_dir, overrides):
    from pathlib import Path

    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .config import TrainConfig

    ckpt = Path(out_dir) / CHECKPOINT_NAME
    if not ckpt.is_file():
        raise SystemExit(f"No checkpoint in {out_dir}; give --config.")
    return TrainConfig.from_dict(load_checkpoint(ckpt)["config"]).replace(**overrides)


def run(args):
    """Execute ``train`` with parsed arguments; returns the exit status."""
    from .config import load_config

    overrides = overrides_from_args(args)
    if args.config:
        config = load_config(args.config, **overrides)
    elif args.export_only and args.out:
        config = _config_from_checkpoint(args.out, overrides)
    else:
        raise SystemExit("--config is required.")
    if args.export_leadfield:
        from .data import export_leadfields

        train, val = export_leadfields(config, args.export_leadfield)
        print(f"Wrote {train} and {val}. In the config's [data] table use:\n"
              f'train_leadfield = "{train}"\nval_leadfield = "{val}"')
        return 0
    from pathlib import Path

    from .checkpoint import CHECKPOINT_NAME
    from .trainer import Trainer

    if args.export_only and not (Path(config.out_dir) / CHECKPOINT_NAME).is_file():
        raise SystemExit(f"--export-only: no checkpoint in {config.out_dir}.")
    trainer = Trainer(config, resume=args.resume or args.export_only)
    try:
        return _run(args, config, trainer)
    finally:
        from .distributed import cleanup

        trainer.close()
        cleanup()  # the CLI owns the process group (torchrun)


def _run(args, config, trainer):
    from .trainer import EXIT_STOPPED

    if args.export_only:
        status = "finished" if trainer.complete else "partial"
        fname = trainer.out_dir / f"{config.name}.safetensors"
        if trainer.dist.is_main:
            trainer.export(fname)
    else:
        status = trainer.run()
        fname = trainer.out_dir / f"{config.name}.safetensors"
    if not trainer.dist.is_main:
        return 0 if status != "stopped" else EXIT_STOPPED
    if status == "stopped":
        print(f"Stopped at phase {trainer.phase_index} step {trainer.step} "
              f"(checkpoint in {trainer.out_dir}); continue with --resume.",
              file=sys.stderr)
        return EXIT_STOPPED
    print(f"Weights: {fname} ({status}); model card: {fname.with_suffix('.md')}")
    if args.register:
        from ..core.weights import register_weights

        if status != "finished":
            raise SystemExit("Not registering the weights of an unfinished run.")

        key = config.name if args.register == "auto" else args.register
        entry = register_weights(fname, key)
        print(f"Registered {key!r}: {entry}")
    return 0


def main(argv=None):
    """Entry point of ``python -m mne_unfolded_sbl.training`` (no MNE needed)."""
    parser = argparse.ArgumentParser(prog="python -m mne_unfolded_sbl.training",
                                     description="Train unfolded-SBL weights.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args)
