/* vigil-permd: answers fanotify permission events (exec, open) for the Vigil agent.
 *
 * Why a separate native process: a process on the host waiting for a permission
 * answer must never wait on the agent's Python interpreter (a vfork that keeps the
 * GIL, a long C call, SIGSTOP, a debugger). The agent compiles the policy into a
 * decision table and pushes it here over a SOCK_SEQPACKET socketpair (permd.h); this
 * process owns the fanotify groups, decides every event from the table, answers, and
 * sends the agent a report for each selector that matched.
 *
 * Bounds:
 * - Every event read gets a deadline; a watchdog thread answers it with the table's
 *   default when the decision has not been written by then. When the main thread
 *   has been busy longer than the deadline, the watchdog also reads and answers new
 *   events by the default (rescue), so nothing waits on a stuck decision.
 * - When the agent goes away (socket closed) or on SIGTERM/SIGINT the helper exits, from
 *   the watchdog when the main thread is stuck; closing the fanotify group makes the kernel
 *   allow whatever is in flight.
 * - Reports are sent without blocking; when the agent does not read, they are
 *   dropped and counted, and never take the last of the socket's buffer: the replies
 *   to the agent's requests (ACK, PD_STATS) always have room (REPLY_ROOM).
 * - The kernel opens each event's file for the listener inside read(), and closing it
 *   may call the file system too. On a file system served by a process or the network
 *   (FUSE, NFS, CIFS, 9p, ...: SERVED_FS) both wait on the server. So the main group
 *   holds only marks on other file systems, and each served file system that a rule
 *   names gets a group of its own, read by a thread of its own (served_main) that holds
 *   no lock across a read or a close; the watchdog answers its pending events at their
 *   deadline without reading it (their fds closed by that thread) and never rescues it.
 *   A hung server then holds only events on its own file system, whose processes would
 *   wait on it for their own open anyway (the permission event comes before the file
 *   system's ->open, in do_dentry_open, for exec as for open). Counted: `served`
 *   (events read from such groups), `served_groups`. Marking a path on a served file
 *   system (at a commit) still asks its server; a server that hangs then holds the main
 *   thread, and the watchdog rescues its events by the default meanwhile.
 *
 * Marks cover only what the rules name: a file (its directory watched with inotify so
 * a replacement is marked too), a directory tree (new directories marked as they
 * appear), a mount, a file system, or, for rules that can match anywhere, every real
 * file system (new mounts followed through /proc/self/mountinfo; file systems served by a
 * process or the network left out). A new table gets new fanotify groups, marked completely
 * before the old ones are drained and closed (a served one by its own thread, once its server
 * lets it read; the main one a second later, read meanwhile: see install), so there is no
 * moment without the rules. The table is shared (refcounted)
 * with the served groups' threads, which decide by the same rules.
 *
 * Remembered allows: when every rule of a kind reads only the file's path, a file no rule
 * matched is allowed whoever asks, so the group stops asking about it (an ignore mask on
 * its inode, cleared by the kernel when the file is written to; forgotten when the file is
 * renamed, linked, changed or deleted). Allow-list and deny-list tables then cost one
 * round trip per binary, not one per exec. Files on served file systems are never
 * remembered (their handles and attributes would be asked of their server).
 *
 * Usage: vigil-permd --control-fd N [--test-hooks]   |   vigil-permd --layout
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

#include "permd.h"

#define MAX_PENDING 4096
#define MAX_TREE_DIRS 65536
#define MAX_ANCESTORS 64
#define SERVICE_EVERY 64          /* directories marked between looks at the current group */
#define META_SZ ((int)sizeof(struct fanotify_event_metadata))
#define MAX_REMEMBERED 16384      /* ignore marks per group: each pins its inode in the kernel */
#define REGROUP_QUIET_MS 1000     /* after a regroup, no fid_only file is remembered for this long */
/* what makes a remembered file forgotten (a write: the kernel has dropped its ignore mask already) */
#define WATCH_MASK (FAN_MOVE_SELF | FAN_ATTRIB | FAN_DELETE_SELF | FAN_MODIFY)
#ifndef AT_HANDLE_FID
#define AT_HANDLE_FID 0x200       /* Linux 6.5: a handle that names a file, not one to open it by */
#endif
#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x1000U      /* Linux 5.8 */
#endif
#define MAX_SERVED_GROUPS 32      /* served file systems with a group (and thread) of their own */

/* ------------------------------------------------------------------ small things */
static uint64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Every descriptor closed, before the process ends: the groups close now, and the kernel
 * allows what they hold in flight. Not left to the exit: a thread held in a served file
 * system's open (a FUSE request its server has read is waited out even by a killed thread)
 * keeps the process's descriptor table, and with it every group, open for as long as it is
 * held. Its own group stays open only while it reads it. */
static void close_all(void)
{
	if (close_range(3, ~0U, 0))
		for (int fd = 3; fd < 65536; fd++)
			close(fd);
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		fprintf(stderr, "vigil-permd: out of memory\n");
		close_all();
		_exit(1);   /* the kernel allows everything in flight when the group closes */
	}
	return q;
}

#define PUSH(arr, n) (arr = xrealloc(arr, sizeof(*(arr)) * ((n) + 1)), &(arr)[(n)++])

/* ------------------------------------------------------------------ decision table */
struct sval { uint32_t len; char *s; };
struct cond { uint32_t field, op, flags, n; struct sval *sv; uint32_t *pids; };
/* nopost: the decisions of this NoPost rule (no report is sent for them; PD_STATS tells them) */
struct rule { uint32_t hook_id, selector, kinds, action, monitor, ncond; struct cond *conds; uint64_t nopost; };
/* served: the path is on a file system served by a process or the network (set when the table
 * is first marked; a regroup leaves those marks to the groups that hold them) */
struct markspec { uint32_t kind, mask; char *path; int served; };
struct table {
	int refs;                 /* S.table's, and one per batch a served group's thread decides with (under S.mu) */
	uint32_t generation, default_allow, deadline_ms;
	struct rule *rules; uint32_t nrules;
	struct markspec *marks; uint32_t nmarks;
	uint32_t *exempt; uint32_t nexempt;
	int need_binary;
	uint32_t remember_kinds;  /* PD_KIND_* whose decisions read only the path (set at commit) */
};

static void table_free(struct table *t)
{
	if (!t)
		return;
	for (uint32_t i = 0; i < t->nrules; i++) {
		struct rule *r = &t->rules[i];
		for (uint32_t j = 0; j < r->ncond; j++) {
			for (uint32_t k = 0; k < r->conds[j].n && r->conds[j].sv; k++)
				free(r->conds[j].sv[k].s);
			free(r->conds[j].sv);
			free(r->conds[j].pids);
		}
		free(r->conds);
	}
	for (uint32_t i = 0; i < t->nmarks; i++)
		free(t->marks[i].path);
	free(t->rules);
	free(t->marks);
	free(t->exempt);
	free(t);
}

static int str_match(uint32_t op, const struct cond *c, const char *s, size_t n)
{
	int any = 0;
	for (uint32_t i = 0; i < c->n && !any; i++) {
		const struct sval *v = &c->sv[i];
		switch (op) {
		case PD_OP_EQUAL: case PD_OP_NOTEQUAL:
			any = v->len == n && memcmp(v->s, s, n) == 0;
			break;
		case PD_OP_PREFIX: case PD_OP_NOTPREFIX:
			any = v->len <= n && memcmp(v->s, s, v->len) == 0;
			break;
		case PD_OP_POSTFIX: case PD_OP_NOTPOSTFIX:
			any = v->len <= n && memcmp(v->s, s + n - v->len, v->len) == 0;
			break;
		}
	}
	return (op == PD_OP_NOTEQUAL || op == PD_OP_NOTPREFIX || op == PD_OP_NOTPOSTFIX) ? !any : any;
}

/* ppid from /proc/<pid>/stat: the field after the last ')' and the state */
static uint32_t parent_of(uint32_t pid)
{
	char p[64], buf[512];
	snprintf(p, sizeof(p), "/proc/%u/stat", pid);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *rp = strrchr(buf, ')');
	unsigned st_ppid = 0;
	char state;
	if (!rp || sscanf(rp + 1, " %c %u", &state, &st_ppid) != 2)
		return 0;
	return st_ppid;
}

/* The facts of one request; the binary and ancestry are read only when a rule asks. */
struct request {
	uint32_t kind, pid;
	const char *path; size_t path_len;
	char binary[PATH_MAX]; ssize_t binary_len;   /* -1: not read yet */
	uint32_t anc[MAX_ANCESTORS]; int nanc;        /* -1: not read yet */
	int binary_given;
};

static const char *req_binary(struct request *q, size_t *n)
{
	if (q->binary_len < 0) {
		char p[64];
		snprintf(p, sizeof(p), "/proc/%u/exe", q->pid);
		q->binary_len = readlink(p, q->binary, sizeof(q->binary) - 1);
		if (q->binary_len < 0)
			q->binary_len = 0;
		q->binary[q->binary_len] = 0;
	}
	*n = (size_t)q->binary_len;
	return q->binary;
}

static int pid_match(const struct cond *c, struct request *q)
{
	int any = 0;
	if (c->flags & PD_COND_FOLLOW_FORKS && q->nanc < 0) {
		q->nanc = 0;
		for (uint32_t p = parent_of(q->pid); p > 0 && q->nanc < MAX_ANCESTORS; p = parent_of(p))
			q->anc[q->nanc++] = p;
	}
	for (uint32_t i = 0; i < c->n && !any; i++) {
		any = c->pids[i] == q->pid;
		for (int a = 0; c->flags & PD_COND_FOLLOW_FORKS && a < q->nanc && !any; a++)
			any = c->pids[i] == q->anc[a];
	}
	return c->op == PD_OP_NOTIN ? !any : any;
}

static int rule_matches(const struct rule *r, struct request *q)
{
	if (!(r->kinds & q->kind))
		return 0;
	for (uint32_t i = 0; i < r->ncond; i++) {
		const struct cond *c = &r->conds[i];
		size_t n;
		const char *s;
		switch (c->field) {
		case PD_FIELD_PATH:
			if (!str_match(c->op, c, q->path, q->path_len))
				return 0;
			break;
		case PD_FIELD_BINARY:
			s = req_binary(q, &n);
			if (!str_match(c->op, c, s, n))
				return 0;
			break;
		case PD_FIELD_PID:
			if (!pid_match(c, q))
				return 0;
			break;
		default:
			return 0;
		}
	}
	return 1;
}

/* Each hook decides by its first matching selector (rules of a hook are consecutive,
 * in selector order); the request is refused when any deciding selector enforces. */
struct verdict { int allow, kill, nmatch; int32_t rules[PD_MAX_MATCH]; };

static void decide(const struct table *t, struct request *q, struct verdict *v)
{
	memset(v, 0, sizeof(*v));
	v->allow = 1;
	uint32_t decided_hook = 0;
	int have_decided = 0;
	for (uint32_t i = 0; t && i < t->nrules; i++) {
		const struct rule *r = &t->rules[i];
		if (have_decided && r->hook_id == decided_hook)
			continue;
		if (!rule_matches(r, q))
			continue;
		have_decided = 1;
		decided_hook = r->hook_id;
		if (v->nmatch < PD_MAX_MATCH)
			v->rules[v->nmatch++] = (int32_t)i;
		if ((r->action == PD_ACT_OVERRIDE || r->action == PD_ACT_SIGKILL) && !r->monitor) {
			v->allow = 0;
			if (r->action == PD_ACT_SIGKILL)
				v->kill = 1;
		}
	}
}

/* ------------------------------------------------------------------ marks (one group per table) */
struct watch { int wd, dirfd; uint32_t kind, mask; char *name; };
struct handle { unsigned int bytes; int type; unsigned char h[MAX_HANDLE_SZ]; };   /* a struct file_handle */
/* mount_id: the mount the handle was made through (as in /proc/self/mountinfo); dev: the file's */
/* fid_only: the file system gives handles that name a file but cannot open it (overlayfs
 * without nfs_export): forgetting such a file takes a new group (regroup); changed: such a
 * file was renamed, linked or changed, to be forgotten that way unless it was deleted */
struct remembered { fsid_t fsid; struct handle fh; int mount_id; dev_t dev; int fid_only, changed; };
struct gen {
	int fan_fd, ino_fd;
	struct watch *w; uint32_t nw;
	uint32_t marks, dirs, mark_errors;
	dev_t *devs; uint32_t ndevs;         /* file systems marked for PD_MARK_ALL */
	uint32_t all_mask;                   /* mask of PD_MARK_ALL, 0 if none */
	/* remembered allows (remember_allow): the files, found again by handle, and a FID
	 * notification group that says when one is renamed, linked, changed or deleted */
	int notif_fd;                        /* -1: not opened yet; -2: this kernel cannot */
	struct remembered *rem; uint32_t nrem;
	int mounts_changed;                  /* since the last prune_unmounted */
	uint32_t changed;                    /* fid_only files marked changed in this batch of notifications */
	uint32_t regroup;                    /* fid_only files changed: forgotten once a new group is in */
	int sweep_due;                       /* a watched directory lost a subdirectory: sweep_deleted_dirs */
	uint64_t swept_ns;                   /* the last sweep (CLOCK_MONOTONIC) */
	char warn[1024];
	/* A table's main group (read by the main thread) holds the marks on local file systems;
	 * the marks on each file system served by a process or the network are in a group of
	 * their own (served), read by a thread of its own (served_main), so a server that hangs
	 * the kernel's open of an event's file holds only the events of its own file system. */
	struct gen **srv; uint32_t nsrv;     /* main group: the served groups of its table */
	int served;                          /* this is a served group */
	dev_t served_dev;                    /* its file system */
	int wake_fd;                         /* eventfd: wakes its thread (retired, fds to close) */
	int ready, retired;                  /* (atomic) marked completely; the table moved on: drain, close, exit */
	int *closeq; uint32_t nclose;        /* answered event fds for its thread to close (under S.mu) */
	/* a main group's place in the order the kernel asks groups in (probe_order), when known */
	double order; int order_known;
};

