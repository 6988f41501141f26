/* Workload filter of policies scoped to pods (TracingPolicyNamespaced, podSelector,
 * containerSelector): the tracking-cgroup ids of the containers a policy applies to, written by
 * the agent (vigil/k8s/policyfilter.py) as pods and labels change. One map for every policy,
 * keyed by the policy's filter id; created by the process sensor and shared with every generic
 * hook object, like execve_map. A hook whose vp_hook.filter_id is 0 applies everywhere. */
#ifndef VIGIL_POLICY_FILTER_BPF_H
#define VIGIL_POLICY_FILTER_BPF_H

#include "vigil_common.bpf.h"

struct policy_cgroup_key {
	__u32 filter_id;
	__u32 pad;
	__u64 cgroup_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_cgroup_key);
	__type(value, __u8);
} policy_cgroups SEC(".maps");

#endif
