"""Semi-supervised fine-tuning: the whole encoder plus a linear head, trained on a class-balanced labelled subset.

The recipe is SimCLR's (Chen et al. 2020, Appendix B.5, "Semi-supervised learning via fine-tuning"):
Nesterov momentum 0.9, batch 4096, learning rate 0.05 x batch / 256 without warm-up, no regularisation
(no weight decay), random crops with left-right flips as the only augmentation, 60 epochs for 1 % of the
labels and 30 for 10 %. From the authors' code (google-research/simclr): the learning rate decays along a
cosine over ``num_examples * epochs // batch + 1`` steps (model_util.py ``learning_rate_schedule``,
``get_train_steps``), and the classifier starts at zero (``--zero_init_logits_layer=True`` in the README's
fine-tuning commands). The subsets are class-balanced: ``imagenet_subsets/1percent.txt`` holds 12 or 13
images of every class (12,811 = floor(1 % of 1,281,167)), ``10percent.txt`` 128 or 129.

Adapted to small labelled sets (``simclr_recipe``; both rules leave ImageNet's 1 % and 10 % as the paper has them):

- batch: at most the labelled images (a subset smaller than 4096 is one batch); the lr follows the batch
  by the paper's rule.
- steps: at least the paper's own for the schedule followed (188 for 1 %, 939 for 10 %: 12,811 x 60 // 4096
  + 1 and 128,116 x 30 // 4096 + 1). 60 epochs of 12 digits are 61 steps at a learning rate of 0.002, too
  few to move a zero-initialised head; the paper's number of updates is what its schedule was tuned for.

Label fractions below sqrt(1 % x 10 %) = 3.2 % follow the 1 % schedule, the others the 10 % one (SimCLR v2,
Chen et al. 2020b, fine-tunes for 30 epochs on 10 % and on all of ImageNet's labels alike).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAPER_BATCH = 4096
PAPER_LR_PER_256 = 0.05
PAPER_MOMENTUM = 0.9
IMAGENET_TRAIN = 1_281_167
# label fraction -> fine-tuning epochs (SimCLR Appendix B.5); other fractions take the nearer schedule
PAPER_EPOCHS = {0.01: 60, 0.10: 30}


def schedule_of(fraction: float) -> float:
    """The paper's label fraction whose schedule ``fraction`` follows: 1 % below 3.2 % (the geometric middle), else 10 %."""
    return 0.01 if fraction < math.sqrt(0.01 * 0.10) else 0.10


def paper_steps(fraction: float) -> int:
    """The steps of SimCLR's ImageNet fine-tuning on the schedule ``fraction`` follows (the authors' code's count:
    examples x epochs // batch + 1): 188 for 1 %, 939 for 10 %."""
    reference = schedule_of(fraction)
    return math.floor(reference * IMAGENET_TRAIN) * PAPER_EPOCHS[reference] // PAPER_BATCH + 1


@dataclass(frozen=True)
class FinetuneRecipe:
    """How a fine-tuning run trains; ``changes`` says which numbers differ from the paper's and why."""

    batch_size: int
    lr: float
    steps: int
    epochs: float
    momentum: float = PAPER_MOMENTUM
    nesterov: bool = True
    weight_decay: float = 0.0
    changes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "lr": self.lr, "steps": self.steps, "epochs": self.epochs,
                "momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay,
                "schedule": "cosine decay to 0, no warm-up", "head": "linear, zero-initialised",
                "changes": dict(self.changes)}


def simclr_recipe(labelled: int, fraction: float) -> FinetuneRecipe:
    """SimCLR's semi-supervised fine-tuning recipe for ``labelled`` images that are ``fraction`` of the training set."""
    epochs = PAPER_EPOCHS[schedule_of(fraction)]
    batch = min(PAPER_BATCH, labelled)
    changes = {}
    if batch < PAPER_BATCH:
        changes["batch_size"] = f"{labelled} labelled images: one batch of all (the paper's is {PAPER_BATCH})"
    steps = labelled * epochs // batch + 1
    if steps < paper_steps(fraction):
        changes["steps"] = (f"{epochs} epochs of {labelled} images are {steps} steps; at least the paper's "
                            f"{paper_steps(fraction)} for {schedule_of(fraction):.0%} of ImageNet's labels")
        steps = paper_steps(fraction)
    return FinetuneRecipe(
        batch_size=batch, lr=PAPER_LR_PER_256 * batch / 256, steps=steps,
        epochs=round(steps * batch / labelled, 2), changes=changes,
    )


def balanced_subset(labels: Tensor, total: int, num_classes: int, seed: int = 0) -> Tensor:
    """Indices of ``total`` labelled samples, as equal a number of each class as possible (sorted).

    Every class gets ``total // num_classes``; the remainder goes to randomly chosen classes, one each
    (SimCLR's ImageNet subsets: 12 or 13 images of each class). Which classes and which images depend only on
    ``seed``. ``ValueError`` if a class has fewer samples than its share.
    """
    if total < num_classes:
        raise ValueError(f"{total} labelled images are fewer than one per class ({num_classes} classes)")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    quota = torch.full((num_classes,), total // num_classes, dtype=torch.long)
    quota[torch.randperm(num_classes, generator=generator)[: total % num_classes]] += 1
    chosen = []
    for cls in range(num_classes):
        members = (labels == cls).nonzero().flatten()
        if len(members) < quota[cls]:
            raise ValueError(
                f"class {cls} has {len(members)} training images, fewer than the {int(quota[cls])} of a "
                f"class-balanced subset of {total}: ask for fewer labels"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[: int(quota[cls])]])
    return torch.cat(chosen).sort().values


def finetune_top1(
    encoder: nn.Module,
    feature_dim: int,
    num_classes: int,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    recipe: FinetuneRecipe,
    augment: Callable[[Tensor], Tensor],
    prepare: Callable[[Tensor], Tensor],
    seed: int = 0,
    eval_batch: int = 512,
) -> float:
    """Test top-1 of a copy of ``encoder`` fine-tuned with a linear head on (``train_images``, ``train_labels``).

    ``augment`` turns a batch of training images into the training input (random crop and flip, normalised);
    ``prepare`` turns test images into the test input (normalised). Images and labels are on the device the
    encoder is on. ``encoder`` itself is left as it was.
    """
    device = train_labels.device
    torch.manual_seed(seed)
    model = copy.deepcopy(encoder).train()
    head = nn.Linear(feature_dim, num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                weight_decay=recipe.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:  # a new epoch; the remainder is dropped, as the authors' input pipeline
            order = torch.randperm(len(train_labels), generator=generator)
        batch, order = order[: recipe.batch_size], order[recipe.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * 0.5 * (1.0 + math.cos(math.pi * step / recipe.steps))
        index = batch.to(device)
        loss = F.cross_entropy(head(model(augment(train_images[index]))), train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_labels), eval_batch):
            logits = head(model(prepare(test_images[start : start + eval_batch])))
            correct += int((logits.argmax(1) == test_labels[start : start + eval_batch]).sum())
    return correct / len(test_labels)