static void served_retire(struct gen *g);

/* Everything a group holds; a main group's served groups are retired (their threads close them). */
static void gen_free(struct gen *g)
{
	if (!g)
		return;
	for (uint32_t i = 0; i < g->nsrv; i++)
		served_retire(g->srv[i]);
	free(g->srv);
	for (uint32_t i = 0; i < g->nclose; i++)
		close(g->closeq[i]);
	free(g->closeq);
	if (g->wake_fd >= 0)
		close(g->wake_fd);
	for (uint32_t i = 0; i < g->nw; i++) {
		if (g->w[i].dirfd >= 0)
			close(g->w[i].dirfd);
		free(g->w[i].name);
	}
	free(g->w);
	free(g->devs);
	free(g->rem);
	if (g->notif_fd >= 0)
		close(g->notif_fd);
	if (g->ino_fd >= 0)
		close(g->ino_fd);
	if (g->fan_fd >= 0)
		close(g->fan_fd);
	free(g);
}

static void gen_warn(struct gen *g, const char *fmt, ...)
{
	size_t used = strlen(g->warn);
	if (used + 2 >= sizeof(g->warn))
		return;
	if (used)
		g->warn[used++] = ';', g->warn[used++] = ' ', g->warn[used] = 0;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g->warn + used, sizeof(g->warn) - used, fmt, ap);
	va_end(ap);
}

static const char *const PSEUDO_FS[] = {
	"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs", "securityfs",
	"pstore", "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "nsfs", "rpc_pipefs",
	"hugetlbfs", "efivarfs", "selinuxfs", NULL,
};

/* File systems served by a process or over the network: the kernel opens a file for the helper
 * with each event (inside read()), and such an open waits on that server; closing it does too
 * (FUSE's FLUSH). One that hangs would hold the group's queue, and every exec under its marks
 * with it, so "every file system" leaves them out (an exec there is not asked about; the ack's
 * warning says so), and a rule naming a path on one marks it in a group of that file system's
 * own (route), read by a thread of its own that takes no lock while it reads or closes: a hung
 * server then holds only events on its own file system, whose processes wait on that server for
 * their own open anyway (the permission event comes before the file system's ->open). Which
 * file system a path is on comes from its mount (statx STATX_MNT_ID without syncing, then
 * /proc/self/mountinfo), so classifying asks no server. */
static const char *const SERVED_FS[] = {
	"fuse", "fuseblk", "virtiofs", "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "afs",
	"glusterfs", "lustre", "ncpfs", "coda", NULL,
};

static int served_fs(const char *fstype)
{
	if (!strncmp(fstype, "fuse.", 5))
		return 1;
	for (int i = 0; SERVED_FS[i]; i++)
		if (!strcmp(fstype, SERVED_FS[i]))
			return 1;
	return 0;
}

static void unescape_mount(char *s)
{
	char *o = s;
	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] && s[3]) {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*o++ = *s;
		}
	}
	*o = 0;
}

/* One line of /proc/self/mountinfo: mount id, device, mount point (unescaped), type. */
struct mount_entry { int id; dev_t dev; char path[PATH_MAX]; char fstype[64]; };
struct mountinfo { FILE *f; char *line; size_t cap; };

static int mountinfo_open(struct mountinfo *mi)
{
	*mi = (struct mountinfo){ fopen("/proc/self/mountinfo", "re"), NULL, 0 };
	return mi->f ? 0 : -1;
}

/* 1: *m holds the next mount; 0: no more (and mi is closed) */
static int mountinfo_next(struct mountinfo *mi, struct mount_entry *m)
{
	while (getline(&mi->line, &mi->cap, mi->f) > 0) {
		unsigned maj, min;
		char *dash = strstr(mi->line, " - ");
		if (sscanf(mi->line, "%d %*u %u:%u %*s %4095s", &m->id, &maj, &min, m->path) != 4 || !dash ||
		    sscanf(dash + 3, "%63s", m->fstype) != 1)
			continue;
		unescape_mount(m->path);
		m->dev = makedev(maj, min);
		return 1;
	}
	free(mi->line);
	fclose(mi->f);
	return 0;
}

/* Mark every real file system of the host (once per superblock). */
static void mark_all_filesystems(struct gen *g)
{
	struct mountinfo mi;
	struct mount_entry m;
	if (mountinfo_open(&mi)) {
		g->mark_errors++;
		return;
	}
	while (mountinfo_next(&mi, &m)) {
		int pseudo = 0;
		for (int i = 0; PSEUDO_FS[i]; i++)
			pseudo |= strcmp(m.fstype, PSEUDO_FS[i]) == 0;
		int seen = 0;
		for (uint32_t i = 0; i < g->ndevs; i++)
			seen |= g->devs[i] == m.dev;
		if (pseudo || seen)
			continue;
		if (served_fs(m.fstype)) {
			*PUSH(g->devs, g->ndevs) = m.dev;   /* said once */
			gen_warn(g, "%s (%s) is not guarded by rules that match anywhere: its files are served by a "
				 "process or the network, whose opens can wait without end", m.path, m.fstype);
			continue;
		}
		if (fanotify_mark(g->fan_fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, g->all_mask, AT_FDCWD, m.path) == 0) {
			*PUSH(g->devs, g->ndevs) = m.dev;
			g->marks++;
		} else {
			g->mark_errors++;   /* e.g. a file system fanotify cannot mark; nothing can run from it */
		}
	}
}

static void (*service_hook)(void);   /* answers the current group while a new one is built */
/* the group gen_build is marking: its marks take effect one by one, and its events would
 * otherwise wait until it is installed (service_hook answers them too) */
static struct gen *building;
static pthread_t main_thread;        /* service_hook is the main thread's alone */

/* The mount of dirfd/name, asking no file system (no sync: FUSE, NFS, CIFS answer from their
 * cache); -1 when not found. */
static int mnt_id_at(int dirfd, const char *name, int flags)
{
	struct statx sx;
	if (statx(dirfd, name, flags | AT_NO_AUTOMOUNT | AT_STATX_DONT_SYNC, STATX_MNT_ID, &sx) ||
	    !(sx.stx_mask & STATX_MNT_ID))
		return -1;
	return (int)sx.stx_mnt_id;
}

/* 1: the mount's file system is served (its device and mount point given), 0: it is not,
 * -1: no such mount */
static int mount_served(int mnt_id, dev_t *dev, char *path, size_t size)
{
	struct mountinfo mi;
	struct mount_entry m;
	int r = -1;
	if (mnt_id < 0 || mountinfo_open(&mi))
		return -1;
	while (mountinfo_next(&mi, &m)) {   /* read to the end: it closes mi */
		if (r >= 0 || m.id != mnt_id)
			continue;
		r = served_fs(m.fstype);
		*dev = m.dev;
		snprintf(path, size, "%s (%s)", m.path, m.fstype);
	}
	return r;
}

/* What gen_build marks for: the table's main group, and whether the served groups are left
 * as they are (a regroup: only the main group is new, the served ones move over to it). */
struct build { struct gen *home; int local_only; };

static struct gen *gen_new(int *err);
static void probe_order(struct gen *g);
static struct gen *served_group(struct gen *home, dev_t dev, const char *where);

/* The group that marks what is on mount mnt_id: the main group, or the served group of its
 * file system (made on first use). NULL: nothing to mark (a served file system in a regroup,
 * or one whose group could not be made: warned). */
static struct gen *route(struct build *b, int mnt_id)
{
	char where[PATH_MAX + 80];
	dev_t dev;
	if (mount_served(mnt_id, &dev, where, sizeof(where)) != 1)
		return b->home;
	if (b->local_only)
		return NULL;
	for (uint32_t i = 0; i < b->home->nsrv; i++)
		if (b->home->srv[i]->served_dev == dev)
			return b->home->srv[i];
	if (b->home->nsrv >= MAX_SERVED_GROUPS) {
		gen_warn(b->home, "%s shares the group of another served file system (more than %d)", where,
			 MAX_SERVED_GROUPS);
		return b->home->srv[b->home->nsrv - 1];
	}
	struct gen *g = served_group(b->home, dev, where);
	if (!g)
		return NULL;
	*PUSH(b->home->srv, b->home->nsrv) = g;
	return g;
}

/* Watch dirfd's directory for new entries. Returns 1 when a watch of this kind (and name)
 * already covers it, 0 when added (the watch keeps dirfd), -1 on error. */
static int watch_dir(struct gen *g, int dirfd, uint32_t kind, uint32_t mask, const char *name)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", dirfd);
	int wd = inotify_add_watch(g->ino_fd, p, IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_EXCL_UNLINK);
	if (wd < 0)
		return -1;
	for (uint32_t i = 0; i < g->nw; i++)
		if (g->w[i].wd == wd && g->w[i].kind == kind && (g->w[i].mask & mask) == mask &&
		    (!name || (g->w[i].name && !strcmp(g->w[i].name, name))))
			return 1;
	struct watch *w = PUSH(g->w, g->nw);
	w->wd = wd, w->dirfd = dirfd, w->kind = kind, w->mask = mask, w->name = name ? strdup(name) : NULL;
	return 0;
}

/* Mark dirfd's directory (children events) and every directory below; takes dirfd. A
 * directory already in the tree (seen twice: by the walk and by its creation event) is
 * skipped. Returns -1 when the tree is too large to follow. While a table is marked (b), a
 * directory that is another mount (mnt: dirfd's) is marked in the group of its file system
 * (route); a new directory (b NULL) is on its parent's. */
static int mark_tree(struct gen *g, int dirfd, uint32_t mask, struct build *b, int mnt)
{
	if (g->dirs >= MAX_TREE_DIRS) {
		close(dirfd);
		return -1;
	}
	int w = watch_dir(g, dirfd, PD_MARK_TREE, mask, NULL);
	if (w != 0) {
		close(dirfd);
		if (w < 0)
			g->mark_errors++;
		return w < 0 && (errno == ENOSPC || errno == EMFILE || errno == ENFILE) ? -1 : 0;
	}
	if (fanotify_mark(g->fan_fd, FAN_MARK_ADD, mask | FAN_EVENT_ON_CHILD, dirfd, NULL) < 0) {
		g->mark_errors++;   /* the watch keeps dirfd */
		return 0;
	}
	g->dirs++;
	g->marks++;
	if (service_hook && g->dirs % SERVICE_EVERY == 0 && pthread_equal(pthread_self(), main_thread))
		service_hook();
	int lfd = dup(dirfd);
	DIR *d = lfd >= 0 ? fdopendir(lfd) : NULL;
	if (!d) {
		if (lfd >= 0)
			close(lfd);
		return 0;
	}
	struct dirent *e;
	int rc = 0;
	while (rc == 0 && (e = readdir(d))) {
		if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN)
			continue;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		struct gen *tg = g;
		int sub_mnt = mnt;
		if (b) {   /* (before opening it: a served file system's directory is not opened in a regroup) */
			sub_mnt = mnt_id_at(dirfd, e->d_name, AT_SYMLINK_NOFOLLOW);
			if (sub_mnt < 0)
				sub_mnt = mnt;
			if (sub_mnt != mnt && !(tg = route(b, sub_mnt)))
				continue;
		}
		int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub >= 0)
			rc = mark_tree(tg, sub, mask, b, sub_mnt);
	}
	closedir(d);
	return rc;
}

/* The group for a mark's path (its file system's), or NULL when it is not marked now: on a
 * served file system in a regroup (the served group keeps its marks), or a served file system
 * whose group could not be made. */
static struct gen *mark_group(struct build *b, struct markspec *m, int mnt)
{
	if (b->local_only && m->served)
		return NULL;   /* (asks nothing of the path: its server may be the one that hangs) */
	struct gen *g = route(b, mnt);
	if (!b->local_only)
		m->served = g != b->home;
	return g;
}

