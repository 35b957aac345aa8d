"""Small networks vaelab trains on a dataset's own training split to judge generated images.

Sample quality needs a network that knows what the data looks like, and the usual one
(Inception, for FID) needs weights from the internet. A judge is trained here instead, once per
dataset and seed, and cached beside the data cache: a digit classifier for MNIST-like data
(its confidence says whether a sample is a readable digit), a 40-attribute predictor for
CelebA (its features say whether a sample looks like a face). Its penultimate features feed a
Fréchet distance and precision/recall (:mod:`vaelab.sample_quality`).

The judge is cheap: stride-2 convolutions of 16 channels and up, a few epochs (about 20 s for
MNIST on a quiet 2-core CPU), at most ``MAX_IMAGES`` training images seen (a few minutes for
CelebA's 162,770 at 64×64). One judge serves a dataset's grey and binarised runs alike: it is
trained on a random binarisation of half of its images, so it reads binary digits nearly as
well as grey ones (MNIST: 0.988 test accuracy on a fixed binarisation, 0.992 on the grey images).
"""

from __future__ import annotations

import copy
import logging
import math
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
JUDGE_VERSION = 2  # bump when the network or its training changes: cached judges are rebuilt
FEATURES = 128
WIDTH = 16  # channels of the first convolution, doubled at each stride-2 stage after it
BATCH_SIZE = 128
LR = 1e-2  # Adam's peak learning rate in the one-cycle schedule
BINARY_SHARE = 0.5  # the share of training images binarised afresh (pixel on with p = intensity)
# training images seen at most, the last epoch cut short: about 4 min for CelebA on 2 CPU cores
MAX_IMAGES = 500_000


