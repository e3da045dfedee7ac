"""A two-phase toy recipe for trainer tests: phase "fit" regresses a target, "aux" (twice a step) follows it."""

import torch
from torch import nn

from gendistill.recipe import Loss, Phase


class ToyRecipe:
    def __init__(self, blow_up_at: int | None = None):
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        self.aux = nn.Linear(4, 2)
        self.target = nn.Linear(4, 2).requires_grad_(False)
        self.blow_up_at = blow_up_at

    def phases(self):
        return [Phase("fit", list(self.student.parameters())), Phase("aux", list(self.aux.parameters()), 2)]

    def modules(self):
        return {"student": self.student, "aux": self.aux, "target": self.target}

    def ema_module(self):
        return "student"

    def after_update(self, update):
        self.updates = getattr(self, "updates", 0) + 1

    def loss(self, batch, phase, step, generator):
        noise = 0.01 * torch.randn(batch.shape[0], 2, generator=generator)
        if phase == "fit":
            loss = (self.student(batch) - self.target(batch) - noise).pow(2).mean()
        else:
            loss = (self.aux(batch) - self.student(batch).detach()).pow(2).mean()
        if self.blow_up_at is not None and step + 1 >= self.blow_up_at:
            loss = loss * float("nan")
        return Loss(loss, {"mse": loss.item()})


def toy_batch(step, generator):
    return torch.randn(8, 4, generator=generator)
