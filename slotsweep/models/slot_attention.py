"""The Slot Attention module (Locatello et al. 2020, Algorithm 1)."""

from __future__ import annotations

import torch
from torch import nn


class SlotAttention(nn.Module):
    """Iterative attention in which slots compete for inputs.

    Attention is normalised with a softmax over *slots* (the competition), then
    renormalised over *inputs* so each update is a weighted mean (paper Eq. 1-2).
    Slots start from a learned Gaussian. At evaluation the draw is seeded, so a
    checkpoint always gets the same score: `seeded` gives every image the same draw,
    `fresh` a different draw per image (the authors' code draws anew for every image;
    here the sequence restarts from `eval_seed` each time the module enters eval mode),
    `mean` starts every slot at mu (for learned queries).

    `slot_init` names how mu and log sigma start: `gaussian` uses xavier-uniform for
    both (google-research's Slot Attention), `authors` mu ~ N(0, 1) and log sigma ~
    U[0, 1) (the paper authors' PyTorch code), `queries` one learned vector per slot.
    """

    def __init__(
        self,
        *,
        num_slots: int,
        num_iterations: int,
        input_size: int,
        slot_size: int,
        mlp_hidden_size: int,
        epsilon: float = 1e-8,
        norm_eps: float = 1e-3,
        eval_slot_init: str = "seeded",
        eval_seed: int = 0,
        slot_init: str = "gaussian",
        implicit_grad: bool = False,
    ) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.num_iterations = num_iterations
        self.slot_size = slot_size
        self.epsilon = epsilon
        self.eval_slot_init = eval_slot_init
        self.eval_seed = eval_seed
        self.slot_init = slot_init
        self.implicit_grad = implicit_grad
        self.scale = slot_size**-0.5

        self.norm_inputs = nn.LayerNorm(input_size, eps=norm_eps)
        self.norm_slots = nn.LayerNorm(slot_size, eps=norm_eps)
        self.norm_mlp = nn.LayerNorm(slot_size, eps=norm_eps)
        self.project_q = nn.Linear(slot_size, slot_size, bias=False)
        self.project_k = nn.Linear(input_size, slot_size, bias=False)
        self.project_v = nn.Linear(input_size, slot_size, bias=False)
        self.gru = nn.GRUCell(slot_size, slot_size)
        self.mlp = nn.Sequential(
            nn.Linear(slot_size, mlp_hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden_size, slot_size),
        )
        if slot_init == "queries":  # one learned starting point per slot
            self.slots_mu = nn.Parameter(torch.empty(1, num_slots, slot_size))
            nn.init.xavier_uniform_(self.slots_mu)
        else:
            self.slots_mu = nn.Parameter(torch.empty(1, 1, slot_size))
            self.slots_log_sigma = nn.Parameter(torch.empty(1, 1, slot_size))
            if slot_init == "authors":  # sigma = exp(log sigma) in [1, e)
                nn.init.normal_(self.slots_mu)
                nn.init.uniform_(self.slots_log_sigma, 0.0, 1.0)
            else:
                nn.init.xavier_uniform_(self.slots_mu)
                nn.init.xavier_uniform_(self.slots_log_sigma)
        self._eval_noise = torch.Generator().manual_seed(eval_seed)

    def train(self, mode: bool = True) -> SlotAttention:
        """Entering eval mode restarts the `fresh` noise sequence: every evaluation pass
        over the same images draws the same noise."""
        if not mode:
            self._eval_noise.manual_seed(self.eval_seed)
        return super().train(mode)

    def initial_slots(self, batch_size: int, device: torch.device, dtype: torch.dtype):
        """Training: a fresh draw. Eval: seeded (see the class docstring). Learned queries
        are deterministic in both modes."""
        shape = (batch_size, self.num_slots, self.slot_size)
        if self.slot_init == "queries":
            return self.slots_mu.expand(shape).to(dtype)
        mu, sigma = self.slots_mu, self.slots_log_sigma.exp()
        if self.training:
            noise = torch.randn(shape, device=device, dtype=dtype)
        elif self.eval_slot_init == "mean":
            noise = torch.zeros(shape, device=device, dtype=dtype)
        elif self.eval_slot_init == "fresh":
            # One draw per image, so an image's noise does not depend on the batch size.
            draws = [torch.randn(shape[1:], generator=self._eval_noise) for _ in range(batch_size)]
            noise = torch.stack(draws).to(device, dtype)
        else:
            gen = torch.Generator().manual_seed(self.eval_seed)
            noise = torch.randn((1, *shape[1:]), generator=gen).to(device, dtype)
            noise = noise.expand(shape)
        return mu + sigma * noise

    def attention(self, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, K, N]: softmax over slots, then mean-normalised over inputs."""
        q = self.project_q(self.norm_slots(slots))  # (B, K, D)
        logits = torch.einsum("bkd,bnd->bkn", q, k) * self.scale  # (B, K, N)
        attn = logits.softmax(dim=1) + self.epsilon  # competition between slots
        return attn / attn.sum(dim=2, keepdim=True)  # weighted mean over inputs

    def step(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """One iteration: attend, aggregate, GRU update, residual MLP."""
        attn = self.attention(slots, k)  # (B, K, N)
        updates = torch.einsum("bkn,bnd->bkd", attn, v)  # (B, K, D)
        batch, num_slots, size = slots.shape
        slots = self.gru(updates.reshape(-1, size), slots.reshape(-1, size))
        slots = slots.reshape(batch, num_slots, size)
        return slots + self.mlp(self.norm_mlp(slots)), attn

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor | None = None):
        """`inputs` [B, N, input_size] → slots [B, K, slot_size], attention [B, K, N]."""
        inputs = self.norm_inputs(inputs)
        k, v = self.project_k(inputs), self.project_v(inputs)  # (B, N, D)
        if slots is None:
            slots = self.initial_slots(inputs.shape[0], inputs.device, inputs.dtype)
        init, attn = slots, None
        for i in range(self.num_iterations):
            if self.implicit_grad and i == self.num_iterations - 1:
                # Gradient through the last iteration only; the initialisation still
                # learns through a straight-through path (BO-QSA, Jia et al. 2023).
                slots = slots.detach() + init - init.detach()
            slots, attn = self.step(slots, k, v)
        return slots, attn
