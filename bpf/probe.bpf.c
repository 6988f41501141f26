// SPDX-License-Identifier: GPL-2.0
/* Feature probe: one tiny program per kernel capability. vigil/kernel/features.py
 * loads (and attaches) them one group at a time with set_autoload(), so a
 * program the kernel refuses never takes the others down.
 *
 * Helper calls are gated by a value read from the `arm` map, never by rodata:
 * the verifier prunes branches on frozen rodata, and a pruned call is never
 * checked, so a missing helper would load fine. `arm` stays zero, so the
 * gated calls (bpf_override_return, bpf_send_signal) never run. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Hit counters, indexed by enum probe_hit (mirrored in features.py). */
enum probe_hit {
	HIT_KPROBE = 0,
	HIT_KRETPROBE = 1,
	HIT_KPROBE_MULTI = 2,
	HIT_FENTRY = 3,
	HIT_FEXIT = 4,
	HIT_TRACEPOINT = 5,
	HIT_RAW_TP = 6,
	HIT_TP_BTF = 7,
	HIT_UPROBE = 8,
	HIT_URETPROBE = 9,
	HIT_PERF_EVENT = 10,
	HIT_TASK_BTF = 11,
	HIT_MAX = 16,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HIT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} arm SEC(".maps");

static __always_inline int hit(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&hits, &idx);

	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

static __always_inline int armed(void)
{
	__u32 k = 0;
	__u32 *a = bpf_map_lookup_elem(&arm, &k);

	return a && *a == 0x5157;
}

/* ---- kprobes (target chosen at attach time) ---- */
SEC("kprobe")
int probe_kprobe(struct pt_regs *ctx) { return hit(HIT_KPROBE); }

SEC("kretprobe")
int probe_kretprobe(struct pt_regs *ctx) { return hit(HIT_KRETPROBE); }

SEC("kprobe.multi/vfs_read")
int probe_kprobe_multi(struct pt_regs *ctx) { return hit(HIT_KPROBE_MULTI); }

SEC("kprobe")
int probe_override(struct pt_regs *ctx)
{
	if (armed())
		bpf_override_return(ctx, -12 /* -ENOMEM */);
	return 0;
}

/* ---- BPF trampolines ---- */
SEC("fentry/vfs_read")
int BPF_PROG(probe_fentry) { return hit(HIT_FENTRY); }

SEC("fexit/vfs_read")
int BPF_PROG(probe_fexit) { return hit(HIT_FEXIT); }

SEC("fmod_ret/security_file_open")
int BPF_PROG(probe_fmod_ret, struct file *file) { return 0; }

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file) { return 0; }

SEC("fentry/security_file_open")
int BPF_PROG(probe_d_path, struct file *file)
{
	char buf[64];

	bpf_d_path((struct path *)&file->f_path, buf, sizeof(buf));
	return 0;
}

/* ---- tracepoints ---- */
SEC("tracepoint/syscalls/sys_enter_getpid")
int probe_tracepoint(void *ctx) { return hit(HIT_TRACEPOINT); }

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx) { return hit(HIT_RAW_TP); }

SEC("tp_btf/sys_enter")
int BPF_PROG(probe_tp_btf, struct pt_regs *regs, long id) { return hit(HIT_TP_BTF); }

/* ---- uprobes (binary and offset chosen at attach time) ---- */
SEC("uprobe")
int probe_uprobe(struct pt_regs *ctx) { return hit(HIT_UPROBE); }

SEC("uretprobe")
int probe_uretprobe(struct pt_regs *ctx) { return hit(HIT_URETPROBE); }

static long loop_cb_ops(__u32 i, void *data) { return 0; }

/* ---- other program types ---- */
SEC("perf_event")
int probe_perf_event(struct bpf_perf_event_data *ctx) { return hit(HIT_PERF_EVENT); }

SEC("socket")
int probe_socket(struct __sk_buff *skb) { return skb->len; }

SEC("cgroup_skb/egress")
int probe_cgroup_skb(struct __sk_buff *skb) { return 1; }

SEC("cgroup/connect4")
int probe_connect4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/connect6")
int probe_connect6(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sendmsg4")
int probe_sendmsg4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/bind4")
int probe_bind4(struct bpf_sock_addr *ctx) { return 1; }

SEC("cgroup/sock_create")
int probe_sock_create(struct bpf_sock *ctx) { return 1; }

SEC("cgroup/sysctl")
int probe_sysctl(struct bpf_sysctl *ctx) { return 1; }

SEC("cgroup/dev")
int probe_device(struct bpf_cgroup_dev_ctx *ctx) { return 1; }

/* sock_ops with the helpers the generic hook calls from it (vigil_sockops, the tcp_connect
 * stand-in): sock_ops programs have them only on newer kernels (bpf_base_func_proto) */
SEC("sockops")
int probe_sock_ops(struct bpf_sock_ops *ctx)
{
	__u64 v = 0;

	if (armed() && ctx->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();

		bpf_probe_read_kernel(&v, sizeof(v), &t->start_time);
		bpf_probe_read_user(&v, sizeof(v), (void *)v);
		v += bpf_get_current_pid_tgid();
		bpf_send_signal(0);
		bpf_loop(4, loop_cb_ops, NULL, 0);
	}
	return 1;
}

/* ---- helpers (load only) ---- */
SEC("tracepoint/syscalls/sys_enter_getpid")
int probe_send_signal(void *ctx)
{
	if (armed())
		bpf_send_signal(0);
	return 0;
}

/* bpf_probe_write_user: refused under kernel lockdown (integrity/confidentiality) */
SEC("uprobe")
int probe_write_user(struct pt_regs *ctx)
{
	__u32 v = 0;

	if (armed())
		bpf_probe_write_user((void *)PT_REGS_SP(ctx), &v, sizeof(v));
	return 0;
}

/* bpf_ima_file_hash: sleepable BPF LSM programs and IMA */
SEC("lsm.s/file_open")
int BPF_PROG(probe_ima, struct file *file)
{
	__u8 h[64];

	if (armed())
		bpf_ima_file_hash(file, h, sizeof(h));
	return 0;
}

static long loop_cb(__u32 i, void *data) { return 0; }

SEC("raw_tp/sys_enter")
int probe_bpf_loop(void *ctx)
{
	bpf_loop(4, loop_cb, NULL, 0);
	return 0;
}

SEC("raw_tp/sys_enter")
int probe_task_btf(void *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();

	if (t->pid == -1)
		hit(HIT_TASK_BTF);
	return 0;
}

/* ---- iterators ---- */
SEC("iter/task")
int probe_task_iter(struct bpf_iter__task *ctx)
{
	static const char ok[] = "ok\n";

	if (ctx->task && ctx->meta->seq_num == 0)
		bpf_seq_write(ctx->meta->seq, (void *)ok, sizeof(ok) - 1);
	return 0;
}

/* ---- for tests/kernel/test_probe.py only: proves a cgroup hook really runs ---- */
SEC("cgroup/sock_create")
int probe_deny_sock(struct bpf_sock *ctx) { return 0; }
