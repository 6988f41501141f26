/* Wire protocol between the Vigil agent and vigil-permd, the native fanotify
 * permission helper. One SOCK_SEQPACKET socketpair: every message is one packet
 * that starts with struct pd_hdr; integers are host-endian (same machine).
 * `vigil-permd --layout` prints every size, offset and constant below as JSON;
 * vigil/enforce/permd_proto.py mirrors them and a unit test compares the two. */
#ifndef VIGIL_PERMD_H
#define VIGIL_PERMD_H
#include <stdint.h>

#define PD_VERSION 5
#define PD_MAX_MSG 65536          /* largest packet either side sends */

enum pd_type {
	PD_HELLO = 1,        /* helper -> agent, once at start: pd_hello */
	PD_BEGIN = 2,        /* agent -> helper: start staging a new decision table */
	PD_RULE = 3,         /* one selector; conditions follow as PD_COND */
	PD_COND = 4,         /* condition of the last PD_RULE; values follow the struct */
	PD_MARK = 5,         /* what to watch; NUL-terminated path follows */
	PD_EXEMPT = 6,       /* a pid answered allow without a decision (the agent itself) */
	PD_COMMIT = 7,       /* build marks for the staged table, swap it in, reply PD_ACK */
	PD_ACK = 8,          /* helper -> agent: pd_ack + message text */
	PD_REPORT = 9,       /* helper -> agent: pd_report + path + binary */
	PD_STATS_REQ = 10,   /* agent -> helper */
	PD_STATS = 11,       /* helper -> agent: pd_stats */
	PD_EVAL = 12,        /* agent -> helper: decide a synthetic request (no fanotify): pd_eval + path + binary */
	PD_EVAL_RESULT = 13, /* helper -> agent: pd_eval_result */
	PD_STALL = 14,       /* test hook, only with --test-hooks: the next decision sleeps pd_stall.ms */
	PD_SHUTDOWN = 15,    /* agent -> helper: stop; the kernel allows whatever is in flight */
};

enum pd_kind { PD_KIND_EXEC = 1, PD_KIND_OPEN = 2 };
enum pd_action { PD_ACT_POST = 0, PD_ACT_NOPOST = 1, PD_ACT_OVERRIDE = 2, PD_ACT_SIGKILL = 3 };
enum pd_field { PD_FIELD_PATH = 0, PD_FIELD_BINARY = 1, PD_FIELD_PID = 2 };
enum pd_op {
	PD_OP_EQUAL = 0, PD_OP_NOTEQUAL = 1, PD_OP_PREFIX = 2, PD_OP_NOTPREFIX = 3,
	PD_OP_POSTFIX = 4, PD_OP_NOTPOSTFIX = 5, PD_OP_IN = 6, PD_OP_NOTIN = 7,
};
enum pd_cond_flags { PD_COND_CONT = 1, PD_COND_FOLLOW_FORKS = 2 };
enum pd_mark_kind {
	PD_MARK_FILE = 0,       /* the file's inode; its directory watched so a replacement is marked too */
	PD_MARK_TREE = 1,       /* a directory and every directory below it, new ones included */
	PD_MARK_MOUNT = 2,      /* the mount holding the path */
	PD_MARK_FILESYSTEM = 3, /* the file system holding the path */
	PD_MARK_ALL = 4,        /* every real file system on the host, new mounts included (path unused) */
};
enum pd_report_flags {
	PD_REP_ALLOWED = 1, PD_REP_MONITOR = 2, PD_REP_TIMEOUT = 4, PD_REP_KILLED = 8, PD_REP_RESCUED = 16,
};

struct pd_hdr { uint32_t type; uint32_t len; };
struct pd_hello { struct pd_hdr h; uint32_t version; uint32_t pid; };
struct pd_begin { struct pd_hdr h; uint32_t generation; uint32_t default_allow; uint32_t deadline_ms; uint32_t flags; };
struct pd_rule { struct pd_hdr h; uint32_t hook_id; uint32_t selector; uint32_t kinds; uint32_t action; uint32_t monitor; };
/* values: strings as (uint32_t len, bytes) each; pids as uint32_t each */
struct pd_cond { struct pd_hdr h; uint32_t field; uint32_t op; uint32_t flags; uint32_t nvalues; };
struct pd_mark { struct pd_hdr h; uint32_t kind; uint32_t mask; };
struct pd_exempt { struct pd_hdr h; uint32_t pid; };
/* reply_to: the message type this answers (PD_COMMIT, PD_STALL, or the staging message refused) */
struct pd_ack { struct pd_hdr h; uint32_t generation; int32_t error; uint32_t marks; uint32_t dirs; uint32_t reply_to; };
struct pd_report {
	struct pd_hdr h;
	uint64_t time_ns;        /* CLOCK_REALTIME when the answer was written */
	uint32_t pid;
	uint32_t hook_id;        /* 0: no rule decided (answered by the default) */
	uint32_t selector;
	uint32_t kind;
	uint32_t action;
	uint32_t flags;
	uint32_t latency_ns;     /* read -> answer written */
	uint32_t path_len;       /* path bytes, then binary bytes, follow the struct */
	uint32_t binary_len;
};
struct pd_eval { struct pd_hdr h; uint32_t kind; uint32_t pid; uint32_t path_len; uint32_t binary_len; };
#define PD_MAX_MATCH 16
/* rules[i]: table index of the selector that decided for each hook that matched, in table order */
struct pd_eval_result { struct pd_hdr h; uint32_t allow; uint32_t kill; uint32_t nmatch; int32_t rules[PD_MAX_MATCH]; };
struct pd_stall { struct pd_hdr h; uint32_t ms; };

/* PD_STATS counters, in this order. served: events read from the groups of file systems
 * served by a process or the network (one group and reader thread each, see permd.c);
 * served_groups: how many such groups the table in force has; asked_again: asks of a second
 * group in one exec/open (a table change: the old and new groups both marked), answered but not
 * reported or counted again; pairs_dropped: first asks whose pairing record was dropped for room
 * (a later ask of that exec/open, if any, was reported again); walks_replaced: the same, for a
 * record replaced by a newer one of the same process, file and place (MAX_SAME_WALKS) */
#define PD_STATS_LIST(X) \
	X(events) X(allowed) X(denied) X(timeouts) X(rescued) X(exempt) X(killed) X(monitored) \
	X(reports) X(reports_dropped) X(write_errors) X(overflows) X(latency_ns_total) X(latency_ns_max) \
	X(generation) X(marks) X(dirs) X(mark_errors) X(watch_overflows) X(mount_rescans) X(cached) X(forgotten) \
	X(regroups) X(read_errors) X(dirs_gone) X(served) X(served_groups) \
	X(asked_again) X(pairs_dropped) X(walks_replaced)
#define PD_STAT_ENUM(n) PD_STAT_##n,
enum { PD_STATS_LIST(PD_STAT_ENUM) PD_NSTATS };
/* PD_STATS: the counters, then one pd_rule_count per rule of the table in force that counts
 * decisions no report tells of (a NoPost selector that matched: it decided, nothing is sent), as
 * many as the packet's length holds after the struct. A rule's count carries over to the next
 * table's rule of the same hook and selector. */
struct pd_stats { struct pd_hdr h; uint64_t v[PD_NSTATS]; };
struct pd_rule_count { uint32_t hook_id; uint32_t selector; uint64_t nopost; };

#endif