static int apply_mark(struct build *b, struct markspec *m)
{
	struct gen *g = b->home, *tg;   /* warnings go to the main group: the ack says them */
	uint32_t mask = m->mask;
	switch (m->kind) {
	case PD_MARK_ALL:
		g->all_mask |= mask;
		mark_all_filesystems(g);   /* (local file systems only) */
		return 0;
	case PD_MARK_MOUNT:
	case PD_MARK_FILESYSTEM:
		if (!(tg = mark_group(b, m, mnt_id_at(AT_FDCWD, m->path, 0))))
			return 0;
		if (fanotify_mark(tg->fan_fd, FAN_MARK_ADD | (m->kind == PD_MARK_MOUNT ? FAN_MARK_MOUNT : FAN_MARK_FILESYSTEM),
				  mask, AT_FDCWD, m->path) < 0) {
			gen_warn(g, "%s: %s", m->path, strerror(errno));
			return -1;
		}
		tg->marks++;
		return 0;
	case PD_MARK_FILE: {
		char *slash = strrchr(m->path, '/');
		if (!slash || !slash[1]) {
			gen_warn(g, "%s: not a file path", m->path);
			return -1;
		}
		char dir[PATH_MAX];
		snprintf(dir, sizeof(dir), "%.*s", slash == m->path ? 1 : (int)(slash - m->path), m->path);
		int mnt = b->local_only && m->served ? -1 : mnt_id_at(AT_FDCWD, m->path, 0);
		if (!(tg = mark_group(b, m, mnt >= 0 ? mnt : mnt_id_at(AT_FDCWD, dir, 0))))
			return 0;
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0) {
			gen_warn(g, "%s: %s", dir, strerror(errno));
			return -1;
		}
		int w = watch_dir(tg, dfd, PD_MARK_FILE, mask, slash + 1);
		if (w < 0) {
			gen_warn(g, "%s: inotify: %s", dir, strerror(errno));
			close(dfd);
			return -1;
		}
		if (w > 0)
			close(dfd);   /* the same file named twice */
		if (fanotify_mark(tg->fan_fd, FAN_MARK_ADD, mask, AT_FDCWD, m->path) == 0)
			tg->marks++;
		else if (errno != ENOENT)   /* not there yet: marked when it appears */
			tg->mark_errors++;
		return 0;
	}
	case PD_MARK_TREE: {
		int mnt = b->local_only && m->served ? -1 : mnt_id_at(AT_FDCWD, m->path, 0);
		if (!(tg = mark_group(b, m, mnt)))
			return 0;
		int dfd = open(m->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0) {
			gen_warn(g, "%s: %s", m->path, strerror(errno));
			return -1;
		}
		if (mark_tree(tg, dfd, mask, b, mnt) < 0) {
			/* too many directories: the mount holding the tree instead */
			if (fanotify_mark(tg->fan_fd, FAN_MARK_ADD | FAN_MARK_MOUNT, mask, AT_FDCWD, m->path) < 0) {
				gen_warn(g, "%s: %s", m->path, strerror(errno));
				return -1;
			}
			tg->marks++;
			gen_warn(g, "%s: more than %d directories (or out of watches): its whole mount is guarded instead",
				 m->path, MAX_TREE_DIRS);
		}
		return 0;
	}
	}
	gen_warn(g, "unknown mark kind %u", m->kind);
	return -1;
}

/* A group (fanotify for the permissions, inotify for new files and directories); *err and
 * g->warn say what failed. */
static struct gen *gen_new(int *err)
{
	struct gen *g = xrealloc(NULL, sizeof(*g));
	memset(g, 0, sizeof(*g));
	g->ino_fd = -1;
	g->notif_fd = -1;
	g->wake_fd = -1;
	*err = 0;
	g->fan_fd = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE |
				  FAN_UNLIMITED_MARKS, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
	if (g->fan_fd < 0) {
		*err = errno;
		gen_warn(g, "fanotify_init: %s", strerror(errno));
		return g;
	}
	g->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (g->ino_fd < 0) {
		*err = errno;
		gen_warn(g, "inotify_init1: %s", strerror(errno));
	}
	return g;
}

/* The groups of table t: a new main group, and (unless local_only) new served groups. */
static struct gen *gen_build(struct table *t, int *err, int local_only)
{
	struct gen *g = gen_new(err);
	if (*err)
		return g;
	int e = 0;
	struct build b = { g, local_only };
	building = g;
	probe_order(g);   /* (before its first mark: its events take part in W from the start) */
	for (uint32_t i = 0; i < t->nmarks && !e; i++) {
		if (apply_mark(&b, &t->marks[i]) < 0)
			e = EINVAL;
		if (service_hook)
			service_hook();   /* (a mark may take long: a whole tree, every file system) */
	}
	building = NULL;
	for (uint32_t i = 0; i < g->nsrv; i++)   /* their threads follow new files from now on */
		__atomic_store_n(&g->srv[i]->ready, 1, __ATOMIC_RELEASE);
	*err = e;
	return g;
}

/* What a main group and its served groups hold (their threads change the served counts:
 * read as they are). */
static void gen_totals(const struct gen *g, uint64_t *marks, uint64_t *dirs, uint64_t *errors)
{
	*marks = g->marks, *dirs = g->dirs, *errors = g->mark_errors;
	for (uint32_t i = 0; i < g->nsrv; i++) {
		*marks += __atomic_load_n(&g->srv[i]->marks, __ATOMIC_RELAXED);
		*dirs += __atomic_load_n(&g->srv[i]->dirs, __ATOMIC_RELAXED);
		*errors += __atomic_load_n(&g->srv[i]->mark_errors, __ATOMIC_RELAXED);
	}
}

/* ------------------------------------------------------------------ process state */
/* sg: the served group the event was read from (NULL: the main group) */
struct pend { int used; int efd, fan_fd; uint32_t pid; uint64_t mask, read_ns, deadline_ns, seq; struct gen *sg; };

static struct {
	int ctl;
	int sndbuf;               /* the control socket's send buffer, as the kernel keeps it */
	int test_hooks;
	volatile sig_atomic_t quit;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct table *table;      /* in force; replaced only by the main thread, under mu (refs) */
	struct gen *cur;          /* its fanotify group; replaced under mu */
	struct table *staging;
	int staging_bad;
	struct pend pend[MAX_PENDING];
	int npend;
	uint64_t busy_since;      /* monotonic ns the main thread started its current work, 0 when idle */
	uint32_t stall_ms;        /* test hook */
	uint64_t st[PD_NSTATS];
	int mountinfo_fd;
	uint32_t self;
	uint64_t seq;             /* identity of a pending slot's occupant */
	uint64_t wd_wake;          /* when the watchdog wakes next (monotonic ns) */
	uint32_t max_remembered;   /* files a group remembers (MAX_REMEMBERED; tests may lower it) */
	uint64_t regrouped_ns, regroup_quiet_ns;   /* the last regroup (CLOCK_MONOTONIC), REGROUP_QUIET_MS */
	uint64_t regroup_failed_ns;                /* the last regroup that failed: retried a second later */
} S = { .ctl = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .mountinfo_fd = -1, .max_remembered = MAX_REMEMBERED,
	.regroup_quiet_ns = REGROUP_QUIET_MS * 1000000ULL };

/* Reports never take the last REPLY_ROOM bytes of the socket's send buffer: when the agent
 * does not read (stopped, busy), reports are dropped (counted) while there is still room for
 * the replies to its requests (an ACK, PD_STATS: how it learns about the drops), which would
 * otherwise be dropped behind them and leave the agent waiting for an answer. */
#define REPLY_ROOM (256 * 1024)

static void send_pkt(const void *buf, size_t len, int is_report)
{
	int queued;
	if (is_report && ioctl(S.ctl, SIOCOUTQ, &queued) == 0 && queued > S.sndbuf - REPLY_ROOM) {
		__atomic_add_fetch(&S.st[PD_STAT_reports_dropped], 1, __ATOMIC_RELAXED);
		return;
	}
	if (send(S.ctl, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		if (is_report)
			__atomic_add_fetch(&S.st[PD_STAT_reports_dropped], 1, __ATOMIC_RELAXED);
		if (errno == EPIPE || errno == ECONNRESET)
			S.quit = 1;
		return;
	}
	if (is_report)
		__atomic_add_fetch(&S.st[PD_STAT_reports], 1, __ATOMIC_RELAXED);
}

static void send_ack(uint32_t reply_to, uint32_t gen, int error, uint32_t marks, uint32_t dirs, const char *text)
{
	char buf[sizeof(struct pd_ack) + 2048];
	struct pd_ack *a = (struct pd_ack *)buf;
	size_t tl = text ? strnlen(text, 2047) : 0;
	memset(a, 0, sizeof(*a));
	a->h.type = PD_ACK, a->h.len = (uint32_t)(sizeof(*a) + tl);
	a->generation = gen, a->error = error, a->marks = marks, a->dirs = dirs, a->reply_to = reply_to;
	if (tl)
		memcpy(buf + sizeof(*a), text, tl);
	send_pkt(buf, a->h.len, 0);
}

static void send_report(const struct rule *r, const struct request *q, uint32_t flags, uint64_t latency_ns)
{
	char buf[sizeof(struct pd_report) + 2 * PATH_MAX];
	struct pd_report *p = (struct pd_report *)buf;
	size_t pl = q->path_len < PATH_MAX ? q->path_len : PATH_MAX;
	size_t bl = q->binary_len > 0 ? (size_t)q->binary_len : 0;
	memset(p, 0, sizeof(*p));
	p->h.type = PD_REPORT, p->h.len = (uint32_t)(sizeof(*p) + pl + bl);
	p->time_ns = now_ns(CLOCK_REALTIME);
	p->pid = q->pid, p->kind = q->kind, p->flags = flags;
	p->latency_ns = latency_ns > UINT32_MAX ? UINT32_MAX : (uint32_t)latency_ns;
	if (r)
		p->hook_id = r->hook_id, p->selector = r->selector, p->action = r->action;
	p->path_len = (uint32_t)pl, p->binary_len = (uint32_t)bl;
	memcpy(buf + sizeof(*p), q->path, pl);
	memcpy(buf + sizeof(*p) + pl, q->binary, bl);
	send_pkt(buf, p->h.len, 1);
}

static int is_exempt(uint32_t pid)
{
	if (pid == S.self)
		return 1;
	for (uint32_t i = 0; S.table && i < S.table->nexempt; i++)
		if (S.table->exempt[i] == pid)
			return 1;
	return 0;
}

/* Write the one answer for a read event and let go of its fd. Caller holds S.mu. A served
 * group's (sg) is closed by that group's thread, never here: closing a file of a served file
 * system asks its server (FUSE's FLUSH), and S.mu must never wait on a server. */
static void answer(struct gen *sg, int fan_fd, int efd, int allow)
{
	struct fanotify_response r = { .fd = efd, .response = allow ? FAN_ALLOW : FAN_DENY };
	if (write(fan_fd, &r, sizeof(r)) != sizeof(r))
		S.st[PD_STAT_write_errors]++;   /* the kernel allows it when the group closes */
	if (sg)
		*PUSH(sg->closeq, sg->nclose) = efd;
	else
		close(efd);
	S.st[allow ? PD_STAT_allowed : PD_STAT_denied]++;
}

/* A table a batch of decisions held (handle_fanotify takes the table in force, refs + 1, under
 * S.mu): a served group's thread may still decide with it after the main thread installed
 * another. */
static void table_put(struct table *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&S.mu);
	int left = --t->refs;
	pthread_mutex_unlock(&S.mu);
	if (!left)
		table_free(t);
}

static void account_latency(uint64_t lat)
{
	S.st[PD_STAT_latency_ns_total] += lat;
	if (lat > S.st[PD_STAT_latency_ns_max])
		S.st[PD_STAT_latency_ns_max] = lat;
}

static int default_allow(void)
{
	return S.table ? (int)S.table->default_allow : 1;
}

static uint64_t deadline_ns(void)
{
	uint32_t ms = S.table && S.table->deadline_ms ? S.table->deadline_ms : 1000;
	return (uint64_t)ms * 1000000ull;
}

/* ------------------------------------------------------------------ answering */
static int path_of_fd(int efd, char *buf, size_t size)
{
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", efd);
	ssize_t n = readlink(p, buf, size - 1);
	if (n < 0)
		n = 0;
	buf[n] = 0;
	return (int)n;
}

/* A directory on the file system of a remembered file, to decode its handle with: the root
 * of the mount the handle was made through, else of any mount of its device. Opened only for
 * that moment: a descriptor held on a file system would keep it from being unmounted. */