class Judge(nn.Module):
    """Conv trunk (stride-2 conv → BatchNorm → ReLU stages down to 4×4 or less, ``WIDTH``
    channels doubling per stage) → ``FEATURES`` features → ``n_outputs`` logits: 10 classes
    (``multi_label=False``) or one logit per binary attribute."""

    def __init__(self, image_shape: tuple[int, int, int], n_outputs: int, multi_label: bool):
        super().__init__()
        channels, side, _ = image_shape
        layers, width = [], WIDTH
        while side > 4:
            layers += [nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels, side, width = width, (side + 1) // 2, min(width * 2, 256)
        self.trunk = nn.Sequential(*layers, nn.Flatten())
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


def blank_judge(image_shape: tuple[int, int, int], n_outputs: int, multi_label: bool, device="cpu") -> Judge:
    """A judge whose weights are still to be set (loaded or initialised): built without
    drawing from torch's global random stream, which the run (or, in a background thread,
    the training going on beside it) owns."""
    with torch.device("meta"):
        judge = Judge(image_shape, n_outputs, multi_label)
    return judge.to_empty(device=device)


def _initialise(judge: Judge, generator: torch.Generator) -> None:
    """torch's default initialisation (Kaiming-uniform weights, uniform biases), drawn from
    ``generator``; BatchNorm at scale 1, shift 0 and fresh running statistics."""
    for m in judge.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(m.weight[0].numel())
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()


def _label_kind(labels: Tensor) -> tuple[int, bool]:
    """(outputs, multi_label): class indices (N,) or binary attributes (N, A)."""
    if labels.ndim == 2:
        if labels.shape[1] == 0:
            raise UserError(
                "This dataset has no labels to train a sample-quality judge on (CelebA without "
                "celeba/list_attr_celeba.txt, dataset=folder without dataset.labels=true), so this run "
                "has no sample-quality numbers (val_quality/*, eval's quality/*); its likelihoods, "
                "pictures and ex-post prior are unaffected. Add labels (the attribute file; one "
                "sub-folder per class with dataset.labels=true), or turn the judge off with "
                "callbacks.sample_quality=null (training) / eval.quality=false (src/eval.py)."
            )
        return labels.shape[1], True
    return int(labels.max()) + 1, False


@torch.no_grad()
def accuracy(judge: Judge, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """The share of outputs ``judge`` gets right on uint8 ``images``, on the judge's device."""
    judge.eval()
    device = next(judge.parameters()).device
    right = [
        judge.correct(
            judge(to_unit_float(images[i : i + batch_size].to(device))), labels[i : i + batch_size].to(device)
        )
        for i in range(0, len(images), batch_size)
    ]
    return float(torch.cat(right).mean())


def training_steps(n_images: int, epochs: int, batch_size: int | None = None) -> int:
    """Steps of ``batch_size`` (``BATCH_SIZE``) for ``epochs`` epochs of ``n_images``, cut to
    ``MAX_IMAGES`` images."""
    batch_size = batch_size or BATCH_SIZE
    return max(1, min(epochs * -(-n_images // batch_size), MAX_IMAGES // batch_size))


def train_judge(
    splits: dict,
    seed: int,
    epochs: int,
    batch_size: int | None = None,
    shift: int = 2,
    binary_share: float | None = None,
    tty: bool | None = None,
) -> tuple[Judge, float]:
    """A judge fitted on ``splits["train"]`` (Adam, one-cycle schedule, random shifts of up to
    ``shift`` pixels, a ``binary_share`` of the images binarised afresh; ``epochs`` epochs or
    ``MAX_IMAGES`` images, whichever is fewer), and its accuracy on ``splits["test"]``.

    It draws only from its own generators, seeded by ``seed``: a run's random streams are left
    as they were, and it may train in a thread beside the run (``tty=False`` keeps its progress
    to log lines there)."""
    images, labels = splits["train"]["images"], splits["train"]["labels"]
    device, batch_size = images.device, batch_size or BATCH_SIZE
    binary_share = BINARY_SHARE if binary_share is None else binary_share
    judge = blank_judge(tuple(images.shape[1:]), *_label_kind(labels), device=device)
    generator = torch.Generator().manual_seed(seed)  # the order, the shifts, the initial weights
    pixels = torch.Generator(device=device).manual_seed(seed)  # binarisation draws, where the batch is
    _initialise(judge, generator)
    judge = judge.to(memory_format=torch.channels_last)  # faster convolutions, on CPU and GPU
    steps = training_steps(len(images), epochs, batch_size)
    optimizer = torch.optim.Adam(judge.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    judge.train()
    label = "training the sample-quality judge (once, then cached)"
    done = 0
    with Progress(steps, label, "steps", tty=tty) as bar:
        while done < steps:  # whole epochs, the last one cut short by MAX_IMAGES
            order = torch.randperm(len(images), generator=generator).to(device)
            for idx in order.split(batch_size)[: steps - done]:
                x = _binarise_some(to_unit_float(images[idx]), pixels, binary_share)
                x = _shift(x, generator, shift).contiguous(memory_format=torch.channels_last)
                loss = judge.loss(judge(x), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                done += 1
                bar.update()
    judge = judge.to(memory_format=torch.contiguous_format).eval()  # as a loaded judge is
    return judge, accuracy(judge, splits["test"]["images"], splits["test"]["labels"])


def _binarise_some(x: Tensor, generator: torch.Generator, share: float) -> Tensor:
    """A random ``share`` of the images binarised (each pixel on with probability = its
    intensity), as ``dataset.binarize=true`` runs see theirs: the judge must read binary
    digits as well as grey ones."""
    if share <= 0:
        return x
    draws = torch.rand(x.shape, generator=generator, device=x.device)
    which = torch.rand(len(x), generator=generator, device=x.device) < share
    return torch.where(which.view(-1, *[1] * (x.ndim - 1)), (draws < x).to(x.dtype), x)


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
    the sources' fingerprints. The same for a binarised run as for a grey one: those binarise
    only after the cache (training batches afresh, val and test once)."""
    return datamodule.cache_file.name if datamodule.cache_file is not None else datamodule.cache_params()


def _grey_test(datamodule, splits: dict) -> Tensor:
    """The test images as decoded: a binarised datamodule's ``splits`` hold its fixed draw."""
    if not datamodule.binarize:
        return splits["test"]["images"]
    grey = copy.copy(datamodule)  # the mapped cache again, without the binarisation
    grey.binarize = False
    return grey.load_splits()["test"]["images"]


def load_or_train_judge(
    datamodule, seed: int = 0, epochs: int = 4, tty: bool | None = None
) -> tuple[Judge, float]:
    """The dataset's judge, trained on first use (about 20 s for MNIST on a 2-core CPU, a few
    minutes at most for CelebA) and cached in ``paths.cache_dir`` next to the data; (judge, its
    accuracy on the test images as this datamodule serves them: binarised for
    ``dataset.binarize=true``, else grey). Grey and binarised runs share one judge."""
    splits = datamodule.splits or datamodule.load_splits()
    labels = splits["train"]["labels"]
    outputs, multi_label = _label_kind(labels)
    key = cache_key(data=_data_key(datamodule), judge=JUDGE_VERSION, seed=seed, epochs=epochs)

    def build() -> dict[str, Tensor]:
        steps = training_steps(len(labels), epochs)
        log.info(
            "training the %s judge (%d epochs or %d images at most: %d steps of %d; seed %d; %s)",
            datamodule.name,
            epochs,
            MAX_IMAGES,
            steps,
            BATCH_SIZE,
            seed,
            SKIP,
        )
        start = time.perf_counter()
        test = {"images": _grey_test(datamodule, splits), "labels": splits["test"]["labels"]}
        judge, acc = train_judge({"train": splits["train"], "test": test}, seed, epochs, tty=tty)
        binary = datamodule.fixed_binarization("test", test["images"].cpu())
        binary_acc = accuracy(judge, binary, test["labels"])
        seconds = time.perf_counter() - start
        log.info(
            "%s judge: test accuracy %.4f (%.4f on a fixed binarisation of the test images) after %.0f s",
            datamodule.name,
            acc,
            binary_acc,
            seconds,
        )
        state = {k: v.cpu() for k, v in judge.state_dict().items()}
        return {
            **state,
            "test_accuracy": torch.tensor(acc),
            "binarized_test_accuracy": torch.tensor(binary_acc),
        }

    required = ["test_accuracy", "binarized_test_accuracy"]
    cached, _ = load_or_build(datamodule.cache_dir, f"judge-{datamodule.name}", key, build, required)
    state = dict(cached)
    grey_acc, binary_acc = float(state.pop("test_accuracy")), float(state.pop("binarized_test_accuracy"))
    judge = blank_judge(datamodule.image_shape, outputs, multi_label)
    judge.load_state_dict(state)
    return judge.eval(), binary_acc if datamodule.binarize else grey_acc
