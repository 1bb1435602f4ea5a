"""Exact resumption: a run killed mid-epoch and resumed from its last checkpoint ends with the weights an
uninterrupted run ends with.

Lightning restores the model, optimizer, schedulers and loop counters, but not where the data stood: its default
shuffling draws from the global generator when an epoch's iterator is made, augmentations draw from it per sample,
and the iterator restarts at the beginning of the epoch. ``TrainOrder`` makes the data order a function of
(seed, epoch) and every sample's augmentation a function of (seed, epoch, index); it is saved in checkpoints (the
datamodule's ``state_dict``) so a resumed epoch skips exactly the batches already trained on. ``ResumeRandomState``
saves the global generators in checkpoints and puts them back before the first resumed batch, for what the model
draws itself (dropout, stochastic depth).
"""

import hashlib
import random
from collections.abc import Iterator
from typing import Any
from typing import Optional

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data import Dataset
from torch.utils.data import DistributedSampler

_SEED_RANGE = 2**62


def sample_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_RANGE


class SeededSamples(Dataset[Any]):
    """A dataset whose items, asked for as ``(index, seed)``, are made with the generators seeded by ``seed``.

    The global generators are forked per item, so workers, prefetching and resumption cannot change what a sample's
    random transforms draw. Plain integer indices (a sampler Lightning put in place, e.g. for overfit_batches) pass
    through unseeded.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]

        (index, seed) = key
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)


class ResumableSampler(DistributedSampler[Any]):
    """Shuffles by (seed, epoch) on its own generator and yields ``(index, sample seed)``; can start mid-epoch.

    A DistributedSampler (one shard per rank when a process group is up), so Lightning keeps it as it is instead of
    wrapping it in another sampler.
    """

    def __init__(self, dataset: Any, seed: int, batch_size: int, shuffle: bool = True) -> None:
        if dist.is_available() and dist.is_initialized():
            (replicas, rank) = (dist.get_world_size(), dist.get_rank())
        else:
            (replicas, rank) = (1, 0)
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self._start: Optional[tuple[int, int]] = None

    def resume_at(self, epoch: int, batches: int) -> None:
        """The next iteration is epoch ``epoch`` without its first ``batches`` batches."""

        self.set_epoch(epoch)
        self._start = (epoch, batches)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        indices = list(super().__iter__())
        skip = 0
        if self._start is not None:
            (epoch, batches) = self._start
            self._start = None
            if epoch == self.epoch:
                skip = batches * self.batch_size
        for index in indices[skip:]:
            yield (index, sample_seed(self.seed, self.epoch, index))


def _shared_seed() -> int:
    """The shuffling seed: the run's seed (seed_everything sets torch's initial seed), the same on every rank."""

    seed = torch.initial_seed() % _SEED_RANGE
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [seed]
        dist.broadcast_object_list(box, src=0)
        seed = int(box[0])

    return seed


class TrainOrder:
    """The training split's order as checkpointable state; the datamodule makes its train loader through it."""

    def __init__(self) -> None:
        self.seed: Optional[int] = None
        self.sampler: Optional[ResumableSampler] = None
        self._pending: Optional[tuple[int, int]] = None

    def loader(self, dataset: Any, batch_size: int, **kwargs: Any) -> DataLoader[Any]:
        if self.seed is None:
            self.seed = _shared_seed()
        samples = SeededSamples(dataset)
        sampler = ResumableSampler(samples, seed=self.seed, batch_size=batch_size)
        if self._pending is not None:
            sampler.resume_at(*self._pending)
            self._pending = None
        self.sampler = sampler
        generator = torch.Generator().manual_seed(self.seed)  # Worker seeds never draw from the global generator
        return DataLoader(samples, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)

    def state_dict(self, trainer: Optional[pl.Trainer]) -> dict[str, Any]:
        if self.seed is None or trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {
            "seed": self.seed,
            "epoch": int(trainer.current_epoch),
            "batches": int(progress.ready),
            "epoch_batches": trainer.num_training_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "seed" not in state:
            return
        self.seed = int(state["seed"])
        (epoch, batches) = (int(state["epoch"]), int(state["batches"]))
        total = state.get("epoch_batches")
        if total is not None and total != float("inf") and batches >= int(total):
            (epoch, batches) = (epoch + 1, 0)  # Saved when the epoch had ended
        self._pending = (epoch, batches)
        if self.sampler is not None:
            self.sampler.resume_at(epoch, batches)
            self._pending = None


def _random_state() -> dict[str, Any]:
    (version, internal, gauss_next) = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next]}
    try:
        import numpy

        (kind, keys, pos, has_gauss, gauss) = numpy.random.get_state()  # type: ignore[misc]
        state["numpy"] = [
            kind,
            [int(v) for v in keys],
            int(pos),
            int(has_gauss),
            float(gauss),
        ]  # Plain: weights_only loads
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()

    return state


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    (version, internal, gauss_next) = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "numpy" in state:
        import numpy

        (kind, keys, pos, has_gauss, gauss) = state["numpy"]
        numpy.random.set_state((kind, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeRandomState(pl.Callback):
    """The global generators in every checkpoint, restored right before the first batch trained after resuming."""

    def __init__(self) -> None:
        self._pending: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        return {"random_state": _random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("random_state")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            _set_random_state(self._pending)
            self._pending = None
