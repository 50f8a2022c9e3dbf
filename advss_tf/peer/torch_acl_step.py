"""ACL's pretraining step in PyTorch, as `train_simCLR.py --ACL_DS` runs it (VITA-Group/Adversarial-Contrastive-
Learning at 399eabd), written from their code for side-by-side benchmarks and cross-framework checks.

    net = torch_acl_resnet.build_torch_acl_resnet18()
    step = torch_acl_step.AclStep(net, steps_per_epoch=98)
    loss = step(torch_acl_step.stack_views(view1, view2))     # one iteration of their train loop, data loading aside

Where each part comes from (file:line at 399eabd):

- inputs: `CustomCIFAR10.__getitem__` stacks the two views of an image (`data/cifar10.py:20-22`) and the loop
  flattens the batch to [2n, C, H, W] (`train_simCLR.py:212-214`), so rows 2i and 2i+1 are image i's two views
  (`stack_views`).
- the learning rate: `scheduler.step()` first, every iteration (`train_simCLR.py:210`): a `LambdaLR` of
  `cosine_annealing(step, epochs·len(loader), 1, 1e-6/lr, warmup_steps=10·len(loader))` (`:34-42`, `:132-139`).
- the attack: `PGD_contrastive(model, inputs, iters=args.pgd_iter)` (`:220`, `--pgd_iter` 5 at `:30`): δ uniform in
  [−ε, ε], not clipped before the first step (`:353`); per step `model.eval()(inputs + δ, 'pgd')` (`:366`),
  `model.zero_grad()`, NT-Xent, `backward()` (`:370-372`) — a backward that also fills every weight's `.grad`, as
  their parameters keep `requires_grad` — then δ += α·sign(∇δ), clipped to [−ε, ε] and to x + δ ∈ [0, 1]
  (`:375-378`); returns (x + δ).detach() (`:385`). ε = 8/255, α = 2/255 (`:351`).
- the loss: `model.train()(inputs_adv, 'pgd')`, then `model.train()(inputs, 'normal')`, (NT-Xent(clean) +
  NT-Xent(adv)) / 2 (`:221-223`); NT-Xent with τ = 0.5 (`utils.py:238-249`) on cosine similarities whose norm product
  is clamped at 1e-8 (`utils.py:233-235`), minus exp(1/τ) for the self-similarity.
- the update: `optimizer.zero_grad()`, `loss.backward()`, `optimizer.step()` (`train_simCLR.py:225-227`); LARS
  (`optimizer/lars.py:47-107`) with lr 5.0 (`train_simCLR.py:26`), weight decay 1e-6 (`:122`), momentum 0.9 and η
  1e-3 (`lars.py:29-30`), on every parameter; then the loss is read back as a float (`:229`).

PyTorch is imported by this module only (and by torch_acl_resnet, whose network it trains).
"""

from __future__ import annotations

import math
import warnings

import torch

from advss_tf.peer.torch_acl_resnet import AclResNet

EPSILON = 8.0 / 255.0  # train_simCLR.py:351
STEP_SIZE = 2.0 / 255.0  # train_simCLR.py:351
PGD_STEPS = 5  # train_simCLR.py:30 (--pgd_iter)
TEMPERATURE = 0.5  # utils.py:238
LEARNING_RATE = 5.0  # train_simCLR.py:26
WEIGHT_DECAY = 1e-6  # train_simCLR.py:122
MOMENTUM = 0.9  # optimizer/lars.py:29
TRUST_COEFFICIENT = 1e-3  # optimizer/lars.py:30 (eta)
EPOCHS = 1000  # train_simCLR.py:21
WARMUP_EPOCHS = 10  # train_simCLR.py:138
FINAL_LR = 1e-6  # train_simCLR.py:137 (1e-6 / lr as a factor of lr)


