"""Frozen-backbone transfer learning written as people write it: torchvision's ImageFolder,
a DataLoader, MobileNetV2 with a new head, Adam, scikit-learn's AUC after every epoch.

``bench_training`` runs it as a fresh ``python`` process, the way a user meets a script, and
times it from start to exit. It imports nothing from braintl, so it pays only for what such a
script needs. The images are the ones braintl trains and validates on in the same comparison,
listed in ``--split`` (a JSON of relative paths; ``copies`` are training entries read through
online augmentation, the torchvision counterpart of braintl's offline copies).

``--same-settings`` gives it braintl's process settings (subnormal floats flushed, fused Adam,
evaluation in batches of 64); braintl's allocator setting comes from the environment
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``), set by the caller.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset
from torchvision import datasets, models, transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loaders(args, split: dict) -> tuple[DataLoader, DataLoader]:
    size = (args.image_size, args.image_size)
    plain = transforms.Compose(
        [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    augmenting = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    images = datasets.ImageFolder(args.data, transform=plain)
    position = {path: i for i, (path, _) in enumerate(images.samples)}

    def rows(paths: list[str]) -> list[int]:
        return [position[f"{args.data.rstrip('/')}/{p}"] for p in paths]

    train = Subset(images, rows(split["train"]))
    if split["copies"]:
        copies = datasets.ImageFolder(args.data, transform=augmenting)
        train = ConcatDataset([train, Subset(copies, rows(split["copies"]))])
    val = Subset(images, rows(split["val"]))
    eval_batch = 64 if args.same_settings else args.batch_size
    return (
        DataLoader(train, args.batch_size, shuffle=True, num_workers=args.workers),
        DataLoader(val, eval_batch, num_workers=args.workers),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="ImageFolder root (no/, yes/)")
    parser.add_argument("--split", required=True, help="JSON: train, copies, val paths")
    parser.add_argument("--weights", required=True, help="MobileNetV2 backbone state dict")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--batch-size", type=int, default=18)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--same-settings", action="store_true", help="braintl's settings")
    args = parser.parse_args()
    with open(args.split) as f:
        split = json.load(f)
    if args.same_settings:
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    started = time.perf_counter()
    train_loader, val_loader = loaders(args, split)
    base = models.mobilenet_v2()
    base.load_state_dict(torch.load(args.weights), strict=False)  # no classifier in the file
    for p in base.features.parameters():
        p.requires_grad = False
    side = -(-args.image_size // 32)  # the feature map's side after stride 32
    model = nn.Sequential(
        base.features,
        nn.Flatten(),
        nn.Linear(1280 * side * side, 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.BatchNorm1d(256),
        nn.Linear(256, 2),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.lr, fused=args.same_settings or None)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        model[0].eval()  # a frozen backbone keeps its BatchNorm statistics, as Keras does
        for x, y in train_loader:
            if len(x) < 2:  # BatchNorm1d cannot train on one image
                continue
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        scores, labels = [], []
        with torch.no_grad():
            for x, y in val_loader:
                scores.append(torch.softmax(model(x), 1)[:, 1])
                labels.append(y)
        score, label = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        auc = roc_auc_score(label, score)
        acc = float(((score > 0.5) == label).mean())
        print(f"epoch {epoch + 1}/{args.epochs} val AUC {auc:.4f} acc {acc:.3f}", flush=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"train_seconds": seconds, "val_auc": auc, "val_acc": acc}))


if __name__ == "__main__":
    main()
