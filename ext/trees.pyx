# cython: language_level=3
"""Tree-ensemble scoring over a C-contiguous float32 feature matrix.

A `Forest` owns one flattened, validated copy of a model's trees; zfraud.trees builds it from
the model file and is the only place that decides what the arrays mean for LightGBM or XGBoost.

What the caller passes (all trees concatenated; tree t owns nodes [tree_start[t],
tree_start[t + 1]), its internal nodes first and its leaves from tree_first_leaf[t] on):
- one `Node` per node (NODE_DTYPE). A step is
      node = node.child[row[node.column] >= node.threshold]
  which is False for NaN (in the row or as the threshold), so child[0] is always where a
  missing value goes. A leaf points to itself, so it is a fixed point of the step.
- `row` is not the caller's row but a prepared row of n_columns derived values: column c is
  feature col_feature[c] through transform col_transform[c] (the value, its negation, the value
  with |x| <= 1e-35 read as missing, or both). "x <= t, missing left" is "x >= nextup(t) goes
  to child[1]"; negating turns "x <= t, missing right" into "-x >= -t goes to child[1]"; so every
  numerical split is a single float32 compare with no missing-value branch.
- a categorical split has column = ~k < 0 and goes to child[1] when the integer value of
  prepared column cat_splits[k].column is in the bitset cat_bits[start : start + nwords].
- value (float64): a leaf's output, or an internal node's value (for Saabas contributions);
  leaf_id: the source library's number of a leaf (what its pred_leaf returns);
  src_feature: the feature an internal node tests (leaves: 0).

How the loops run:
- Rows are prepared in blocks of BLOCK rows, column-major, so the LANES rows that walk a tree
  in lock-step share one base address (lane k reads 4 * k bytes further on). walk_explain,
  whose lanes also add to their rows' contributions, walks XLANES rows at a time instead (the
  fastest counts for each walk on the 2-core development machine: bench/RESULTS.md).
- Trees are taken in chunks of about CHUNK_BYTES of nodes, so a chunk stays in cache while
  every block of a super-block (SUPER_BLOCKS blocks) walks it; within a chunk each block walks
  the trees in order, so every row sums its leaves in tree order, in double (as LightGBM does).
- A lane's whole state is one 64-bit link: the node's byte offset from its tree's first leaf
  in the high half (negative for internal nodes) and the byte offset of the column that node
  tests in the low half. A child link carries its node's column, so a lane loads its row value
  while it still loads the node; "all LANES lanes are at a leaf" is the sign of their OR.
- A walk takes tree_min_depth[t] steps before it tests for leaves, and stops after
  tree_depth[t] steps in any case, so every walk ends whatever the arrays say.
No Python objects inside the loops; outputs are allocated by the caller; the GIL is released.
"""
from libc.math cimport NAN, exp, fabs
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np


cdef struct Node:
    float threshold     # go to child[1] iff row[column] >= threshold (a NaN goes to child[0])
    int32_t column      # prepared-row column; < 0: categorical split number ~column
    int32_t child[2]    # global node index for "below or missing", "at or above"


cdef struct CatSplit:
    int32_t column      # prepared-row column holding the raw (untransformed) value
    int32_t start       # first bitset word in cat_bits
    int32_t nwords      # number of 32-bit words; categories >= 32 * nwords are not in the set


cdef struct Step:
    # A Node as the predicting loops use it (built by Forest from a validated Node).
    float threshold
    int32_t split       # ~k for categorical split k, else 0
    int32_t index       # global node index (value, leaf_id)
    int32_t feature     # feature the node tests (leaves: 0)
    int64_t child[2]    # links (see the module docstring) for child[0] and child[1]


cdef struct ExplainStep:
    # Step followed by what the explaining loop adds up; starts with a Step's fields.
    float threshold
    int32_t split
    int32_t index
    int32_t feature
    int64_t child[2]    # links into the ExplainStep array
    double delta[2]     # value(child) - value(node): a Saabas contribution (leaves: 0)


