// SPDX-License-Identifier: GPL-2.0
/* The sleepable companion of a uprobe or USDT hook with string arguments.
 *
 * The hook's own program (generic.bpf.c vigil_uprobe) reads a user string with
 * bpf_probe_read_user_str, which never faults: a string on a page the process has not
 * touched yet (a fresh mmap, a cold .rodata page) reads as an error. This program runs on
 * the same uprobe just before it (attached after it: a uprobe's newest consumer runs first)
 * and, being sleepable, faults the string's pages in, so the hook's read then finds them.
 * It reads nothing for the record and posts nothing.
 *
 * Each string's pointer is found as the hook's program finds it (read_arg): a uprobe
 * parameter is a register of pt_regs, a USDT operand a register, a constant, or a memory
 * operand (register + displacement, or base + index * scale) holding the pointer, read here
 * with bpf_copy_from_user (so faulted in too).
 *
 * Where the kernel has the bpf_copy_from_user_str kfunc (6.12+) it copies the string (up to
 * the hook's limit) and so faults each page it lies on; elsewhere (6.1) it faults page by
 * page with bpf_copy_from_user (one byte) and looks for the NUL on that page with
 * bpf_probe_read_user_str, stopping there. One copy of the object per hook; its rodata says
 * where the strings' pointers are and how many bytes the hook reads of each. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define UPF_ARGS 5        /* VP_MAX_ARGS: a hook's argument slots */
#define UPF_BUF 4096      /* VP_ARG_DATA: no hook reads more of a string */
#define UPF_PAGE 4096
#define UPF_NREGS 21      /* struct pt_regs' 8-byte slots */

/* Where one string's pointer is (vp_arg's VP_SRC_USDT fields; a uprobe parameter is its
 * register, off2 0) and how many bytes the hook reads of the string (its NUL included) */
struct upf_arg {
	__u32 max;        /* 0: no string here */
	__u16 reg;        /* pt_regs byte offset of the (base) register; >= 21 * 8: none */
	__u16 off2;       /* bit 0: memory operand, bits 1-5: index register's slot + 1,
			   * bits 6-7: log2 of its scale */
	__s64 konst;      /* displacement or constant */
	__u32 size;       /* bytes of a memory operand (1..8) */
	__u32 pad;
};

/* Set before load: the hook's string arguments, in no order; unused entries 0 */
const volatile struct upf_arg upf_args[UPF_ARGS] = {};
/* Set before load (tests): walk the pages even where the kfunc exists */
const volatile __u8 cfg_page_walk = 0;

extern int bpf_copy_from_user_str(void *dst, __u32 dst__sz, const void *unsafe_ptr__ign,
				  __u64 flags) __ksym __weak;

/* libbpf 1.1 has no bpf_ksym_exists: an unresolved weak kfunc's address is 0 */
#define upf_ksym_exists(sym) (!!(sym))

enum upf_stat {
	UPF_RUNS = 0,      /* program runs */
	UPF_READ = 1,      /* strings faulted in (read whole, or up to the hook's limit) */
	UPF_FAILED = 2,    /* strings that could not be read even sleeping (bad pointer, NULL) */
	UPF_WALKED = 3,    /* strings done by the page walk (no kfunc, or cfg_page_walk) */
	UPF_RESIDENT = 4,  /* of those, strings found resident by the walk's first read (nothing to fault) */
	UPF_NSTATS = 5,
};

/* per CPU: a counter shared by the CPUs costs an atomic on a shared line per string per hit */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UPF_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} uprefault_stats SEC(".maps");

/* Scratch for the copies: their bytes are never used, so two tasks sharing it is harmless */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[UPF_BUF]);
} uprefault_buf SEC(".maps");

static __always_inline void count(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&uprefault_stats, &k);

	if (v)
		*v += 1;  /* migration is off while it runs; another hit preempting it between the
			   * load and the store on this CPU loses a count at worst */
}

/* Fault in the pages of the string at p, up to max bytes, one page at a time: 0 when the
 * string's end (or the limit) was reached, -1 when a page could not be faulted in. A string
 * of at most UPF_BUF bytes lies on at most two pages. */
static __noinline int page_walk(__u64 p, __u32 max, char *buf)
{
	__u64 end = p + max;
	long r0;

	/* A string the process has just used is resident: one read that never faults (the hook's
	 * own kind) finds it whole (or up to the limit) for less than the walk's faulting read
	 * and page-bounded read of each page. Only a read that failed walks the pages. */
	if (max >= UPF_BUF)
		r0 = bpf_probe_read_user_str(buf, UPF_BUF, (void *)p);
	else
		r0 = bpf_probe_read_user_str(buf, max & (UPF_BUF - 1), (void *)p);
	if (r0 > 0) {
		count(UPF_RESIDENT);
		return 0;
	}

	for (int i = 0; i < 2; i++) {
		__u64 next = (p | (UPF_PAGE - 1)) + 1;
		__u32 n;
		char b;
		long r;

		if (p >= end)
			return 0;
		n = (next < end ? next : end) - p;  /* 1..UPF_PAGE */
		if (bpf_copy_from_user(&b, 1, (void *)p))
			return -1;
		/* a whole page, or less: a size the verifier sees bounded either way */
		if (n >= UPF_BUF)
			r = bpf_probe_read_user_str(buf, UPF_BUF, (void *)p);
		else
			r = bpf_probe_read_user_str(buf, n & (UPF_BUF - 1), (void *)p);
		if (r < 0)
			return -1;
		if (r < n)
			return 0;  /* its NUL is on this page */
		p = next;
	}
	return 0;
}

static __always_inline __u64 reg_at(struct pt_regs *ctx, __u32 slot)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, 8, (void *)ctx + (slot & 0x1f) * 8);  /* callers: slot < 21 */
	return v;
}

/* The string's address as read_arg finds it (its VP_SRC_USDT case); 0 if a memory operand
 * cannot be read even faulting */
static __always_inline __u64 str_ptr(struct pt_regs *ctx, __u32 i)
{
	__u32 reg = upf_args[i].reg, off2 = upf_args[i].off2, size = upf_args[i].size;
	__u64 p = upf_args[i].konst, x = 0;

	if (reg < UPF_NREGS * 8)
		p += reg_at(ctx, reg / 8);
	if (off2 >> 1)
		p += reg_at(ctx, ((off2 >> 1) & 0x1f) - 1) << ((off2 >> 6) & 3);
	if (!(off2 & 1))
		return p;
	if (!size || size > 8)
		size = 8;
	if (bpf_copy_from_user(&x, size, (void *)p))
		return 0;
	if (size < 8)
		x &= (1ULL << (size * 8)) - 1;
	return x;
}

SEC("uprobe.s")
int vigil_uprefault(struct pt_regs *ctx)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&uprefault_buf, &zero);

	count(UPF_RUNS);
	if (!buf)
		return 0;
	for (int i = 0; i < UPF_ARGS; i++) {
		__u32 max = upf_args[i].max;
		__u64 p;
		int ok;

		if (!max)
			continue;
		if (max > UPF_BUF)
			max = UPF_BUF;
		p = str_ptr(ctx, i);
		if (!p) {
			ok = 0;
		} else if (!cfg_page_walk && upf_ksym_exists(bpf_copy_from_user_str)) {
			ok = bpf_copy_from_user_str(buf, max, (void *)p, 0) >= 0;
		} else {
			ok = page_walk(p, max, buf) == 0;
			count(UPF_WALKED);
		}
		count(ok ? UPF_READ : UPF_FAILED);
	}
	return 0;
}
