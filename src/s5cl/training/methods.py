"""The methods the sweep compares, as objectives that the one training loop (loop.py) calls.

Every method sees the same batches (m-per-class labeled, a stream of unlabeled), the same weak
and strong views and the same network; only what a step minimises differs:

    method    warmup           s5cl and retrain phases
    ce        CE               CE                                    labeled only
    supcon    SupCon_l + CE    SupCon_l + CE                         labeled only
    s5cl      SupCon_l + CE    + SupCon_u on instance ids (s5cl), on kept pseudo-labels (retrain)
    fixmatch  CE               CE + w * CE(strong_u, argmax weak_u) where confident  (Sohn 2020)
    mpl       CE               Meta Pseudo Labels: a teacher labels, the student (the model)
                               learns; the teacher learns from the student's progress (Pham 2021)

`x` below is always the normalised views of one step: labeled weak, labeled strong, then (for
methods that use them) unlabeled weak, unlabeled strong; B_l labeled and B_u unlabeled images.
Under torchrun these are one rank's shard of the global batch: objectives run their networks
through `self.net` (DDP, see distributed.py), SupCon gathers the views of every rank, and
per-rank means (CE, MPL's h) average to the global ones.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from s5cl.config.params import Method, Params, SupervisedParams
from s5cl.config.phases import Phase
from s5cl.model.network import S5CLNet
from s5cl.training import distributed
from s5cl.training.losses import S5CLLoss

METHODS = typing.get_args(Method)  # the names params.yaml accepts (config.params)


def optimizer_for(model: S5CLNet, cfg: SupervisedParams) -> torch.optim.Optimizer:
    """Adamax over what the model trains (frozen encoder parts get no state)."""
    groups = model.optimizer_groups(cfg.lr)
    return torch.optim.Adamax(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def update_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, what: str, step: int) -> None:
    if not distributed.all_finite(loss):  # on every rank, so all ranks stop together
        raise FloatingPointError(f"{what} is {loss.item()} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# ---------------------------------------------------------------- S5CL, SupCon, CE


@dataclass
class UnlabeledTargets:
    """What S5CL pulls the unlabeled images towards."""

    mode: str  # "instance" | "pseudo" | "online"
    instance_tau: float  # tau_u, w_u: for instance ids
    instance_weight: float
    tau: float  # tau_p, w_p: for pseudo-labels
    weight: float
    pseudo: np.ndarray | None = None  # per unlabeled position: class id, or -1 if not kept
    switch_step: int | None = None  # mode "online": instance ids until this step


def targets_of_phase(
    phase: Phase, params: Params, pseudo: np.ndarray | None = None
) -> UnlabeledTargets | None:
    """What S5CL pulls the unlabeled images towards in `phase` (None: no unlabeled term).
    `pseudo`: per unlabeled position, the kept pseudo-label or -1 (the retrain phase's)."""
    if phase.unlabeled == "none":
        return None
    cfg = phase.config(params)  # s5cl's section, or retrain's over it
    weights = (cfg.tau_u, cfg.w_u, cfg.tau_p, cfg.w_p)
    if phase.unlabeled == "instance":
        mode = "instance" if cfg.switch_step is None else "online"
        return UnlabeledTargets(mode, *weights, switch_step=cfg.switch_step)
    if pseudo is None:
        raise ValueError(f"the {phase.name} phase trains on pseudo-labels: pass them")
    return UnlabeledTargets("pseudo", *weights, pseudo=pseudo)


def batch_targets(
    targets: UnlabeledTargets, positions: np.ndarray, step: int, num_classes: int, device
) -> tuple[torch.Tensor | None, float, float]:
    """Targets of one unlabeled batch and the (tau, weight) of their SupCon term.

    An image's instance id is its position in the unlabeled set (unique within a global batch,
    whichever rank holds it), offset by num_classes so it never collides with a class id.
    Returns None targets for the online mode after its switch: the step computes them from the
    classifier.
    """
    instance = torch.from_numpy(positions).to(device) + num_classes
    if targets.mode == "pseudo":
        pseudo = torch.from_numpy(targets.pseudo[positions]).to(device)
        return torch.where(pseudo >= 0, pseudo, instance), targets.tau, targets.weight
    if targets.mode == "online" and step >= (targets.switch_step or 0):
        return None, targets.tau, targets.weight
    return instance, targets.instance_tau, targets.instance_weight


def step_loss(
    model: S5CLNet | torch.nn.Module,
    x: torch.Tensor,
    y_l: torch.Tensor,
    y_u: torch.Tensor | None,
    loss_fn: S5CLLoss,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """One forward pass over all views and the S5CL loss.

    model: the S5CLNet, or DDP around it. x: (2 B_l [+ 2 B_u]) x 3 x H x W. y_l: B_l labels.
    y_u: B_u targets; None with unlabeled views means "the classifier's argmax on the weak
    views" (the paper's online pseudo-labels).
    Returns (loss, its parts, classifier logits of the labeled weak views).
    """
    n_l = len(y_l)
    emb, logits = model(x, classify=n_l)  # logits: CE on the weak views of labeled images
    emb_l, emb_u = emb[: 2 * n_l], emb[2 * n_l :]
    if len(emb_u) == 0:
        loss, parts = loss_fn(emb_l, y_l, logits)
        return loss, parts, logits
    if y_u is None:
        classifier = getattr(model, "module", model).classifier  # DDP keeps the net in .module
        with torch.no_grad():
            y_u = classifier(emb_u[: len(emb_u) // 2]).argmax(1)
    loss, parts = loss_fn(emb_l, y_l, logits, emb_u, y_u)
    return loss, parts, logits


class _OneOptimizer:
    """An objective that updates the model with one optimizer: its state (for checkpoints),
    and what its steps call (`net`: the model, or DDP around it under torchrun)."""

    model: S5CLNet
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def networks(self) -> list[S5CLNet]:
        """The networks it trains: the device runs them as params.compute says."""
        return [self.model]

    def distribute(self) -> None:
        """Under torchrun: DDP and global BatchNorm around the model (no-op alone)."""
        self.net = distributed.data_parallel(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def carried_state(self) -> dict[str, Any]:
        """What the next phase continues besides the model's weights: nothing here."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class ContrastiveObjective(_OneOptimizer):
    """S5CL's hierarchy of SupCon losses + CE; with w_l = 0 and no targets it is plain CE."""

    def __init__(
        self,
        model: S5CLNet,
        cfg: SupervisedParams,
        w_l: float,
        num_classes: int,
        targets: UnlabeledTargets | None = None,
    ):
        self.model, self.cfg, self.w_l, self.num_classes = model, cfg, w_l, num_classes
        self.targets = targets
        self.uses_unlabeled = targets is not None
        self.optimizer = optimizer_for(model, cfg)
        self.net = model

    def update(
        self, x: torch.Tensor, y_l: torch.Tensor, pos_u: np.ndarray | None, step: int
    ) -> tuple[dict[str, float], torch.Tensor]:
        cfg, y_u = self.cfg, None
        loss_fn = S5CLLoss(cfg.tau_l, self.w_l, cfg.w_c)
        if self.targets is not None:
            y_u, tau, weight = batch_targets(self.targets, pos_u, step, self.num_classes, x.device)
            loss_fn = S5CLLoss(cfg.tau_l, self.w_l, cfg.w_c, tau, weight)
        loss, parts, logits = step_loss(self.net, x, y_l, y_u, loss_fn)
        update_step(self.optimizer, loss, "the loss", step)
        return parts, logits


# ---------------------------------------------------------------- FixMatch


def fixmatch_loss(
    logits_l: torch.Tensor,
    y_l: torch.Tensor,
    logits_u_weak: torch.Tensor,
    logits_u_strong: torch.Tensor,
    threshold: float,
    weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CE(labeled) + weight * mean_u[ mask * CE(strong_u, argmax weak_u) ].

    logits_l: B_l x C (weak labeled views); y_l: B_l; logits_u_weak, logits_u_strong: B_u x C.
    mask = max softmax(weak) >= threshold. The weak view only makes targets (no gradient);
    the mean runs over all B_u images, so unconfident ones dilute the term, as in the paper.
    """
    if logits_u_weak.shape != logits_u_strong.shape:
        raise ValueError(
            f"weak {tuple(logits_u_weak.shape)} and strong {tuple(logits_u_strong.shape)} "
            "logits must have the same shape"
        )
    loss_c = F.cross_entropy(logits_l, y_l)
    confidence, pseudo = logits_u_weak.detach().softmax(1).max(1)
    mask = (confidence >= threshold).float()
    loss_u = (F.cross_entropy(logits_u_strong, pseudo, reduction="none") * mask).mean()
    total = loss_c + weight * loss_u
    parts = {
        "loss_c": loss_c.item(),
        "loss_u": loss_u.item(),
        "mask_rate": mask.mean().item(),
        "loss": total.item(),
    }
    return total, parts


class FixMatchObjective(_OneOptimizer):
    uses_unlabeled = True

    def __init__(self, model: S5CLNet, cfg: SupervisedParams, threshold: float, weight: float):
        self.model, self.threshold, self.weight = model, threshold, weight
        self.optimizer = optimizer_for(model, cfg)
        self.net = model

    def update(
        self, x: torch.Tensor, y_l: torch.Tensor, pos_u: np.ndarray | None, step: int
    ) -> tuple[dict[str, float], torch.Tensor]:
        n_l = len(y_l)
        logits = self.net(x)
        logits_l = logits[:n_l]
        weak_u, strong_u = logits[2 * n_l :].chunk(2)
        loss, parts = fixmatch_loss(logits_l, y_l, weak_u, strong_u, self.threshold, self.weight)
        update_step(self.optimizer, loss, "the FixMatch loss", step)
        return parts, logits_l


# ---------------------------------------------------------------- Meta Pseudo Labels


def mpl_teacher_loss(
    t_logits_l: torch.Tensor,
    y_l: torch.Tensor,
    t_logits_u_strong: torch.Tensor,
    pseudo: torch.Tensor,
    h: float,
) -> torch.Tensor:
    """CE(teacher on labeled) + h * CE(teacher on strong unlabeled, the labels it gave).

    h = student's labeled loss before minus after its step on the teacher's pseudo-labels (the
    first-order estimate of the meta gradient). h > 0 (the labels helped) makes the teacher more
    sure of them; h < 0 makes it less sure. t_logits_l: B_l x C; t_logits_u_strong: B_u x C.
    """
    return F.cross_entropy(t_logits_l, y_l) + h * F.cross_entropy(t_logits_u_strong, pseudo)


class MPLObjective:
    """The model is the student; the teacher starts as a copy of it (the warm-up model)."""

    uses_unlabeled = True

    def __init__(self, student: S5CLNet, teacher: S5CLNet, cfg: SupervisedParams):
        self.model, self.teacher = student, teacher
        self.optimizer = optimizer_for(student, cfg)
        self.teacher_optimizer = optimizer_for(teacher, cfg)
        self.net, self.teacher_net = student, teacher  # what the steps call

    def networks(self) -> list[S5CLNet]:
        return [self.model, self.teacher]

    def distribute(self) -> None:
        """Under torchrun: DDP and global BatchNorm around student and teacher."""
        self.net = distributed.data_parallel(self.model)
        self.teacher_net = distributed.data_parallel(self.teacher)

    def update(
        self, x: torch.Tensor, y_l: torch.Tensor, pos_u: np.ndarray | None, step: int
    ) -> tuple[dict[str, float], torch.Tensor]:
        n_l = len(y_l)
        x_l = x[:n_l]
        x_u_weak, x_u_strong = x[2 * n_l :].chunk(2)
        n_u = len(x_u_weak)
        self.teacher.train()

        t_logits = self.teacher_net(torch.cat([x_l, x_u_weak, x_u_strong]))
        t_logits_l, t_logits_u_weak, t_logits_u_strong = t_logits.split([n_l, n_u, n_u])
        pseudo = t_logits_u_weak.detach().argmax(1)

        s_logits = self.net(torch.cat([x_l, x_u_strong]))
        s_logits_l, s_logits_u = s_logits.split([n_l, n_u])
        s_loss_l_before = F.cross_entropy(s_logits_l.detach(), y_l)
        s_loss = F.cross_entropy(s_logits_u, pseudo)
        update_step(self.optimizer, s_loss, "the MPL student's loss", step)
        with torch.no_grad():
            s_loss_l_after = F.cross_entropy(self.net(x_l), y_l)
        h = distributed.mean({"h": (s_loss_l_before - s_loss_l_after).item()})["h"]  # global

        t_loss = mpl_teacher_loss(t_logits_l, y_l, t_logits_u_strong, pseudo, h)
        update_step(self.teacher_optimizer, t_loss, "the MPL teacher's loss", step)
        parts = {
            "loss": s_loss.item(),
            "loss_teacher": t_loss.item(),
            "h": h,
            "teacher_acc": float((t_logits_l.argmax(1) == y_l).float().mean()),
        }
        return parts, s_logits_l.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()},
            "teacher_optimizer": self.teacher_optimizer.state_dict(),
        }

    def carried_state(self) -> dict[str, Any]:
        """The teacher's weights: the next phase's teacher continues from them."""
        return {"teacher": self.state_dict()["teacher"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])


# ---------------------------------------------------------------- which objective when

Objective = ContrastiveObjective | FixMatchObjective | MPLObjective


def make_objective(
    phase: Phase,
    model: S5CLNet,
    params: Params,
    num_classes: int,
    targets: UnlabeledTargets | None = None,
    teacher_state: dict[str, torch.Tensor] | None = None,
) -> Objective:
    """The objective of `params.method` in `phase` (the stage table's; a phase without
    unlabeled targets is a warm-up): see the table at the top. `targets` are S5CL's unlabeled
    targets; `teacher_state` continues an MPL teacher (None: it starts as a copy of the
    model)."""
    method, warmup = params.method, phase.unlabeled == "none"
    cfg = phase.config(params)
    if method == "supcon" or (method == "s5cl" and warmup):
        return ContrastiveObjective(model, cfg, cfg.w_l, num_classes)
    if method == "ce" or warmup:
        return ContrastiveObjective(model, cfg, 0.0, num_classes)
    if method == "s5cl":
        return ContrastiveObjective(model, cfg, cfg.w_l, num_classes, targets)
    if method == "fixmatch":
        return FixMatchObjective(model, cfg, params.fixmatch.threshold, params.fixmatch.weight)
    if method == "mpl":
        teacher = copy.deepcopy(model)
        if teacher_state is not None:
            teacher.load_state_dict(teacher_state)
        return MPLObjective(model, teacher, cfg)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