cdef enum:
    BLOCK = 64                  # rows prepared together, column-major
    LANES = 16                  # rows walked in lock-step through one tree; divides BLOCK
    XLANES = 8                  # the same for walk_explain, whose lanes also add to contrib
    SUPER_BLOCKS = 64           # blocks that share one pass over the chunks (4096 rows)
    CHUNK_BYTES = 16384         # about this many node bytes per chunk of trees
    T_VALUE = 0                 # column transforms
    T_NEGATED = 1
    T_ZERO_MISSING = 2
    T_NEGATED_ZERO_MISSING = 3

if BLOCK % LANES or BLOCK % XLANES or XLANES > LANES:
    raise ImportError("zfraud._trees: LANES and XLANES must divide BLOCK, XLANES <= LANES")

# LightGBM's kZeroThreshold (1e-35f): |x| <= this is "zero" for zero-as-missing splits.
cdef float ZERO_THRESHOLD = 1e-35

cdef Node _node
cdef CatSplit _cat
cdef Step _step
cdef ExplainStep _explain_step
# The numpy views are derived from the C structs, so the two layouts cannot drift.
NODE_DTYPE = np.asarray(<Node[:1]>(&_node)).dtype
CAT_SPLIT_DTYPE = np.asarray(<CatSplit[:1]>(&_cat)).dtype
STEP_DTYPE = np.asarray(<Step[:1]>(&_step)).dtype
EXPLAIN_STEP_DTYPE = np.asarray(<ExplainStep[:1]>(&_explain_step)).dtype
TRANSFORMS = {"value": T_VALUE, "negated": T_NEGATED, "zero_missing": T_ZERO_MISSING,
              "negated_zero_missing": T_NEGATED_ZERO_MISSING}


cdef inline double sigmoid(double z) noexcept nogil:
    # LightGBM's binary objective computes exactly this.
    return 1.0 / (1.0 + exp(-z))


cdef inline int in_category(const Step* p, float x, const CatSplit* cats,
                            const uint32_t* bits) noexcept nogil:
    # LightGBM: the value is truncated to int; NaN, negative or out-of-int-range values (which
    # x86 converts to INT_MIN) are not in the set; categories past the bitset are not either.
    cdef const CatSplit* s = cats + ~p.split
    cdef int32_t c
    cdef uint32_t w
    if x > -1.0 and x < 2147483648.0:
        c = <int32_t>x
        w = <uint32_t>c >> 5
        return w < <uint32_t>s.nwords and (bits[s.start + w] >> (c & 31)) & 1
    return 0


cdef inline int decide(const Step* p, float x, const CatSplit* cats, const uint32_t* bits,
                       const bint has_cat) noexcept nogil:
    """Which child (0 or 1) the node sends x to."""
    if has_cat and p.split < 0:
        return in_category(p, x, cats, bits)
    return x >= p.threshold


cdef inline int64_t step(const char* base, int64_t link, const char* row, const CatSplit* cats,
                         const uint32_t* bits, const bint has_cat) noexcept nogil:
    """One step of one lane: the link of the child its row goes to."""
    cdef const Step* p = <const Step*>(base + (link >> 32))
    cdef float x = (<const float*>(row + <uint32_t>link))[0]
    return p.child[decide(p, x, cats, bits, has_cat)]


cdef inline void walk(const char* base, int64_t root, int32_t min_depth, int32_t depth,
                      const char* rows, const CatSplit* cats, const uint32_t* bits,
                      int64_t* leaf, const bint has_cat) noexcept nogil:
    """Walk LANES rows of a block (lane k at rows + 4 * k) down one tree: leaf[k] = final link."""
    cdef int64_t nd[LANES]
    cdef int64_t inside
    cdef int32_t it, k
    for k in range(LANES):
        nd[k] = root
    for it in range(depth):
        if it >= min_depth:
            inside = 0
            for k in range(LANES):
                inside |= nd[k]
            if inside >= 0:
                break
        for k in range(LANES):
            nd[k] = step(base, nd[k], rows + 4 * k, cats, bits, has_cat)
    for k in range(LANES):
        leaf[k] = nd[k]


