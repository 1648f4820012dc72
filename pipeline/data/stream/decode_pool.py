"""Decoding batches of frames: in the training process, or in ``spawn`` worker processes that write
into a ring of ``/dev/shm`` slots.

Each worker writes its batch into one slot of a ring file that the workers keep open and the
training process keeps mapped (no pickling of pixel arrays, no fresh pages per batch): the resized
uint8 frames without augmentation (scaled to float32 by the training process, bit-identical to
decoding in-process), the float32 frames with it. The ring has one slot per batch in flight, used in
turn: a slot comes round again only after its batch was consumed (checked) or abandoned by a
restart (its task is waited for before the slot is rewritten). Workers are ``spawn`` processes: the
launching script's ``__main__`` is re-imported in them (guard it with ``if __name__ == "__main__"``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from pipeline.data.io.errors import CorruptDataError
from pipeline.data.stream.frames import decode_resize, frame_rng, process_frame

__all__ = ["decode_batch", "read_ring_slot", "DecodePool"]


def decode_batch(items: list[tuple[int, tuple[bytes, ...]]], *, size: tuple[int, int], augment: bool,
                 seed: int, epoch: int,
                 ring: tuple[str, int, int] | None = None) -> tuple[Any, list[tuple[int, int]]]:
    """Worker entry point: ``items`` = [(global position, (encoded bytes per camera))].

    Returns (pixels, bad): pixels float32 [B, C, 3, H, W] and the (item, camera) pairs whose bytes
    failed to decode (a CorruptDataError: left as zeros; any other error is raised). Randomness
    depends only on (seed, epoch, position, camera).
    With ``ring`` = (path, slot, slot_bytes) the batch is written into
    slot ``slot`` of a ring file that the worker keeps open (no new pages per batch) and
    ``pixels`` is a handle for :func:`read_ring_slot`; without augmentation the slot holds the
    resized uint8 [B, C, H, W, 3] (4x fewer bytes) and the consumer scales it to float.
    """
    if ring is not None:
        return _decode_into_ring(items, ring, size=size, augment=augment, seed=seed, epoch=epoch)
    n_cams = len(items[0][1]) if items else 0
    out = np.zeros((len(items), n_cams, 3, size[0], size[1]), dtype=np.float32)
    bad: list[tuple[int, int]] = []
    for i, (position, images) in enumerate(items):
        for c, data in enumerate(images):
            rng = frame_rng(seed, epoch, position, c) if augment else None
            try:
                if rng is None and data:  # fast path: scale + transpose straight into the output
                    pixels = decode_resize(data, size).transpose(2, 0, 1)
                    np.multiply(pixels, np.float32(1.0 / 255.0), out=out[i, c], casting="unsafe")
                else:
                    out[i, c] = process_frame(data, size, rng=rng)
            except CorruptDataError:  # corrupt image bytes: zeros, reported to the caller
                bad.append((i, c))
    return out, bad


# ring file -> open descriptor, per process (a decode worker keeps its stream's ring open). Workers
# pwrite each frame into the slot rather than mapping the ring: the tmpfs pages are then counted once
# (in the training process, which maps the ring), not once more per worker.
_RING_FDS: dict[str, int] = {}


def _ring_fd(path: str) -> int:
    fd = _RING_FDS.get(path)
    if fd is None:
        for old in _RING_FDS.values():  # one stream per worker pool: an older ring is gone
            os.close(old)
        _RING_FDS.clear()
        fd = _RING_FDS[path] = os.open(path, os.O_WRONLY)
    return fd


def _decode_into_ring(items: list[tuple[int, tuple[bytes, ...]]], ring: tuple[str, int, int], *,
                      size: tuple[int, int], augment: bool, seed: int,
                      epoch: int) -> tuple[tuple, list[tuple[int, int]]]:
    path, slot, slot_bytes = ring
    n_cams = len(items[0][1]) if items else 0
    if augment:  # color augmentation is float: the slot holds the final float32 [B, C, 3, H, W]
        frame_shape, dtype = (3, size[0], size[1]), np.dtype(np.float32)
    else:  # resized uint8, HWC as decoded
        frame_shape, dtype = (size[0], size[1], 3), np.dtype(np.uint8)
    frame_bytes = int(np.prod(frame_shape)) * dtype.itemsize
    if len(items) * n_cams * frame_bytes > slot_bytes:
        raise ValueError(f"ring slot of {slot_bytes} bytes is too small for {len(items)}x{n_cams} frames "
                         f"of shape {frame_shape}")
    fd, zeros = _ring_fd(path), np.zeros(frame_shape, dtype=dtype)
    bad: list[tuple[int, int]] = []
    for i, (position, images) in enumerate(items):
        for c, data in enumerate(images):
            try:
                if augment:
                    frame = process_frame(data, size, rng=frame_rng(seed, epoch, position, c))
                else:
                    frame = decode_resize(data, size) if data else zeros
            except CorruptDataError:  # corrupt image bytes: zeros (the slot holds an older batch), reported
                frame = zeros
                bad.append((i, c))
            frame = np.ascontiguousarray(frame, dtype=dtype)
            offset = slot * slot_bytes + (i * n_cams + c) * frame_bytes
            if os.pwrite(fd, frame, offset) != frame_bytes:
                raise OSError(f"{path}: short write into ring slot {slot}")
    return ("ring", slot, (len(items), n_cams, *frame_shape), dtype.str), bad


def read_ring_slot(buffer: Any, handle: tuple, slot_bytes: int) -> np.ndarray:
    """float32 [B, C, 3, H, W] in [0, 1] (a new array) from a ring slot written by :func:`decode_batch`.

    Bit-identical to the in-memory path: uint8 slots are scaled by float32(1/255) as it does.
    """
    _, slot, shape, dtype = handle
    src = np.frombuffer(buffer, dtype=np.dtype(dtype), count=int(np.prod(shape)),
                        offset=slot * slot_bytes).reshape(shape)
    if src.dtype != np.uint8:
        return src.copy()
    b, c, h, w, _ = shape
    out = np.empty((b, c, 3, h, w), dtype=np.float32)
    np.multiply(src.transpose(0, 1, 4, 2, 3), np.float32(1.0 / 255.0), out=out, casting="unsafe")
    return out


class DecodePool:
    """Decodes batches of ``items`` = [(global position, (encoded bytes per camera))] to float32
    [B, C, 3, H, W]: in this process (``workers=0``) or in ``workers`` processes writing into a ring
    of ``slots`` /dev/shm slots (``slots`` = the most batches ever in flight)."""

    def __init__(self, *, workers: int, slots: int, batch_size: int, cameras: int, size: tuple[int, int],
                 augment: bool, seed: int) -> None:
        self._workers, self._slots, self._batch_size, self._cameras = workers, slots, batch_size, cameras
        self._size, self._augment, self._seed = size, augment, seed
        self._pool: Any = None
        self._shm_dir: str | None = None
        self._ring: Any = None  # (path, mmap, slots, slot_bytes)
        self._ring_next = 0
        self._ring_tasks: dict[int, tuple[Any, int]] = {}  # slot -> (unconsumed task, generation)
        self._generation = 0

    def worker_pids(self) -> list[int]:
        """Process ids of the decode workers (none before the first batch, or with ``workers=0``)."""
        return [p.pid for p in self._pool._pool] if self._pool is not None else []

    def restart(self) -> None:
        """Batches submitted so far will not be consumed: their slots may be reused (once their tasks end)."""
        self._generation += 1

    def submit(self, items: list[tuple[int, tuple[bytes, ...]]], epoch: int) -> Any:
        """Start decoding one batch; returns a handle for :meth:`result`."""
        kwargs = {"size": self._size, "augment": self._augment, "seed": self._seed, "epoch": epoch}
        if self._workers == 0:
            return decode_batch(items, **kwargs)
        if self._pool is None:
            import multiprocessing as mp
            import tempfile

            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._shm_dir = tempfile.mkdtemp(prefix="vla-stream-", dir=shm)
            self._pool = mp.get_context("spawn").Pool(self._workers)
        ring = self._ring_slot()
        task = self._pool.apply_async(decode_batch, (items,), {**kwargs, "ring": ring})
        self._ring_tasks[ring[1]] = (task, self._generation)
        return task

    def result(self, handle: Any) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """(pixels float32 [B, C, 3, H, W], the (item, camera) pairs whose bytes failed to decode)."""
        pixels, bad = handle if isinstance(handle, tuple) else handle.get()
        if isinstance(pixels, tuple) and pixels[0] == "ring":
            self._ring_tasks.pop(pixels[1], None)  # consumed: the slot may be rewritten
            pixels = read_ring_slot(self._ring[1], pixels, self._ring[3])
        return pixels, bad

    def _ring_slot(self) -> tuple[str, int, int]:
        """(ring path, free slot, slot bytes); creates the ring on first use."""
        if self._ring is None:
            import mmap

            height, width = self._size
            item = 4 if self._augment else 1  # float32 frames with augmentation, uint8 without
            slot_bytes = -(-self._batch_size * self._cameras * 3 * height * width * item // 4096) * 4096
            path = os.path.join(self._shm_dir, "ring")
            with open(path, "w+b") as f:
                f.truncate(self._slots * slot_bytes)
                self._ring = (path, mmap.mmap(f.fileno(), 0), self._slots, slot_bytes)
        path, _, slots, slot_bytes = self._ring
        slot = self._ring_next % slots
        self._ring_next += 1
        previous = self._ring_tasks.pop(slot, None)
        if previous is not None:  # a batch abandoned by a restart: let its task finish first
            if previous[1] == self._generation:
                raise RuntimeError(f"stream bug: ring slot {slot} reused before its batch was consumed")
            previous[0].wait()
        return path, slot, slot_bytes

    def close(self) -> None:
        """Stop the workers and remove the ring (safe to call twice)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        self._ring_tasks.clear()
        if self._ring is not None:
            try:
                self._ring[1].close()
            except BufferError:  # a caller still holds a view (never the batches: they are copies)
                pass
            self._ring = None
        if self._shm_dir is not None:
            import shutil

            shutil.rmtree(self._shm_dir, ignore_errors=True)  # batches decoded but never consumed
            self._shm_dir = None