static int open_mount_of(const struct remembered *r)
{
	struct mountinfo mi;
	struct mount_entry m;
	char other[PATH_MAX] = "";
	int fd = -1;
	if (mountinfo_open(&mi))
		return -1;
	while (mountinfo_next(&mi, &m)) {   /* read to the end: it closes mi */
		if (fd < 0 && m.id == r->mount_id)   /* a directory: opening it asks no permission of our groups */
			fd = open(m.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		else if (!other[0] && m.dev == r->dev)
			snprintf(other, sizeof(other), "%s", m.path);
	}
	return fd >= 0 || !other[0] ? fd : open(other, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* A full table drops the entries of files whose file system is no longer mounted: the kernel
 * dropped their marks at the unmount and sends no notification for it. Only after the mount
 * table changed (handle_mount_change). 1: room was made. */
static int prune_unmounted(struct gen *g)
{
	struct mountinfo mi;
	struct mount_entry m;
	struct { int id; dev_t dev; } *mounts = NULL;
	uint32_t n = 0, before = g->nrem;
	if (!g->mounts_changed || mountinfo_open(&mi))
		return 0;
	g->mounts_changed = 0;
	while (mountinfo_next(&mi, &m)) {
		mounts = xrealloc(mounts, sizeof(*mounts) * (n + 1));
		mounts[n].id = m.id, mounts[n++].dev = m.dev;
	}
	for (uint32_t i = 0; i < g->nrem;) {
		int mounted = 0;
		for (uint32_t k = 0; k < n && !mounted; k++)
			mounted = mounts[k].id == g->rem[i].mount_id || mounts[k].dev == g->rem[i].dev;
		if (mounted)
			i++;
		else
			g->rem[i] = g->rem[--g->nrem];
	}
	free(mounts);
	return g->nrem < before;
}

/* An allow no rule took part in, from a table whose rules of this kind read only the path:
 * the same file gets the same answer whoever asks, so the group stops asking about it (an
 * ignore mask on the file's inode, this kind only). Execs of allowed binaries then never wait
 * on this helper again.
 *
 * What would make the remembered answer wrong is the file under another name a rule may
 * name, or other contents. So: only regular files with a single name; the kernel drops the
 * ignore mask when the file is written to; and a second fanotify group (FID notifications)
 * watches each remembered file, so a rename, a new hard link, an attribute change or its
 * deletion makes the helper forget it (forget_remembered) and ask again. Between such a
 * change and the helper reading its notification (microseconds, unless the helper is held
 * up), an exec of the file under the new name is still not asked about. A file system whose
 * handles only name files (overlayfs without nfs_export: the root file system of every
 * container; AT_HANDLE_FID, Linux 6.5) gives no way back to the file to clear its ignore mask:
 * a change to one of those files makes the helper replace the group, marked the same, which
 * forgets everything it remembered (regroup; the window above then lasts until the new group
 * is in). A file system that gives no handles at all is never remembered. A new table gets a
 * new group, so nothing remembered outlives the rules it was decided by.
 * Only the main thread touches a group's remembered files, and it does so without S.mu: these
 * are file-system calls, and the watchdog must never wait behind one. */
static void remember_allow(struct gen *g, int efd, uint32_t kind, const char *path)
{
	struct stat st;
	struct statfs sfs;
	struct remembered r;
	if (fstat(efd, &st) || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
	    (g->nrem >= S.max_remembered && !prune_unmounted(g)))
		return;
	if (g->notif_fd == -1) {
		g->notif_fd = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK |
					    FAN_UNLIMITED_QUEUE, O_RDONLY | O_CLOEXEC);
		if (g->notif_fd < 0)
			g->notif_fd = -2;
	}
	memset(&r, 0, sizeof(r));
	r.fh.bytes = MAX_HANDLE_SZ;
	if (g->notif_fd < 0 || fstatfs(efd, &sfs))
		return;
	if (name_to_handle_at(efd, "", (struct file_handle *)&r.fh, &r.mount_id, AT_EMPTY_PATH)) {
		r.fh.bytes = MAX_HANDLE_SZ;
		/* a new group at most once per quiet period, whatever the files do (each regroup
		 * marks everything again) */
		if (errno != EOPNOTSUPP || (S.regrouped_ns && now_ns(CLOCK_MONOTONIC) - S.regrouped_ns < S.regroup_quiet_ns) ||
		    name_to_handle_at(efd, "", (struct file_handle *)&r.fh, &r.mount_id, AT_EMPTY_PATH | AT_HANDLE_FID))
			return;
		r.fid_only = 1;
	}
	r.fsid = sfs.f_fsid;
	r.dev = st.st_dev;
	/* watched first: a rename or link from here on is seen */
	if (fanotify_mark(g->notif_fd, FAN_MARK_ADD, WATCH_MASK, efd, NULL))
		return;
	/* and its directories: one renamed puts the file under another path without a word to
	 * the file's own watch (handle_notifications forgets everything then) */
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	for (char *slash = strrchr(dir, '/'); slash && slash > dir; slash = strrchr(dir, '/')) {
		*slash = 0;
		if (fanotify_mark(g->notif_fd, FAN_MARK_ADD, FAN_MOVE_SELF | FAN_ONDIR, AT_FDCWD, dir))
			return;   /* a directory not watched: not remembered */
	}
	uint64_t mask = kind == PD_KIND_EXEC ? FAN_OPEN_EXEC_PERM : FAN_OPEN_PERM;
	if (fanotify_mark(g->fan_fd, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK, mask, efd, NULL))
		return;   /* the watch left behind only costs a forget later */
	/* renamed (it or a directory above it) between the decision and the watches: its answer
	 * was for the old path; asked again */
	char now[PATH_MAX];
	if ((size_t)path_of_fd(efd, now, sizeof(now)) != strlen(path) || strcmp(now, path)) {
		fanotify_mark(g->fan_fd, FAN_MARK_REMOVE | FAN_MARK_IGNORED_MASK, mask, efd, NULL);
		fanotify_mark(g->notif_fd, FAN_MARK_REMOVE, WATCH_MASK, efd, NULL);
		__atomic_add_fetch(&S.st[PD_STAT_forgotten], 1, __ATOMIC_RELAXED);
		return;
	}
	for (uint32_t i = 0; i < g->nrem; i++) {   /* asked about twice before its mask was in */
		const struct remembered *o = &g->rem[i];
		if (o->mount_id == r.mount_id && !memcmp(&o->fsid, &r.fsid, sizeof(r.fsid)) && o->fh.type == r.fh.type &&
		    o->fh.bytes == r.fh.bytes && !memcmp(o->fh.h, r.fh.h, r.fh.bytes))
			return;
	}
	*PUSH(g->rem, g->nrem) = r;
	__atomic_add_fetch(&S.st[PD_STAT_cached], 1, __ATOMIC_RELAXED);
}

/* The kernel said a remembered file was renamed, linked, changed or deleted: ask about it
 * again (its ignore mask removed; reached by handle, as its name may be new). A file that
 * cannot be reached by its handle (fid_only) is only marked when renamed, linked or changed:
 * handle_notifications replaces the group for it after the batch, unless the batch also says
 * it was deleted (an unlink reports a link-count change first). Deleted or written, it is
 * forgotten at once: the kernel dropped its ignore mask at the write, and a deleted file has
 * no name left to be reached by. */
static int same_file(const struct remembered *r, const fsid_t *fsid, const struct file_handle *fh)
{
	return !memcmp(&r->fsid, fsid, sizeof(*fsid)) && r->fh.type == fh->handle_type &&
	       r->fh.bytes == fh->handle_bytes && !memcmp(r->fh.h, fh->f_handle, fh->handle_bytes);
}

/* Entry i forgotten: its ignore mask removed (reached by handle), or, for a file that cannot
 * be reached (fid_only), marked changed unless `gone` (deleted or written: no mask left to
 * remove). 1: removed from the table; 0: left there, changed (regroup). */
static int forget_entry(struct gen *g, uint32_t i, int gone)
{
	struct remembered *r = &g->rem[i];
	if (r->fid_only && !gone) {
		if (!r->changed)
			g->changed++;
		r->changed = 1;
		return 0;
	}
	if (r->fid_only) {
		if (r->changed)
			g->changed--;
	} else {   /* O_PATH: no permission event; the mark calls reach it through /proc */
		int mfd = open_mount_of(r);
		int fd = mfd < 0 ? -1 : open_by_handle_at(mfd, (struct file_handle *)&r->fh, O_PATH | O_CLOEXEC);
		if (mfd >= 0)
			close(mfd);
		if (fd >= 0) {
			char p[64];
			snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
			fanotify_mark(g->fan_fd, FAN_MARK_REMOVE | FAN_MARK_IGNORED_MASK,
				      FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM, AT_FDCWD, p);
			fanotify_mark(g->notif_fd, FAN_MARK_REMOVE, WATCH_MASK, AT_FDCWD, p);
			close(fd);
		}   /* else deleted, or its file system unmounted: the kernel dropped its marks */
	}
	g->rem[i] = g->rem[--g->nrem];
	return 1;
}

/* Every entry with the file's identity: two mounts can show the same (fsid, handle) for files
 * that are not the same to a rule (overlays sharing a lower layer without a uuid), so a
 * deletion or a write seen through one of them only lets a file go without a new group when
 * it is the only one with that identity. */
static void forget_remembered(struct gen *g, const fsid_t *fsid, const struct file_handle *fh, uint64_t mask)
{
	uint32_t matches = 0;
	for (uint32_t i = 0; i < g->nrem; i++)
		matches += same_file(&g->rem[i], fsid, fh);
	if (!matches)
		return;
	int gone = (mask & (FAN_DELETE_SELF | FAN_MODIFY)) && matches == 1, removed = 0;
	for (uint32_t i = 0; i < g->nrem;) {
		int r = same_file(&g->rem[i], fsid, fh) ? forget_entry(g, i, gone) : 0;
		removed |= r;
		i += !r;
	}
	if (removed)   /* (one file; the changed ones are counted with their new group) */
		__atomic_add_fetch(&S.st[PD_STAT_forgotten], 1, __ATOMIC_RELAXED);
}

/* A directory above remembered files was renamed: which files were below it is not known,
 * so every one is forgotten. */
static void forget_all(struct gen *g)
{
	uint32_t before = g->nrem;   /* (the changed ones are counted with their new group) */
	for (uint32_t i = 0; i < g->nrem;)
		i += g->rem[i].changed ? 1 : !forget_entry(g, i, 0);
	__atomic_add_fetch(&S.st[PD_STAT_forgotten], before - g->nrem, __ATOMIC_RELAXED);
}

static void handle_notifications(struct gen *g)
{
	char buf[16384] __attribute__((aligned(8)));
	ssize_t len;
	while ((len = read(g->notif_fd, buf, sizeof(buf))) > 0) {
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			const struct fanotify_event_info_fid *fid = (const void *)(m + 1);
			if (m->event_len < sizeof(*m) + sizeof(*fid) + sizeof(struct file_handle) ||
			    fid->hdr.info_type != FAN_EVENT_INFO_TYPE_FID)
				continue;
			if ((m->mask & (FAN_MOVE_SELF | FAN_ONDIR)) == (FAN_MOVE_SELF | FAN_ONDIR)) {
				forget_all(g);
				continue;
			}
			fsid_t fsid;
			memcpy(&fsid, &fid->fsid, sizeof(fsid));
			forget_remembered(g, &fsid, (const struct file_handle *)fid->handle, m->mask);
		}
	}
	if (!g->changed)
		return;
	for (uint32_t i = 0; i < g->nrem;)   /* forgotten with the group (main loop: regroup) */
		if (g->rem[i].changed)
			g->rem[i] = g->rem[--g->nrem];
		else
			i++;
	g->regroup += g->changed;
	g->changed = 0;
}

/* A served group's thread closes the event fds answered (by it or by the watchdog), holding no
 * lock: such a close may wait on the file system's server. */
static void close_answered(struct gen *g)
{
	pthread_mutex_lock(&S.mu);
	int *fds = g->closeq;
	uint32_t n = g->nclose;
	g->closeq = NULL, g->nclose = 0;
	pthread_mutex_unlock(&S.mu);
	for (uint32_t i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
}

/* ------------------------------------------------------------------ one exec/open, several groups */
/* Main groups replaced by a new table (or a regroup), their marks kept: read for
 * RETIRED_GRACE_NS more, decided by the new table, then closed (install). Only the main thread
 * touches them. */
#define MAX_RETIRED 16
#define RETIRED_GRACE_NS 1000000000ULL
static struct { struct gen *g[MAX_RETIRED]; uint64_t since[MAX_RETIRED]; int n; } R;

/* While a table changes, several main groups are marked at once: the one being built, the one
 * in force (S.cur), those retired in their grace (R). The kernel asks the groups that have a mark
 * on a file one after another, for each fsnotify() call of an exec or open (fs/notify/fsnotify.c
 * fsnotify(): the marks of the inode, mount and file system merged and walked by group, in the
 * order of fsnotify_compare_groups: priority, then the group's address: fixed for a group's life,
 * the same for every file), the task blocked on each group until it answers, the walk ended by a
 * refusal. So one exec or open asks each group at most once (an exec's two calls, OPEN_EXEC_PERM
 * then OPEN_PERM, differ by mask), in that fixed order, and every event of one walk has the same
 * process, file (dev, ino) and mask. It is reported and counted once, by the first group asked:
 *  - each main group's place in that order (order) is learned before its first mark
 *    (probe_order); while a group is built and its place is not known yet, no place is the last;
 *  - an allowed event that matched a rule leaves a record (walk) of its key and its group's
 *    place, unless that place is the last (no later group to ask). An event of a group later in
 *    the order that finds a record of its key from an earlier place is the same walk's later ask:
 *    it moves the record to its own place (or drops it, the last), is answered alike and not
 *    reported or counted. One that finds none was the first ask of its walk (whatever groups
 *    earlier in the order were not asked: the race of install's comment, a file only the later
 *    group marks): reported;
 *  - a group being built decides by the table in force, as S.cur does, which is fully marked for
 *    it: it takes records as above, but one that finds none is not reported either (S.cur,
 *    asked after it, reports it) and leaves none. A served group being built reports no allowed
 *    event (the table in force's served group of that file system is asked too). A refusal ends
 *    the walk: always reported;
 *  - a closed group (retired, or a build that failed): once close() returns, every walk that
 *    asked it has ended or has its next ask queued (fsnotify_destroy_group waits for the walks
 *    blocked on its answers to take the marks' SRCU again, user_waits, then for that SRCU): those
 *    are read then (walks_closed), and the records left at its place are let go.
 * Why exact: a record is taken only by a later group's ask of the same process, file and mask,
 * which in one walk comes after the earlier ask and before that process's next walk of that file
 * from that thread. Records are taken by pid, not thread: two threads of a process opening one
 * file at once may take each other's records, which counts the same. Not exact, and when:
 *  - a walk answered by the group last in the order (no record) that goes on only after a group
 *    built since, placed after it, has its mark on the file (the walking task held off that long
 *    between two groups: probe_order waits, by a SRCU barrier, for walks that had resumed): the
 *    new group reports it again;
 *  - a stale record (a walk asked of an earlier group, whose decision there matched, but of no
 *    later group that marks the file) taken by a later walk asked of a later group alone: a
 *    later group that marks the file is skipped only by an ignore mark, set only where no rule
 *    matches, and an earlier one that marks it only when closed (its records let go then): so
 *    this takes two groups deciding one request differently (a rule on the process's state);
 *  - a record dropped for room (oldest first: pairs_dropped counts them): its walk's later ask is
 *    reported again;
 *  - a group whose place could not be learned reports every event, as before.
 * Records no live group can take (their place the last) are let go as groups close. Bounded:
 * MAX_WALKS. The main thread's alone. */
#define MAX_WALKS 1024
/* records of one process, file and mask at one place: walks of that file by that many of its
 * threads at once between two groups; more are taken as ended (records a walk asked of no later
 * group left, many while a new group is marked), the oldest replaced (walks_replaced) */
#define MAX_SAME_WALKS 8
struct walk { uint32_t pid; uint64_t mask; dev_t dev; ino_t ino; double order; uint64_t tick; };
static struct { struct walk w[MAX_WALKS]; uint32_t n; uint64_t tick; } W;

/* the last place among the live main groups whose place is known; none while a group is built
 * whose place is not known yet (probe_order: it may come after any) */
static double last_order(void)
{
	if (building && !building->order_known)
		return 1e300;
	double last = S.cur && S.cur->order_known ? S.cur->order : -1e300;
	if (building && building->order > last)
		last = building->order;
	for (int i = 0; i < R.n; i++)
		if (R.g[i]->order_known && R.g[i]->order > last)
			last = R.g[i]->order;
	return last;
}

/* Records no live group can take any more. */
static void walks_prune(void)
{
	double last = last_order();
	for (uint32_t i = 0; i < W.n;)
		if (W.w[i].order >= last)
			W.w[i] = W.w[--W.n];
		else
			i++;
}

/* A main group (its place: order) was closed. Once close() returns, every walk that asked it has
 * ended or asked its next group, its event queued there (fsnotify_destroy_group waits for the
 * walks blocked on the group's answers to take the mark SRCU again, user_waits, then for SRCU:
 * fsnotify_wait_marks_destroyed): those are read now and take their records; the records left at
 * its place belong to walks that asked no later group: let go. */
static void handle_fanotify(struct gen *g);

static void walks_closed(double order, int known)
{
	if (S.cur)
		handle_fanotify(S.cur);
	for (int i = 0; i < R.n; i++)
		handle_fanotify(R.g[i]);
	for (uint32_t i = 0; known && i < W.n;)
		if (W.w[i].order == order)
			W.w[i] = W.w[--W.n];
		else
			i++;
	walks_prune();
}

/* Was this event (g: S.cur or a retired group, its place known) a later ask of a walk an earlier
 * group reported? Consumes that walk's record; else leaves one (g not the last). */
static int walk_asked_before(const struct gen *g, int built, uint32_t pid, uint64_t mask, dev_t dev, ino_t ino)
{
	int best = -1;
	for (uint32_t i = 0; i < W.n; i++) {
		const struct walk *w = &W.w[i];
		if (w->pid == pid && w->mask == mask && w->ino == ino && w->dev == dev && w->order < g->order &&
		    (best < 0 || w->order > W.w[best].order))
			best = (int)i;   /* (the nearest earlier place: the walk that got furthest) */
	}
	int last = g->order >= last_order();
	if (best >= 0) {
		if (last)
			W.w[best] = W.w[--W.n];
		else
			W.w[best].order = g->order, W.w[best].tick = ++W.tick;
		__atomic_add_fetch(&S.st[PD_STAT_asked_again], 1, __ATOMIC_RELAXED);
		return 1;
	}
	if (built) {   /* (being built: a first ask is S.cur's to report, asked later) */
		__atomic_add_fetch(&S.st[PD_STAT_asked_again], 1, __ATOMIC_RELAXED);
		return 1;
	}
	if (last)
		return 0;
	uint32_t i = W.n, same = 0, oldest = 0;
	for (uint32_t j = 0; j < W.n; j++) {
		const struct walk *w = &W.w[j];
		if (w->pid == pid && w->mask == mask && w->ino == ino && w->dev == dev && w->order == g->order &&
		    (!same++ || w->tick < W.w[oldest].tick))
			oldest = j;
	}
	if (same >= MAX_SAME_WALKS) {
		i = oldest;
		__atomic_add_fetch(&S.st[PD_STAT_walks_replaced], 1, __ATOMIC_RELAXED);
	} else if (W.n == MAX_WALKS) {   /* the oldest goes: its walk's later ask, if any, is reported again */
		i = 0;
		for (uint32_t j = 1; j < W.n; j++)
			if (W.w[j].tick < W.w[i].tick)
				i = j;
		__atomic_add_fetch(&S.st[PD_STAT_pairs_dropped], 1, __ATOMIC_RELAXED);
	} else {
		W.n++;
	}
	W.w[i] = (struct walk){ pid, mask, dev, ino, g->order, ++W.tick };
	return 0;
}

/* probe_order: which main groups the helper's own open of a probe file was asked of, in order */
static struct { dev_t dev; ino_t ino; struct gen *seen[MAX_RETIRED + 2]; int n; } PROBE;

static void probe_note(struct gen *g, int efd)
{
	struct stat st;
	if (fstat(efd, &st) == 0 && st.st_ino == PROBE.ino && st.st_dev == PROBE.dev && PROBE.n < MAX_RETIRED + 2)
		PROBE.seen[PROBE.n++] = g;
}

/* Read what the group has queued (up to the free pending slots) and decide each event. The
 * main thread reads the main group; a served group's own thread reads it, and neither holds
 * S.mu while in read() (where the kernel opens each event's file) or while closing one. */
static void handle_fanotify(struct gen *g)
{
	char buf[64 * 1024] __attribute__((aligned(8)));
	int slots[MAX_PENDING];
	uint64_t seqs[MAX_PENDING];
	struct gen *sg = g->served ? g : NULL;
	for (int errors = 0;;) {
		pthread_mutex_lock(&S.mu);
		size_t room = (size_t)(MAX_PENDING - S.npend) * META_SZ;
		pthread_mutex_unlock(&S.mu);
		if (room < (size_t)META_SZ)
			return;   /* the watchdog frees slots by the deadline */
		/* busy while reading too: the kernel opens each event's file for us in read(), and an
		 * open that waits must not hold the main group's queue past the deadline (a served
		 * group's thread is not watched so: only its own file system's events wait on it) */
		if (!sg)
			__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
		ssize_t len = read(g->fan_fd, buf, room < sizeof(buf) ? room : sizeof(buf));
		if (len <= 0) {
			/* not EAGAIN: the kernel could not open the file for us, and refused that
			 * request itself (no answer of ours can change it): counted */
			if (len < 0 && errno != EAGAIN && errno != EINTR)
				__atomic_add_fetch(&S.st[PD_STAT_read_errors], 1, __ATOMIC_RELAXED);
			if (!sg)
				__atomic_store_n(&S.busy_since, 0, __ATOMIC_RELAXED);
			if (len < 0 && errno != EAGAIN && errno != EINTR && ++errors < 64)
				continue;   /* the next events may open fine (each failed read took one) */
			return;
		}
		uint64_t t = now_ns(CLOCK_MONOTONIC);
		int ns = 0;
		/* register the whole batch first: each event's deadline starts when it was read */
		pthread_mutex_lock(&S.mu);
		struct table *tab = S.table;   /* this batch's decisions (held: see table_get) */
		if (tab)
			tab->refs++;
		uint64_t dl = deadline_ns();
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			if (m->fd == FAN_NOFD) {
				S.st[PD_STAT_overflows]++;
				continue;
			}
			S.st[PD_STAT_events]++;
			if (sg)
				S.st[PD_STAT_served]++;
			if (is_exempt((uint32_t)m->pid) || !(m->mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM))) {
				if (PROBE.ino && !sg && (uint32_t)m->pid == S.self)
					probe_note(g, m->fd);
				answer(sg, g->fan_fd, m->fd, 1);
				S.st[PD_STAT_exempt]++;
				continue;
			}
			int s = 0;
			while (S.pend[s].used)
				s++;   /* room was checked above; only the watchdog frees slots meanwhile */
			S.pend[s] = (struct pend){ 1, m->fd, g->fan_fd, (uint32_t)m->pid, m->mask, t, t + dl, ++S.seq, sg };
			S.npend++;
			seqs[ns] = S.seq;
			slots[ns++] = s;
		}
		if (ns && t + dl < S.wd_wake)
			pthread_cond_signal(&S.cv);   /* only when the watchdog would wake too late */
		pthread_mutex_unlock(&S.mu);
		if (sg)
			close_answered(g);

		for (int i = 0; i < ns; i++) {
			struct pend p;
			pthread_mutex_lock(&S.mu);
			p = S.pend[slots[i]];
			pthread_mutex_unlock(&S.mu);
			if (!p.used || p.seq != seqs[i])
				continue;   /* answered by the watchdog already */
			if (!sg)
				__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
			char path[PATH_MAX];
			struct request q = { .kind = p.mask & FAN_OPEN_EXEC_PERM ? PD_KIND_EXEC : PD_KIND_OPEN,
					     .pid = p.pid, .binary_len = -1, .nanc = -1 };
			q.path_len = (size_t)path_of_fd(p.efd, path, sizeof(path));
			q.path = path;
			struct verdict v;
			decide(tab, &q, &v);
			/* one exec/open asked of several main groups (a table change) is reported and
			 * counted once: see W. (a refusal ends the kernel's walk: always reported) */
			/* (a served group being built: the table in force has its own served group on that
			 * file system for whatever its rules name there, asked too; S.cur: the main thread's) */
			int building_group = sg ? !__atomic_load_n(&g->ready, __ATOMIC_ACQUIRE) :
						  g != S.cur && !g->retired;
			struct stat fst;
			int paired = !sg && v.allow && v.nmatch && g->order_known &&
				     (building || g != S.cur || R.n || W.n) && fstat(p.efd, &fst) == 0;
			if (!sg && S.stall_ms) {   /* test hook: a decision that takes too long */
				uint32_t ms = S.stall_ms;
				S.stall_ms = 0;
				struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
				while (nanosleep(&ts, &ts) && errno == EINTR)
					;
			}
			pthread_mutex_lock(&S.mu);
			struct pend *cur = &S.pend[slots[i]];
			int mine = cur->used && cur->seq == seqs[i];
			uint64_t lat = now_ns(CLOCK_MONOTONIC) - t;
			int keep = -1;   /* the file, to remember once answered and unlocked */
			int quiet = 0;   /* a later ask of an exec/open reported by an earlier group */
			if (mine && v.allow && v.nmatch) {
				if (paired) {
					quiet = walk_asked_before(g, building_group, p.pid, p.mask, fst.st_dev, fst.st_ino);
				} else if (building_group) {
					quiet = 1;
					__atomic_add_fetch(&S.st[PD_STAT_asked_again], 1, __ATOMIC_RELAXED);
				}
			}
			if (mine) {
				/* a NoPost rule's decision sends no report: counted here, before the answer
				 * (a PD_STATS the requester asks for once its open returns holds it) */
				for (int k = 0; k < v.nmatch && !quiet; k++)
					if (tab->rules[v.rules[k]].action == PD_ACT_NOPOST)
						__atomic_add_fetch(&tab->rules[v.rules[k]].nopost, 1, __ATOMIC_RELAXED);
				if (v.kill) {
					kill((pid_t)p.pid, SIGKILL);   /* the requester the kernel named, nothing else */
					S.st[PD_STAT_killed]++;
				}
				/* (a group being built answers with the table in force, not the one it is
				 * built for: nothing is remembered in it; nor in a served group, whose
				 * files' handles and attributes would be asked of their server) */
				if (!sg && g == S.cur && v.allow && !v.nmatch && q.path_len && tab &&
				    tab->remember_kinds & q.kind)
					keep = fcntl(cur->efd, F_DUPFD_CLOEXEC, 0);
				answer(sg, cur->fan_fd, cur->efd, v.allow);
				account_latency(lat);
				cur->used = 0;
				S.npend--;
			}
			pthread_mutex_unlock(&S.mu);
			if (sg)
				close_answered(g);
			if (keep >= 0) {   /* answered already: the requester does not wait for this */
				remember_allow(g, keep, q.kind, path);
				close(keep);
			}
			if (mine && !quiet) {
				for (int k = 0; k < v.nmatch; k++) {
					const struct rule *r = &tab->rules[v.rules[k]];
					if (r->action == PD_ACT_NOPOST)   /* counted before the answer, not reported */
						continue;
					int enforcing = r->action == PD_ACT_OVERRIDE || r->action == PD_ACT_SIGKILL;
					uint32_t fl = (v.allow ? PD_REP_ALLOWED : 0) | (v.kill ? PD_REP_KILLED : 0) |
						      (enforcing && r->monitor ? PD_REP_MONITOR : 0);
					if (enforcing && r->monitor)
						__atomic_add_fetch(&S.st[PD_STAT_monitored], 1, __ATOMIC_RELAXED);
					send_report(r, &q, fl, lat);
				}
			}
			if (!sg)
				__atomic_store_n(&S.busy_since, 0, __ATOMIC_RELAXED);
		}
		table_put(tab);
	}
}