cdef inline void walk_explain(const char* base, int64_t root, int32_t min_depth, int32_t depth,
                              const char* rows, const CatSplit* cats, const uint32_t* bits,
                              double* contrib, Py_ssize_t n_features, int64_t* leaf,
                              const bint has_cat) noexcept nogil:
    """walk() over ExplainSteps that also adds each split's delta to its feature's total in
    contrib (n_features doubles per lane)."""
    cdef int64_t nd[XLANES]
    cdef int64_t inside
    cdef int32_t it, k, go
    cdef const ExplainStep* p
    for k in range(XLANES):
        nd[k] = root
    for it in range(depth):
        if it >= min_depth:
            inside = 0
            for k in range(XLANES):
                inside |= nd[k]
            if inside >= 0:
                break
        for k in range(XLANES):
            p = <const ExplainStep*>(base + (nd[k] >> 32))
            go = decide(<const Step*>p, (<const float*>(rows + 4 * k + <uint32_t>nd[k]))[0],
                        cats, bits, has_cat)
            contrib[k * n_features + p.feature] += p.delta[go]
            nd[k] = p.child[go]
    for k in range(XLANES):
        leaf[k] = nd[k]


cdef inline int32_t node_index(const char* base, int64_t link) noexcept nogil:
    return (<const Step*>(base + (link >> 32))).index


cdef void prepare(const float[:, ::1] X, Py_ssize_t r0, Py_ssize_t m,
                  const int32_t* col_feature, const uint8_t* col_transform, Py_ssize_t n_cols,
                  float* block) noexcept nogil:
    """block[c * BLOCK + i] = transform c of X[r0 + i, col_feature[c]]; rows m.. are zero."""
    cdef Py_ssize_t i, c
    cdef float x
    cdef uint8_t tr
    for i in range(m):
        for c in range(n_cols):
            x = X[r0 + i, col_feature[c]]
            tr = col_transform[c]
            if tr >= T_ZERO_MISSING and fabs(x) <= ZERO_THRESHOLD:
                x = NAN
            if tr & 1:
                x = -x
            block[c * BLOCK + i] = x
    if m < BLOCK:
        for c in range(n_cols):
            memset(block + c * BLOCK + m, 0, (BLOCK - m) * sizeof(float))


cdef enum Mode:
    MODE_PROBA
    MODE_RAW
    MODE_LEAF
    MODE_EXPLAIN


