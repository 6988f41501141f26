/* Full path of a (dentry, vfsmount) pair, walked in the kernel.
 * bpf_d_path is not allowed from tracepoints, so we walk d_parent and cross
 * mounts ourselves, one component per bpf_loop step (the verifier checks the
 * step once instead of unrolling the walk). Components are written leaf
 * first, each NUL terminated, into a per-CPU scratch buffer; user space
 * reverses them. The caller copies the result into its record. */
#ifndef VIGIL_PATH_BPF_H
#define VIGIL_PATH_BPF_H

#include "vigil_common.bpf.h"

#define PATH_MAX_DEPTH 128
#define NAME_MAX_LEN 256
#define PATH_BUF_LEN 4096      /* component bytes kept per path */
#define PATH_COPY_MASK 0x1fff  /* bounds the copy out of the scratch buffer */

struct path_buf {
	char data[PATH_BUF_LEN + NAME_MAX_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_buf);
} path_scratch SEC(".maps");

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u32 off;
	__u32 limit;
	__u8 truncated;   /* more components than fit */
	__u8 not_rooted;  /* ended on a detached mount (pipe, memfd, deleted tree) */
	__u8 complete;
};

static long walk_step(__u32 i, void *arg)
{
	struct walk_ctx *c = arg;
	struct dentry *dentry = c->dentry, *parent, *mnt_root;
	struct vfsmount *vfsmnt = c->vfsmnt;
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	struct path_buf *pb;
	__u32 zero = 0;
	long n;

	if (dentry == c->root_dentry && vfsmnt == c->root_mnt)
		goto done;
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mparent = BPF_CORE_READ(mnt, mnt_parent);

		if (dentry != mnt_root) {
			c->not_rooted = 1;
			goto done;
		}
		if (mnt == mparent) {
			/* top of the mount tree; anonymous mounts have no namespace */
			if (!BPF_CORE_READ(mnt, mnt_ns))
				c->not_rooted = 1;
			goto done;
		}
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->vfsmnt = (struct vfsmount *)((char *)mparent +
						bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	if (c->off >= c->limit) {
		c->truncated = 1;
		goto done;
	}
	pb = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!pb)
		goto done;
	n = bpf_probe_read_kernel_str(pb->data + (c->off & (PATH_BUF_LEN - 1)), NAME_MAX_LEN,
				      BPF_CORE_READ(dentry, d_name.name));
	if (n <= 0)
		goto done;
	c->off += n;
	c->dentry = parent;
	return 0;
done:
	c->complete = 1;
	return 1;
}

/* Walk (dentry, vfsmnt) up to root, copy the components to dst.
 * dst must have PATH_COPY_MASK + 1 writable bytes. Returns bytes written. */
static __always_inline __u32 walk_path(struct dentry *dentry, struct vfsmount *vfsmnt,
				       struct path *root, char *dst, __u32 limit,
				       __u8 *truncated, __u8 *not_rooted)
{
	struct walk_ctx c = {};
	struct path_buf *pb;
	__u32 zero = 0;

	c.dentry = dentry;
	c.vfsmnt = vfsmnt;
	c.root_dentry = BPF_CORE_READ(root, dentry);
	c.root_mnt = BPF_CORE_READ(root, mnt);
	c.limit = limit < PATH_BUF_LEN ? limit : PATH_BUF_LEN;
	bpf_loop(PATH_MAX_DEPTH, walk_step, &c, 0);
	*truncated = c.truncated || !c.complete;
	*not_rooted = c.not_rooted;
	pb = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!pb || !c.off)
		return 0;
	if (bpf_probe_read_kernel(dst, c.off & PATH_COPY_MASK, pb->data))
		return 0;
	return c.off & PATH_COPY_MASK;
}

#endif
