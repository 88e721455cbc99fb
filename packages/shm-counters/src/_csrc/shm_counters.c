/* shm_counters.c: lock-free operations on shared memory; see the header. */
#include "shm_counters.h"

#ifdef __linux__
#include <time.h>
#endif

#define RLX __ATOMIC_RELAXED
#define SC __ATOMIC_SEQ_CST

static uint64_t stride = 64;

void shmc_set_stride(uint64_t s) { stride = s; }

uint64_t shmc_noop(uint64_t *cell)
{
	(void)cell;
	return 0;
}

uint64_t shmc_noop2(uint64_t *cell, uint64_t n)
{
	(void)cell;
	(void)n;
	return 0;
}

uint64_t shmc_inc1(uint64_t *cell) { return __atomic_add_fetch(cell, 1, RLX); }
uint64_t shmc_dec1(uint64_t *cell) { return __atomic_sub_fetch(cell, 1, RLX); }

uint64_t shmc_load(const uint64_t *cell) { return __atomic_load_n(cell, RLX); }
void shmc_store(uint64_t *cell, uint64_t v) { __atomic_store_n(cell, v, RLX); }
uint64_t shmc_add(uint64_t *cell, uint64_t n) { return __atomic_add_fetch(cell, n, RLX); }
uint64_t shmc_sub(uint64_t *cell, uint64_t n) { return __atomic_sub_fetch(cell, n, RLX); }
uint64_t shmc_load_sc(const uint64_t *cell) { return __atomic_load_n(cell, SC); }
void shmc_store_sc(uint64_t *cell, uint64_t v) { __atomic_store_n(cell, v, SC); }

int shmc_cas(uint64_t *cell, uint64_t expected, uint64_t desired)
{
	return __atomic_compare_exchange_n(cell, &expected, desired, 0, SC, SC);
}

#define SLOT(slots, i) ((uint64_t *)((slots) + (i) * stride))

uint64_t shmc_incr_at(char *slots, uint64_t i, uint64_t n)
{
	return __atomic_add_fetch(SLOT(slots, i), n, RLX);
}

uint64_t shmc_decr_at(char *slots, uint64_t i, uint64_t n)
{
	return __atomic_sub_fetch(SLOT(slots, i), n, RLX);
}

uint64_t shmc_load_at(char *slots, uint64_t i) { return __atomic_load_n(SLOT(slots, i), RLX); }

void shmc_store_at(char *slots, uint64_t i, uint64_t v)
{
	__atomic_store_n(SLOT(slots, i), v, RLX);
}

void shmc_load_many(char *slots, uint64_t count, uint64_t *out)
{
	for (uint64_t i = 0; i < count; i++)
		out[i] = __atomic_load_n(SLOT(slots, i), RLX);
}

void shmc_store_many(char *slots, uint64_t count, const uint64_t *values)
{
	for (uint64_t i = 0; i < count; i++)
		__atomic_store_n(SLOT(slots, i), values[i], RLX);
}

void shmc_zero_cells(uint64_t *cells, uint64_t count)
{
	for (uint64_t i = 0; i < count; i++)
		__atomic_store_n(&cells[i], 0, RLX);
}

/* Is row a due before row b: (expiry, index) ordering. */
static int due_before(const uint64_t *expiry, uint64_t a, uint64_t b)
{
	return expiry[a] < expiry[b] || (expiry[a] == expiry[b] && a < b);
}

/* Restore the max-heap property of heap[0..n) (by due_before) from k down. */
static void sift_down(uint64_t *heap, uint64_t n, uint64_t k,
                      const uint64_t *expiry)
{
	for (;;) {
		uint64_t top = k, l = 2 * k + 1, r = l + 1;
		if (l < n && due_before(expiry, heap[top], heap[l]))
			top = l;
		if (r < n && due_before(expiry, heap[top], heap[r]))
			top = r;
		if (top == k)
			return;
		uint64_t t = heap[k];
		heap[k] = heap[top];
		heap[top] = t;
		k = top;
	}
}

