// SPDX-License-Identifier: GPL-2.0
/* The sleepable companion of a uprobe hook with string arguments read from pt_regs.
 *
 * The hook's own program (generic.bpf.c vigil_uprobe) reads a user string with
 * bpf_probe_read_user_str, which never faults: a string on a page the process has not
 * touched yet (a fresh mmap, a cold .rodata page) reads as an error. This program runs on
 * the same uprobe just before it (attached after it: a uprobe's newest consumer runs first)
 * and, being sleepable, faults the string's pages in, so the hook's read then finds them.
 * It reads nothing for the record and posts nothing.
 *
 * Where the kernel has the bpf_copy_from_user_str kfunc (6.12+) it copies the string (up to
 * the hook's limit) and so faults each page it lies on; elsewhere (6.1) it faults page by
 * page with bpf_copy_from_user (one byte) and looks for the NUL on that page with
 * bpf_probe_read_user_str, stopping there. One copy of the object per hook; its rodata says
 * which registers hold strings and how many bytes the hook reads of each. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define UPF_REGS 5        /* the uprobe entry reads parameters 1-5 (generic.bpf.c from_regs) */
#define UPF_BUF 4096      /* VP_ARG_DATA: no hook reads more of a string */
#define UPF_PAGE 4096

/* Set before load: bytes the hook reads of the string in parameter i + 1 (with its NUL);
 * 0: no string argument there */
const volatile __u32 str_max[UPF_REGS] = {};
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
	UPF_NSTATS = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
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
		__sync_fetch_and_add(v, 1);
}

/* Fault in the pages of the string at p, up to max bytes, one page at a time: 0 when the
 * string's end (or the limit) was reached, -1 when a page could not be faulted in. A string
 * of at most UPF_BUF bytes lies on at most two pages. */
static __noinline int page_walk(__u64 p, __u32 max, char *buf)
{
	__u64 end = p + max;

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

SEC("uprobe.s")
int vigil_uprefault(struct pt_regs *ctx)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&uprefault_buf, &zero);
	__u64 regs[UPF_REGS];

	count(UPF_RUNS);
	if (!buf)
		return 0;
	regs[0] = PT_REGS_PARM1(ctx);
	regs[1] = PT_REGS_PARM2(ctx);
	regs[2] = PT_REGS_PARM3(ctx);
	regs[3] = PT_REGS_PARM4(ctx);
	regs[4] = PT_REGS_PARM5(ctx);
	for (int i = 0; i < UPF_REGS; i++) {
		__u32 max = str_max[i];
		int ok;

		if (!max)
			continue;
		if (max > UPF_BUF)
			max = UPF_BUF;
		if (!cfg_page_walk && upf_ksym_exists(bpf_copy_from_user_str)) {
			ok = bpf_copy_from_user_str(buf, max, (void *)regs[i], 0) >= 0;
		} else {
			ok = page_walk(regs[i], max, buf) == 0;
			count(UPF_WALKED);
		}
		count(ok ? UPF_READ : UPF_FAILED);
	}
	return 0;
}
