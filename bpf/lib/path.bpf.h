/* Full path of a (dentry, vfsmount) pair, walked in the kernel.
 * bpf_d_path is not allowed from tracepoints, so we walk d_parent and cross
 * mounts ourselves. Components are written leaf first, each NUL terminated;
 * user space reverses them. That keeps every write at a growing, masked
 * offset, which the verifier accepts on old kernels too. */
#ifndef VIGIL_PATH_BPF_H
#define VIGIL_PATH_BPF_H

#include "vigil_common.bpf.h"

#define PATH_MAX_DEPTH 64
#define NAME_MAX_LEN 256
#ifndef VIGIL_DATA_MASK
#define VIGIL_DATA_MASK 0x7fff
#endif

struct path_walk {
	__u32 off;        /* bytes written so far */
	__u8 truncated;   /* more components than PATH_MAX_DEPTH or no room */
	__u8 not_rooted;  /* ended on a detached mount (pipe, memfd, ...) */
};

/* buf must hold VIGIL_DATA_MASK + 1 + NAME_MAX_LEN bytes. */
static __always_inline void walk_path(struct dentry *dentry, struct vfsmount *vfsmnt,
				      struct path *root, char *buf, __u32 base,
				      __u32 limit, struct path_walk *w)
{
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	struct dentry *root_dentry = BPF_CORE_READ(root, dentry);
	struct vfsmount *root_mnt = BPF_CORE_READ(root, mnt);
	__u32 off = 0;
	int i;

	w->truncated = 0;
	w->not_rooted = 0;
	for (i = 0; i < PATH_MAX_DEPTH; i++) {
		struct dentry *parent, *mnt_root;
		const unsigned char *name;
		long n;

		if (dentry == root_dentry && vfsmnt == root_mnt)
			goto done;
		mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		parent = BPF_CORE_READ(dentry, d_parent);
		if (dentry == mnt_root || dentry == parent) {
			struct mount *mparent = BPF_CORE_READ(mnt, mnt_parent);

			if (dentry != mnt_root) {
				/* a dentry that is its own parent but no mount root: detached */
				w->not_rooted = 1;
				goto done;
			}
			if (mnt == mparent) {
				/* global root reached; an anonymous mount has no parent */
				if (BPF_CORE_READ(mnt, mnt_ns) == NULL)
					w->not_rooted = 1;
				goto done;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mparent;
			vfsmnt = &mparent->mnt;
			continue;
		}
		if (off >= limit) {
			w->truncated = 1;
			goto done;
		}
		name = BPF_CORE_READ(dentry, d_name.name);
		n = bpf_probe_read_kernel_str(buf + ((base + off) & VIGIL_DATA_MASK), NAME_MAX_LEN, name);
		if (n <= 0)
			goto done;
		off += n;
		dentry = parent;
	}
	w->truncated = 1;
done:
	w->off = off;
}

#endif