/* Keep in heap[0..*n) the (at most max) rows due first: a max-heap, so the
 * row due last of those kept is at the top, replaced by any row due before. */
static void keep_due(uint64_t *heap, uint64_t *n, uint64_t max, uint64_t row,
                     const uint64_t *expiry)
{
	if (*n < max) {
		uint64_t k = (*n)++;
		heap[k] = row;
		while (k > 0) {
			uint64_t parent = (k - 1) / 2;
			if (!due_before(expiry, heap[parent], heap[k]))
				break;
			uint64_t t = heap[k];
			heap[k] = heap[parent];
			heap[parent] = t;
			k = parent;
		}
	} else if (max > 0 && due_before(expiry, row, heap[0])) {
		heap[0] = row;
		sift_down(heap, *n, 0, expiry);
	}
}

uint64_t shmc_sb_scan(char *rows, uint64_t nrows, uint64_t row_bytes,
                      uint64_t nfields, uint64_t now,
                      uint64_t *cache_owner, uint64_t *cache_stime,
                      uint64_t *cache_expiry, uint8_t *cache_alive,
                      uint64_t *totals, uint64_t *due, uint64_t max_due)
{
	uint64_t ndue = 0;
	for (uint64_t f = 0; f < nfields; f++)
		totals[f] = 0;
	for (uint64_t r = 0; r < nrows; r++) {
		uint64_t *row = (uint64_t *)(rows + r * row_bytes);
		uint64_t owner = __atomic_load_n(&row[0], SC);
		if (owner == 0 || (owner & SHMC_CLAIMING))
			continue;
		uint64_t stime = __atomic_load_n(&row[1], SC);
		if (owner != cache_owner[r] || stime != cache_stime[r]) {
			/* a new owner: it was alive to claim the row */
			cache_owner[r] = owner;
			cache_stime[r] = stime;
			cache_expiry[r] = now ? now - 1 : 0;
			cache_alive[r] = 1;
		}
		if (now > cache_expiry[r])
			keep_due(due, &ndue, max_due, r, cache_expiry);
		if (!cache_alive[r])
			continue;
		for (uint64_t f = 0; f < nfields; f++)
			totals[f] += __atomic_load_n(&row[2 + f], RLX);
	}
	return ndue;
}

static void min_cas(uint64_t *cell, uint64_t v)
{
	uint64_t cur = __atomic_load_n(cell, RLX);
	while (v < cur &&
	       !__atomic_compare_exchange_n(cell, &cur, v, 1, RLX, RLX))
		;
}

static void max_cas(uint64_t *cell, uint64_t v)
{
	uint64_t cur = __atomic_load_n(cell, RLX);
	while (v > cur &&
	       !__atomic_compare_exchange_n(cell, &cur, v, 1, RLX, RLX))
		;
}

/* Adds a 128-bit amount to a (lo, hi) pair of cells: exact, lock-free;
 * a reader may briefly see the carry missing from hi. */
static void add128(uint64_t *lo, uint64_t *hi, uint64_t add_lo, uint64_t add_hi)
{
	uint64_t old = __atomic_fetch_add(lo, add_lo, RLX);
	if (old + add_lo < old)
		add_hi++;
	if (add_hi)
		__atomic_fetch_add(hi, add_hi, RLX);
}

