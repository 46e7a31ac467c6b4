/*
 * lxdmig-workload: the test bed's container workload.
 *
 * Keeps MIB MiB of anonymous memory, rewrites DIRTY_RATE MiB of it per
 * second, and every TICK_MS ms increments a counter and writes one JSON
 * line describing itself to STATE (rewritten in place).
 *
 * Every 4 KiB page holds words derived from (page index, generation); the
 * generation of each page is also kept in a separate array. The verifier
 * walks the buffer continuously and compares each page with what its
 * generation says it must hold, so a page that was lost (zero), stale
 * (an older generation, e.g. from a pre-dump round) or corrupted is caught
 * and "checksum_ok" turns false for good.
 *
 * "incarnation" is random per process start, and "max_gap_ms" is the longest
 * wall-clock pause between two ticks: after a migration it is the downtime
 * the workload itself saw.
 *
 * Built static (gcc -static) so it runs in a busybox rootfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / sizeof(uint64_t))
#define RECORD 512
#define VERIFY_BYTES_PER_SEC (256.0 * 1024 * 1024)

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Never zero for any (page, gen, word), so a zeroed page fails. */
static uint64_t word(uint64_t page, uint32_t gen, uint64_t k)
{
	return mix((page << 32) ^ ((uint64_t)gen << 12) ^ k) | 1;
}

static void fill(uint64_t *p, uint64_t page, uint32_t gen)
{
	for (uint64_t k = 0; k < WORDS; k++)
		p[k] = word(page, gen, k);
}

static int check(const uint64_t *p, uint64_t page, uint32_t gen)
{
	for (uint64_t k = 0; k < WORDS; k++)
		if (p[k] != word(page, gen, k))
			return 0;
	return 1;
}

static int64_t now_ns(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void usage(void)
{
	fprintf(stderr, "usage: lxdmig-workload --state PATH [--mib N] [--dirty-rate MIB_PER_S] [--tick-ms MS]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *state = NULL;
	uint64_t mib = 16;
	double rate = 1.0;
	long tick_ms = 10;

	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--state"))
			state = argv[++i];
		else if (!strcmp(argv[i], "--mib"))
			mib = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--dirty-rate"))
			rate = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--tick-ms"))
			tick_ms = strtol(argv[++i], NULL, 10);
		else
			usage();
	}
	if (!state || mib == 0 || rate < 0 || tick_ms <= 0)
		usage();

	uint64_t pages = mib * 1024 * 1024 / PAGE;
	uint64_t *buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *gen = calloc(pages, sizeof(*gen));
	if (buf == MAP_FAILED || !gen) {
		perror("lxdmig-workload: allocate");
		return 1;
	}
	for (uint64_t i = 0; i < pages; i++) {
		gen[i] = 1;
		fill(buf + i * WORDS, i, 1);
	}

	int fd = open(state, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		perror("lxdmig-workload: open state");
		return 1;
	}
	uint64_t incarnation = 0;
	if (getrandom(&incarnation, sizeof(incarnation), 0) != sizeof(incarnation))
		incarnation = (uint64_t)now_ns(CLOCK_REALTIME) ^ (uint64_t)getpid();

	double tick_s = tick_ms / 1000.0;
	double dirty_per_tick = rate * 1024 * 1024 / PAGE * tick_s;
	double verify_per_tick = VERIFY_BYTES_PER_SEC / PAGE * tick_s;
	double dirty_credit = 0, verify_credit = 0;
	uint64_t dirty_cursor = 0, verify_cursor = 0;
	uint64_t counter = 0, dirtied = 0, verified_passes = 0, bad_pages = 0;
	int64_t started = now_ns(CLOCK_REALTIME), last = started, max_gap = 0, max_gap_end = 0;
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);

	for (;;) {
		dirty_credit += dirty_per_tick;
		for (; dirty_credit >= 1; dirty_credit -= 1, dirtied++) {
			uint64_t i = dirty_cursor;
			dirty_cursor = (dirty_cursor + 1) % pages;
			fill(buf + i * WORDS, i, ++gen[i]);
		}
		verify_credit += verify_per_tick;
		for (; verify_credit >= 1; verify_credit -= 1) {
			uint64_t i = verify_cursor;
			if (!check(buf + i * WORDS, i, gen[i]))
				bad_pages++;
			if (++verify_cursor == pages) {
				verify_cursor = 0;
				verified_passes++;
			}
		}

		int64_t t = now_ns(CLOCK_REALTIME);
		if (t - last > max_gap) {
			max_gap = t - last;
			max_gap_end = t;
		}
		last = t;
		counter++;

		char rec[RECORD];
		int n = snprintf(rec, sizeof(rec),
			"{\"pid\": %d, \"counter\": %llu, \"checksum_ok\": %s, \"bad_pages\": %llu, "
			"\"verified_passes\": %llu, \"incarnation\": \"%016llx\", \"mib\": %llu, "
			"\"dirty_rate_mib_s\": %.3f, \"pages_dirtied\": %llu, \"tick_ms\": %ld, "
			"\"started_ns\": %lld, \"time_ns\": %lld, \"max_gap_ms\": %.3f, \"max_gap_end_ns\": %lld}",
			getpid(), (unsigned long long)counter, bad_pages ? "false" : "true",
			(unsigned long long)bad_pages, (unsigned long long)verified_passes,
			(unsigned long long)incarnation, (unsigned long long)mib, rate,
			(unsigned long long)dirtied, tick_ms, (long long)started, (long long)t,
			max_gap / 1e6, (long long)max_gap_end);
		/* Pad to a fixed size: one pwrite replaces the whole record. */
		memset(rec + n, ' ', RECORD - 1 - n);
		rec[RECORD - 1] = '\n';
		if (pwrite(fd, rec, RECORD, 0) != RECORD && errno != EINTR) {
			perror("lxdmig-workload: write state");
			return 1;
		}

		next.tv_nsec += tick_ms * 1000000L;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		struct timespec m;
		clock_gettime(CLOCK_MONOTONIC, &m);
		if (m.tv_sec > next.tv_sec || (m.tv_sec == next.tv_sec && m.tv_nsec > next.tv_nsec))
			next = m; /* fell behind (or was frozen): do not burst to catch up */
		else
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
	}
}
