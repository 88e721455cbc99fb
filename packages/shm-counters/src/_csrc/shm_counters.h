/*
 * shm_counters.h: the whole C surface of shm-counters, as cffi sees it.
 *
 * Every function works on memory that Python mapped (mmap) and handed over
 * as a pointer; no function allocates, locks, or makes a system call (the
 * busy timer reads CLOCK_MONOTONIC, which Linux serves from the vDSO where
 * the clock source allows, exactly as time.monotonic_ns() does).
 *
 * Memory orders (GCC/Clang __atomic builtins, the same model as C11
 * <stdatomic.h>):
 *   - counter arithmetic, loads and stores are __ATOMIC_RELAXED: each
 *     counter is independent, a read-modify-write is exact whatever the
 *     order, and no other memory is published through a counter;
 *   - scoreboard owner cells use __ATOMIC_SEQ_CST compare-and-swap, loads
 *     and stores: a row's counters are zeroed before its owner is stored,
 *     and readers must see them in that order.
 */
#ifndef SHM_COUNTERS_H
#define SHM_COUNTERS_H

#include <stddef.h>
#include <stdint.h>

/* Stride between two Counters slots, in bytes (the cache line size).
 * Set once per process at import. */
void shmc_set_stride(uint64_t stride);

/* The floor of a cffi design: calls that do nothing. cffi passes one
 * argument directly (METH_O) and several through a tuple, so the one-argument
 * call is the cheapest there is; the hot paths use one-argument functions. */
uint64_t shmc_noop(uint64_t *cell);
uint64_t shmc_noop2(uint64_t *cell, uint64_t n);

/* Add or subtract 1: the one-argument hot path. */
uint64_t shmc_inc1(uint64_t *cell);
uint64_t shmc_dec1(uint64_t *cell);

/* One cell. */
uint64_t shmc_load(const uint64_t *cell);
void shmc_store(uint64_t *cell, uint64_t value);
uint64_t shmc_add(uint64_t *cell, uint64_t n);
uint64_t shmc_sub(uint64_t *cell, uint64_t n);
int shmc_cas(uint64_t *cell, uint64_t expected, uint64_t desired);
uint64_t shmc_load_sc(const uint64_t *cell);
void shmc_store_sc(uint64_t *cell, uint64_t value);

/* Slot i of an array of cache-line-sized slots. */
uint64_t shmc_incr_at(char *slots, uint64_t i, uint64_t n);
uint64_t shmc_decr_at(char *slots, uint64_t i, uint64_t n);
uint64_t shmc_load_at(char *slots, uint64_t i);
void shmc_store_at(char *slots, uint64_t i, uint64_t value);
void shmc_load_many(char *slots, uint64_t count, uint64_t *out);
void shmc_store_many(char *slots, uint64_t count, const uint64_t *values);

/* Scoreboard: nrows rows of row_bytes bytes, each
 * [owner, start_time, field_0, ..., field_{nfields-1}], and one reader's
 * private liveness cache per row (owner, start time, expiry, alive).
 * Rows with owner 0 or being claimed (SHMC_CLAIMING bit set) are skipped.
 * A row whose owner or start time differs from the cache is recorded in it
 * as alive (its owner was alive to claim it) and due since now - 1
 * (expiry now - 1); the caller records each check's result and expiry.
 * Sums into totals[nfields] the rows cached as alive, fresh or not; a row
 * is due when now > its expiry. Writes into due[] the indexes of at most
 * max_due due rows, those with the smallest (expiry, index), and returns
 * how many (in no particular order). */
#define SHMC_CLAIMING 0x8000000000000000ULL
uint64_t shmc_sb_scan(char *rows, uint64_t nrows, uint64_t row_bytes,
                      uint64_t nfields, uint64_t now,
                      uint64_t *cache_owner, uint64_t *cache_stime,
                      uint64_t *cache_expiry, uint8_t *cache_alive,
                      uint64_t *totals, uint64_t *due, uint64_t max_due);
void shmc_zero_cells(uint64_t *cells, uint64_t count);

/* Histogram: cells[0..15] statistics, see SHMC_H_* below; explicit mode
 * keeps nbuckets + 1 edges at cells[16..] and the buckets after them;
 * log2 mode keeps the buckets at cells[16..]. Returns 0, or -1 for a
 * negative value (nothing recorded). */
#define SHMC_H_COUNT 0
#define SHMC_H_SUM_LO 1
#define SHMC_H_SUM_HI 2
#define SHMC_H_SQ_LO 3
#define SHMC_H_SQ_HI 4
#define SHMC_H_MIN 5
#define SHMC_H_MAX 6
#define SHMC_H_LOW 7
#define SHMC_H_HIGH 8
#define SHMC_H_DATA 16
int shmc_hist_record(uint64_t *cells, uint64_t log2, uint64_t nbuckets,
                     int64_t value);
