"""Which image fills each position of a training stream: endless shuffled epochs, optionally
grouped by orientation (Detectron2's ``ASPECT_RATIO_GROUPING``, on in the authors' configs).

A stream is a function of ``(seed, stream, position)``, so any iteration's batch can be
rebuilt without replaying the ones before it in the data loader (exact resume, workers in any
order). Grouping needs the bucket state, so :class:`GroupedStream` computes it epoch by epoch
from the start (vectorised: a few milliseconds per 100k images) and keeps the result.
"""

from __future__ import annotations

import numpy as np


class ShuffledStream:
    """Position p -> image ``permutation(p // count)[p % count]``, a new permutation of the
    ``count`` images per epoch, drawn from ``(seed, stream, epoch)``."""

    def __init__(self, count: int, seed: int, stream: int) -> None:
        if count < 1:
            raise ValueError(f"a stream needs at least one image, got {count}")
        self.count = count
        self.seed = seed
        self.stream = stream
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 4:
                self._permutations.clear()
            rng = np.random.default_rng([self.seed, self.stream, epoch])
            self._permutations[epoch] = rng.permutation(self.count)
        return self._permutations[epoch]

    def index_at(self, position: int) -> int:
        return int(self.permutation(position // self.count)[position % self.count])


class GroupedStream:
    """Positions in chunks of ``chunk`` (one process's batch), each chunk's images of one
    orientation: the shuffled stream's images go, in order, into a bucket per orientation
    (landscape, ``width > height``, or not), and a bucket that holds ``chunk`` images is
    emitted as the next chunk and emptied; what is left in the buckets at an epoch's end carries
    into the next. This is Detectron2's ``AspectRatioGroupedDataset`` over its endless
    ``TrainingSampler``, with the chunks of every process taken from one stream in turn.

    Args:
        shuffled: the stream to group.
        landscape: (count,) bool, per image.
        chunk: images per chunk (>= 1; 1 gives the shuffled stream itself).
    """

    def __init__(self, shuffled: ShuffledStream, landscape: np.ndarray, chunk: int) -> None:
        landscape = np.asarray(landscape, dtype=bool)
        if landscape.shape != (shuffled.count,):
            raise ValueError(
                f"landscape must hold one flag per image ({shuffled.count}), got shape "
                f"{landscape.shape}"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.shuffled = shuffled
        self.landscape = landscape
        self.chunk = chunk
        self._order = np.zeros(0, dtype=np.int64)  # emitted chunks, concatenated
        self._buckets = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]
        self._epochs = 0

    def index_at(self, position: int) -> int:
        while position >= len(self._order):
            self._group_next_epoch()
        return int(self._order[position])

    def _group_next_epoch(self) -> None:
        order = self.shuffled.permutation(self._epochs)
        self._epochs += 1
        wide = self.landscape[order]
        chunks, completed_at = [], []
        for side in (0, 1):  # 0: not landscape, 1: landscape
            at = np.flatnonzero(wide == bool(side))
            carried = self._buckets[side]
            members = np.concatenate([carried, order[at]])
            # carried images arrived before this epoch (position -1)
            arrival = np.concatenate([np.full(len(carried), -1), at])
            full = len(members) // self.chunk * self.chunk
            chunks.append(members[:full].reshape(-1, self.chunk))
            completed_at.append(arrival[self.chunk - 1 : full : self.chunk])
            self._buckets[side] = members[full:]
        # a chunk is emitted when its last image arrives
        emitted = np.concatenate(chunks)[np.argsort(np.concatenate(completed_at), kind="stable")]
        self._order = np.concatenate([self._order, emitted.reshape(-1)])