/* A file or directory appeared in a watched directory: mark it if a rule covers it. */
static void handle_inotify(struct gen *g)
{
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		ssize_t len = read(g->ino_fd, buf, sizeof(buf));
		if (len <= 0)
			return;
		for (char *p = buf; p < buf + len;) {
			struct inotify_event *e = (struct inotify_event *)p;
			p += sizeof(*e) + e->len;
			if (e->mask & IN_Q_OVERFLOW) {
				__atomic_add_fetch(&S.st[PD_STAT_watch_overflows], 1, __ATOMIC_RELAXED);
				continue;
			}
			if (!e->len)
				continue;
			if (e->mask & IN_DELETE) {
				g->sweep_due |= !!(e->mask & IN_ISDIR);   /* its watch (and fd) to let go */
				continue;
			}
			uint32_t n = g->nw;   /* mark_tree appends watches */
			for (uint32_t i = 0; i < n; i++) {
				struct watch *w = &g->w[i];
				if (w->wd != e->wd)
					continue;
				if (w->kind == PD_MARK_FILE && w->name && !strcmp(w->name, e->name)) {
					if (fanotify_mark(g->fan_fd, FAN_MARK_ADD, w->mask, w->dirfd, e->name) == 0)
						g->marks++;
					else
						g->mark_errors++;
				} else if (w->kind == PD_MARK_TREE && e->mask & IN_ISDIR) {
					int sub = openat(w->dirfd, e->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
					if (sub >= 0 ? mark_tree(g, sub, w->mask, NULL, 0) < 0 : errno != ENOENT)
						g->mark_errors++;   /* (ENOENT: gone again already) */
					w = &g->w[i];   /* the array may have moved */
				}
			}
		}
	}
}

