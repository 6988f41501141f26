/* execve_map: identity and binary of every live thread group, keyed by
 * tgid. Written by the process sensor; read by every other sensor (the
 * agent shares the one map between objects). */
#ifndef VIGIL_PROCESS_MAP_BPF_H
#define VIGIL_PROCESS_MAP_BPF_H

#include "vigil_common.bpf.h"

#define BINARY_LEN 256

/* execve_entry.flags */
#define EXECVE_F_CLONE 1  /* made by a fork, no exec since */

/* Identity and binary of a thread group. `bin` is the executed file (the
 * interpreter for scripts), what matchBinaries selectors compare. */
struct execve_entry {
	struct exec_key key;
	struct exec_key pkey;
	__u32 bin_len;
	__u32 flags;
	char bin[BINARY_LEN];
	__u64 caps[3];           /* at exec: effective, inheritable, permitted */
	__u32 ns[VIGIL_NS_COUNT];/* at exec (matchNamespaceChanges) */
	__u64 follow;            /* matchBinaries followChildren: bit k set when this process or an
				  * ancestor executed a binary matching follow rule k */
};

/* Current exec identity of every live thread group, keyed by tgid.
 * Pre-existing processes are written here by the agent from procfs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct execve_entry);
} execve_map SEC(".maps");


/* TrackSock: which process owns a socket (struct sock *), so events that handle the socket
 * elsewhere (softirq, another process) are attributed to its owner. */
struct sock_owner {
	struct exec_key key;
	__u32 tid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct sock_owner);
} socktrack SEC(".maps");

#endif
