/* The cgroup a task is tracked by, picked the way Tetragon picks it: on a unified (v2) host the
 * default hierarchy; on v1/hybrid hosts the hierarchy of the memory controller, else pids, else
 * cpuset. The agent finds the controller (vigil/kernel/cgroups.py) and sets cgrp_subsys_idx, its
 * index in /proc/cgroups order (= the kernel's enum cgroup_subsys_id), before load;
 * VIGIL_CGRP_DFL selects the default hierarchy. The cgroup's id is its kernfs node id, which is
 * the inode number user space sees on that hierarchy's mount. */
#ifndef VIGIL_CGROUP_BPF_H
#define VIGIL_CGROUP_BPF_H

#include "vigil_common.bpf.h"

#define VIGIL_CGRP_DFL 0xffffffffu
#define VIGIL_CGRP_SUBSYS_SLOTS 16   /* bound for the verifier; CGROUP_SUBSYS_COUNT is 12-14 */

const volatile __u32 cgrp_subsys_idx = VIGIL_CGRP_DFL;

/* kernfs_node::parent became __parent (RCU) in 6.15 */
struct kernfs_node___pre615 {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline struct cgroup *tracking_cgroup(struct task_struct *task)
{
	struct css_set *cs = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = NULL;
	__u32 idx = cgrp_subsys_idx;

	if (idx < VIGIL_CGRP_SUBSYS_SLOTS) {
		bpf_probe_read_kernel(&css, sizeof(css), &cs->subsys[idx & (VIGIL_CGRP_SUBSYS_SLOTS - 1)]);
		if (css)
			return BPF_CORE_READ(css, cgroup);
	}
	return BPF_CORE_READ(cs, dfl_cgrp);
}

static __always_inline __u64 cgroup_kn_id(struct cgroup *cg)
{
	return BPF_CORE_READ(cg, kn, id);
}

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___pre615 *)kn, parent);
}

static __always_inline __u64 tracking_cgroup_id(struct task_struct *task)
{
	return cgroup_kn_id(tracking_cgroup(task));
}

#endif