/* Watches of directories that were deleted: each holds the directory's fd, which keeps the
 * directory (and its inotify watch) alive, so they are found by their link count and let go;
 * the tree's directory count goes down with them. At most once a second. */
static void sweep_deleted_dirs(struct gen *g)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC);
	if (!g->sweep_due || now - g->swept_ns < 1000000000ULL)
		return;
	g->sweep_due = 0;
	g->swept_ns = now;
	for (uint32_t i = 0; i < g->nw;) {
		struct watch *w = &g->w[i];
		struct stat st;
		if (fstat(w->dirfd, &st) || st.st_nlink) {
			i++;
			continue;
		}
		close(w->dirfd);   /* each watch holds an fd of its own (watch_dir) */
		if (w->kind == PD_MARK_TREE && g->dirs)
			g->dirs--;
		free(w->name);
		g->w[i] = g->w[--g->nw];
		__atomic_add_fetch(&S.st[PD_STAT_dirs_gone], 1, __ATOMIC_RELAXED);
	}
	if (!g->served)
		S.st[PD_STAT_dirs] = g->dirs;
}

static void handle_mount_change(void)
{
	char buf[4096];
	lseek(S.mountinfo_fd, 0, SEEK_SET);
	while (read(S.mountinfo_fd, buf, sizeof(buf)) > 0)
		;   /* reading it to the end re-arms the notification */
	if (S.cur)
		S.cur->mounts_changed = 1;
	if (S.cur && S.cur->all_mask) {
		S.st[PD_STAT_mount_rescans]++;
		mark_all_filesystems(S.cur);
	}
}

/* While a new group is built (gen_build): the group in force, and the new one (building). */
static void service_current(void)
{
	__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
	if (S.cur)
		handle_fanotify(S.cur);
	if (building)
		handle_fanotify(building);
	__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ served groups */
/* The thread of a served group: reads and answers its events, follows new files and
 * directories under its marks, closes the event fds answered. It takes S.mu only around
 * bookkeeping, never across a read, a close or a mark, so whatever its server does, the main
 * thread and the watchdog never wait on it. Retired (a new table, or the one it was made for
 * refused), it answers what its group still holds by the table in force, leaves no pending
 * slot behind, closes its group (the kernel allows anything that raced in) and ends. A server
 * that never answers keeps the thread in read() with its group open: only that file system's
 * events wait, as its processes wait on that server anyway. */
static void *served_main(void *arg)
{
	struct gen *g = arg;
	while (!__atomic_load_n(&g->retired, __ATOMIC_ACQUIRE)) {
		int ready = __atomic_load_n(&g->ready, __ATOMIC_ACQUIRE);
		struct pollfd p[3] = {
			{ .fd = g->fan_fd, .events = POLLIN },
			{ .fd = ready ? g->ino_fd : -1, .events = POLLIN },
			{ .fd = g->wake_fd, .events = POLLIN },
		};
		if (poll(p, 3, g->sweep_due || !ready ? 100 : -1) < 0) {
			struct timespec ts = { 0, 10000000L };   /* (EINTR; nothing else is expected) */
			nanosleep(&ts, NULL);
			continue;
		}
		if (p[2].revents & POLLIN) {
			uint64_t n;
			if (read(g->wake_fd, &n, sizeof(n)) < 0)
				;   /* (EAGAIN: someone else's wake-up read it) */
		}
		close_answered(g);
		if (__atomic_load_n(&g->retired, __ATOMIC_ACQUIRE))
			break;
		if (p[0].revents & POLLIN)
			handle_fanotify(g);
		if (p[1].revents & POLLIN)
			handle_inotify(g);
		if (ready)
			sweep_deleted_dirs(g);
	}
	handle_fanotify(g);
	pthread_mutex_lock(&S.mu);
	for (int i = 0; i < MAX_PENDING; i++) {   /* nothing should be left; never leave one unanswered */
		struct pend *p = &S.pend[i];
		if (p->used && p->sg == g) {
			answer(g, p->fan_fd, p->efd, default_allow());
			p->used = 0;
			S.npend--;
		}
	}
	pthread_mutex_unlock(&S.mu);   /* no slot names g now: nothing but this thread reaches it */
	close_answered(g);
	gen_free(g);
	return NULL;
}

static void served_retire(struct gen *g)
{
	uint64_t one = 1;
	__atomic_store_n(&g->retired, 1, __ATOMIC_RELEASE);
	if (write(g->wake_fd, &one, sizeof(one)) < 0)
		;   /* (its counter full: it is awake anyway) */
}

/* A group for the served file system dev (where: its mount, for warnings), its thread started:
 * it answers events by the table in force while the table it is made for is being marked. */
static struct gen *served_group(struct gen *home, dev_t dev, const char *where)
{
	int err;
	struct gen *g = gen_new(&err);
	g->served = 1;
	g->served_dev = dev;
	if (!err && (g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
		err = errno;
	pthread_attr_t a;
	pthread_t th;
	sigset_t all, old;
	if (!err) {   /* signals are the main thread's (SIGTERM, SIGINT end its loop) */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		err = pthread_create(&th, &a, served_main, g);
		pthread_attr_destroy(&a);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	if (err) {
		gen_warn(home, "%s is not guarded: no group of its own (%s)", where, strerror(err));
		home->mark_errors++;
		gen_free(g);
		return NULL;
	}
	return g;
}

/* ------------------------------------------------------------------ watchdog */
/* The main group only (g: S.cur): a served group is never read here, as reading it may wait
 * on its server, and the watchdog holds S.mu. */
static void rescue_locked(struct gen *g)
{
	static char buf[16 * 1024] __attribute__((aligned(8)));
	ssize_t len;
	int allow = default_allow();
	while ((len = read(g->fan_fd, buf, sizeof(buf))) > 0) {
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
			if (m->fd == FAN_NOFD) {
				S.st[PD_STAT_overflows]++;
				continue;
			}
			S.st[PD_STAT_events]++;
			S.st[PD_STAT_rescued]++;
			answer(NULL, g->fan_fd, m->fd, allow || is_exempt((uint32_t)m->pid));
		}
	}
}

static void *watchdog(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&S.mu);
	while (!S.quit) {
		uint64_t now = now_ns(CLOCK_MONOTONIC), dl = deadline_ns();
		uint64_t wake = now + dl / 2;
		for (int i = 0; i < MAX_PENDING && S.npend; i++) {
			struct pend *p = &S.pend[i];
			if (!p->used)
				continue;
			if (p->deadline_ns <= now) {
				char path[PATH_MAX];
				struct request q = { .kind = p->mask & FAN_OPEN_EXEC_PERM ? PD_KIND_EXEC : PD_KIND_OPEN,
						     .pid = p->pid, .binary_len = 0 };
				q.path_len = (size_t)path_of_fd(p->efd, path, sizeof(path));
				q.path = path;
				q.binary[0] = 0;
				int allow = default_allow();
				answer(p->sg, p->fan_fd, p->efd, allow);   /* (a served group's fd: closed by its thread) */
				if (p->sg) {
					uint64_t one = 1;
					if (write(p->sg->wake_fd, &one, sizeof(one)) < 0)
						;   /* (its counter full: it is awake anyway) */
				}
				S.st[PD_STAT_timeouts]++;
				account_latency(now - p->read_ns);
				p->used = 0;
				S.npend--;
				send_report(NULL, &q, PD_REP_TIMEOUT | (allow ? PD_REP_ALLOWED : 0), now - p->read_ns);
			} else if (p->deadline_ns < wake) {
				wake = p->deadline_ns;
			}
		}
		/* the agent gone: exit now, even while the main thread is stuck (the kernel allows in-flight) */
		struct pollfd cp = { .fd = S.ctl, .events = POLLRDHUP };
		if (poll(&cp, 1, 0) == 1 && cp.revents & (POLLHUP | POLLRDHUP | POLLERR)) {
			close_all();
			_exit(0);
		}
		if (wake > now + 100000000ull)
			wake = now + 100000000ull;
		uint64_t busy = __atomic_load_n(&S.busy_since, __ATOMIC_RELAXED);
		if (busy && now - busy > dl && S.cur)
			rescue_locked(S.cur);
		S.wd_wake = wake;
		struct timespec ts = { (time_t)(wake / 1000000000ull), (long)(wake % 1000000000ull) };
		pthread_cond_timedwait(&S.cv, &S.mu, &ts);
	}
	/* told to end (SIGTERM/SIGINT, the agent gone, PD_SHUTDOWN): now, not once the main thread
	 * is done, as it may be stuck in a decision or a mark (a hung file server): past this loop
	 * nothing would answer at the deadline. The kernel allows whatever is in flight. */
	pthread_mutex_unlock(&S.mu);
	close_all();
	_exit(0);
}

/* ------------------------------------------------------------------ control messages */
static int take_values(struct cond *c, const char *p, const char *end, uint32_t n)
{
	if (c->field == PD_FIELD_PID) {
		if ((size_t)(end - p) < (size_t)n * 4)
			return -1;
		c->pids = xrealloc(c->pids, sizeof(uint32_t) * (c->n + n));
		memcpy(c->pids + c->n, p, (size_t)n * 4);
		c->n += n;
		return 0;
	}
	if ((size_t)n > (size_t)(end - p) / 4)
		return -1;
	c->sv = xrealloc(c->sv, sizeof(struct sval) * (c->n + n));
	for (uint32_t i = 0; i < n; i++) {
		uint32_t l;
		if (end - p < 4)
			return -1;
		memcpy(&l, p, 4);
		p += 4;
		if ((size_t)(end - p) < l || l > PATH_MAX)
			return -1;
		struct sval *v = &c->sv[c->n++];
		v->len = l;
		v->s = xrealloc(NULL, l + 1);
		memcpy(v->s, p, l);
		v->s[l] = 0;
		p += l;
	}
	return 0;
}

static const char *stage(const char *msg, size_t len)
{
	const struct pd_hdr *h = (const void *)msg;
	struct table *t = S.staging;
	if (h->type != PD_BEGIN && !t)
		return "no table is being staged (PD_BEGIN first)";
	switch (h->type) {
	case PD_BEGIN: {
		const struct pd_begin *b = (const void *)msg;
		if (len < sizeof(*b))
			return "short PD_BEGIN";
		table_free(S.staging);   /* (a table staged and not committed is abandoned, refused or not) */
		S.staging_bad = 0;
		S.staging = t = xrealloc(NULL, sizeof(*t));
		memset(t, 0, sizeof(*t));
		t->generation = b->generation, t->default_allow = b->default_allow, t->deadline_ms = b->deadline_ms;
		if (!t->deadline_ms || t->deadline_ms > 60000)
			return "deadline_ms must be 1..60000";
		return NULL;
	}
	case PD_RULE: {
		const struct pd_rule *r = (const void *)msg;
		if (len < sizeof(*r))
			return "short PD_RULE";
		if (r->action > PD_ACT_SIGKILL || !r->kinds || r->kinds & ~(uint32_t)(PD_KIND_EXEC | PD_KIND_OPEN))
			return "PD_RULE: bad action or kinds";
		struct rule *n = PUSH(t->rules, t->nrules);
		memset(n, 0, sizeof(*n));
		n->hook_id = r->hook_id, n->selector = r->selector, n->kinds = r->kinds;
		n->action = r->action, n->monitor = r->monitor;
		return NULL;
	}
	case PD_COND: {
		const struct pd_cond *c = (const void *)msg;
		if (len < sizeof(*c) || !t->nrules)
			return "PD_COND: short, or no rule before it";
		struct rule *r = &t->rules[t->nrules - 1];
		struct cond *dst;
		if (c->flags & PD_COND_CONT) {
			if (!r->ncond || r->conds[r->ncond - 1].field != c->field)
				return "PD_COND: continuation without its condition";
			dst = &r->conds[r->ncond - 1];
		} else {
			if (c->field > PD_FIELD_PID || c->op > PD_OP_NOTIN ||
			    (c->field == PD_FIELD_PID) != (c->op == PD_OP_IN || c->op == PD_OP_NOTIN))
				return "PD_COND: bad field or operator";
			dst = PUSH(r->conds, r->ncond);
			memset(dst, 0, sizeof(*dst));
			dst->field = c->field, dst->op = c->op, dst->flags = c->flags & PD_COND_FOLLOW_FORKS;
			t->need_binary |= c->field == PD_FIELD_BINARY;
		}
		if (take_values(dst, msg + sizeof(*c), msg + len, c->nvalues) < 0)
			return "PD_COND: values overrun the message";
		return NULL;
	}
	case PD_MARK: {
		const struct pd_mark *m = (const void *)msg;
		if (len < sizeof(*m) || len > sizeof(*m) + PATH_MAX)
			return "PD_MARK: bad length";
		if (m->kind > PD_MARK_ALL || !m->mask || m->mask & ~(uint64_t)(FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM))
			return "PD_MARK: bad kind or mask";
		size_t pl = strnlen(msg + sizeof(*m), len - sizeof(*m));
		if (m->kind != PD_MARK_ALL && (pl == 0 || msg[sizeof(*m)] != '/'))
			return "PD_MARK: the path must be absolute";
		struct markspec *n = PUSH(t->marks, t->nmarks);
		n->kind = m->kind, n->mask = m->mask, n->served = 0;
		n->path = strndup(msg + sizeof(*m), pl);
		return NULL;
	}
	case PD_EXEMPT: {
		const struct pd_exempt *e = (const void *)msg;
		if (len < sizeof(*e))
			return "short PD_EXEMPT";
		*PUSH(t->exempt, t->nexempt) = e->pid;
		return NULL;
	}
	}
	return "unknown message type";
}

/* The kinds whose every rule reads only the file's path: for those, the answer for a file
 * does not depend on who asks, so a silent allow can be remembered per file (see
 * remember_allow). One rule reading the requester (binary, pid) makes its kinds ask every time. */
static uint32_t path_only_kinds(const struct table *t)
{
	uint32_t kinds = PD_KIND_EXEC | PD_KIND_OPEN;
	for (uint32_t i = 0; i < t->nrules; i++)
		for (uint32_t j = 0; j < t->rules[i].ncond; j++)
			if (t->rules[i].conds[j].field != PD_FIELD_PATH)
				kinds &= ~t->rules[i].kinds;
	return kinds;
}


/* Closed, what they still hold answered first: all (quit = 1) or those retired long enough. */
static void retired_sweep(int all)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC);
	for (int i = 0; i < R.n;) {
		if (!all && now - R.since[i] < RETIRED_GRACE_NS) {
			i++;
			continue;
		}
		handle_fanotify(R.g[i]);
		double order = R.g[i]->order;
		int known = R.g[i]->order_known;
		pthread_mutex_lock(&S.mu);   /* (the watchdog reads S.pend under it; nothing of this group is there) */
		gen_free(R.g[i]);
		pthread_mutex_unlock(&S.mu);
		memmove(&R.g[i], &R.g[i + 1], sizeof(R.g[0]) * (size_t)(R.n - i - 1));
		memmove(&R.since[i], &R.since[i + 1], sizeof(R.since[0]) * (size_t)(R.n - i - 1));
		R.n--;
		walks_closed(order, known);
	}
}