int shmc_hist_record(uint64_t *cells, uint64_t log2, uint64_t nbuckets,
                     int64_t value)
{
	if (value < 0)
		return -1;
	uint64_t v = (uint64_t)value;
	unsigned __int128 sq = (unsigned __int128)v * v;

	__atomic_fetch_add(&cells[SHMC_H_COUNT], 1, RLX);
	add128(&cells[SHMC_H_SUM_LO], &cells[SHMC_H_SUM_HI], v, 0);
	add128(&cells[SHMC_H_SQ_LO], &cells[SHMC_H_SQ_HI], (uint64_t)sq,
	       (uint64_t)(sq >> 64));
	min_cas(&cells[SHMC_H_MIN], v);
	max_cas(&cells[SHMC_H_MAX], v);

	uint64_t *data = cells + SHMC_H_DATA;
	if (log2) {
		/* bucket 0 holds 0 and 1, bucket k holds [2**k, 2**(k+1)) */
		uint64_t k = v < 2 ? 0 : 63 - (uint64_t)__builtin_clzll(v);
		if (k >= nbuckets)
			__atomic_fetch_add(&cells[SHMC_H_HIGH], 1, RLX);
		else
			__atomic_fetch_add(&data[k], 1, RLX);
		return 0;
	}
	/* explicit: edges data[0..nbuckets], bucket k is [edge k, edge k+1) */
	const uint64_t *edges = data;
	uint64_t *buckets = data + nbuckets + 1;
	if (v < edges[0]) {
		__atomic_fetch_add(&cells[SHMC_H_LOW], 1, RLX);
		return 0;
	}
	if (v >= edges[nbuckets]) {
		__atomic_fetch_add(&cells[SHMC_H_HIGH], 1, RLX);
		return 0;
	}
	/* binary search: the last edge <= v, always in [0, nbuckets) */
	uint64_t lo = 0, hi = nbuckets;
	while (hi - lo > 1) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (edges[mid] <= v)
			lo = mid;
		else
			hi = mid;
	}
	__atomic_fetch_add(&buckets[lo], 1, RLX);
	return 0;
}

void shmc_hist_reset(uint64_t *cells, uint64_t log2, uint64_t nbuckets)
{
	shmc_zero_cells(cells, SHMC_H_DATA);
	__atomic_store_n(&cells[SHMC_H_MIN], UINT64_MAX, RLX);
	shmc_zero_cells(cells + SHMC_H_DATA + (log2 ? 0 : nbuckets + 1), nbuckets);
}

/* -- busy timer ---------------------------------------------------------- */

int shmc_busy_clock(void)
{
#ifdef __linux__
	return 1;
#else
	return 0;
#endif
}

uint64_t shmc_monotonic_ns(void)
{
#ifdef __linux__
	/* The clock time.monotonic_ns() reads on Linux. */
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
		return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
	return 0;
}

static uint64_t busy_now(struct shmc_busy *b)
{
	if (!b->manual)
		b->now = shmc_monotonic_ns();
	return b->now;
}

/* Settled time: a clock that went back settles nothing. */
static uint64_t elapsed(uint64_t now, uint64_t since)
{
	return now > since ? now - since : 0;
}

uint64_t shmc_busy_start(struct shmc_busy *b)
{
	uint64_t now = busy_now(b);
	b->own_entered++;
	b->own_since_ns = now;
	__atomic_store_n(b->since_ns, now, RLX);
	__atomic_add_fetch(b->entered, 1, RLX);
	return now;
}

uint64_t shmc_busy_join(struct shmc_busy *b)
{
	uint64_t now = busy_now(b);
	b->own_entered++;
	__atomic_add_fetch(b->entered, 1, RLX);
	return now;
}

/* A unit done at now: the owner's copy, then done, [since_ns,] busy_ns. */
static uint64_t busy_done(struct shmc_busy *b, int still_busy)
{
	uint64_t now = busy_now(b);
	uint64_t settled = elapsed(now, b->own_since_ns);
	b->own_done++;
	b->own_busy_ns += settled;
	b->own_since_ns = now;
	__atomic_add_fetch(b->done, 1, RLX);
	if (still_busy)
		__atomic_store_n(b->since_ns, now, RLX);
	__atomic_add_fetch(b->busy_ns, settled, RLX);
	return now;
}

