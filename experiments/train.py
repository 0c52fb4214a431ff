"""Train one registry model on train, P1 or P2; cache its checkpoint; write its metrics as JSON.

    python -m experiments.train --model FC100-100-10 --split train
"""

from __future__ import annotations

import pathlib

from experiments import common
from intriguing_jax import compile_cache, models, storage, train, zoo


def main(argv=None):
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=models.names(), help="registry name (paper's)")
    p.add_argument("--split", default="train", choices=("train", "p1", "p2", "fit"),
                   help="training split: the whole set, a paper half, or the set less its validation sixth")
    p.add_argument("--epochs", type=int, default=None, help="default: the model's registry default (twice that on p1/p2: the same number of steps)")
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--learning-rate", type=float, default=None,
                   help="peak Adam rate (default: the model's, e.g. 1e-2 for the MLPs)")
    args = common.parse_args(p, argv)
    mnist = common.setup(args)
    cfg = train.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate)
    epochs = zoo.resolved_config(args.model, cfg, args.split, args.dataset).epochs
    bar, on_epoch = common.epoch_bar(epochs, f"{args.model} on {args.split}")
    model, _, meta = zoo.trained(args.model, mnist, split=args.split, seed=args.seed, cfg=cfg,
                                 workdir=args.workdir, on_epoch=on_epoch)
    bar.close()
    out = pathlib.Path(args.results) / "train" / (zoo.checkpoint_path(
        args.workdir, args.model, args.split, args.seed, cfg, args.dataset).stem + ".json")
    storage.write_json(out, meta)
    print(f"{model.name} on {args.split}: train error {meta['train_error']:.2%}, "
          f"test error {meta['test_error']:.2%} -> {out}")
    compile_cache.log_stats()
    return meta


if __name__ == "__main__":
    main()
