"""Transfer learning on little data: lecture 003's idea measured on CIFAR-10 with 100 images per class.

    python benchmarks/transfer.py [--data-dir DIR] [--per-class 100] [--test-limit N] [--only a,b,c,d]
                                  [--size 160] [--write]

1,000 training images (100 per class, seeded), tested on the full 10,000 test images, on this machine,
one after another in one process; each row's wall time is the whole `cnnlab.train` call (model
built, weights read, features extracted or images trained on, the test at the end):
  (a) from scratch: cnnlab's best recipe for CIFAR-10 (`--recipe fast` and `fast-long`'s network and
      settings), on 1,000 images;
  (b) feature extraction: EfficientNet-Lite0's ImageNet weights frozen (`--freeze backbone`), each image's
      features computed once (a cold cache), a linear head trained on them;
  (c) fine-tuning: the head alone for one epoch, then everything, the backbone at a tenth of the rate
      (`--unfreeze-after 1`), with and without augmentation;
  (d) the path a user takes: a class folder (`folder:PATH`) of a few hundred CIFAR-10 JPEGs, feature
      extraction as in (b).
Goal (issue 19): (b) >= 65% and 25 points above (a) within 5 minutes; (c) >= 75% within 15 minutes.
--write puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import cnnlab
from cnnlab.data import ImageData, load_dataset
from cnnlab.training import transfer

from common import cifar10, data_dir, machine, write_section


def few_per_class(data: ImageData, per_class: int, seed: int = 0, test_limit: int | None = None) -> ImageData:
    """`per_class` training images of every class, drawn with a seeded permutation; the test split whole
    (or its first `test_limit` images, for a quick look)."""
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    labels = data.train.y[order]
    picked = torch.cat([order[labels == k][:per_class] for k in range(data.num_classes)])
    picked = picked[torch.randperm(len(picked), generator=torch.Generator().manual_seed(seed + 1))]
    test = data.test.take(slice(0, test_limit)) if test_limit else data.test
    # Named as the dataset, so that --recipe picks CIFAR-10's network and settings.
    return ImageData(data.name, data.classes, data.train.take(picked), test, source=data.source)


def class_folder(data: ImageData, root: Path, per_class: int, test_per_class: int) -> Path:
    """A folder tree root/{train,test}/<class>/N.png of CIFAR-10 images, as a user's photos would be."""
    from cnnlab.data.images import save

    for split, count in (("train", per_class), ("test", test_per_class)):
        images = data.train if split == "train" else data.test
        for k, name in enumerate(data.classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate((images.y == k).nonzero()[:count, 0].tolist()):
                save(images.x[index].float() / 255, folder / f"{i}.png")
    return root


def run(label: str, model: str | None, dataset: ImageData | str, out: Path, **options: object) -> dict[str, object]:
    """Train one row with a cold feature cache; its wall time, accuracy and settings."""
    transfer._MEMORY.clear()
    os.environ["CNNLAB_CACHE"] = tempfile.mkdtemp(prefix="cnnlab-cache-")  # cold: extraction is timed
    started = time.perf_counter()
    result = cnnlab.train(model, dataset, out=out / label.split()[0], overwrite=True, report=False, verbose=False,
                          **options)
    seconds = time.perf_counter() - started
    shutil.rmtree(os.environ.pop("CNNLAB_CACHE"), ignore_errors=True)
    row = {"label": label, "model": result.config.model, "seconds": seconds,
           "accuracy": result.metrics["test_accuracy"], "epochs": len(result.history),
           "input": "x".join(map(str, result.config.preprocess.input_shape)),
           "test": result.metrics["count"]}
    print(f"{label}: {row['accuracy']:.2%} in {seconds:.0f} s ({row['epochs']} epochs, input {row['input']})",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-limit", type=int, help="test on the first N test images only (a quick look)")
    parser.add_argument("--size", type=int, default=160, help="the pretrained network's input size")
    parser.add_argument("--only", default="a,b,c,d")
    parser.add_argument("--fine-epochs", type=int, default=8)
    parser.add_argument("--fine-lr", type=float, default=1e-3)
    parser.add_argument("--backbone-lr", type=float, default=0.1)
    parser.add_argument("--unfreeze-after", type=int, default=1)
    parser.add_argument("--augment", default="flip, crop(4)")
    parser.add_argument("--augmented-only", action="store_true", help="(c): leave out the run without augmentation")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    full = cifar10(data_dir(args.data_dir))
    data = few_per_class(full, args.per_class, test_limit=args.test_limit)
    only = set(args.only.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "a" in only:
            rows.append(run("(a) from scratch, --recipe fast", None, data, out, recipe="fast", val_fraction=0.1))
            rows.append(run("(a) from scratch, --recipe fast-long", None, data, out, recipe="fast-long",
                            val_fraction=0.1))
        lite0 = {"pretrained": True, "image_size": args.size, "precision": "auto"}
        if "b" in only:
            rows.append(run("(b) feature extraction + linear head", "efficientnet-lite0", data, out, **lite0,
                            freeze="backbone", epochs=30, lr=1e-3, batch_size=100, weight_decay=1e-4,
                            optimizer="adamw", schedule="cosine"))
        if "c" in only:
            fine = {**lite0, "unfreeze_after": args.unfreeze_after, "epochs": args.fine_epochs, "lr": args.fine_lr,
                    "batch_size": 32, "optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine",
                    "backbone_lr": args.backbone_lr}
            if not args.augmented_only:
                rows.append(run("(c) fine-tuning", "efficientnet-lite0", data, out, **fine))
            rows.append(run(f"(c) fine-tuning + --augment \"{args.augment}\"", "efficientnet-lite0", data, out,
                            **fine, augment=args.augment))
        if "d" in only:
            folder = class_folder(full, out / "photos", per_class=30, test_per_class=20)
            rows.append(run("(d) folder of 300 + 200 photos, feature extraction", "efficientnet-lite0",
                            f"folder:{folder}", out, **lite0, freeze="backbone", epochs=30, lr=1e-3,
                            batch_size=100, weight_decay=1e-4, optimizer="adamw", schedule="cosine"))
    scratch = max((r["accuracy"] for r in rows if r["label"].startswith("(a)")), default=None)
    table = ["| run | model, input | epochs | test images | wall time | test accuracy | vs (a) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        gain = f"{(r['accuracy'] - scratch) * 100:+.1f} points" if scratch is not None else ""
        table.append(f"| {r['label']} | {r['model']}, {r['input']} | {r['epochs']} | {r['test']:,} | "
                     f"{r['seconds']:.0f} s | {r['accuracy']:.2%} | {gain} |")
    text = (f"CIFAR-10, {args.per_class} training images per class ({args.per_class * 10:,}), seeded. {machine()}.\n\n"
            + "\n".join(table))
    print("\n" + text)
    if args.write:
        write_section("transfer", text)


if __name__ == "__main__":
    main()