static void retired_add(struct gen *r)
{
	if (R.n == MAX_RETIRED) {   /* tables replaced faster than the grace: the oldest goes now */
		handle_fanotify(R.g[0]);
		double order = R.g[0]->order;
		int known = R.g[0]->order_known;
		pthread_mutex_lock(&S.mu);
		gen_free(R.g[0]);
		pthread_mutex_unlock(&S.mu);
		memmove(&R.g[0], &R.g[1], sizeof(R.g[0]) * (MAX_RETIRED - 1));
		memmove(&R.since[0], &R.since[1], sizeof(R.since[0]) * (MAX_RETIRED - 1));
		R.n--;
		walks_closed(order, known);
	}
	R.g[R.n] = r;
	R.since[R.n++] = now_ns(CLOCK_MONOTONIC);
	walks_prune();
}

/* The place of the new main group g among the live ones (S.cur, R) in the order the kernel asks
 * them in (see W): the helper's own open of a probe file marked in each, from a thread of its
 * own, is answered group by group here (exempt: allowed at once), and the groups are seen in that
 * order. When it cannot be learned, g's events are reported as they come (no pairing). */
struct probe_arg { char path[64]; int done; };

static void *probe_open(void *arg)
{
	struct probe_arg *a = arg;
	int fd = open(a->path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
	__atomic_store_n(&a->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void probe_order(struct gen *g)
{
	struct gen *all[MAX_RETIRED + 2];
	int n = 0;
	all[n++] = g;
	if (S.cur)
		all[n++] = S.cur;
	for (int i = 0; i < R.n; i++)
		all[n++] = R.g[i];
	g->order_known = 0;
	if (n == 2 && !W.n && S.cur->order_known)
		S.cur->order = 0;   /* (no record holds a place: start over, midpoints stay far apart) */
	if (n == 1) {
		g->order = 0, g->order_known = 1;
		return;
	}
	struct stat st;
	int mfd = memfd_create("vigil-permd-order", MFD_CLOEXEC);
	if (mfd < 0)
		return;
	int marked = 0;
	for (; marked < n; marked++)
		if (fstat(mfd, &st) < 0 || fanotify_mark(all[marked]->fan_fd, FAN_MARK_ADD, FAN_OPEN_PERM, mfd, NULL) < 0)
			break;
	struct probe_arg *a = xrealloc(NULL, sizeof(*a));
	memset(a, 0, sizeof(*a));
	snprintf(a->path, sizeof(a->path), "/proc/self/fd/%d", mfd);
	pthread_t th;
	sigset_t all_sigs, old;
	int started = 0;
	if (marked == n) {
		PROBE.dev = st.st_dev, PROBE.ino = st.st_ino, PROBE.n = 0;
		sigfillset(&all_sigs);   /* (signals are the main thread's) */
		pthread_sigmask(SIG_SETMASK, &all_sigs, &old);
		started = !pthread_create(&th, NULL, probe_open, a);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	/* its open waits on each group until answered here (and on any other listener's) */
	uint64_t until = now_ns(CLOCK_MONOTONIC) + 2000000000ULL;
	while (started && !__atomic_load_n(&a->done, __ATOMIC_ACQUIRE) && now_ns(CLOCK_MONOTONIC) < until) {
		struct pollfd p[MAX_RETIRED + 2];
		for (int i = 0; i < n; i++)
			p[i] = (struct pollfd){ .fd = all[i]->fan_fd, .events = POLLIN };
		if (poll(p, (nfds_t)n, 10) <= 0)
			continue;
		for (int i = 0; i < n; i++)
			if (p[i].revents & POLLIN)
				handle_fanotify(all[i]);   /* (others' events too, decided as always) */
	}
	PROBE.ino = 0;
	if (started && __atomic_load_n(&a->done, __ATOMIC_ACQUIRE)) {
		pthread_join(th, NULL);
		free(a);
	} else if (started) {
		pthread_detach(th);   /* (held elsewhere: its argument stays, a few bytes) */
	} else {
		free(a);
	}
	int p = -1;   /* g's place in what was seen; every group seen once, else nothing learned */
	for (int i = 0; i < PROBE.n; i++)
		if (PROBE.seen[i] == g)
			p = i;
	if (started && PROBE.n == n && p >= 0) {
		int lo = p - 1, hi = p + 1;
		while (lo >= 0 && !PROBE.seen[lo]->order_known)
			lo--;
		while (hi < n && !PROBE.seen[hi]->order_known)
			hi++;
		if (lo >= 0 && hi < n)
			g->order = (PROBE.seen[lo]->order + PROBE.seen[hi]->order) / 2;
		else if (lo >= 0)
			g->order = PROBE.seen[lo]->order + 1024;
		else if (hi < n)
			g->order = PROBE.seen[hi]->order - 1024;
		else
			g->order = 0;
		/* (places between two others halve their gap: one too small to halve is not used) */
		g->order_known = !((lo >= 0 && g->order <= PROBE.seen[lo]->order) ||
				   (hi < n && g->order >= PROBE.seen[hi]->order));
	}
	PROBE.n = 0;
	/* A walk answered by the group that was the last before g (so it left no record), still on
	 * its way, would meet g's marks made from now on: wait for those walks first. Closing a group
	 * that holds a mark waits for the marks' SRCU (fsnotify_destroy_group), which every walk holds
	 * while it is not blocked on a group's answer: after it, each has ended, or has its next ask
	 * queued (its record made with g counted: see last_order). */
	int bar = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, O_RDONLY | O_CLOEXEC);
	if (bar >= 0) {
		if (fanotify_mark(bar, FAN_MARK_ADD, FAN_MODIFY, mfd, NULL) < 0)
			g->order_known = 0;   /* (no barrier: no pairing for g) */
		close(bar);
	} else {
		g->order_known = 0;
	}
	walks_prune();   /* (records left for g while its place was not known) */
	for (int i = 0; i < marked; i++)
		fanotify_mark(all[i]->fan_fd, FAN_MARK_REMOVE, FAN_OPEN_PERM, mfd, NULL);
	close(mfd);
}

/* A fully marked group (and its table) in force: the old group's events still held are
 * answered and it is retired. Returns the table it replaced. */
static struct table *install(struct gen *g, struct table *t)
{
	pthread_mutex_lock(&S.mu);
	struct gen *old = S.cur;
	struct table *old_t = S.table;
	uint64_t marks, dirs, errors;
	gen_totals(g, &marks, &dirs, &errors);
	S.cur = g;
	S.table = t;
	S.st[PD_STAT_generation] = t->generation;
	S.st[PD_STAT_marks] = marks;
	S.st[PD_STAT_dirs] = dirs;
	S.st[PD_STAT_served_groups] = g->nsrv;
	pthread_mutex_unlock(&S.mu);
	if (old) {
		old->retired = 1;   /* (a main group's: decided by the new table, its walks paired: W) */
		handle_fanotify(old);
		gen_totals(old, &marks, &dirs, &errors);
		pthread_mutex_lock(&S.mu);
		for (int i = 0; i < MAX_PENDING; i++) {   /* nothing should be left; never leave one unanswered */
			struct pend *p = &S.pend[i];
			if (p->used && !p->sg && p->fan_fd == old->fan_fd) {
				answer(NULL, p->fan_fd, p->efd, default_allow());
				p->used = 0;
				S.npend--;
			}
		}
		S.st[PD_STAT_mark_errors] += errors;
		/* Its group stays open, marked, a while (retired), read and decided by the new table:
		 * an exec or open whose walk of the kernel's marks passed the new group's place before
		 * that group's mark was in (preempted there: the new group was being marked) gets to
		 * the old group's mark later; had the group been closed (or unmarked) by then, no group
		 * at all would have been asked (the kernel allows what it cannot queue to a closed
		 * group). Meanwhile an exec or open asked of both groups is reported and counted once
		 * (W). Its served groups are retired: each thread answers what its group holds by
		 * the new table, then closes it. */
		struct gen *r = xrealloc(NULL, sizeof(*r));
		memset(r, 0, sizeof(*r));
		r->ino_fd = r->notif_fd = r->wake_fd = -1;
		r->fan_fd = old->fan_fd;
		r->order = old->order, r->order_known = old->order_known;
		r->retired = 1;   /* (a main group's: no thread; decided by the new table, reported once: W) */
		old->fan_fd = -1;
		gen_free(old);
		pthread_mutex_unlock(&S.mu);
		retired_add(r);
	}
	return old_t;
}

/* Remembered files that cannot be reached to be forgotten (fid_only) changed: the same table
 * in a new group, fully marked before the old one goes with everything it remembered. When
 * that fails the old group stays, and the main loop tries again a second later. */
static void regroup(void)
{
	uint32_t n = S.cur->regroup;
	int err = 0;
	if (S.regroup_failed_ns && now_ns(CLOCK_MONOTONIC) - S.regroup_failed_ns < 1000000000ULL)
		return;
	__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
	/* the main group only: nothing remembered is in a served group, whose file systems are
	 * not asked again (their servers may be the ones that hang) */
	struct gen *g = gen_build(S.table, &err, 1);
	if (err) {
		fprintf(stderr, "vigil-permd: a new group to forget changed files: %s\n", g->warn);
		double order = g->order;
		int known = g->order_known;
		gen_free(g);
		walks_closed(order, known);
		S.regroup_failed_ns = now_ns(CLOCK_MONOTONIC);
	} else {
		g->srv = S.cur->srv, g->nsrv = S.cur->nsrv;   /* the served groups go on with it */
		S.cur->srv = NULL, S.cur->nsrv = 0;
		install(g, S.table);
		S.regrouped_ns = now_ns(CLOCK_MONOTONIC);
		S.regroup_failed_ns = 0;
		__atomic_add_fetch(&S.st[PD_STAT_forgotten], n, __ATOMIC_RELAXED);
		__atomic_add_fetch(&S.st[PD_STAT_regroups], 1, __ATOMIC_RELAXED);
	}
	__atomic_store_n(&S.busy_since, 0, __ATOMIC_RELAXED);
}

/* The NoPost counts of the table replaced go on in the new one's rule of the same hook and
 * selector (a policy added or removed elsewhere rebuilds every rule). A decision the old table
 * makes after this (a served group's batch under way) is not carried. */
static void carry_counts(const struct table *old_t, struct table *t)
{
	for (uint32_t i = 0; old_t && i < old_t->nrules; i++) {
		const struct rule *o = &old_t->rules[i];
		uint64_t n = __atomic_load_n(&o->nopost, __ATOMIC_RELAXED);
		if (!n)
			continue;
		for (uint32_t j = 0; j < t->nrules; j++) {
			struct rule *r = &t->rules[j];
			if (r->hook_id == o->hook_id && r->selector == o->selector && r->action == PD_ACT_NOPOST) {
				__atomic_add_fetch(&r->nopost, n, __ATOMIC_RELAXED);
				break;
			}
		}
	}
}

static void commit(void)
{
	struct table *t = S.staging;
	S.staging = NULL;
	if (!t || S.staging_bad) {
		send_ack(PD_COMMIT, t ? t->generation : 0, EINVAL, 0, 0, "the staged table was refused earlier; nothing changed");
		table_free(t);
		S.staging_bad = 0;
		return;
	}
	int err = 0;
	t->remember_kinds = path_only_kinds(t);
	__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
	t->refs = 1;   /* S.table's */
	struct gen *g = gen_build(t, &err, 0);
	if (err) {
		send_ack(PD_COMMIT, t->generation, err, 0, 0, g->warn);
		double order = g->order;
		int known = g->order_known;
		gen_free(g);
		walks_closed(order, known);
		table_free(t);   /* (a served group's thread may have decided with the table in force, never this) */
		return;
	}
	struct table *old_t = install(g, t);
	carry_counts(old_t, t);
	/* the old table goes once no served group's thread decides with it */
	table_put(old_t);
	__atomic_store_n(&S.busy_since, 0, __ATOMIC_RELAXED);
	uint64_t marks, dirs, errors;
	gen_totals(g, &marks, &dirs, &errors);
	send_ack(PD_COMMIT, t->generation, 0, (uint32_t)marks, (uint32_t)dirs, g->warn);
}

static void eval(const char *msg, size_t len)
{
	const struct pd_eval *e = (const void *)msg;
	struct pd_eval_result r;
	memset(&r, 0, sizeof(r));
	r.h.type = PD_EVAL_RESULT, r.h.len = sizeof(r);
	if (len < sizeof(*e) || len - sizeof(*e) < (size_t)e->path_len + e->binary_len || e->binary_len >= PATH_MAX) {
		send_ack(PD_EVAL, 0, EINVAL, 0, 0, "PD_EVAL: bad length");
		return;
	}
	struct request q = { .kind = e->kind, .pid = e->pid, .nanc = -1, .binary_given = 1 };
	q.path = msg + sizeof(*e);
	q.path_len = e->path_len;
	memcpy(q.binary, msg + sizeof(*e) + e->path_len, e->binary_len);
	q.binary[e->binary_len] = 0;
	q.binary_len = e->binary_len;
	struct verdict v;
	decide(S.table, &q, &v);
	r.allow = (uint32_t)v.allow, r.kill = (uint32_t)v.kill, r.nmatch = (uint32_t)v.nmatch;
	memcpy(r.rules, v.rules, sizeof(r.rules));
	send_pkt(&r, sizeof(r), 0);
}

static void handle_ctl(void)
{
	static char msg[PD_MAX_MSG] __attribute__((aligned(8)));
	for (;;) {
		/* MSG_TRUNC: the packet's own length, so one longer than msg is refused, not cut */
		ssize_t len = recv(S.ctl, msg, sizeof(msg), MSG_DONTWAIT | MSG_TRUNC);
		if (len < 0 && errno != EAGAIN && errno != EINTR) {
			S.quit = 1;   /* the agent went away */
			return;
		}
		if (len < 0)
			return;
		if (len == 0) {   /* the agent gone, or an empty packet (refused below) */
			struct pollfd p = { .fd = S.ctl, .events = POLLRDHUP };
			if (poll(&p, 1, 0) == 1 && p.revents & (POLLHUP | POLLRDHUP | POLLERR)) {
				S.quit = 1;
				return;
			}
		}
		const struct pd_hdr *h = (const void *)msg;
		if ((size_t)len > sizeof(msg)) {
			S.staging_bad = S.staging != NULL;
			send_ack(0, 0, EINVAL, 0, 0, "malformed message (longer than PD_MAX_MSG)");
			continue;
		}
		if ((size_t)len < sizeof(*h) || h->len != (uint32_t)len) {
			S.staging_bad = S.staging != NULL;
			send_ack(0, 0, EINVAL, 0, 0, "malformed message (length)");
			continue;
		}
		switch (h->type) {
		case PD_COMMIT:
			commit();
			break;
		case PD_STATS_REQ: {
			static char out[PD_MAX_MSG] __attribute__((aligned(8)));
			struct pd_stats s = { .h = { PD_STATS, sizeof(s) } };
			pthread_mutex_lock(&S.mu);
			memcpy(s.v, S.st, sizeof(s.v));
			for (uint32_t i = 0; S.table && i < S.table->nrules; i++) {   /* the rules' counts follow */
				const struct rule *r = &S.table->rules[i];
				uint64_t n = __atomic_load_n(&r->nopost, __ATOMIC_RELAXED);
				if (!n || s.h.len + sizeof(struct pd_rule_count) > sizeof(out))
					continue;
				struct pd_rule_count c = { r->hook_id, r->selector, n };
				memcpy(out + s.h.len, &c, sizeof(c));
				s.h.len += sizeof(c);
			}
			if (S.cur) {   /* marks follow new directories, files and mounts after the commit */
				uint64_t marks, dirs, errors;
				gen_totals(S.cur, &marks, &dirs, &errors);
				s.v[PD_STAT_marks] = marks;
				s.v[PD_STAT_dirs] = dirs;
				s.v[PD_STAT_mark_errors] += errors;
				s.v[PD_STAT_served_groups] = S.cur->nsrv;
			}
			pthread_mutex_unlock(&S.mu);
			memcpy(out, &s, sizeof(s));
			send_pkt(out, s.h.len, 0);
			break;
		}
		case PD_EVAL:
			eval(msg, (size_t)len);
			break;
		case PD_STALL:
			if (!S.test_hooks || (size_t)len < sizeof(struct pd_stall)) {
				send_ack(PD_STALL, 0, EPERM, 0, 0, "PD_STALL needs --test-hooks");
				break;
			}
			S.stall_ms = ((const struct pd_stall *)msg)->ms;
			send_ack(PD_STALL, 0, 0, 0, 0, "stall armed");
			break;
		case PD_SHUTDOWN:
			S.quit = 1;
			return;
		default: {
			const char *err = stage(msg, (size_t)len);
			if (err) {
				S.staging_bad = S.staging != NULL;
				send_ack(h->type, S.staging ? S.staging->generation : 0, EINVAL, 0, 0, err);
			}
		}
		}
	}
}

/* ------------------------------------------------------------------ layout (for the Python mirror) */
#define F(s, f) printf("\"%s.%s\": [%zu, %zu], ", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
#define Z(s) printf("\"sizeof.%s\": %zu, ", #s, sizeof(struct s))
#define C(n) printf("\"%s\": %d, ", #n, (int)(n))
#define STAT_NAME(n) printf("\"%s\", ", #n);
static void print_layout(void)
{
	printf("{");
	C(PD_VERSION); C(PD_MAX_MSG); C(PD_MAX_MATCH);
	C(PD_HELLO); C(PD_BEGIN); C(PD_RULE); C(PD_COND); C(PD_MARK); C(PD_EXEMPT); C(PD_COMMIT); C(PD_ACK);
	C(PD_REPORT); C(PD_STATS_REQ); C(PD_STATS); C(PD_EVAL); C(PD_EVAL_RESULT); C(PD_STALL); C(PD_SHUTDOWN);
	C(PD_KIND_EXEC); C(PD_KIND_OPEN);
	C(PD_ACT_POST); C(PD_ACT_NOPOST); C(PD_ACT_OVERRIDE); C(PD_ACT_SIGKILL);
	C(PD_FIELD_PATH); C(PD_FIELD_BINARY); C(PD_FIELD_PID);
	C(PD_OP_EQUAL); C(PD_OP_NOTEQUAL); C(PD_OP_PREFIX); C(PD_OP_NOTPREFIX); C(PD_OP_POSTFIX);
	C(PD_OP_NOTPOSTFIX); C(PD_OP_IN); C(PD_OP_NOTIN);
	C(PD_COND_CONT); C(PD_COND_FOLLOW_FORKS);
	C(PD_MARK_FILE); C(PD_MARK_TREE); C(PD_MARK_MOUNT); C(PD_MARK_FILESYSTEM); C(PD_MARK_ALL);
	C(PD_REP_ALLOWED); C(PD_REP_MONITOR); C(PD_REP_TIMEOUT); C(PD_REP_KILLED); C(PD_REP_RESCUED);
	C(FAN_OPEN_PERM); C(FAN_OPEN_EXEC_PERM);
	Z(pd_hdr); F(pd_hdr, type); F(pd_hdr, len);
	Z(pd_hello); F(pd_hello, version); F(pd_hello, pid);
	Z(pd_begin); F(pd_begin, generation); F(pd_begin, default_allow); F(pd_begin, deadline_ms); F(pd_begin, flags);
	Z(pd_rule); F(pd_rule, hook_id); F(pd_rule, selector); F(pd_rule, kinds); F(pd_rule, action); F(pd_rule, monitor);
	Z(pd_cond); F(pd_cond, field); F(pd_cond, op); F(pd_cond, flags); F(pd_cond, nvalues);
	Z(pd_mark); F(pd_mark, kind); F(pd_mark, mask);
	Z(pd_exempt); F(pd_exempt, pid);
	Z(pd_ack); F(pd_ack, generation); F(pd_ack, error); F(pd_ack, marks); F(pd_ack, dirs); F(pd_ack, reply_to);
	Z(pd_report); F(pd_report, time_ns); F(pd_report, pid); F(pd_report, hook_id); F(pd_report, selector);
	F(pd_report, kind); F(pd_report, action); F(pd_report, flags); F(pd_report, latency_ns);
	F(pd_report, path_len); F(pd_report, binary_len);
	Z(pd_eval); F(pd_eval, kind); F(pd_eval, pid); F(pd_eval, path_len); F(pd_eval, binary_len);
	Z(pd_eval_result); F(pd_eval_result, allow); F(pd_eval_result, kill); F(pd_eval_result, nmatch);
	F(pd_eval_result, rules);
	Z(pd_stall); F(pd_stall, ms);
	Z(pd_stats); F(pd_stats, v);
	Z(pd_rule_count); F(pd_rule_count, hook_id); F(pd_rule_count, selector); F(pd_rule_count, nopost);
	printf("\"stats\": [");
	PD_STATS_LIST(STAT_NAME)
	printf("null]}\n");
}

/* ------------------------------------------------------------------ main */
static void on_signal(int sig)
{
	(void)sig;
	S.quit = 1;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--layout")) {
			print_layout();
			return 0;
		} else if (!strcmp(argv[i], "--control-fd") && i + 1 < argc) {
			S.ctl = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--test-hooks")) {
			S.test_hooks = 1;
		} else {
			fprintf(stderr, "usage: vigil-permd --control-fd N [--test-hooks] | --layout\n");
			return 2;
		}
	}
	const char *maxrem = getenv("VIGIL_PERMD_MAX_REMEMBERED");   /* test hook: a small table */
	if (S.test_hooks && maxrem)
		S.max_remembered = (uint32_t)strtoul(maxrem, NULL, 10);
	const char *quiet = getenv("VIGIL_PERMD_REGROUP_QUIET_MS");   /* test hook: another quiet period */
	if (S.test_hooks && quiet)
		S.regroup_quiet_ns = strtoull(quiet, NULL, 10) * 1000000ULL;
	int type = 0;
	socklen_t tl = sizeof(type);
	if (S.ctl < 0 || getsockopt(S.ctl, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_SEQPACKET) {
		fprintf(stderr, "vigil-permd: --control-fd must name a SOCK_SEQPACKET socket\n");
		return 2;
	}
	fcntl(S.ctl, F_SETFD, FD_CLOEXEC);
	S.self = (uint32_t)getpid();
	main_thread = pthread_self();
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;   /* tree marks hold one directory fd each */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int sndbuf = 4 << 20;   /* room for reports while the agent is busy */
	if (setsockopt(S.ctl, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
		setsockopt(S.ctl, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	socklen_t sl = sizeof(S.sndbuf);
	if (getsockopt(S.ctl, SOL_SOCKET, SO_SNDBUF, &S.sndbuf, &sl) < 0)
		S.sndbuf = INT_MAX;   /* (not expected: then no room is kept) */
	S.mountinfo_fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	service_hook = service_current;

	pthread_condattr_t ca;   /* the watchdog's deadlines are CLOCK_MONOTONIC */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&S.cv, &ca);
	pthread_t wd;
	if (pthread_create(&wd, NULL, watchdog, NULL)) {
		fprintf(stderr, "vigil-permd: cannot start the watchdog thread\n");
		return 1;
	}
	struct pd_hello hello = { { PD_HELLO, sizeof(hello) }, PD_VERSION, S.self };
	send_pkt(&hello, sizeof(hello), 0);

	while (!S.quit) {
		struct pollfd p[5 + MAX_RETIRED] = {
			{ .fd = S.ctl, .events = POLLIN },
			{ .fd = S.cur ? S.cur->fan_fd : -1, .events = POLLIN },
			{ .fd = S.cur ? S.cur->ino_fd : -1, .events = POLLIN },
			{ .fd = S.cur && (S.cur->all_mask || S.cur->nrem) ? S.mountinfo_fd : -1, .events = POLLPRI },
			{ .fd = S.cur && S.cur->notif_fd >= 0 ? S.cur->notif_fd : -1, .events = POLLIN },
		};
		int nr = R.n;
		for (int i = 0; i < nr; i++)
			p[5 + i] = (struct pollfd){ .fd = R.g[i]->fan_fd, .events = POLLIN };
		int timeout = S.cur && (S.cur->regroup || S.cur->sweep_due) ? 1000 : -1;
		if (nr)
			timeout = 250;   /* (retired groups closed once their grace is over) */
		if (poll(p, (nfds_t)(5 + nr), timeout) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int i = 0; i < nr; i++)   /* (before anything below can retire another) */
			if (p[5 + i].revents & POLLIN)
				handle_fanotify(R.g[i]);
		retired_sweep(0);
		/* first what changes how events are handled: a renamed file asked about again, a
		 * new file system marked, room made for remembering */
		/* (busy: these make file-system calls, and the watchdog answers for a main thread
		 * that one of them holds past the deadline) */
		__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
		if (p[4].revents & POLLIN)
			handle_notifications(S.cur);
		if (S.cur && S.cur->regroup)
			regroup();
		if (p[3].revents & (POLLPRI | POLLERR))
			handle_mount_change();
		__atomic_store_n(&S.busy_since, 0, __ATOMIC_RELAXED);
		if (p[1].revents & POLLIN)
			handle_fanotify(S.cur);
		__atomic_store_n(&S.busy_since, now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
		if (p[2].revents & POLLIN)
			handle_inotify(S.cur);
		if (S.cur)
			sweep_deleted_dirs(S.cur);
		__atomic_store_n(&S.busy_since, 0, __ATOMIC_RELAXED);
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
			handle_ctl();
	}
	/* the watchdog, woken, closes every group (the kernel allows everything still in flight)
	 * and ends the process: the join does not return */
	pthread_mutex_lock(&S.mu);
	S.quit = 1;
	pthread_cond_signal(&S.cv);
	pthread_mutex_unlock(&S.mu);
	pthread_join(wd, NULL);
	close_all();
	return 0;
}
