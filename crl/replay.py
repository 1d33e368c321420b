"""A FIFO replay buffer of device-resident tensors, shared by the off-policy agents."""

from __future__ import annotations

from typing import Any

import torch

from crl.core import Transitions

FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "task_index")


class ReplayBuffer:
    """FIFO buffer of up to ``capacity`` transitions on ``device``; with ``reservoir=True``, once full,
    each new transition replaces a uniformly chosen slot with probability capacity/seen (reservoir
    sampling: the buffer stays a uniform sample of everything seen; CW's perfect memory).

    Storage grows by doubling up to ``capacity`` so that a 1M-transition buffer costs memory only
    for what it holds (a task's buffer is reset at every switch in Continual World).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device, *, reservoir: bool = False):
        self.obs_dim, self.act_dim, self.capacity, self.device = obs_dim, act_dim, int(capacity), device
        self.reservoir = reservoir
        self.clear()

    def clear(self) -> None:
        self.size = 0
        self.pos = 0
        self.seen = 0  # transitions ever added (reservoir sampling)
        self._alloc = 0
        self.data: dict[str, torch.Tensor] = {}
        self._grow(min(self.capacity, 1024))

    def _grow(self, alloc: int) -> None:
        shapes = {
            "obs": (self.obs_dim,), "action": (self.act_dim,), "reward": (), "next_obs": (self.obs_dim,),
            "terminated": (), "task_index": (),
        }
        new = {}
        for name, shape in shapes.items():
            dtype = torch.long if name == "task_index" else torch.float32
            t = torch.zeros((alloc, *shape), dtype=dtype, device=self.device)
            if self.size:
                t[: self.size] = self.data[name][: self.size]
            new[name] = t
        self.data, self._alloc = new, alloc

    def add(self, batch: Transitions) -> None:
        n = len(batch)
        if self.size + n > self._alloc and self._alloc < self.capacity:
            self._grow(min(self.capacity, max(2 * self._alloc, self.size + n)))
        if self.reservoir and self.size + n > self.capacity:
            self._add_reservoir(batch)
            return
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        for name in FIELDS:
            self.data[name][idx] = getattr(batch, name).to(self.data[name].dtype)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.seen += n

    def _add_reservoir(self, batch: Transitions) -> None:
        for i in range(len(batch)):  # row by row: Algorithm R needs the running count
            self.seen += 1
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                slot = int(torch.randint(0, self.seen, ()))
                if slot >= self.capacity:
                    continue
            for name in FIELDS:
                self.data[name][slot] = getattr(batch, name)[i].to(self.data[name].dtype)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)
        return {name: t[idx] for name, t in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "size": self.size, "pos": self.pos, "capacity": self.capacity, "seen": self.seen,
            "data": {k: v[: self.size].cpu() for k, v in self.data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clear()
        if state["size"]:
            self._grow(min(self.capacity, max(1024, state["size"])))
            for k, v in state["data"].items():
                self.data[k][: state["size"]] = v.to(self.device)
        self.size, self.pos, self.seen = state["size"], state["pos"], state.get("seen", state["size"])
