"""Small networks vaelab trains on a dataset's own training split to judge generated images.

Sample quality needs a network that knows what the data looks like, and the usual one
(Inception, for FID) needs weights from the internet. A judge is trained here instead, once per
dataset and seed, and cached beside the data cache: a digit classifier for MNIST-like data
(its confidence says whether a sample is a readable digit), a 40-attribute predictor for
CelebA (its features say whether a sample looks like a face). Its penultimate features feed a
Fréchet distance and precision/recall (:mod:`vaelab.sample_quality`).
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vaelab.data.base import to_unit_float
from vaelab.data.cache import cache_key, load_or_build
from vaelab.errors import UserError
from vaelab.progress import Progress

log = logging.getLogger(__name__)

SKIP = "callbacks.sample_quality=null skips it in training, eval.quality=false in src/eval.py"
JUDGE_VERSION = 1  # bump when the network or its training changes: cached judges are rebuilt
FEATURES = 128


class Judge(nn.Module):
    """Conv trunk (stride-2 stages down to 4×4 or less) → ``FEATURES`` features → ``n_outputs``
    logits: 10 classes (``multi_label=False``) or one logit per binary attribute."""

    def __init__(self, image_shape: tuple[int, int, int], n_outputs: int, multi_label: bool):
        super().__init__()
        channels, side, _ = image_shape
        layers, width = [], 32
        while side > 4:
            layers += [nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU()]
            channels, side, width = width, (side + 1) // 2, min(width * 2, 256)
        self.trunk = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.2))
        self.embed = nn.Sequential(nn.Linear(channels * side * side, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, n_outputs)
        self.multi_label = multi_label

    def features(self, x: Tensor) -> Tensor:
        """(N, FEATURES) for images in [0, 1]."""
        return self.embed(self.trunk(x - 0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels.long())

    def correct(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Per image: the share of its outputs predicted right (a class, or each attribute)."""
        if self.multi_label:
            return ((logits > 0) == labels.bool()).float().mean(1)
        return (logits.argmax(1) == labels.long()).float()


class FeatureExtractor(nn.Module):
    """The judge as torchmetrics' FID wants a custom extractor: images in, (N, d) features out."""

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge, self.num_features = judge, FEATURES

    def forward(self, x: Tensor) -> Tensor:
        return self.judge.features(x.float())


def _label_kind(labels: Tensor) -> tuple[int, bool]:
    """(outputs, multi_label): class indices (N,) or binary attributes (N, A)."""
    if labels.ndim == 2:
        if labels.shape[1] == 0:
            raise UserError(
                "This dataset has no labels to train a sample-quality judge on (CelebA without "
                "celeba/list_attr_celeba.txt): add the attribute file, or turn the judge off with "
                "callbacks.sample_quality=null (training) / eval.quality=false (src/eval.py)."
            )
        return labels.shape[1], True
    return int(labels.max()) + 1, False


@torch.no_grad()
def accuracy(judge: Judge, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    judge.eval()
    right = [
        judge.correct(judge(to_unit_float(images[i : i + batch_size])), labels[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return float(torch.cat(right).mean())


def train_judge(
    splits: dict, seed: int, epochs: int, batch_size: int = 128, shift: int = 2
) -> tuple[Judge, float]:
    """A judge fitted on ``splits["train"]`` (Adam, one-cycle schedule, random shifts of up to
    ``shift`` pixels), and its accuracy on ``splits["test"]``."""
    device = splits["train"]["images"].device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # a run's own random streams are left as they were
        torch.manual_seed(seed)
        return _fit(splits, seed, epochs, batch_size, shift)


def _fit(splits: dict, seed: int, epochs: int, batch_size: int, shift: int) -> tuple[Judge, float]:
    images, labels = splits["train"]["images"], splits["train"]["labels"]
    judge = Judge(tuple(images.shape[1:]), *_label_kind(labels)).to(images.device)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(images) // batch_size)
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    judge.train()
    label = "training the sample-quality judge (once, then cached)"
    with Progress(steps, label, "steps") as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(images), generator=generator).to(images.device).split(batch_size):
                x = _shift(to_unit_float(images[idx]), generator, shift)
                loss = judge.loss(judge(x), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
    return judge.eval(), accuracy(judge, splits["test"]["images"], splits["test"]["labels"])


def _shift(x: Tensor, generator: torch.Generator, pixels: int) -> Tensor:
    """Each image moved by up to ``pixels`` in each direction (zero padding): the judge must
    not care where a digit sits, since a VAE's samples are not centred as exactly as MNIST's."""
    if pixels == 0:
        return x
    dx, dy = torch.randint(-pixels, pixels + 1, (2,), generator=generator).tolist()
    return torch.roll(F.pad(x, [pixels] * 4), (dy, dx), dims=(2, 3))[..., pixels:-pixels, pixels:-pixels]


def _data_key(datamodule) -> object:
    """What the judge's cache key takes from the data: the data cache's file name, which already
    holds the data's own key (fingerprinting CelebA's 200,000 JPEGs again costs seconds), else
    the sources' fingerprints."""
    return datamodule.cache_file.name if datamodule.cache_file is not None else datamodule.cache_params()


def load_or_train_judge(datamodule, seed: int = 0, epochs: int = 4) -> tuple[Judge, float]:
    """The dataset's judge, trained on first use (about a minute for MNIST on a 2-core CPU) and
    cached in ``paths.cache_dir`` next to the data; (judge, its test accuracy)."""
    splits = datamodule.splits or datamodule.load_splits()
    labels = splits["train"]["labels"]
    outputs, multi_label = _label_kind(labels)
    key = cache_key(
        data=_data_key(datamodule),
        binarized_test=datamodule.binarize,
        judge=JUDGE_VERSION,
        seed=seed,
        epochs=epochs,
    )

    def build() -> dict[str, Tensor]:
        log.info("training the %s judge (%d epochs, seed %d; %s)", datamodule.name, epochs, seed, SKIP)
        start = time.perf_counter()
        judge, acc = train_judge(splits, seed, epochs)
        log.info(
            "%s judge: test accuracy %.4f after %.0f s", datamodule.name, acc, time.perf_counter() - start
        )
        return {**{k: v.cpu() for k, v in judge.state_dict().items()}, "test_accuracy": torch.tensor(acc)}

    cached, _ = load_or_build(datamodule.cache_dir, f"judge-{datamodule.name}", key, build, ["test_accuracy"])
    state = dict(cached)
    acc = float(state.pop("test_accuracy"))
    judge = Judge(datamodule.image_shape, outputs, multi_label)
    judge.load_state_dict(state)
    return judge.eval(), acc
