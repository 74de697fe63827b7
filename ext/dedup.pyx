# cython: language_level=3
"""A bounded set of recently seen 64-bit transaction ids, for idempotent workers.

Linear probing over a power-of-two table at most half full, with backward-shift deletion (no
tombstones), and a FIFO ring of ids in insertion order: when the set holds `capacity` ids, adding
one forgets the oldest. Memory: 24 bytes per remembered id. Every loop terminates: the table
always has empty slots.
"""
import numpy as np
from libc.stdint cimport uint8_t, uint64_t


cdef inline uint64_t mix(uint64_t x) noexcept nogil:
    x += <uint64_t>0x9E3779B97F4A7C15
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EB
    return x ^ (x >> 31)


cdef class SeenSet:
    cdef uint64_t[::1] slots   # the ids; `used` says which slots hold one
    cdef uint8_t[::1] used
    cdef uint64_t[::1] ring    # ids in insertion order
    cdef Py_ssize_t mask, head, count
    cdef readonly Py_ssize_t capacity

    def __cinit__(self, Py_ssize_t capacity=1 << 20):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        cdef Py_ssize_t size = 2
        while size < 2 * capacity:
            size <<= 1
        self.capacity = capacity
        self.slots = np.zeros(size, dtype=np.uint64)
        self.used = np.zeros(size, dtype=np.uint8)
        self.ring = np.zeros(capacity, dtype=np.uint64)
        self.mask = size - 1
        self.head = 0
        self.count = 0

    def __len__(self):
        return self.count

    def ids(self):
        """The remembered ids, oldest first (a copy): check_and_add of them into an empty set of
        the same capacity rebuilds this one, so a snapshot needs only this array."""
        cdef Py_ssize_t start = (self.head - self.count) % self.capacity
        order = (start + np.arange(self.count)) % self.capacity
        return np.asarray(self.ring)[order].copy()

    cdef inline Py_ssize_t _find(self, uint64_t key) noexcept nogil:
        """Slot of key, or of the empty slot where it would go."""
        cdef Py_ssize_t i = <Py_ssize_t>(mix(key) & <uint64_t>self.mask)
        while self.used[i] and self.slots[i] != key:
            i = (i + 1) & self.mask
        return i

    cdef inline void _remove(self, uint64_t key) noexcept nogil:
        cdef Py_ssize_t i = self._find(key), j, home
        if not self.used[i]:
            return
        self.used[i] = 0
        j = i
        while True:  # backward shift: pull later entries of the cluster into the hole
            j = (j + 1) & self.mask
            if not self.used[j]:
                return
            home = <Py_ssize_t>(mix(self.slots[j]) & <uint64_t>self.mask)
            # move j to i if its home is not in the cyclic range (i, j]
            if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
                self.slots[i] = self.slots[j]
                self.used[i] = 1
                self.used[j] = 0
                i = j

    def check_and_add(self, const uint64_t[::1] ids, uint8_t[::1] out_new):
        """out_new[i] = 1 if ids[i] was not seen before (it is remembered now), else 0.
        A repeat inside the same batch counts as seen."""
        cdef Py_ssize_t n = ids.shape[0], k, slot
        cdef uint64_t key
        if out_new.shape[0] != n:
            raise ValueError(f"expected out_new of length {n}, got {out_new.shape[0]}")
        with nogil:
            for k in range(n):
                key = ids[k]
                slot = self._find(key)
                if self.used[slot]:
                    out_new[k] = 0
                    continue
                out_new[k] = 1
                if self.count == self.capacity:  # forget the oldest id
                    self._remove(self.ring[self.head])
                    self.count -= 1
                    slot = self._find(key)
                self.slots[slot] = key
                self.used[slot] = 1
                self.ring[self.head] = key
                self.head = (self.head + 1) % self.capacity
                self.count += 1

    def forget_newest(self, Py_ssize_t k):
        """Forget the k ids added last (all of them if fewer are remembered): the undo of a
        check_and_add whose ids were not counted after all. Ids that add forgot to make room stay
        forgotten."""
        if k < 0:
            raise ValueError(f"k must be at least 0, got {k}")
        with nogil:
            while k > 0 and self.count > 0:
                self.head = (self.head - 1 + self.capacity) % self.capacity
                self._remove(self.ring[self.head])
                self.count -= 1
                k -= 1
