// Guest self-check for the VM tier: one kprobe, one fentry and one BPF LSM program.
// Compiled on the host by vigil.vmtier against build/vmlinux.h; CO-RE relocates it in the guest.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1

enum { HIT_KPROBE = 0, HIT_FENTRY = 1, HIT_LSM = 2, HIT_MAX = 4 };

// Per-hook hit counters, only for the test's own process (so background activity cannot fake it).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HIT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

// key 0: tgid whose opens are counted (set by the test after load).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} target SEC(".maps");

// inode number -> kernel dev_t of files whose open() the LSM program refuses.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u32);
} deny SEC(".maps");

static __always_inline int is_target(void)
{
	__u32 k = 0;
	__u32 *tgid = bpf_map_lookup_elem(&target, &k);

	return tgid && *tgid == (__u32)(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void bump(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&hits, &idx);

	if (c)
		__sync_fetch_and_add(c, 1);
}

SEC("kprobe/vfs_open")
int BPF_KPROBE(vmcheck_kprobe)
{
	if (is_target())
		bump(HIT_KPROBE);
	return 0;
}

SEC("fentry/security_file_open")
int BPF_PROG(vmcheck_fentry, struct file *file)
{
	if (is_target())
		bump(HIT_FENTRY);
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(vmcheck_lsm, struct file *file, int ret)
{
	__u64 ino;
	__u32 *dev;

	if (ret)
		return ret; // an earlier LSM already refused
	if (is_target())
		bump(HIT_LSM);
	ino = BPF_CORE_READ(file, f_inode, i_ino);
	dev = bpf_map_lookup_elem(&deny, &ino);
	if (dev && *dev == BPF_CORE_READ(file, f_inode, i_sb, s_dev))
		return -EPERM;
	return 0;
}