cdef class Forest:
    """Validated, owned kernel arrays of one tree ensemble (see the module docstring).

    Every index is checked once here, so the loops can trust them: corrupt arrays raise
    ValueError instead of reading out of bounds or walking forever.
    """
    cdef Step[::1] steps
    cdef ExplainStep[::1] explain_steps
    cdef CatSplit[::1] cats
    cdef const uint32_t[::1] cat_bits
    cdef const double[::1] value
    cdef const int32_t[::1] leaf_id
    cdef const int32_t[::1] tree_first_leaf
    cdef int64_t[::1] tree_root             # link to the root, into steps
    cdef int64_t[::1] tree_explain_root     # link to the root, into explain_steps
    cdef const int32_t[::1] tree_min_depth
    cdef const int32_t[::1] tree_depth
    cdef int32_t[::1] chunk_start           # chunk j holds trees [chunk_start[j], [j + 1])
    cdef const int32_t[::1] col_feature
    cdef const uint8_t[::1] col_transform
    cdef readonly Py_ssize_t n_features, n_trees, n_columns, n_nodes
    cdef readonly double base
    cdef readonly bint has_categorical

    def __init__(self, nodes, value, leaf_id, src_feature, tree_start, tree_first_leaf,
                 tree_min_depth, tree_depth, col_feature, col_transform, cat_splits, cat_bits,
                 Py_ssize_t n_features, double base):
        """nodes: (N,) NODE_DTYPE; value: (N,) float64; leaf_id, src_feature: (N,) int32;
        tree_start: (T + 1,) int32; tree_first_leaf, tree_min_depth, tree_depth: (T,) int32;
        col_feature: (C,) int32; col_transform: (C,) uint8; cat_splits: (K,) CAT_SPLIT_DTYPE;
        cat_bits: (W,) uint32; n_features: width of the caller's rows; base: margin offset.
        """
        own = lambda a, dt: np.array(a, dtype=dt, order="C", copy=True).ravel()
        node = own(nodes, NODE_DTYPE)
        start = own(tree_start, np.int32)
        cat = own(cat_splits, CAT_SPLIT_DTYPE)
        src = own(src_feature, np.int32)
        self.value = own(value, np.float64)
        self.leaf_id = own(leaf_id, np.int32)
        self.tree_first_leaf = own(tree_first_leaf, np.int32)
        self.tree_min_depth = own(tree_min_depth, np.int32)
        self.tree_depth = own(tree_depth, np.int32)
        self.col_feature = own(col_feature, np.int32)
        self.col_transform = own(col_transform, np.uint8)
        # One spare word, so an empty bitset table still has a valid address.
        self.cat_bits = own(np.concatenate([np.asarray(cat_bits, np.uint32).ravel(),
                                            np.zeros(1, np.uint32)]), np.uint32)
        self.n_features = n_features
        self.base = base
        self._check(node, start, cat, src)
        self._build(node, start, cat, src)

    cdef _check(self, const Node[::1] node, const int32_t[::1] start, const CatSplit[::1] cat,
                const int32_t[::1] src):
        cdef Py_ssize_t N = node.shape[0], T = self.tree_depth.shape[0]
        cdef Py_ssize_t C = self.col_feature.shape[0], K = cat.shape[0]
        cdef Py_ssize_t W = self.cat_bits.shape[0] - 1
        cdef Py_ssize_t t, i, lo, hi, first
        cdef Py_ssize_t max_nodes = (2**31 - 1) // sizeof(ExplainStep)
        cdef Py_ssize_t max_cols = (2**31 - 1) // (BLOCK * sizeof(float))
        cdef const Node* p
        if self.n_features < 1:
            raise ValueError(f"expected at least one feature, got {self.n_features}")
        if N < 1 or N > max_nodes:
            raise ValueError(f"expected between 1 and {max_nodes} nodes, got {N}")
        if self.value.shape[0] != N or self.leaf_id.shape[0] != N or src.shape[0] != N:
            raise ValueError(f"expected value, leaf_id and src_feature of length {N}, got "
                             f"{self.value.shape[0]}, {self.leaf_id.shape[0]}, {src.shape[0]}")
        if (start.shape[0] != T + 1 or self.tree_first_leaf.shape[0] != T
                or self.tree_min_depth.shape[0] != T):
            raise ValueError(f"expected tree_start of length {T + 1} and tree_first_leaf, "
                             f"tree_min_depth of length {T}, got {start.shape[0]}, "
                             f"{self.tree_first_leaf.shape[0]}, {self.tree_min_depth.shape[0]}")
        if T < 1 or start[0] != 0 or start[T] != N:
            raise ValueError(f"expected tree_start to run from 0 to {N} over at least one tree")
        if self.col_transform.shape[0] != C or not (1 <= C <= max_cols):
            raise ValueError(f"expected col_feature and col_transform of one length in "
                             f"[1, {max_cols}], got {C} and {self.col_transform.shape[0]}")
        for i in range(C):
            if not (0 <= self.col_feature[i] < self.n_features) or self.col_transform[i] > 3:
                raise ValueError(f"column {i}: expected a feature in [0, {self.n_features}) and "
                                 f"a transform in [0, 3], got {self.col_feature[i]} and "
                                 f"{self.col_transform[i]}")
        for i in range(K):
            if (not (0 <= cat[i].column < C) or cat[i].start < 0 or cat[i].nwords < 0
                    or cat[i].start + <Py_ssize_t>cat[i].nwords > W):
                raise ValueError(f"categorical split {i}: expected a column in [0, {C}) and "
                                 f"words within [0, {W}), got column {cat[i].column}, words "
                                 f"[{cat[i].start}, {cat[i].start + <Py_ssize_t>cat[i].nwords})")
        self.has_categorical = False
        for t in range(T):
            lo, hi, first = start[t], start[t + 1], self.tree_first_leaf[t]
            if not (lo <= first < hi):
                raise ValueError(f"tree {t}: expected nodes [{lo}, {hi}) with the first leaf "
                                 f"inside, got first leaf {first}")
            if not (0 <= self.tree_min_depth[t] <= self.tree_depth[t] <= hi - lo):
                raise ValueError(f"tree {t}: expected 0 <= min depth <= depth <= {hi - lo}, got "
                                 f"{self.tree_min_depth[t]} and {self.tree_depth[t]}")
            for i in range(lo, hi):
                p = &node[i]
                if not (0 <= src[i] < self.n_features):
                    raise ValueError(f"node {i}: expected a feature in [0, {self.n_features}), "
                                     f"got {src[i]}")
                if p.column < 0:
                    if ~p.column >= K or i >= first:
                        raise ValueError(f"node {i}: expected a categorical split of an internal "
                                         f"node in [0, {K}), got {~p.column}")
                    self.has_categorical = True
                elif p.column >= C:
                    raise ValueError(f"node {i}: expected a column in [0, {C}), got {p.column}")
                if i >= first:
                    if p.child[0] != i or p.child[1] != i:
                        raise ValueError(f"node {i}: expected a leaf pointing to itself, got "
                                         f"children {p.child[0]} and {p.child[1]}")
                elif not (lo <= p.child[0] < hi and lo <= p.child[1] < hi):
                    raise ValueError(f"node {i}: expected children in [{lo}, {hi}), got "
                                     f"{p.child[0]} and {p.child[1]}")
        self.n_trees, self.n_columns, self.n_nodes = T, C, N

    cdef _build(self, const Node[::1] node, const int32_t[::1] start, const CatSplit[::1] cat,
                const int32_t[::1] src):
        """The loops' form of the checked arrays: links (byte offsets) instead of indices."""
        cdef Py_ssize_t N = self.n_nodes, T = self.n_trees, t, i, first, used, size
        cdef int64_t col_bytes = BLOCK * sizeof(float), j, c
        cdef int64_t S = sizeof(Step), E = sizeof(ExplainStep)
        # The column each node tests, as a byte offset in a prepared block.
        node_col = np.asarray(node)["column"]
        cat_col = np.asarray(cat)["column"] if cat.shape[0] else np.zeros(1, np.int32)
        tested = np.where(node_col >= 0, node_col, cat_col[~np.minimum(node_col, -1)])
        cdef const int64_t[::1] column = tested.astype(np.int64) * col_bytes
        self.cats = np.array(cat, dtype=CAT_SPLIT_DTYPE, copy=True)
        self.steps = np.zeros(N, STEP_DTYPE)
        self.explain_steps = np.zeros(N, EXPLAIN_STEP_DTYPE)
        self.tree_root = np.zeros(T, np.int64)
        self.tree_explain_root = np.zeros(T, np.int64)
        for t in range(T):
            first = self.tree_first_leaf[t]
            self.tree_root[t] = ((start[t] - first) * S) << 32 | column[start[t]]
            self.tree_explain_root[t] = ((start[t] - first) * E) << 32 | column[start[t]]
            for i in range(start[t], start[t + 1]):
                self.steps[i].threshold = node[i].threshold
                self.steps[i].split = node[i].column if node[i].column < 0 else 0
                self.steps[i].index = <int32_t>i
                self.steps[i].feature = src[i] if i < first else 0
                self.explain_steps[i].threshold = self.steps[i].threshold
                self.explain_steps[i].split = self.steps[i].split
                self.explain_steps[i].index = self.steps[i].index
                self.explain_steps[i].feature = self.steps[i].feature
                for c in range(2):
                    j = node[i].child[c]
                    self.steps[i].child[c] = ((j - first) * S) << 32 | column[j]
                    self.explain_steps[i].child[c] = ((j - first) * E) << 32 | column[j]
                    self.explain_steps[i].delta[c] = self.value[j] - self.value[i]
        chunks = [0]
        used = 0
        for t in range(T):
            size = (start[t + 1] - start[t]) * sizeof(Step)
            if used and used + size > CHUNK_BYTES:
                chunks.append(t)
                used = 0
            used += size
        chunks.append(T)
        self.chunk_start = np.asarray(chunks, np.int32)

    cdef _check_rows(self, const float[:, ::1] X, Py_ssize_t n_out):
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) float32 rows, got "
                             f"({X.shape[0]}, {X.shape[1]})")
        if n_out != X.shape[0]:
            raise ValueError(f"expected outputs for {X.shape[0]} rows, got {n_out}")

    cdef int _run(self, const float[:, ::1] X, Mode mode, double* out, int32_t* out_i,
                  Py_ssize_t out_stride) noexcept nogil:
        """The loop nest behind every entry point; returns -1 when out of memory."""
        cdef Py_ssize_t n = X.shape[0], C = self.n_columns, F = self.n_features
        cdef Py_ssize_t s0, s_rows, nb, b, r0, m, j, t, g, k, f
        cdef Py_ssize_t super_rows = SUPER_BLOCKS * BLOCK
        cdef const char* steps = <const char*>&self.steps[0]
        cdef const char* explain_steps = <const char*>&self.explain_steps[0]
        cdef const CatSplit* cats = &self.cats[0] if self.cats.shape[0] else NULL
        cdef const uint32_t* bits = &self.cat_bits[0]
        cdef const int32_t* first = &self.tree_first_leaf[0]
        cdef const int64_t* root = &self.tree_root[0]
        cdef const int64_t* explain_root = &self.tree_explain_root[0]
        cdef const int32_t* min_depth = &self.tree_min_depth[0]
        cdef const int32_t* depth = &self.tree_depth[0]
        cdef const int32_t* chunk = &self.chunk_start[0]
        cdef Py_ssize_t n_chunks = self.chunk_start.shape[0] - 1
        cdef const double* value = &self.value[0]
        cdef const int32_t* leaf_id = &self.leaf_id[0]
        cdef bint has_cat = self.has_categorical
        cdef int64_t leaf[LANES]
        cdef const char* base
        cdef const char* rows
        cdef double* acc
        cdef double best
        cdef int32_t top
        cdef Py_ssize_t block_floats = BLOCK * C
        cdef float* blocks = <float*>malloc(SUPER_BLOCKS * block_floats * sizeof(float))
        cdef double* accs = <double*>malloc(super_rows * sizeof(double))
        cdef double* contrib = NULL
        if mode == MODE_EXPLAIN:
            contrib = <double*>malloc(BLOCK * F * sizeof(double))
        if blocks == NULL or accs == NULL or (mode == MODE_EXPLAIN and contrib == NULL):
            free(blocks)
            free(accs)
            free(contrib)
            return -1
        s0 = 0
        while s0 < n:
            s_rows = min(super_rows, n - s0)
            nb = (s_rows + BLOCK - 1) // BLOCK
            for b in range(nb):
                r0 = s0 + b * BLOCK
                prepare(X, r0, min(<Py_ssize_t>BLOCK, n - r0), &self.col_feature[0],
                        &self.col_transform[0], C, blocks + b * block_floats)
            for k in range(nb * BLOCK):
                accs[k] = self.base
            if mode == MODE_EXPLAIN:
                # A row's contributions need all its trees before its top feature is known, so
                # here each block walks all trees (one chunk) and is finished before the next.
                for b in range(nb):
                    r0 = s0 + b * BLOCK
                    m = min(<Py_ssize_t>BLOCK, n - r0)
                    acc = accs + b * BLOCK
                    memset(contrib, 0, BLOCK * F * sizeof(double))
                    for t in range(self.n_trees):
                        base = explain_steps + first[t] * <Py_ssize_t>sizeof(ExplainStep)
                        for g in range(0, (m + XLANES - 1) // XLANES):
                            rows = <const char*>(blocks + b * block_floats + g * XLANES)
                            if has_cat:
                                walk_explain(base, explain_root[t], min_depth[t], depth[t], rows,
                                             cats, bits, contrib + g * XLANES * F, F, leaf, True)
                            else:
                                walk_explain(base, explain_root[t], min_depth[t], depth[t], rows,
                                             cats, bits, contrib + g * XLANES * F, F, leaf, False)
                            for k in range(XLANES):
                                acc[g * XLANES + k] += value[node_index(base, leaf[k])]
                    for k in range(m):
                        out[r0 + k] = sigmoid(acc[k])
                        best = 0.0
                        top = -1
                        for f in range(F):
                            if contrib[k * F + f] > best:
                                best = contrib[k * F + f]
                                top = <int32_t>f
                        out_i[r0 + k] = top
                s0 += s_rows
                continue
            for j in range(n_chunks):
                for b in range(nb):
                    r0 = s0 + b * BLOCK
                    m = min(<Py_ssize_t>BLOCK, n - r0)
                    acc = accs + b * BLOCK
                    for t in range(chunk[j], chunk[j + 1]):
                        base = steps + first[t] * <Py_ssize_t>sizeof(Step)
                        for g in range(0, (m + LANES - 1) // LANES):
                            rows = <const char*>(blocks + b * block_floats + g * LANES)
                            if has_cat:
                                walk(base, root[t], min_depth[t], depth[t], rows, cats, bits,
                                     leaf, True)
                            else:
                                walk(base, root[t], min_depth[t], depth[t], rows, cats, bits,
                                     leaf, False)
                            if mode == MODE_LEAF:
                                for k in range(min(<Py_ssize_t>LANES, m - g * LANES)):
                                    out_i[(r0 + g * LANES + k) * out_stride + t] = (
                                        leaf_id[node_index(base, leaf[k])])
                            else:
                                for k in range(LANES):
                                    acc[g * LANES + k] += value[node_index(base, leaf[k])]
            if mode != MODE_LEAF:
                for k in range(s_rows):
                    out[s0 + k] = accs[k] if mode == MODE_RAW else sigmoid(accs[k])
            s0 += s_rows
        free(blocks)
        free(accs)
        free(contrib)
        return 0

    def predict(self, const float[:, ::1] X, double[::1] out, bint raw=False):
        """out[i] = sigmoid(base + sum of leaf values of row i) (or the sum itself if raw).

        X: (n, n_features) float32, C-contiguous; out: (n,) float64.
        """
        self._check_rows(X, out.shape[0])
        if X.shape[0] == 0:
            return
        cdef int rc
        with nogil:
            rc = self._run(X, MODE_RAW if raw else MODE_PROBA, &out[0], NULL, 0)
        if rc:
            raise MemoryError()

    def predict_leaf(self, const float[:, ::1] X, int32_t[:, ::1] out):
        """out[i, t] = leaf_id of the leaf row i reaches in tree t. out: (n, n_trees) int32."""
        self._check_rows(X, out.shape[0])
        if out.shape[1] != self.n_trees:
            raise ValueError(f"expected out of shape ({X.shape[0]}, {self.n_trees}), got "
                             f"({out.shape[0]}, {out.shape[1]})")
        if X.shape[0] == 0:
            return
        cdef int rc
        with nogil:
            rc = self._run(X, MODE_LEAF, NULL, &out[0, 0], self.n_trees)
        if rc:
            raise MemoryError()

    def explain(self, const float[:, ::1] X, double[::1] out_proba, int32_t[::1] out_top):
        """Probabilities and, per row, the feature with the largest positive Saabas contribution.

        The contribution of a split is value(child taken) - value(node), summed per feature over
        the row's paths in all trees; out_top[i] = -1 when no feature's total is positive.
        X: (n, n_features) float32; out_proba: (n,) float64; out_top: (n,) int32.
        """
        self._check_rows(X, out_proba.shape[0])
        self._check_rows(X, out_top.shape[0])
        if X.shape[0] == 0:
            return
        cdef int rc
        with nogil:
            rc = self._run(X, MODE_EXPLAIN, &out_proba[0], &out_top[0], 0)
        if rc:
            raise MemoryError()