void shmc_hist_reset(uint64_t *cells, uint64_t log2, uint64_t nbuckets);

/* Busy timer: how long at least one unit of work (a request) was in flight,
 * published in four counters that other processes read: entered and done
 * (+1 per unit started and finished), busy_ns (busy time settled so far)
 * and since_ns (start of the busy time not settled yet; meaningful while
 * entered != done). The owner alone writes them, one call per start and
 * one per finish, picking the call from its own in-flight count; the
 * struct also keeps the owner's own copy of the figures (own_*) in private
 * memory, so the owner never reads shared memory back. Each call reads the
 * clock once and returns that time (ns): the Linux CLOCK_MONOTONIC, or
 * with `manual` non-zero the time the caller left in `now`. Readers load
 * done, entered, busy_ns, since_ns in that order; the writes below keep
 * every such read from counting settled time twice. A clock that went
 * back settles nothing. */
struct shmc_busy {
	uint64_t *entered;
	uint64_t *done;
	uint64_t *busy_ns;
	uint64_t *since_ns;
	uint64_t now;
	uint64_t manual;
	uint64_t own_entered;
	uint64_t own_done;
	uint64_t own_busy_ns;
	uint64_t own_since_ns; /* settled up to here (every step moves it) */
};
/* Non-zero if the steps below read the clock themselves (Linux). */
int shmc_busy_clock(void);
/* The steps' clock (ns); 0 where shmc_busy_clock() is 0. */
uint64_t shmc_monotonic_ns(void);
/* Idle to busy: since_ns = now, then entered + 1. */
uint64_t shmc_busy_start(struct shmc_busy *b);
/* Another unit while busy: entered + 1. */
uint64_t shmc_busy_join(struct shmc_busy *b);
/* One unit done, others still in flight: done + 1, since_ns = now, then
 * busy_ns + (now - previous since). */
uint64_t shmc_busy_settle(struct shmc_busy *b);
/* The last unit in flight done: done + 1, then busy_ns + (now - since). */
uint64_t shmc_busy_finish(struct shmc_busy *b);

/* -- packed cells: 64-bit integers and IEEE-754 doubles ------------------ *
 *
 * Cells 8 bytes apart (not one per cache line), for layouts of the caller's
 * own (shm_counters.Cells). A double lives in a cell as its bit pattern.
 *
 * Memory orders:
 *   - shmc_f_add/min/max are compare-and-swap loops on the bit pattern:
 *     load the cell, compute in double, CAS the new pattern in, and on a
 *     lost race redo the computation from the value the CAS saw. No update
 *     is ever lost, whatever the number of threads and processes; each
 *     addition is rounded once, in some order. __ATOMIC_RELAXED, like the
 *     counters: no other memory is published through these cells.
 *   - min and max store only when the new value compares smaller (larger):
 *     a NaN argument never replaces a value, and a cell holding NaN keeps it.
 *   - shmc_or/shmc_and: atomic fetch-or/fetch-and, relaxed.
 *   - the bulk functions (f_load_many, copy_cells, f_sum_rows, or_rows)
 *     load and store each cell atomically and relaxed, one after the other:
 *     they are not a snapshot. A caller that needs one (a seqlock) brackets
 *     them with sequentially consistent loads and shmc_fence().
 *   - shmc_fence: a sequentially consistent thread fence (both directions). */
double shmc_f_load(const uint64_t *cell);
void shmc_f_store(uint64_t *cell, double x);
double shmc_f_add(uint64_t *cell, double x);
double shmc_f_min(uint64_t *cell, double x);
double shmc_f_max(uint64_t *cell, double x);
uint64_t shmc_or(uint64_t *cell, uint64_t bits);
uint64_t shmc_and(uint64_t *cell, uint64_t bits);
void shmc_fence(void);
void shmc_load_range(const uint64_t *cells, uint64_t n, uint64_t *out);
void shmc_f_load_many(const uint64_t *cells, uint64_t n, double *out);
void shmc_f_store_many(uint64_t *cells, uint64_t n, const double *values);
void shmc_copy_cells(uint64_t *dst, const uint64_t *src, uint64_t n);
/* Column sums over rows: out[k] = sum of the doubles at
 * base[rows[j] * stride + k] for j < nrows, k < n (out is overwritten). */
void shmc_f_sum_rows(const uint64_t *base, uint64_t stride, const uint64_t *rows,
                     uint64_t nrows, uint64_t n, double *out);
/* Column bitwise or over rows, the same way, of 64-bit words. */
void shmc_or_rows(const uint64_t *base, uint64_t stride, const uint64_t *rows,
                  uint64_t nrows, uint64_t n, uint64_t *out);

#endif
