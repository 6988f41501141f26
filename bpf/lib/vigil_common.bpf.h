/* Maps and helpers every Vigil sensor shares. The agent creates `events`, `vigil_reader`
 * and `vigil_drops` once (in the process sensor) and hands the same maps to
 * every other object, so all records arrive in one ordered stream. */
#ifndef VIGIL_COMMON_BPF_H
#define VIGIL_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "vigil_events.h"

/* Why a record was not delivered; index into vigil_drops. */
enum vigil_drop_cause {
	DROP_RB_FULL_EXEC = 0,
	DROP_RB_FULL_CLONE = 1,
	DROP_RB_FULL_EXIT = 2,
	DROP_RB_FULL_GENERIC = 3,
	DROP_EXECVE_MAP_FULL = 4,
	DROP_HEAP = 5,
	DROP_EXECVE_MAP_DELETE = 6,  /* not a lost record: a failed execve_map delete (map_errors_delete) */
	DROP_CAUSE_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_CAUSE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} vigil_drops SEC(".maps");

static __always_inline void count_drop(__u32 cause)
{
	__u64 *v = bpf_map_lookup_elem(&vigil_drops, &cause);

	/* atomic although per-CPU: preemptible programs (cgroup, uprobe, trampolines) and
	 * programs in interrupt context can run between a load and its store on this CPU */
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* A field read in a body shared by a tp_btf and a raw_tp program; `btf` is a
 * constant once the body is inlined. A tp_btf program's arguments are typed
 * kernel pointers it may follow with plain loads (a fault reads 0, through the
 * exception table); a raw_tp program must call bpf_probe_read_kernel for each
 * read, a helper call that costs tens of ns. */
#define VREAD(btf, src, a, ...)                                                   \
	((btf) ? __builtin_preserve_access_index(___arrow(src, a, ##__VA_ARGS__)) \
	       : BPF_CORE_READ(src, a, ##__VA_ARGS__))

/* How the agent reads the rings: written by the agent, read by every program.
 * While it drains on a timer a record needs no wakeup, and a wakeup costs the
 * task that made the record an interrupt (irq_work; 10-15 us inside a VM).
 * While it sleeps in epoll (and left unset: no agent manages it) the kernel's
 * own rule applies: a record wakes the reader when the reader had caught up to
 * it, i.e. the first record after the reader's last drain. Not a forced wakeup
 * per record: the reader is woken by that first one, and every record made
 * until it has stored DRAINING (its wakeup latency: milliseconds on a loaded
 * machine) raised an irq_work of its own (1,459 in 200,000 exported opens). */
enum vigil_reader_state {
	VIGIL_READER_UNMANAGED = 0,
	VIGIL_READER_DRAINING = 1,
	VIGIL_READER_SLEEPING = 2,
};

/* BPF_F_MMAPABLE (Linux 5.5): the agent stores its state through a shared mapping of the
 * value, a plain store instead of a bpf(BPF_MAP_UPDATE_ELEM) system call each time it goes
 * to sleep or wakes (kernel.ringbuf.PairedRings; the system call where it cannot map it). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} vigil_reader SEC(".maps");

static __always_inline __u64 wakeup_flags(void)
{
	__u32 k = 0, *st = bpf_map_lookup_elem(&vigil_reader, &k);

	return st && *st == VIGIL_READER_DRAINING ? BPF_RB_NO_WAKEUP : 0;
}

static __always_inline long emit(void *data, __u64 size, __u32 cause)
{
	long err = bpf_ringbuf_output(&events, data, size, wakeup_flags());

	if (err)
		count_drop(cause);
	return err;
}

#endif
