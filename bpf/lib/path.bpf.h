/* Full path of a (dentry, vfsmount) pair, resolved in the kernel.
 * bpf_d_path is not allowed from tracepoints, so we walk d_parent and cross
 * mounts ourselves, one component per bpf_loop step (the verifier checks a
 * step once instead of unrolling the walk). Pass 1 collects components leaf
 * first; pass 2 places each at its final offset, giving "/a/b/c". */
#ifndef VIGIL_PATH_BPF_H
#define VIGIL_PATH_BPF_H

#include "vigil_common.bpf.h"

#define PATH_MAX_DEPTH 128
#define NAME_MAX_LEN 256
#define PATH_BUF_LEN 4096      /* bytes of path kept */
#define PATH_MASK (PATH_BUF_LEN - 1)
#define PATH_COPY_MASK 0xfff   /* bounds copies out of the scratch buffer */

struct walk_ctx {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct dentry *root_dentry;
	struct vfsmount *root_mnt;
	__u32 off;        /* component bytes so far (names + NULs) */
	__u32 limit;
	__u32 ncomp;
	__u32 fwd_off;    /* pass 2: source offset of the current component */
	__u8 truncated;   /* more components than fit */
	__u8 not_rooted;  /* ended on a detached mount (pipe, memfd, deleted tree) */
	__u8 complete;
};

/* The walk state lives in the map value, not on the stack: values read from
 * a map are unknown to the verifier, so the loop body converges at once
 * instead of being re-verified for every concrete counter value. */
struct path_buf {
	struct walk_ctx c;
	char comps[PATH_BUF_LEN + NAME_MAX_LEN];
	char out[PATH_BUF_LEN + NAME_MAX_LEN];
	__u16 lens[PATH_MAX_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_buf);
} path_scratch SEC(".maps");

/* Appends dentry's name as the next component (leaf first); 0 when the walk is full (then
 * marked truncated) or the name unreadable. */
static __always_inline int add_component(struct path_buf *pb, struct walk_ctx *c, struct dentry *dentry)
{
	long n;

	if (c->off >= c->limit || c->ncomp >= PATH_MAX_DEPTH) {
		c->truncated = 1;
		return 0;
	}
	n = bpf_probe_read_kernel_str(pb->comps + (c->off & PATH_MASK), NAME_MAX_LEN,
				      BPF_CORE_READ(dentry, d_name.name));
	if (n <= 0)
		return 0;
	if (n == 1)
		return 1;  /* an empty name: nothing to add */
	pb->lens[c->ncomp & (PATH_MAX_DEPTH - 1)] = n;
	c->ncomp++;
	c->off += n;
	return 1;
}

static long walk_step(__u32 i, void *arg)
{
	struct dentry *dentry, *parent, *mnt_root;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct walk_ctx *c;
	struct path_buf *pb;
	__u32 zero = 0;

	pb = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!pb)
		return 1;
	c = &pb->c;
	dentry = c->dentry;
	vfsmnt = c->vfsmnt;
	mnt = container_of(vfsmnt, struct mount, mnt);

	if (dentry == c->root_dentry && vfsmnt == c->root_mnt)
		goto done;
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mparent = BPF_CORE_READ(mnt, mnt_parent);

		if (dentry != mnt_root) {
			/* no mount (a bare dentry argument): its file system's root ends the path
			 * (its name, "/", is not a component) */
			if (!vfsmnt && dentry == BPF_CORE_READ(dentry, d_sb, s_root))
				goto done;
			/* its own parent, not a mount's root: a pseudo file (memfd, anonymous
			 * shmem) or a disconnected dentry. Its name is all the path there is
			 * ("/memfd:x", as /proc/<pid>/exe shows it, less " (deleted)") */
			c->not_rooted = 1;
			add_component(pb, c, dentry);
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
	if (!add_component(pb, c, dentry))
		goto done;
	c->dentry = parent;
	return 0;
done:
	c->complete = 1;
	return 1;
}

/* Component i (leaf first, n bytes incl. NUL, at source offset o) becomes
 * "/name" at offset total - o - n of the forward string. */
static long place_step(__u32 i, void *arg)
{
	struct walk_ctx *c;
	struct path_buf *pb;
	__u32 zero = 0, n, dst;

	pb = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!pb)
		return 1;
	c = &pb->c;
	n = pb->lens[i & (PATH_MAX_DEPTH - 1)];
	if (!n || c->fwd_off + n > c->off)
		return 1;
	dst = c->off - c->fwd_off - n;
	pb->out[dst & PATH_MASK] = '/';
	bpf_probe_read_kernel(pb->out + ((dst + 1) & PATH_MASK), (n - 1) & (NAME_MAX_LEN - 1),
			      pb->comps + (c->fwd_off & PATH_MASK));
	c->fwd_off += n;
	return 0;
}

/* Resolve (dentry, vfsmnt) relative to root and copy "/a/b" (no NUL) to dst.
 * dst must have PATH_COPY_MASK + 1 writable bytes. Returns the length; 0
 * means the root itself or a failure (see truncated/not_rooted). */
static __always_inline __u32 resolve_path(struct dentry *dentry, struct vfsmount *vfsmnt,
					  struct path *root, char *dst, __u32 limit,
					  __u8 *truncated, __u8 *not_rooted)
{
	struct path_buf *pb;
	struct walk_ctx *c;
	__u32 zero = 0, len;

	pb = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!pb)
		return 0;
	c = &pb->c;
	__builtin_memset(c, 0, sizeof(*c));
	c->dentry = dentry;
	c->vfsmnt = vfsmnt;
	c->root_dentry = BPF_CORE_READ(root, dentry);
	c->root_mnt = BPF_CORE_READ(root, mnt);
	/* a component may start at limit - 1: keep the total below 4 KiB */
	c->limit = limit < PATH_BUF_LEN - NAME_MAX_LEN ? limit : PATH_BUF_LEN - NAME_MAX_LEN;
	bpf_loop(PATH_MAX_DEPTH, walk_step, NULL, 0);
	*truncated = c->truncated || !c->complete;
	*not_rooted = c->not_rooted;
	len = c->off;
	if (!len)
		return 0;
	bpf_loop(c->ncomp & (PATH_MAX_DEPTH - 1 | PATH_MAX_DEPTH), place_step, NULL, 0);
	len &= PATH_COPY_MASK;
	if (bpf_probe_read_kernel(dst, len, pb->out))
		return 0;
	return len;
}

#endif