def stack_views(view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
    """[n, C, H, W] twice → [2n, C, H, W] with image i's views at rows 2i and 2i+1 (ACL's batch layout)."""
    return torch.stack([view1, view2], dim=1).flatten(0, 1)


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """ACL's NT-Xent over rows paired (2i, 2i+1): the mean over the 2n anchors of
    −log(e^{s⁺/τ} / (Σ_k e^{s_k/τ} − e^{1/τ})), s the cosine similarity (utils.py:233-249)."""
    norms = z.norm(p=2, dim=1, keepdim=True)
    sims = torch.exp((z @ z.t()) / (norms * norms.t()).clamp(min=1e-8) / temperature)
    partner = torch.arange(z.shape[0]) ^ 1  # 2i ↔ 2i+1
    sims = sims[partner]  # each anchor's positive onto the diagonal, as their index shuffle
    positive = sims.diagonal()
    return -torch.log(positive / (sims.sum(0) - math.exp(1.0 / temperature))).mean()


def pgd_contrastive(
    net: AclResNet,
    inputs: torch.Tensor,
    *,
    eps: float = EPSILON,
    step_size: float = STEP_SIZE,
    steps: int = PGD_STEPS,
    temperature: float = TEMPERATURE,
) -> torch.Tensor:
    """ACL's `PGD_contrastive` (train_simCLR.py:351-385, singleImg=False, sameBN=False): both views of every image
    moved jointly to raise NT-Xent, in eval mode through the 'pgd' BatchNorms."""
    delta = torch.nn.Parameter(torch.rand_like(inputs) * 2 * eps - eps)
    for _ in range(steps):
        features = net.eval()(inputs + delta, "pgd")
        net.zero_grad()
        nt_xent(features, temperature).backward()  # the weights' .grad are filled too, as in their loop
        with torch.no_grad():
            moved = (delta + step_size * delta.grad.sign()).clamp(-eps, eps)
            delta.copy_((inputs + moved).clamp(0, 1) - inputs)
        delta.grad = None
    return (inputs + delta).detach()


class Lars(torch.optim.Optimizer):
    """ACL's LARS (optimizer/lars.py): per tensor, trust = η‖w‖ / (‖g‖ + β‖w‖) (1 where either norm is below 1e-15),
    buf ← m·buf + lr·trust·(g + βw), w ← w − buf."""

    def __init__(
        self,
        params,
        lr: float = LEARNING_RATE,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
        eta: float = TRUST_COEFFICIENT,
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        del closure  # their step takes one and ignores it for ACL
        for group in self.param_groups:
            lr, momentum, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                trust = eta * w_norm / (g_norm + wd * w_norm)
                trust = torch.where((w_norm < 1e-15) | (g_norm < 1e-15), torch.ones_like(trust), trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(lr * trust * (p.grad + wd * p))
                p.sub_(buf)


def cosine_annealing(step: int, total_steps: int, lr_max: float, lr_min: float, warmup_steps: int = 0) -> float:
    """ACL's schedule (train_simCLR.py:34-42): linear from 0 over the warm-up, then cosine from lr_max to lr_min."""
    if step < warmup_steps:
        return lr_max * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return lr_min + (lr_max - lr_min) * 0.5 * (1 + math.cos(progress * math.pi))


class AclStep:
    """One iteration of ACL's training loop (`train` in train_simCLR.py:198-229, `--ACL_DS`) on a stacked batch.

    Args:
      net: ACL's network (torch_acl_resnet.AclResNet) with the routes 'normal' and 'pgd'.
      steps_per_epoch: their `len(train_loader)`, which sizes the schedule (CIFAR-10 at batch 512: 98).
      pgd_steps, eps, step_size, temperature, learning_rate, epochs: their defaults unless given.
    """

    def __init__(
        self,
        net: AclResNet,
        *,
        steps_per_epoch: int,
        pgd_steps: int = PGD_STEPS,
        eps: float = EPSILON,
        step_size: float = STEP_SIZE,
        temperature: float = TEMPERATURE,
        learning_rate: float = LEARNING_RATE,
        epochs: int = EPOCHS,
    ):
        self.net = net
        self.attack = dict(eps=eps, step_size=step_size, steps=pgd_steps, temperature=temperature)
        self.temperature = temperature
        self.optimizer = Lars(net.parameters(), lr=learning_rate)
        total, warmup = epochs * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: cosine_annealing(s, total, 1.0, FINAL_LR / learning_rate, warmup),  # a factor of lr
        )

    def losses(self, inputs: torch.Tensor, inputs_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, clean NT-Xent, adversarial NT-Xent), train-mode BatchNorm, adversarial forward first (:221-223)."""
        adv = nt_xent(self.net.train()(inputs_adv, "pgd"), self.temperature)
        clean = nt_xent(self.net.train()(inputs, "normal"), self.temperature)
        return (clean + adv) / 2, clean, adv

    def __call__(self, inputs: torch.Tensor) -> float:
        """Schedule, attack, loss, update on `inputs` [2n, C, H, W] (stack_views); returns the loss."""
        with warnings.catch_warnings():
            # Their order (train_simCLR.py:210, before the update at :227), which PyTorch warns about on the first
            # call: the schedule's value at step 0 is skipped, in their runs as here.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        inputs_adv = pgd_contrastive(self.net, inputs, **self.attack)
        loss, _, _ = self.losses(inputs, inputs_adv)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach().cpu())


__all__ = ["AclStep", "Lars", "cosine_annealing", "nt_xent", "pgd_contrastive", "stack_views"]