uint64_t shmc_busy_settle(struct shmc_busy *b) { return busy_done(b, 1); }
uint64_t shmc_busy_finish(struct shmc_busy *b) { return busy_done(b, 0); }

/* -- packed cells: 64-bit integers and IEEE-754 doubles ------------------ */

#include <string.h>

static double as_double(uint64_t bits)
{
	double x;
	memcpy(&x, &bits, sizeof x);
	return x;
}

static uint64_t as_bits(double x)
{
	uint64_t bits;
	memcpy(&bits, &x, sizeof bits);
	return bits;
}

double shmc_f_load(const uint64_t *cell) { return as_double(__atomic_load_n(cell, RLX)); }

void shmc_f_store(uint64_t *cell, double x) { __atomic_store_n(cell, as_bits(x), RLX); }

double shmc_f_add(uint64_t *cell, double x)
{
	uint64_t old = __atomic_load_n(cell, RLX);
	double sum;
	/* On failure the CAS writes the cell's current pattern into old. */
	do
		sum = as_double(old) + x;
	while (!__atomic_compare_exchange_n(cell, &old, as_bits(sum), 1, RLX, RLX));
	return sum;
}

double shmc_f_min(uint64_t *cell, double x)
{
	uint64_t old = __atomic_load_n(cell, RLX);
	while (x < as_double(old)) {
		if (__atomic_compare_exchange_n(cell, &old, as_bits(x), 1, RLX, RLX))
			return x;
	}
	return as_double(old);
}

double shmc_f_max(uint64_t *cell, double x)
{
	uint64_t old = __atomic_load_n(cell, RLX);
	while (x > as_double(old)) {
		if (__atomic_compare_exchange_n(cell, &old, as_bits(x), 1, RLX, RLX))
			return x;
	}
	return as_double(old);
}

uint64_t shmc_or(uint64_t *cell, uint64_t bits) { return __atomic_or_fetch(cell, bits, RLX); }

uint64_t shmc_and(uint64_t *cell, uint64_t bits) { return __atomic_and_fetch(cell, bits, RLX); }

void shmc_fence(void) { __atomic_thread_fence(SC); }

void shmc_load_range(const uint64_t *cells, uint64_t n, uint64_t *out)
{
	for (uint64_t i = 0; i < n; i++)
		out[i] = __atomic_load_n(&cells[i], RLX);
}

void shmc_f_load_many(const uint64_t *cells, uint64_t n, double *out)
{
	for (uint64_t i = 0; i < n; i++)
		out[i] = as_double(__atomic_load_n(&cells[i], RLX));
}

void shmc_f_store_many(uint64_t *cells, uint64_t n, const double *values)
{
	for (uint64_t i = 0; i < n; i++)
		__atomic_store_n(&cells[i], as_bits(values[i]), RLX);
}

void shmc_copy_cells(uint64_t *dst, const uint64_t *src, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		__atomic_store_n(&dst[i], __atomic_load_n(&src[i], RLX), RLX);
}

void shmc_f_sum_rows(const uint64_t *base, uint64_t stride, const uint64_t *rows,
                     uint64_t nrows, uint64_t n, double *out)
{
	for (uint64_t k = 0; k < n; k++)
		out[k] = 0.0;
	for (uint64_t j = 0; j < nrows; j++) {
		const uint64_t *row = base + rows[j] * stride;
		for (uint64_t k = 0; k < n; k++)
			out[k] += as_double(__atomic_load_n(&row[k], RLX));
	}
}

void shmc_or_rows(const uint64_t *base, uint64_t stride, const uint64_t *rows,
                  uint64_t nrows, uint64_t n, uint64_t *out)
{
	for (uint64_t k = 0; k < n; k++)
		out[k] = 0;
	for (uint64_t j = 0; j < nrows; j++) {
		const uint64_t *row = base + rows[j] * stride;
		for (uint64_t k = 0; k < n; k++)
			out[k] |= __atomic_load_n(&row[k], RLX);
	}
}
