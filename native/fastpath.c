/* vigil._fastpath: the per-event hot path of the agent, compiled.
 *
 * What it does, each with a pure-Python twin that is the reference (tests compare the
 * two byte for byte on generated inputs; VIGIL_PURE_PYTHON=1 runs the agent on the twins):
 *   ProcessRecord, ExitRecord     decode a process record   <-> vigil/events/records.py
 *   format_arguments(bytes)       argv area -> `arguments`  <-> vigil/process/build.py
 *   exec_id(node, ktime, pid)     base64("node:ktime:pid")  <-> vigil/process/ids.py
 *   encode_json[_batch|_pieces], process_json   JSON lines  <-> vigil/export/codec.py
 *   encode_pb[_batch], process_pb       GetEventsResponse   <-> vigil/api/wire.py
 *   ring_write, ring_read         the shared-memory event ring <-> vigil/api/shm.py
 *   bpf_ring_drain, ktime_prefix  a BPF ring buffer's records <-> vigil/kernel/ringbuf.py
 *   write_pieces(fd, pieces)      the export's writev        <-> vigil/export/jsonl.py
 *   file_links(fd)                the export's deletion check <-> JsonlWriter._ensure_open
 *   decode_generic(bytes)         a policy hook's record    <-> vigil/events/generic.py
 *   Builder.on_exec/on_clone/on_exit, the process cache      <-> vigil/process/build.py, cache.py
 *   handle_records                the event loop's dispatch <-> vigil/agent/pipeline.py
 *   count_ops                     a batch's op counts/latency <-> Pipeline.py_count_ops
 *   Builder.on_generic            a policy record           <-> vigil/agent/policy_events.py
 * The encoders handle ProcessExec, ProcessExit and PolicyEvent; anything else (and any
 * field of an unexpected type) is handed to the twin. Sub-messages many processes share
 * (capabilities, namespaces, credentials) and policy-event bodies are encoded by the
 * twins' own helpers, which cache them; a container's pod part is encoded once and
 * cached on it (PodShared).
 *
 * The record layouts are the C headers themselves (bpf/include/vigil_events.h,
 * vigil_policy.h): no mirror.
 * Built by `make` with the compiler it installs, never committed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <linux/types.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <limits.h>
#include <errno.h>
#include <sys/uio.h>
#include <sys/stat.h>

#include "vigil_events.h"
#include "vigil_policy.h"

#define F_ERR_CWD (1 << 4)

static PyObject *DecodeError;   /* vigil.events.records.DecodeError, set by set_decode_error() */

/* ------------------------------------------------------------------ growable buffer
 * Written in place into a bytes object that becomes the result (shrunk to size), so an
 * encoding is copied once; sized for a whole event from the start (most are 1-3 KiB).
 * With `pieces` (a list), a line is written as pieces instead: each cached process message
 * goes in by reference and only the glue between messages is written here (buf_flush
 * appends it), so the export's writev reads the messages where they are. */
typedef struct { char *p; Py_ssize_t n, cap; PyObject *obj, *pieces; Py_ssize_t total; int scratch; } buf_t;

/* A buffer written in a reused scratch area and copied out at its exact size: for encodings
 * kept long (a process's message, cached on it: the cache holds no slack) and for the small
 * glue pieces (one small allocation, no shrink). Two areas: a line's glue is open while the
 * message it refers to is encoded. When both are taken, an ordinary buffer. */
#define SCRATCHES 2
typedef struct { char *p; Py_ssize_t cap; int busy; } scratch_t;
static scratch_t scratch[SCRATCHES];

static buf_t buf_exact(PyObject *pieces)
{
	buf_t b = {.pieces = pieces};
	for (int i = 0; i < SCRATCHES; i++)
		if (!scratch[i].busy) {
			scratch[i].busy = 1;
			b.scratch = i + 1;
			break;
		}
	return b;
}

static int buf_reserve(buf_t *b, Py_ssize_t more)
{
	if (b->n + more <= b->cap)
		return 0;
	if (b->scratch) {
		scratch_t *s = &scratch[b->scratch - 1];
		Py_ssize_t cap = s->cap ? s->cap : 4096;
		while (cap < b->n + more)
			cap *= 2;
		if (cap != s->cap) {
			char *p = PyMem_Realloc(s->p, (size_t)cap);
			if (!p) {
				PyErr_NoMemory();
				return -1;
			}
			s->p = p, s->cap = cap;
		}
		b->p = s->p, b->cap = cap;
		return 0;
	}
	Py_ssize_t cap = b->cap ? b->cap * 2 : b->pieces ? 256 : 4096;
	while (cap < b->n + more)
		cap *= 2;
	if (!b->obj ? !(b->obj = PyBytes_FromStringAndSize(NULL, cap)) : _PyBytes_Resize(&b->obj, cap) < 0)
		return -1;
	b->p = PyBytes_AS_STRING(b->obj);
	b->cap = cap;
	return 0;
}

static void buf_free(buf_t *b)
{
	if (b->scratch)
		scratch[b->scratch - 1].busy = 0, b->scratch = 0;
	Py_CLEAR(b->obj);
	b->p = NULL;
	b->n = b->cap = 0;
}

static int put(buf_t *b, const void *s, Py_ssize_t n)
{
	if (buf_reserve(b, n))
		return -1;
	memcpy(b->p + b->n, s, (size_t)n);
	b->n += n;
	return 0;
}

#define PUTS(b, lit) put((b), (lit), (Py_ssize_t)sizeof(lit) - 1)

/* decimal digits of v into out (no NUL), returns their count */
/* v's decimal digits at out (room for 20), their count: the length first, then two digits
 * at a time from the end (a digit at a time, reversed, was ~25 instructions a digit; every
 * pid, uid and a process's pod pid is written here) */
static const char digit_pairs[] =
	"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
	"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
	"8081828384858687888990919293949596979899";

static int fmt_u64(char *out, unsigned long long v)
{
	int n = 1;
	unsigned long long top = v;
	for (; top >= 10000; top /= 10000)
		n += 4;
	n += top >= 1000 ? 3 : top >= 100 ? 2 : top >= 10;
	char *p = out + n;
	while (v >= 100) {
		unsigned r = (unsigned)(v % 100);
		v /= 100;
		p -= 2;
		memcpy(p, &digit_pairs[2 * r], 2);
	}
	if (v >= 10) {
		p -= 2;
		memcpy(p, &digit_pairs[2 * v], 2);
	} else
		*--p = (char)('0' + v);
	return n;
}

static int put_u64(buf_t *b, unsigned long long v)
{
	char tmp[20];
	return put(b, tmp, fmt_u64(tmp, v));
}

/* v as a varint into out (room for 10), returns its length */
static int varint_to(unsigned char *out, unsigned long long v)
{
	int n = 0;
	while (v >= 0x80) {
		out[n++] = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (unsigned char)v;
	return n;
}

static int tag_to(unsigned char *out, unsigned number, unsigned wire)
{
	return varint_to(out, (unsigned long long)(number << 3 | wire));
}

static int put_varint(buf_t *b, unsigned long long v)
{
	unsigned char tmp[10];
	return put(b, tmp, varint_to(tmp, v));
}

/* bytes of exactly pre + a + b: encodings are built in the scratch areas and copied once,
 * at their size (a bytes object grown from 4 KiB and shrunk left each cached process
 * message in a hole the next one could not use: the heap grew, 40% of the encoder's time
 * went to page faults) */
static PyObject *joined(const unsigned char *pre, int npre, const buf_t *a, const buf_t *b)
{
	PyObject *r = PyBytes_FromStringAndSize(NULL, npre + a->n + b->n);
	if (!r)
		return NULL;
	char *p = PyBytes_AS_STRING(r);
	memcpy(p, pre, (size_t)npre);
	if (a->n)
		memcpy(p + npre, a->p, (size_t)a->n);
	if (b->n)
		memcpy(p + npre + a->n, b->p, (size_t)b->n);
	return r;
}


static PyObject *buf_bytes(buf_t *b)
{
	if (b->scratch) {
		PyObject *r = PyBytes_FromStringAndSize(b->p, b->n);
		buf_free(b);
		return r;
	}
	PyObject *r = b->obj;
	b->obj = NULL;
	b->p = NULL;
	if (!r)
		return PyBytes_FromStringAndSize("", 0);
	if (_PyBytes_Resize(&r, b->n) < 0)
		return NULL;
	return r;
}

/* pieces mode: the glue written so far becomes the next piece */
static int buf_flush(buf_t *b)
{
	if (!b->n)
		return 0;
	Py_ssize_t n = b->n;
	PyObject *glue = b->scratch ? PyBytes_FromStringAndSize(b->p, n) : buf_bytes(b);
	b->n = 0;
	if (!b->scratch)
		b->cap = 0;
	int r = glue ? PyList_Append(b->pieces, glue) : -1;
	Py_XDECREF(glue);
	b->total += n;
	return r;
}

/* JSON string escaping exactly as orjson writes it (valid UTF-8 in, bytes as they are,
 * `"` `\\` and control characters escaped): runs of plain bytes are copied whole */
static int put_json_str(buf_t *b, const char *s, Py_ssize_t n)
{
	static const char hex[] = "0123456789abcdef";
	if (buf_reserve(b, 6 * n + 2))
		return -1;
	char *o = b->p + b->n;
	*o++ = '"';
	Py_ssize_t i = 0;
	while (i < n) {
		Py_ssize_t j = i;
		while (j < n && (unsigned char)s[j] >= 0x20 && s[j] != '"' && s[j] != '\\')
			j++;
		memcpy(o, s + i, (size_t)(j - i));
		o += j - i;
		if (j == n)
			break;
		unsigned char c = (unsigned char)s[j];
		*o++ = '\\';
		switch (c) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '\b': *o++ = 'b'; break;
		case '\f': *o++ = 'f'; break;
		case '\n': *o++ = 'n'; break;
		case '\r': *o++ = 'r'; break;
		case '\t': *o++ = 't'; break;
		default:
			*o++ = 'u', *o++ = '0', *o++ = '0', *o++ = hex[c >> 4], *o++ = hex[c & 15];
		}
		i = j + 1;
	}
	*o++ = '"';
	b->n = o - b->p;
	return 0;
}

/* ------------------------------------------------------------------ records */
static PyObject *decode_utf8(const char *s, Py_ssize_t n)
{
	return PyUnicode_DecodeUTF8(s, n, "replace");
}

static PyObject *decode_cstr(const char *s, Py_ssize_t n)
{
	const char *z = memchr(s, 0, (size_t)n);
	return decode_utf8(s, z ? z - s : n);
}

/* Consecutive records repeat most of their strings and their namespaces (one shell's
 * children, one container's processes): the last value of each is kept and reused when
 * the bytes are the same (str and tuple are immutable), sparing the allocation and the
 * UTF-8 decoding. */
typedef struct { char raw[192]; Py_ssize_t n; PyObject *obj; } memo_t;
static memo_t memo_exe, memo_cwd, memo_filename;

static PyObject *memo_get(memo_t *m, const char *s, Py_ssize_t n, PyObject *(*make)(const char *, Py_ssize_t))
{
	if (m->obj && m->n == n && !memcmp(m->raw, s, (size_t)n))
		return Py_NewRef(m->obj);
	PyObject *o = make(s, n);
	if (o && n <= (Py_ssize_t)sizeof(m->raw)) {
		memcpy(m->raw, s, (size_t)n);
		m->n = n;
		Py_XSETREF(m->obj, Py_NewRef(o));
	}
	return o;
}

/* Cgroup names: one str per name, kept while its slot is not taken by another (a direct-mapped
 * table by a word-at-a-time hash of the bytes), so the records of one container carry the same
 * object: its hash is computed once (the docker field's and the pod table's dict lookups found
 * it by identity, not by hashing a fresh string and comparing ~100 bytes), and the pod table's
 * answer for it is kept with it (pod_from_table: valid while the resolver's table is in the
 * generation it was found in). Only ASCII names: their str's data are the record's bytes. */
#define CG_SETS 4096  /* of two entries, the newer first */
struct cgname { PyObject *name, *fast, *shared; unsigned long long gen; };
static struct cgname *cgnames;

/* a set by the name's length and its last 32 bytes (a container id's random tail is in them,
 * whether the name is the id or cri-containerd-<id>.scope): a collision costs a comparison */
static size_t cg_set(const char *s, Py_ssize_t n)
{
	unsigned long long h = (unsigned long long)n * 0x9E3779B97F4A7C15ULL, w;
	for (Py_ssize_t i = n, k = 0; i > 0 && k < 4; k++) {
		Py_ssize_t take = i >= 8 ? 8 : i;
		w = 0;
		memcpy(&w, s + i - take, (size_t)take);
		h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
		i -= take;
	}
	h ^= h >> 29;
	return (size_t)(h % CG_SETS);
}

static inline int cg_same(PyObject *o, const char *s, Py_ssize_t n)
{
	return o && PyUnicode_GET_LENGTH(o) == n && PyUnicode_IS_ASCII(o) && !memcmp(PyUnicode_DATA(o), s, (size_t)n);
}

/* new reference to the name's str (decode_cstr's), *slot its entry (-1: none) */
static PyObject *cgroup_name_get(const char *s, Py_ssize_t n, int *slot)
{
	const char *z = memchr(s, 0, (size_t)n);
	if (z)
		n = z - s;
	*slot = -1;
	if (!cgnames && !(cgnames = PyMem_Calloc(CG_SETS * 2, sizeof(struct cgname))))
		return decode_utf8(s, n);
	size_t i = cg_set(s, n) * 2;
	struct cgname *e = &cgnames[i];
	if (cg_same(e[0].name, s, n) || (i++, cg_same(e[1].name, s, n))) {
		*slot = (int)i;
		return Py_NewRef(cgnames[i].name);
	}
	PyObject *o = decode_utf8(s, n);
	if (o && PyUnicode_IS_ASCII(o)) {  /* the newer first; the older of the two goes */
		struct cgname old = e[1];
		e[1] = e[0];
		e[0] = (struct cgname){Py_NewRef(o), NULL, NULL, 0};
		Py_XDECREF(old.name);
		Py_XDECREF(old.fast);
		Py_XDECREF(old.shared);
		*slot = (int)(e - cgnames);
	}
	return o;
}

static __u32 memo_ns_raw[VIGIL_NS_COUNT];
static PyObject *memo_ns;

static PyObject *ns_tuple(const __u32 *ns)
{
	if (memo_ns && !memcmp(memo_ns_raw, ns, sizeof(memo_ns_raw)))
		return Py_NewRef(memo_ns);
	PyObject *t = PyTuple_New(VIGIL_NS_COUNT);
	for (int i = 0; t && i < VIGIL_NS_COUNT; i++) {
		PyObject *v = PyLong_FromUnsignedLong(ns[i]);
		if (!v)
			Py_CLEAR(t);
		else
			PyTuple_SET_ITEM(t, i, v);
	}
	if (t) {
		memcpy(memo_ns_raw, ns, sizeof(memo_ns_raw));
		Py_XSETREF(memo_ns, Py_NewRef(t));
	}
	return t;
}

typedef struct {
	PyObject_HEAD
	unsigned char op;
	unsigned short flags;
	unsigned long long ktime;
	unsigned int pid;
	unsigned long long exec_ktime;
	unsigned int ppid_key;
	unsigned long long pktime;
	unsigned int tid, ppid, nspid, auid;
	unsigned int uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
	unsigned int securebits, userns_level, userns_uid, userns_gid;
	unsigned long long cap_permitted, cap_effective, cap_inheritable;
	PyObject *ns;
	unsigned long long cgroup_id, ino;
	unsigned int i_mode, i_nlink;
	unsigned long long boottime;
	unsigned int caller_pid;
	unsigned long long caller_ktime;
	unsigned int privs;
	PyObject *exe, *cwd, *filename, *cgroup_name, *args;
	int cg_slot;  /* cgroup_name's entry in cgnames, -1: none */
} ProcessRecord;

static void ProcessRecord_dealloc(ProcessRecord *r)
{
	Py_XDECREF(r->ns);
	Py_XDECREF(r->exe);
	Py_XDECREF(r->cwd);
	Py_XDECREF(r->filename);
	Py_XDECREF(r->cgroup_name);
	Py_XDECREF(r->args);
	Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *ProcessRecord_new(PyTypeObject *type, PyObject *argsv, PyObject *kw)
{
	Py_buffer view;
	(void)kw;
	if (!PyArg_ParseTuple(argsv, "y*", &view))
		return NULL;
	const char *buf = view.buf;
	Py_ssize_t len = view.len;
	ProcessRecord *r = NULL;
	if (len < (Py_ssize_t)sizeof(struct msg_process)) {
		PyErr_Format(DecodeError ? DecodeError : PyExc_ValueError, "process record of %zd bytes, need %zd", len,
			     (Py_ssize_t)sizeof(struct msg_process));
		goto out;
	}
	struct msg_process m;
	memcpy(&m, buf, sizeof(m));
	Py_ssize_t o = (Py_ssize_t)sizeof(struct msg_process);
	Py_ssize_t end = o + m.exe_len + m.cwd_len + m.filename_len + m.cgroup_len + (Py_ssize_t)m.args_len;
	if (end > len) {
		PyErr_Format(DecodeError ? DecodeError : PyExc_ValueError, "process record tail overruns: %zd > %zd", end,
			     len);
		goto out;
	}
	r = (ProcessRecord *)type->tp_alloc(type, 0);
	if (!r)
		goto out;
	r->op = m.hdr.op, r->flags = m.hdr.flags, r->ktime = m.hdr.ktime;
	r->pid = m.key.pid, r->exec_ktime = m.key.ktime, r->ppid_key = m.pkey.pid, r->pktime = m.pkey.ktime;
	r->tid = m.tid, r->ppid = m.ppid, r->nspid = m.nspid, r->auid = m.auid;
	r->uid = m.uid, r->gid = m.gid, r->euid = m.euid, r->egid = m.egid;
	r->suid = m.suid, r->sgid = m.sgid, r->fsuid = m.fsuid, r->fsgid = m.fsgid;
	r->securebits = m.securebits, r->userns_level = m.userns_level;
	r->userns_uid = m.userns_uid, r->userns_gid = m.userns_gid;
	r->cap_permitted = m.cap_permitted, r->cap_effective = m.cap_effective, r->cap_inheritable = m.cap_inheritable;
	r->cgroup_id = m.cgroup_id, r->ino = m.ino, r->i_mode = m.i_mode, r->i_nlink = m.i_nlink;
	r->boottime = m.boottime;
	r->caller_pid = m.ckey.pid, r->caller_ktime = m.ckey.ktime, r->privs = m.privs;
	r->ns = ns_tuple(m.ns);
	if (!r->ns)
		goto fail;
	r->exe = memo_get(&memo_exe, buf + o, m.exe_len, decode_utf8);
	o += m.exe_len;
	/* a walk that ends at once is the root itself: cwd "/" has no components */
	r->cwd = (m.cwd_len || m.hdr.flags & F_ERR_CWD) ? memo_get(&memo_cwd, buf + o, m.cwd_len, decode_utf8)
							 : PyUnicode_FromString("/");
	o += m.cwd_len;
	r->filename = memo_get(&memo_filename, buf + o, m.filename_len, decode_cstr);
	o += m.filename_len;
	r->cgroup_name = cgroup_name_get(buf + o, m.cgroup_len, &r->cg_slot);
	o += m.cgroup_len;
	r->args = PyBytes_FromStringAndSize(buf + o, m.args_len);
	if (!r->exe || !r->cwd || !r->filename || !r->cgroup_name || !r->args)
		goto fail;
	goto out;
fail:
	Py_CLEAR(r);
out:
	PyBuffer_Release(&view);
	return (PyObject *)r;
}

#define U(name, type) {#name, type, offsetof(ProcessRecord, name), READONLY, NULL}
static PyMemberDef ProcessRecord_members[] = {
	U(op, T_UBYTE), U(flags, T_USHORT), U(ktime, T_ULONGLONG), U(pid, T_UINT), U(exec_ktime, T_ULONGLONG),
	U(ppid_key, T_UINT), U(pktime, T_ULONGLONG), U(tid, T_UINT), U(ppid, T_UINT), U(nspid, T_UINT),
	U(auid, T_UINT), U(uid, T_UINT), U(gid, T_UINT), U(euid, T_UINT), U(egid, T_UINT), U(suid, T_UINT),
	U(sgid, T_UINT), U(fsuid, T_UINT), U(fsgid, T_UINT), U(securebits, T_UINT), U(userns_level, T_UINT),
	U(userns_uid, T_UINT), U(userns_gid, T_UINT), U(cap_permitted, T_ULONGLONG),
	U(cap_effective, T_ULONGLONG), U(cap_inheritable, T_ULONGLONG), U(ns, T_OBJECT_EX),
	U(cgroup_id, T_ULONGLONG), U(ino, T_ULONGLONG), U(i_mode, T_UINT), U(i_nlink, T_UINT),
	U(boottime, T_ULONGLONG), U(caller_pid, T_UINT), U(caller_ktime, T_ULONGLONG), U(privs, T_UINT),
	U(exe, T_OBJECT_EX), U(cwd, T_OBJECT_EX), U(filename, T_OBJECT_EX),
	U(cgroup_name, T_OBJECT_EX), U(args, T_OBJECT_EX),
	{NULL, 0, 0, 0, NULL},
};
#undef U

static PyTypeObject ProcessRecordType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "vigil._fastpath.ProcessRecord",
	.tp_doc = "An exec (op 1) or a clone (op 2) of a new thread group, decoded.",
	.tp_basicsize = sizeof(ProcessRecord),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = ProcessRecord_new,
	.tp_dealloc = (destructor)ProcessRecord_dealloc,
	.tp_members = ProcessRecord_members,
};

typedef struct {
	PyObject_HEAD
	unsigned char op;
	unsigned short flags;
	unsigned long long ktime;
	unsigned int pid;
	unsigned long long exec_ktime;
	unsigned int tid, code;
} ExitRecord;

static PyObject *ExitRecord_new(PyTypeObject *type, PyObject *argsv, PyObject *kw)
{
	Py_buffer view;
	(void)kw;
	if (!PyArg_ParseTuple(argsv, "y*", &view))
		return NULL;
	ExitRecord *r = NULL;
	if (view.len < (Py_ssize_t)sizeof(struct msg_exit)) {
		PyErr_Format(DecodeError ? DecodeError : PyExc_ValueError, "exit record of %zd bytes, need %zd", view.len,
			     (Py_ssize_t)sizeof(struct msg_exit));
	} else if ((r = (ExitRecord *)type->tp_alloc(type, 0))) {
		struct msg_exit m;
		memcpy(&m, view.buf, sizeof(m));
		r->op = m.hdr.op, r->flags = m.hdr.flags, r->ktime = m.hdr.ktime;
		r->pid = m.key.pid, r->exec_ktime = m.key.ktime, r->tid = m.tid, r->code = m.code;
	}
	PyBuffer_Release(&view);
	return (PyObject *)r;
}

#define U(name, type) {#name, type, offsetof(ExitRecord, name), READONLY, NULL}
static PyMemberDef ExitRecord_members[] = {
	U(op, T_UBYTE), U(flags, T_USHORT), U(ktime, T_ULONGLONG), U(pid, T_UINT), U(exec_ktime, T_ULONGLONG),
	U(tid, T_UINT), U(code, T_UINT),
	{NULL, 0, 0, 0, NULL},
};
#undef U

static PyTypeObject ExitRecordType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "vigil._fastpath.ExitRecord",
	.tp_doc = "The exit of a whole thread group, decoded.",
	.tp_basicsize = sizeof(ExitRecord),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = ExitRecord_new,
	.tp_members = ExitRecord_members,
};

/* ------------------------------------------------------------------ generic policy records
 * decode_generic(buf) -> (GenericRecord, data): the record of a policy hook (struct
 * msg_generic) with its arguments' headers (ArgHdr, struct vp_arg_hdr); the twin is
 * vigil.events.generic.py_decode_generic (ctypes, vigil/kernel/policy_layout.py). */
typedef struct {
	PyObject_HEAD
	unsigned short off, len;
	unsigned char type, flags;
	unsigned short mode;
	long long value;
} ArgHdr;

#define U(name, type) {#name, type, offsetof(ArgHdr, name), READONLY, NULL}
static PyMemberDef ArgHdr_members[] = {
	U(off, T_USHORT), U(len, T_USHORT), U(type, T_UBYTE), U(flags, T_UBYTE), U(mode, T_USHORT),
	U(value, T_LONGLONG), {NULL, 0, 0, 0, NULL},
};
#undef U

static PyTypeObject ArgHdrType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "vigil._fastpath.ArgHdr",
	.tp_doc = "One argument's header in a generic record (struct vp_arg_hdr).",
	.tp_basicsize = sizeof(ArgHdr),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_members = ArgHdr_members,
};

typedef struct {
	PyObject_HEAD
	unsigned char op, selector, action, ret_action, flags, ima_len, ima_algo;
	unsigned short hflags;
	unsigned int size, pid, hook_id, tid, kstack_len, ustack_len;
	unsigned long long ktime, exec_ktime;
	long long ret;
	PyObject *args;  /* tuple of VP_MAX_ARGS ArgHdr */
} GenericRecord;

static void GenericRecord_dealloc(GenericRecord *r)
{
	Py_XDECREF(r->args);
	Py_TYPE(r)->tp_free((PyObject *)r);
}

#define U(name, type) {#name, type, offsetof(GenericRecord, name), READONLY, NULL}
static PyMemberDef GenericRecord_members[] = {
	U(op, T_UBYTE), U(hflags, T_USHORT), U(size, T_UINT), U(ktime, T_ULONGLONG), U(pid, T_UINT),
	U(exec_ktime, T_ULONGLONG), U(hook_id, T_UINT), U(tid, T_UINT), U(selector, T_UBYTE), U(action, T_UBYTE),
	U(ret_action, T_UBYTE), U(flags, T_UBYTE), U(kstack_len, T_UINT), U(ustack_len, T_UINT), U(ima_len, T_UBYTE),
	U(ima_algo, T_UBYTE), U(ret, T_LONGLONG), U(args, T_OBJECT_EX), {NULL, 0, 0, 0, NULL},
};
#undef U

static PyTypeObject GenericRecordType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "vigil._fastpath.GenericRecord",
	.tp_doc = "The record of a generic policy hook (struct msg_generic), decoded.",
	.tp_basicsize = sizeof(GenericRecord),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_dealloc = (destructor)GenericRecord_dealloc,
	.tp_members = GenericRecord_members,
};

static PyObject *decode_generic(PyObject *self, PyObject *arg)
{
	Py_buffer view;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	PyObject *res = NULL;
	GenericRecord *r = NULL;
	if (view.len < (Py_ssize_t)sizeof(struct msg_generic)) {
		PyErr_Format(DecodeError ? DecodeError : PyExc_ValueError, "generic record of %zd bytes, need %zd",
			     view.len, (Py_ssize_t)sizeof(struct msg_generic));
		goto out;
	}
	struct msg_generic m;
	memcpy(&m, view.buf, sizeof(m));
	if (!(r = PyObject_New(GenericRecord, &GenericRecordType)))
		goto out;
	r->args = NULL;
	r->op = m.hdr.op, r->hflags = m.hdr.flags, r->size = m.hdr.size, r->ktime = m.hdr.ktime;
	r->pid = m.key.pid, r->exec_ktime = m.key.ktime, r->hook_id = m.hook_id, r->tid = m.tid;
	r->selector = m.selector, r->action = m.action, r->ret_action = m.ret_action, r->flags = m.flags;
	r->kstack_len = m.kstack_len, r->ustack_len = m.ustack_len, r->ima_len = m.ima_len;
	r->ima_algo = m.ima_algo, r->ret = m.ret;
	if (!(r->args = PyTuple_New(VP_MAX_ARGS)))
		goto out;
	for (int i = 0; i < VP_MAX_ARGS; i++) {
		ArgHdr *a = PyObject_New(ArgHdr, &ArgHdrType);
		if (!a)
			goto out;
		a->off = m.args[i].off, a->len = m.args[i].len, a->type = m.args[i].type, a->flags = m.args[i].flags;
		a->mode = m.args[i].mode, a->value = m.args[i].value;
		PyTuple_SET_ITEM(r->args, i, (PyObject *)a);
	}
	PyObject *data = PyBytes_FromStringAndSize((const char *)view.buf + sizeof(m), view.len - (Py_ssize_t)sizeof(m));
	if (data)
		res = PyTuple_Pack(2, (PyObject *)r, data);
	Py_XDECREF(data);
out:
	Py_XDECREF(r);
	PyBuffer_Release(&view);
	return res;
}

/* ------------------------------------------------------------------ small formatters */
static PyObject *format_arguments(PyObject *self, PyObject *arg)
{
	(void)self;
	char *raw;
	Py_ssize_t rawn;
	if (PyBytes_AsStringAndSize(arg, &raw, &rawn) < 0)
		return NULL;
	/* decode as Python does (errors replaced), then work on that valid UTF-8, where a NUL
	 * or a space byte is that character and nothing else */
	PyObject *u = decode_utf8(raw, rawn);
	if (!u)
		return NULL;
	Py_ssize_t n;
	const char *s = PyUnicode_AsUTF8AndSize(u, &n);
	PyObject *res = NULL;
	if (!s)
		goto out;
	if (n && s[n - 1] == 0)
		n--;
	const char *z = memchr(s, 0, (size_t)n);
	if (!z) {
		res = PyUnicode_FromStringAndSize("", 0);
		goto out;
	}
	const char *rest = z + 1, *end = s + n;
	buf_t b = {0};
	int spaces = memchr(rest, ' ', (size_t)(end - rest)) != NULL;
	/* Tetragon's ArgsDecoder: a quoted argument is appended after a space even when first;
	 * while nothing is written an empty argument adds nothing, after that its space */
	for (const char *a = rest; a <= end;) {
		const char *e = memchr(a, 0, (size_t)(end - a));
		if (!e)
			e = end;
		int q = spaces && memchr(a, ' ', (size_t)(e - a)) != NULL;
		if (q) {
			if (put(&b, " \"", 2) || put(&b, a, e - a) || put(&b, "\"", 1))
				goto fail;
		} else if ((b.n && put(&b, " ", 1)) || (e > a && put(&b, a, e - a)))
			goto fail;
		a = e + 1;
	}
	res = PyUnicode_DecodeUTF8(b.p ? b.p : "", b.n, "strict");
fail:
	buf_free(&b);
out:
	Py_DECREF(u);
	return res;
}

static PyObject *make_exec_id(const char *node, Py_ssize_t nn, unsigned long long ktime, unsigned long long pid);

static PyObject *exec_id(PyObject *self, PyObject *args)
{
	const char *node;
	Py_ssize_t nn;
	PyObject *ko, *po;
	if (!PyArg_ParseTuple(args, "s#O!O!", &node, &nn, &PyLong_Type, &ko, &PyLong_Type, &po))
		return NULL;
	/* kernel values: u64 ktime, u32 pid (OverflowError outside) */
	unsigned long long ktime = PyLong_AsUnsignedLongLong(ko), pid = PyLong_AsUnsignedLongLong(po);
	if (PyErr_Occurred())
		return NULL;
	return make_exec_id(node, nn, ktime, pid);
}

/* ------------------------------------------------------------------ typed events -> bytes
 *
 * The event classes (vigil/core/events.py) are slotted; configure_events() finds each
 * slot's offset once and the encoders read the slots directly. An object of another
 * type, or a field of an unexpected type, goes to the Python twin (the reference), so
 * the output is the twin's whatever arrives. Encodings are cached in the enc_* slots,
 * exactly as the twins do. */

/* fields of ProcessMsg in Process's field order; JSON keys are the proto names */
enum {
	M_EXEC_ID, M_PID, M_UID, M_CWD, M_BINARY, M_ARGUMENTS, M_FLAGS, M_START_TIME, M_AUID, M_POD, M_DOCKER,
	M_PARENT_EXEC_ID, M_CAP, M_NS, M_TID, M_CREDS, M_BP, M_IN_INIT_TREE, M_ENC_JSON, M_ENC_PB, M_ENC_DICT, M_COUNT
};
static const char *const msg_slot[M_COUNT] = {
	"exec_id", "pid", "uid", "cwd", "binary", "arguments", "flags", "start_time", "auid", "pod", "docker",
	"parent_exec_id", "cap", "ns", "tid", "process_credentials", "binary_properties", "in_init_tree", "enc_json",
	"enc_pb", "enc_dict",
};
/* how each field is written: a string, a wrapper int, a sub-message dict, a Pod, a BoolValue */
enum { K_STR, K_INT, K_SUB, K_TS, K_POD, K_BOOL, K_NONE };
static const unsigned char msg_kind[M_COUNT] = {
	K_STR, K_INT, K_INT, K_STR, K_STR, K_STR, K_STR, K_TS, K_INT, K_POD, K_STR,
	K_STR, K_SUB, K_SUB, K_INT, K_SUB, K_SUB, K_BOOL, K_NONE, K_NONE, K_NONE,
};
static const unsigned char msg_number[M_COUNT] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 20};

enum { E_TIME, E_NODE, E_ENC_JSON, E_ENC_PB, E_ENC_DICT, E_PROCESS, E_PARENT, E_ANCESTORS, E_SIGNAL, E_STATUS,
       E_KIND, E_BODY, E_COUNT };
static const char *const ev_slot[E_COUNT] = {
	"time", "node_name", "enc_json", "enc_pb", "enc_dict", "process", "parent", "ancestors", "signal", "status",
	"kind", "body",
};

enum { T_EXEC, T_EXIT, T_POLICY, T_COUNT };
typedef struct {
	PyTypeObject *type;
	Py_ssize_t off[E_COUNT];  /* -1: no such slot */
	PyObject *kind;           /* the class's constant kind (str), or NULL when it is a slot */
} evtype_t;

static PyTypeObject *msg_type;
static Py_ssize_t msg_off[M_COUNT];
static evtype_t evtypes[T_COUNT];
static PyObject *kind_numbers;  /* dict kind -> GetEventsResponse field number */
/* the Python twins and helpers (see configure_json / configure_pb) */
static PyObject *py_json, *py_process_json, *sub_json, *body_json;
static PyObject *py_pb, *py_process_pb, *sub_pb, *ts_pb, *body_pb;
/* Pod (vigil/core/events.py): its container's part (`shared`, one dict per container) is
 * encoded once per container by the twins' pod_parts helpers, split where the process's own
 * fields (pid inside the container, the exec-probe guess) go */
enum { POD_SHARED, POD_PID, POD_PROBE, POD_DICT, POD_COUNT };
static const char *const pod_slot[POD_COUNT] = {"shared", "pid", "probe", "_dict"};
static PyTypeObject *pod_type;
static int pod_plain;  /* a Pod is its header and its POD_COUNT slots, nothing else */
static Py_ssize_t pod_off[POD_COUNT];

/* A Pod is freed when its process's cache entry goes (one per process in a container). The
 * class's own dealloc (subtype_dealloc: the generic path, walking the class's slot members to
 * clear them, finalizer, weakref and trashcan checks) was ~200 instructions per Pod; a plain
 * Pod (pod_plain: its header and four slots, no __del__, no dict, no weakrefs) has none of
 * those, so the registered class gets this one: its four slots cleared, the object freed as
 * before (PyObject_GC_Del, untracked first: one the twin made is tracked), its class's
 * reference dropped as subtype_dealloc drops it. A subclass's instance still goes through
 * subtype_dealloc, which clears the subclass's own slots and then calls this as its base's. */
static destructor pod_type_dealloc;  /* the class's own, given back when another is registered */
static void pod_dealloc(PyObject *o)
{
	PyTypeObject *t = Py_TYPE(o);
	PyObject_GC_UnTrack(o);
	for (int f = 0; f < POD_COUNT; f++)
		Py_CLEAR(*(PyObject **)((char *)o + pod_off[f]));
	t->tp_free(o);
	Py_DECREF(t);
}
enum { SH_ENC_JSON, SH_ENC_PB, SH_PROBES, SH_PROBES_LONGEST, SH_COUNT };
static const char *const shared_slot[SH_COUNT] = {"enc_json", "enc_pb", "probes", "probes_longest"};
static PyTypeObject *podshared_type;  /* PodShared: the pod parts are cached in its slots */
static Py_ssize_t shared_off[SH_COUNT];
static PyObject *pod_parts_json, *pod_parts_pb;

#define FALLBACK 1
#define TRY(x) do { int r_ = (x); if (r_) return r_; } while (0)

/* An encoder gave up (r: FALLBACK) or failed (-1): the twin encodes `o` whole. A chain of
 * puts joined with || turns a failed step's -1 into 1, so an exception already set is a
 * failure, never a hand-over (the twin must not be called with it pending). */
static PyObject *to_twin(int r, PyObject *twin, PyObject *o)
{
	return r < 0 || PyErr_Occurred() ? NULL : PyObject_CallOneArg(twin, o);
}

static inline PyObject *slot(PyObject *o, Py_ssize_t off)
{
	return *(PyObject **)((char *)o + off);
}

static inline void slot_set(PyObject *o, Py_ssize_t off, PyObject *v)
{
	Py_XSETREF(*(PyObject **)((char *)o + off), Py_NewRef(v));
}

#define SET(o, off, v) slot_set((o), (off), (v))
#define SET_STEAL(o, off, v) Py_XSETREF(*(PyObject **)((char *)(o) + (off)), (v))

static int slot_offset(PyTypeObject *t, const char *name, Py_ssize_t *off)
{
	*off = -1;
	PyObject *d = PyObject_GetAttrString((PyObject *)t, name);
	if (!d) {
		PyErr_Clear();
		return 0;
	}
	if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
		PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
		if (m->type == T_OBJECT_EX || m->type == T_OBJECT)
			*off = m->offset;
	}
	Py_DECREF(d);
	return 0;
}

/* a str field: 1 with its UTF-8 when non-empty, 0 when empty or None, FALLBACK otherwise */
static int get_str(PyObject *v, const char **s, Py_ssize_t *n)
{
	if (v == Py_None)
		return 0;
	if (!v || !PyUnicode_CheckExact(v))
		return -FALLBACK;
	*s = PyUnicode_AsUTF8AndSize(v, n);
	if (!*s) {
		PyErr_Clear();  /* lone surrogates: the twin raises its own error */
		return -FALLBACK;
	}
	return *n > 0;
}

/* a wrapper int: 1 with its value, 0 for None, FALLBACK for anything but a u64-sized int */
static int get_uint(PyObject *v, unsigned long long *out)
{
	if (v == Py_None)
		return 0;
	if (!v || !PyLong_CheckExact(v))
		return -FALLBACK;
	*out = PyLong_AsUnsignedLongLong(v);
	if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
		PyErr_Clear();
		return -FALLBACK;
	}
	return 1;
}

/* a BoolValue: 1 and its value for True or False, 0 for None (not set), FALLBACK otherwise */
static int get_bool(PyObject *v, unsigned long long *out)
{
	if (v == Py_None)
		return 0;
	if (v != Py_True && v != Py_False)
		return -FALLBACK;
	*out = v == Py_True;
	return 1;
}

/* a sub-message: 1 for a non-empty dict, 0 for None or {}, FALLBACK otherwise */
static int get_sub(PyObject *v)
{
	if (v == Py_None)
		return 0;
	if (!v || !PyDict_Check(v))
		return -FALLBACK;
	return PyDict_GET_SIZE(v) > 0;
}

static int put_bytes_obj(buf_t *b, PyObject *o)
{
	if (!o)
		return -1;
	if (!PyBytes_Check(o)) {
		PyErr_SetString(PyExc_TypeError, "encoder callback returned a non-bytes object");
		Py_DECREF(o);
		return -1;
	}
	int r = put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
	Py_DECREF(o);
	return r;
}

/* Sub-messages (capabilities, namespaces, credentials) are interned by the process stage,
 * so their encodings are cached by identity: a small table per format, holding the dict
 * (its id stays its own) and its bytes. 4-way sets, most recent first: the few dicts a
 * host's processes share must not evict each other for the agent's life when their ids
 * meet in one slot (seen live: two misses, two Python calls, per exec). A miss asks the
 * twin's helper. */
#define SUBCACHE 512
#define SUBWAYS 4
typedef struct { PyObject *dict, *enc; int field; } subent_t;
static subent_t sub_json_cache[SUBCACHE], sub_pb_cache[SUBCACHE];

static PyObject *sub_cached(subent_t *tab, PyObject *d, int field, PyObject *cb, const char *name)
{
	size_t h = (((uintptr_t)d >> 4) ^ (size_t)field * 0x9e3779b1u) % (SUBCACHE / SUBWAYS);
	subent_t *set = &tab[h * SUBWAYS];
	for (int i = 0; i < SUBWAYS; i++)
		if (set[i].dict == d && set[i].field == field) {
			subent_t hit = set[i];
			memmove(&set[1], &set[0], (size_t)i * sizeof(subent_t));
			set[0] = hit;
			return Py_NewRef(hit.enc);
		}
	PyObject *enc = name ? PyObject_CallFunction(cb, "sO", name, d) : PyObject_CallOneArg(cb, d);
	if (!enc)
		return NULL;
	subent_t old = set[SUBWAYS - 1];
	memmove(&set[1], &set[0], (SUBWAYS - 1) * sizeof(subent_t));
	set[0] = (subent_t){Py_NewRef(d), Py_NewRef(enc), field};
	Py_XDECREF(old.dict);
	Py_XDECREF(old.enc);
	return enc;
}

/* borrowed: the tuple of n bytes objects cached in the PodShared's slot `off`; a miss asks
 * the twin's pod_parts, which fills the slot */
static PyObject *pod_parts(PyObject *shared, Py_ssize_t off, PyObject *cb, Py_ssize_t n)
{
	PyObject *parts = slot(shared, off);
	if (parts && parts != Py_None)
		return parts;
	PyObject *got = PyObject_CallOneArg(cb, shared);
	if (!got)
		return NULL;
	Py_DECREF(got);
	parts = slot(shared, off);
	int ok = parts && PyTuple_CheckExact(parts) && PyTuple_GET_SIZE(parts) == n;
	for (Py_ssize_t i = 0; ok && i < n; i++)
		ok = PyBytes_CheckExact(PyTuple_GET_ITEM(parts, i));
	if (!ok) {
		PyErr_SetString(PyExc_TypeError, "pod_parts did not cache a tuple of bytes on the PodShared");
		return NULL;
	}
	return parts;
}

/* 1: a Pod to write (its shared dict, pid, probe set), 0: empty, -FALLBACK: anything else */
static int get_pod(PyObject *v, PyObject *cb, PyObject **shared, unsigned long long *pid, int *probe)
{
	if (v == Py_None)
		return 0;
	if (!v || !Py_IS_TYPE(v, pod_type) || !cb)
		return -FALLBACK;
	*shared = slot(v, pod_off[POD_SHARED]);
	PyObject *pr = slot(v, pod_off[POD_PROBE]);
	if (!*shared || !Py_IS_TYPE(*shared, podshared_type) || get_uint(slot(v, pod_off[POD_PID]), pid) != 1 ||
	    (pr != Py_True && pr != Py_False))
		return -FALLBACK;
	*probe = pr == Py_True;
	return PyDict_GET_SIZE(*shared) > 0;
}

static int put_raw(buf_t *b, PyObject *bytes)
{
	return put(b, PyBytes_AS_STRING(bytes), PyBytes_GET_SIZE(bytes));
}

/* the twin: vigil.export.codec.pod_json */
static int put_pod_json(buf_t *b, PyObject *shared, unsigned long long pid, int probe)
{
	PyObject *parts = pod_parts(shared, shared_off[SH_ENC_JSON], pod_parts_json, 2);
	if (!parts)
		return -1;
	PyObject *head = PyTuple_GET_ITEM(parts, 0), *tail = PyTuple_GET_ITEM(parts, 1);
	Py_ssize_t hn = PyBytes_GET_SIZE(head), tn = PyBytes_GET_SIZE(tail);
	int comma = hn && PyBytes_AS_STRING(head)[hn - 1] != '{';
	/* one reservation for the whole object (it is most of a process's message; a put per
	 * piece was a reservation check and a call each), then the pieces copied in place */
	static const char pid_key[] = "\"pid\":", probe_kv[] = "\"maybe_exec_probe\":true";
	if (buf_reserve(b, hn + 1 + (Py_ssize_t)sizeof(pid_key) - 1 + 20 + 1 + (Py_ssize_t)sizeof(probe_kv) - 1 + tn))
		return -1;
	char *o = b->p + b->n;
	memcpy(o, PyBytes_AS_STRING(head), (size_t)hn);
	o += hn;
	if (pid) {
		if (comma)
			*o++ = ',';
		memcpy(o, pid_key, sizeof(pid_key) - 1);
		o += sizeof(pid_key) - 1;
		o += fmt_u64(o, pid);
		comma = 1;
	}
	if (probe) {
		if (comma)
			*o++ = ',';
		memcpy(o, probe_kv, sizeof(probe_kv) - 1);
		o += sizeof(probe_kv) - 1;
	}
	memcpy(o, PyBytes_AS_STRING(tail), (size_t)tn);
	b->n = o + tn - b->p;
	return 0;
}

/* ---- JSON */
/* A process's pod is written from its container's encoded parts (PodShared.enc_json: a tuple
 * of two bytes), one set per container: with thousands of containers they are not in the CPU
 * cache, and each object on the way (the tuple, then its bytes) was a miss the encoder waited
 * for. They are prefetched while the fields before the pod are written: the tuple at the
 * start (the Pod and its PodShared are warm: the exec path made and read them), its bytes a
 * few fields later. Nothing is read here that is not checked where it is used (put_pod_json);
 * a prefetch of anything else is harmless. */
static PyObject *pod_prefetch_parts(PyObject *m)
{
	PyObject *pod = slot(m, msg_off[M_POD]);
	if (!pod || !pod_type || !Py_IS_TYPE(pod, pod_type))
		return NULL;
	PyObject *shared = slot(pod, pod_off[POD_SHARED]);
	if (!shared || !Py_IS_TYPE(shared, podshared_type))
		return NULL;
	PyObject *parts = slot(shared, shared_off[SH_ENC_JSON]);
	if (!parts || parts == Py_None)
		return NULL;
	__builtin_prefetch(parts);
	return parts;
}

static void pod_prefetch_bytes(PyObject *parts)
{
	if (!PyTuple_CheckExact(parts) || PyTuple_GET_SIZE(parts) != 2)
		return;
	const char *head = (const char *)PyTuple_GET_ITEM(parts, 0), *tail = (const char *)PyTuple_GET_ITEM(parts, 1);
	__builtin_prefetch(head);
	__builtin_prefetch(head + 64);
	__builtin_prefetch(head + 128);
	__builtin_prefetch(tail);
}

static int msg_json_body(buf_t *b, PyObject *m)
{
	int first = 1, probe = 0;
	PyObject *shared = NULL;
	if (put(b, "{", 1))
		return -1;
	PyObject *pod_parts_ahead = pod_prefetch_parts(m);
	for (int f = 0; f < M_ENC_JSON; f++) {
		PyObject *v = slot(m, msg_off[f]);
		if (f == M_CWD && pod_parts_ahead)
			pod_prefetch_bytes(pod_parts_ahead);
		const char *key = msg_slot[f];
		const char *s = NULL;
		Py_ssize_t n = 0;
		unsigned long long u = 0;
		int have;
		switch (msg_kind[f]) {
		case K_STR:
		case K_TS:
			have = get_str(v, &s, &n);
			break;
		case K_INT:
			have = get_uint(v, &u);
			if (f == M_PID && have == 0)
				have = -FALLBACK;  /* the twin writes "pid": null */
			break;
		case K_POD:
			have = get_pod(v, pod_parts_json, &shared, &u, &probe);
			break;
		case K_BOOL:
			have = get_bool(v, &u);
			break;
		default:
			have = get_sub(v);
		}
		if (have < 0)
			return FALLBACK;
		if (!have)
			continue;
		if (put(b, first ? "\"" : ",\"", first ? 1 : 2) || put(b, key, (Py_ssize_t)strlen(key)) || put(b, "\":", 2))
			return -1;
		first = 0;
		switch (msg_kind[f]) {
		case K_BOOL:
			if (u ? put(b, "true", 4) : put(b, "false", 5))
				return -1;
			break;
		case K_STR:
		case K_TS:
			if (put_json_str(b, s, n))
				return -1;
			break;
		case K_INT:
			if (put_u64(b, u))
				return -1;
			break;
		case K_POD:
			if (put_pod_json(b, shared, u, probe))
				return -1;
			break;
		default:
			if (put_bytes_obj(b, sub_cached(sub_json_cache, v, 0, sub_json, NULL)))
				return -1;
		}
	}
	return put(b, "}", 1);
}

/* new reference to the message's JSON (cached on it), NULL on error */
static PyObject *msg_json(PyObject *m)
{
	if (!Py_IS_TYPE(m, msg_type))
		return PyObject_CallOneArg(py_process_json, m);
	PyObject *c = slot(m, msg_off[M_ENC_JSON]);
	if (c && c != Py_None)
		return Py_NewRef(c);
	buf_t b = buf_exact(NULL);
	int r = msg_json_body(&b, m);
	if (r) {
		buf_free(&b);
		return to_twin(r, py_process_json, m);
	}
	PyObject *out = buf_bytes(&b);
	if (out)
		slot_set(m, msg_off[M_ENC_JSON], out);
	return out;
}

static int put_msg_json(buf_t *b, PyObject *m)
{
	if (!b->pieces)
		return put_bytes_obj(b, msg_json(m));
	PyObject *o = msg_json(m);
	if (!o)
		return -1;
	int r = !PyBytes_Check(o) ? put_bytes_obj(b, Py_NewRef(o)) : buf_flush(b) || PyList_Append(b->pieces, o);
	b->total += PyBytes_Check(o) ? PyBytes_GET_SIZE(o) : 0;
	Py_DECREF(o);
	return r ? -1 : 0;
}

static int ev_json_body(buf_t *b, PyObject *ev, int t)
{
	const evtype_t *et = &evtypes[t];
	PyObject *kind = et->kind ? et->kind : slot(ev, et->off[E_KIND]);
	PyObject *proc = slot(ev, et->off[E_PROCESS]);
	PyObject *parent = slot(ev, et->off[E_PARENT]);
	const char *ks, *ts, *ns;
	Py_ssize_t kn, tn, nn;
	if (get_str(kind, &ks, &kn) <= 0 || get_str(slot(ev, et->off[E_TIME]), &ts, &tn) < 0 ||
	    get_str(slot(ev, et->off[E_NODE]), &ns, &nn) <= 0 || !proc || !parent)
		return FALLBACK;
	if (tn == 0)
		ts = "";
	PyObject *anc = slot(ev, et->off[E_ANCESTORS]);
	if (!anc || !PyTuple_CheckExact(anc))
		return FALLBACK;
	if (t == T_POLICY && PyTuple_GET_SIZE(anc))
		return FALLBACK;  /* a policy event's ancestors go inside its body: the twin places them */
	TRY(put(b, "{\"", 2) || put(b, ks, kn) || PUTS(b, "\":{\"process\":") || put_msg_json(b, proc));
	if (parent != Py_None)
		TRY(PUTS(b, ",\"parent\":") || put_msg_json(b, parent));
	if (t == T_EXIT) {
		const char *ss;
		Py_ssize_t sn;
		int hs = get_str(slot(ev, et->off[E_SIGNAL]), &ss, &sn);
		PyObject *st = slot(ev, et->off[E_STATUS]);
		if (hs < 0 || !st || !PyLong_CheckExact(st))
			return FALLBACK;
		if (hs)
			TRY(PUTS(b, ",\"signal\":") || put_json_str(b, ss, sn));
		long long status = PyLong_AsLongLong(st);
		if (status == -1 && PyErr_Occurred()) {
			PyErr_Clear();
			return FALLBACK;
		}
		if (status) {
			char tmp[24];
			int k = snprintf(tmp, sizeof(tmp), "%lld", status);
			TRY(PUTS(b, ",\"status\":") || put(b, tmp, k));
		}
		TRY(PUTS(b, ",\"time\":\"") || put(b, ts, tn) || put(b, "\"", 1));
	}
	if (anc && PyTuple_GET_SIZE(anc)) {
		TRY(PUTS(b, ",\"ancestors\":["));
		for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(anc); i++)
			TRY((i && put(b, ",", 1)) || put_msg_json(b, PyTuple_GET_ITEM(anc, i)));
		TRY(put(b, "]", 1));
	}
	if (t == T_POLICY) {
		PyObject *body = slot(ev, et->off[E_BODY]);
		int hb = get_sub(body);
		if (hb < 0)
			return FALLBACK;
		if (hb) {
			PyObject *enc = PyObject_CallOneArg(body_json, body);
			if (!enc)
				return -1;
			if (!PyBytes_Check(enc) || PyBytes_GET_SIZE(enc) < 2) {
				Py_DECREF(enc);
				return FALLBACK;
			}
			int r = put(b, ",", 1) || put(b, PyBytes_AS_STRING(enc) + 1, PyBytes_GET_SIZE(enc) - 2);
			Py_DECREF(enc);
			TRY(r);
		}
	}
	TRY(PUTS(b, "},\"node_name\":") || put_json_str(b, ns, nn) || PUTS(b, ",\"time\":\"") || put(b, ts, tn) ||
	    PUTS(b, "\"}\n"));
	return 0;
}

static int ev_type(PyObject *ev)
{
	for (int t = 0; t < T_COUNT; t++)
		if (evtypes[t].type && Py_IS_TYPE(ev, evtypes[t].type))
			return t;
	return -1;
}

/* new reference to one event's JSON line (cached on it) */
static PyObject *ev_json(PyObject *ev)
{
	int t = ev_type(ev);
	if (t < 0)
		return PyObject_CallOneArg(py_json, ev);
	Py_ssize_t coff = evtypes[t].off[E_ENC_JSON];
	PyObject *c = slot(ev, coff);
	if (c && c != Py_None)
		return Py_NewRef(c);
	buf_t b = {0};
	int r = ev_json_body(&b, ev, t);
	if (r) {
		buf_free(&b);
		return to_twin(r, py_json, ev);
	}
	PyObject *out = buf_bytes(&b);
	if (out)
		slot_set(ev, coff, out);
	return out;
}

/* Appends one event's line to `list` as pieces (see buf_t), adding its size to *total: the
 * line cached on the event as one piece; else the messages by reference and the glue; else
 * (what only the twin encodes) the twin's line. 0, or -1 on error. */
static int ev_json_pieces(PyObject *ev, PyObject *list, Py_ssize_t *total)
{
	int t = ev_type(ev);
	PyObject *c = t < 0 ? NULL : slot(ev, evtypes[t].off[E_ENC_JSON]);
	if (t >= 0 && (!c || c == Py_None)) {
		Py_ssize_t n0 = PyList_GET_SIZE(list);
		buf_t b = buf_exact(list);
		int r = ev_json_body(&b, ev, t);
		if (!r && !(r = buf_flush(&b))) {
			*total += b.total;
			buf_free(&b);
			return 0;
		}
		buf_free(&b);
		if (PyErr_Occurred() || PyList_SetSlice(list, n0, PyList_GET_SIZE(list), NULL) < 0)
			return -1;
	}
	PyObject *line = ev_json(ev);
	if (!line || !PyBytes_Check(line) || PyList_Append(list, line) < 0) {
		if (line && !PyErr_Occurred())
			PyErr_SetString(PyExc_TypeError, "encoder callback returned a non-bytes object");
		Py_XDECREF(line);
		return -1;
	}
	*total += PyBytes_GET_SIZE(line);
	Py_DECREF(line);
	return 0;
}

/* ---- protobuf */
static int put_tag(buf_t *b, unsigned number, unsigned wire)
{
	return put_varint(b, (unsigned long long)(number << 3 | wire));
}

static int put_len_delim(buf_t *b, unsigned number, const char *s, Py_ssize_t n)
{
	return put_tag(b, number, 2) || put_varint(b, (unsigned long long)n) || put(b, s, n);
}

static int varint_len(unsigned long long v)
{
	int n = 1;
	while (v >= 0x80)
		v >>= 7, n++;
	return n;
}

/* strict "YYYY-MM-DDTHH:MM:SS[.fff[fff[fff]]]Z" (the agent's clock: protojson's 0, 3, 6 or 9
 * fractional digits): 1 and seconds/nanos; 0 for anything else (the twin parses it) */
static int parse_ts(const char *s, Py_ssize_t n, long long *secs, long *nanos)
{
	static const char pat[] = "dddd-dd-ddTdd:dd:dd.ddddddddd";
	if (n != 20 && n != 24 && n != 27 && n != 30)
		return 0;
	if (s[n - 1] != 'Z' || (n == 20 ? 0 : s[19] != '.'))
		return 0;
	for (int i = 0; i < n - 1; i++)
		if (pat[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i])
			return 0;
#define NUM(a, k) ({ int v_ = 0; for (int i_ = (a); i_ < (a) + (k); i_++) v_ = v_ * 10 + (s[i_] - '0'); v_; })
	int mo = NUM(5, 2);
	if (mo < 1 || mo > 12)
		return 0;  /* the twin's calendar.timegm raises: let it */
	static char day[10];
	static long long day_base;
	static int day_ok;
	if (!day_ok || memcmp(day, s, 10)) {
		struct tm tm = {.tm_year = NUM(0, 4) - 1900, .tm_mon = mo - 1, .tm_mday = NUM(8, 2)};
		day_base = (long long)timegm(&tm);
		memcpy(day, s, 10);
		day_ok = 1;
	}
	*secs = day_base + NUM(11, 2) * 3600LL + NUM(14, 2) * 60LL + NUM(17, 2);
	long frac = n > 20 ? NUM(20, (int)n - 21) : 0;
	for (Py_ssize_t k = n; k < 30; k++)
		frac *= 10;  /* ".123" is 123000000 ns */
	*nanos = frac;
#undef NUM
	return 1;
}

/* varint(length) + Timestamp of an RFC 3339 string */
static int put_ts(buf_t *b, PyObject *v)
{
	const char *s;
	Py_ssize_t n;
	long long secs;
	long nanos;
	if (v && PyUnicode_CheckExact(v) && (s = PyUnicode_AsUTF8AndSize(v, &n)) && parse_ts(s, n, &secs, &nanos)) {
		int len = (secs ? 1 + varint_len((unsigned long long)secs) : 0) + (nanos ? 1 + varint_len((unsigned long)nanos) : 0);
		return put_varint(b, (unsigned long long)len) ||
		       (secs && (put(b, "\x08", 1) || put_varint(b, (unsigned long long)secs))) ||
		       (nanos && (put(b, "\x10", 1) || put_varint(b, (unsigned long long)nanos)));
	}
	PyErr_Clear();
	return put_bytes_obj(b, PyObject_CallOneArg(ts_pb, v ? v : Py_None));
}

/* the twin: vigil.api.wire.pod_bytes. parts: the Pod's fields before its container, the
 * container's fields before pid (5), those after maybe_exec_probe (13), the Pod's fields
 * after its container (4) */
static int put_pod_pb(buf_t *b, unsigned number, PyObject *shared, unsigned long long pid, int probe)
{
	PyObject *parts = pod_parts(shared, shared_off[SH_ENC_PB], pod_parts_pb, 4);
	if (!parts)
		return -1;
	PyObject *pre = PyTuple_GET_ITEM(parts, 0), *clo = PyTuple_GET_ITEM(parts, 1);
	PyObject *chi = PyTuple_GET_ITEM(parts, 2), *post = PyTuple_GET_ITEM(parts, 3);
	unsigned long long wrap = pid ? 1 + (unsigned long long)varint_len(pid) : 0;  /* UInt32Value{value} */
	unsigned long long cont = (unsigned long long)(PyBytes_GET_SIZE(clo) + PyBytes_GET_SIZE(chi)) +
				  (pid ? 1 + (unsigned long long)varint_len(wrap) + wrap : 0) + (probe ? 2 : 0);
	unsigned long long body = (unsigned long long)(PyBytes_GET_SIZE(pre) + PyBytes_GET_SIZE(post)) + 1 +
				  (unsigned long long)varint_len(cont) + cont;
	if (put_tag(b, number, 2) || put_varint(b, body) || put_raw(b, pre) || put(b, "\x22", 1) ||
	    put_varint(b, cont) || put_raw(b, clo))
		return -1;
	if (pid && (put(b, "\x2a", 1) || put_varint(b, wrap) || put(b, "\x08", 1) || put_varint(b, pid)))
		return -1;
	if (probe && put(b, "\x68\x01", 2))
		return -1;
	return put_raw(b, chi) || put_raw(b, post) ? -1 : 0;
}

static int msg_pb_body(buf_t *b, PyObject *m)
{
	int probe = 0;
	PyObject *shared = NULL;
	for (int f = 0; f < M_ENC_JSON; f++) {
		PyObject *v = slot(m, msg_off[f]);
		const char *s = NULL;
		Py_ssize_t n = 0;
		unsigned long long u = 0;
		int have;
		switch (msg_kind[f]) {
		case K_STR:
		case K_TS:
			have = get_str(v, &s, &n);
			break;
		case K_INT:
			have = get_uint(v, &u);
			break;
		case K_POD:
			have = get_pod(v, pod_parts_pb, &shared, &u, &probe);
			break;
		case K_BOOL:
			have = get_bool(v, &u);
			break;
		default:
			have = get_sub(v);
		}
		if (have < 0)
			return FALLBACK;
		if (!have)
			continue;
		switch (msg_kind[f]) {
		case K_BOOL:  /* BoolValue{value: true} is 08 01; a set false one is empty */
			if (put_tag(b, msg_number[f], 2) || (u ? put(b, "\x02\x08\x01", 3) : put(b, "\0", 1)))
				return -1;
			break;
		case K_STR:
			if (put_len_delim(b, msg_number[f], s, n))
				return -1;
			break;
		case K_TS:
			if (put_tag(b, msg_number[f], 2) || put_ts(b, v))
				return -1;
			break;
		case K_INT:
			if (put_tag(b, msg_number[f], 2))
				return -1;
			if (u ? put_varint(b, (unsigned long long)varint_len(u) + 1) || put(b, "\x08", 1) || put_varint(b, u)
			      : put(b, "\0", 1))
				return -1;
			break;
		case K_POD:
			if (put_pod_pb(b, msg_number[f], shared, u, probe))
				return -1;
			break;
		default:
			if (put_bytes_obj(b, sub_cached(sub_pb_cache, v, f, sub_pb, msg_slot[f])))
				return -1;
		}
	}
	return 0;
}

/* new reference to varint(length) + the message's serialised Process (cached on it) */
static PyObject *msg_pb(PyObject *m)
{
	if (!Py_IS_TYPE(m, msg_type))
		return PyObject_CallOneArg(py_process_pb, m);
	PyObject *c = slot(m, msg_off[M_ENC_PB]);
	if (c && c != Py_None)
		return Py_NewRef(c);
	buf_t body = buf_exact(NULL), len = {.p = NULL};
	int r = msg_pb_body(&body, m);
	if (r) {
		buf_free(&body);
		return to_twin(r, py_process_pb, m);
	}
	unsigned char pre[10];
	PyObject *res = joined(pre, varint_to(pre, (unsigned long long)body.n), &body, &len);
	buf_free(&body);
	if (res)
		slot_set(m, msg_off[M_ENC_PB], res);
	return res;
}

static int put_msg_pb(buf_t *b, const char *tag, PyObject *m)
{
	return put(b, tag, 1) || put_bytes_obj(b, msg_pb(m));
}

static int ev_pb_body(PyObject **out, PyObject *ev, int t)
{
	const evtype_t *et = &evtypes[t];
	PyObject *kind = et->kind ? et->kind : slot(ev, et->off[E_KIND]);
	PyObject *proc = slot(ev, et->off[E_PROCESS]);
	PyObject *parent = slot(ev, et->off[E_PARENT]);
	PyObject *time = slot(ev, et->off[E_TIME]);
	const char *ns;
	Py_ssize_t nn;
	int hn = get_str(slot(ev, et->off[E_NODE]), &ns, &nn);
	if (!kind || !proc || !parent || hn < 0 || !PyUnicode_CheckExact(kind))
		return FALLBACK;
	PyObject *num = PyDict_GetItemWithError(kind_numbers, kind);
	if (!num)
		return PyErr_Occurred() ? -1 : FALLBACK;
	unsigned long number = PyLong_AsUnsignedLong(num);
	if (number == (unsigned long)-1 && PyErr_Occurred())
		return -1;
	PyObject *anc = NULL;
	if (t != T_POLICY) {
		anc = slot(ev, et->off[E_ANCESTORS]);
		if (!anc || !PyTuple_CheckExact(anc))
			return FALLBACK;
	}
	buf_t b = buf_exact(NULL);
	int r = put_msg_pb(&b, "\x0a", proc) || (parent != Py_None && put_msg_pb(&b, "\x12", parent));
	if (!r && t == T_EXEC) {
		for (Py_ssize_t i = 0; !r && i < PyTuple_GET_SIZE(anc); i++)
			r = put_msg_pb(&b, "\x1a", PyTuple_GET_ITEM(anc, i));
	} else if (!r && t == T_EXIT) {
		const char *ss;
		Py_ssize_t sn;
		int hs = get_str(slot(ev, et->off[E_SIGNAL]), &ss, &sn);
		PyObject *st = slot(ev, et->off[E_STATUS]);
		long long status = 0;
		if (hs < 0 || !st || !PyLong_CheckExact(st))
			r = FALLBACK;
		else if ((status = PyLong_AsLongLong(st)) == -1 && PyErr_Occurred()) {
			PyErr_Clear();
			r = FALLBACK;
		}
		if (!r)
			r = (hs && put_len_delim(&b, 3, ss, sn)) ||
			    (status && (put(&b, "\x20", 1) || put_varint(&b, (unsigned long long)status))) ||
			    put(&b, "\x2a", 1) || put_ts(&b, time);
		for (Py_ssize_t i = 0; !r && i < PyTuple_GET_SIZE(anc); i++)
			r = put_msg_pb(&b, "\x32", PyTuple_GET_ITEM(anc, i));
	} else if (!r) {
		r = put_bytes_obj(&b, PyObject_CallOneArg(body_pb, ev));
	}
	buf_t tail = buf_exact(NULL);
	if (!r)
		r = (hn > 0 && put_len_delim(&tail, 1000, ns, nn)) || put_tag(&tail, 1001, 2) || put_ts(&tail, time);
	if (!r) {
		unsigned char pre[20];
		int n = tag_to(pre, (unsigned)number, 2);
		n += varint_to(pre + n, (unsigned long long)b.n);
		*out = joined(pre, n, &b, &tail);
		r = *out ? 0 : -1;
	}
	buf_free(&b);
	buf_free(&tail);
	return r;
}

static PyObject *ev_pb(PyObject *ev)
{
	int t = ev_type(ev);
	if (t < 0 || !kind_numbers)
		return PyObject_CallOneArg(py_pb, ev);
	Py_ssize_t coff = evtypes[t].off[E_ENC_PB];
	PyObject *c = slot(ev, coff);
	if (c && c != Py_None)
		return Py_NewRef(c);
	PyObject *out = NULL;
	int r = ev_pb_body(&out, ev, t);
	if (r)
		return to_twin(r, py_pb, ev);
	if (out)
		slot_set(ev, coff, out);
	return out;
}

/* ---- entry points */
#define NEED(cb, what)                                                              \
	if (!(cb)) {                                                                \
		PyErr_SetString(PyExc_RuntimeError, what " encoders are not configured"); \
		return NULL;                                                        \
	}

static PyObject *encode_json(PyObject *self, PyObject *ev)
{
	NEED(py_json, "JSON");
	return ev_json(ev);
}

static PyObject *encode_pb(PyObject *self, PyObject *ev)
{
	NEED(py_pb, "protobuf");
	return ev_pb(ev);
}

static PyObject *map_list(PyObject *events, PyObject *(*fn)(PyObject *))
{
	PyObject *seq = PySequence_Fast(events, "a list of events");
	if (!seq)
		return NULL;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	PyObject *out = PyList_New(n);
	for (Py_ssize_t i = 0; out && i < n; i++) {
		PyObject *b = fn(PySequence_Fast_GET_ITEM(seq, i));
		if (!b)
			Py_CLEAR(out);
		else
			PyList_SET_ITEM(out, i, b);
	}
	Py_DECREF(seq);
	return out;
}

static PyObject *encode_json_batch(PyObject *self, PyObject *events)
{
	NEED(py_json, "JSON");
	return map_list(events, ev_json);
}

static PyObject *encode_json_pieces(PyObject *self, PyObject *events)
{
	NEED(py_json, "JSON");
	PyObject *seq = PySequence_Fast(events, "a list of events");
	if (!seq)
		return NULL;
	PyObject *list = PyList_New(0);
	Py_ssize_t total = 0;
	for (Py_ssize_t i = 0; list && i < PySequence_Fast_GET_SIZE(seq); i++)
		if (ev_json_pieces(PySequence_Fast_GET_ITEM(seq, i), list, &total) < 0)
			Py_CLEAR(list);
	Py_DECREF(seq);
	if (!list)
		return NULL;
	PyObject *out = Py_BuildValue("(Nn)", list, total);
	return out;
}

static PyObject *encode_pb_batch(PyObject *self, PyObject *events)
{
	NEED(py_pb, "protobuf");
	return map_list(events, ev_pb);
}

static PyObject *process_json(PyObject *self, PyObject *m)
{
	NEED(py_process_json, "JSON");
	return msg_json(m);
}

static PyObject *process_pb(PyObject *self, PyObject *m)
{
	NEED(py_process_pb, "protobuf");
	return msg_pb(m);
}

static PyObject *configure_events(PyObject *self, PyObject *args)
{
	PyObject *cls[1 + T_COUNT], *pod, *shared;
	if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!", &PyType_Type, &cls[0], &PyType_Type, &cls[1], &PyType_Type,
			      &cls[2], &PyType_Type, &cls[3], &PyType_Type, &pod, &PyType_Type, &shared))
		return NULL;
	for (int f = 0; f < SH_COUNT; f++) {
		slot_offset((PyTypeObject *)shared, shared_slot[f], &shared_off[f]);
		if (shared_off[f] < 0)
			return PyErr_Format(PyExc_TypeError, "%s has no slot %s", ((PyTypeObject *)shared)->tp_name,
					    shared_slot[f]);
	}
	Py_XSETREF(podshared_type, (PyTypeObject *)Py_NewRef(shared));
	if (pod_type && pod_type->tp_dealloc == pod_dealloc)  /* its offsets change now: its own back */
		pod_type->tp_dealloc = pod_type_dealloc;
	for (int f = 0; f < POD_COUNT; f++) {
		slot_offset((PyTypeObject *)pod, pod_slot[f], &pod_off[f]);
		if (pod_off[f] < 0)
			return PyErr_Format(PyExc_TypeError, "%s has no slot %s", ((PyTypeObject *)pod)->tp_name,
					    pod_slot[f]);
	}
	Py_XSETREF(pod_type, (PyTypeObject *)Py_NewRef(pod));
	pod_plain = pod_type->tp_basicsize == (Py_ssize_t)(sizeof(PyObject) + POD_COUNT * sizeof(PyObject *)) &&
		    !pod_type->tp_itemsize && !pod_type->tp_dictoffset && !pod_type->tp_weaklistoffset &&
		    !(pod_type->tp_flags & Py_TPFLAGS_MANAGED_DICT) && PyType_IS_GC(pod_type);
	if (pod_plain && (pod_type->tp_flags & Py_TPFLAGS_HEAPTYPE) && !pod_type->tp_finalize && !pod_type->tp_del &&
	    pod_type->tp_free == PyObject_GC_Del && pod_type->tp_dealloc != pod_dealloc) {
		pod_type_dealloc = pod_type->tp_dealloc;
		pod_type->tp_dealloc = pod_dealloc;
	}
	PyObject *slots = PyObject_GetAttrString(cls[0], "__slots__");
	if (!slots)
		return NULL;
	int same = PyTuple_Check(slots) && PyTuple_GET_SIZE(slots) == M_COUNT;
	for (int i = 0; same && i < M_COUNT; i++)
		same = PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(slots, i), msg_slot[i]) == 0;
	Py_DECREF(slots);
	if (!same)
		return PyErr_Format(PyExc_TypeError, "ProcessMsg.__slots__ changed: update native/fastpath.c (msg_slot)");
	for (int f = 0; f < M_COUNT; f++) {
		slot_offset((PyTypeObject *)cls[0], msg_slot[f], &msg_off[f]);
		if (msg_off[f] < 0)
			return PyErr_Format(PyExc_TypeError, "%s has no slot %s", ((PyTypeObject *)cls[0])->tp_name,
					    msg_slot[f]);
	}
	Py_XSETREF(msg_type, (PyTypeObject *)Py_NewRef(cls[0]));
	static const int needed[T_COUNT][E_COUNT] = {
		[T_EXEC] = {[E_PROCESS] = 1, [E_PARENT] = 1, [E_ANCESTORS] = 1},
		[T_EXIT] = {[E_PROCESS] = 1, [E_PARENT] = 1, [E_ANCESTORS] = 1, [E_SIGNAL] = 1, [E_STATUS] = 1},
		[T_POLICY] = {[E_PROCESS] = 1, [E_PARENT] = 1, [E_ANCESTORS] = 1, [E_KIND] = 1, [E_BODY] = 1},
	};
	for (int t = 0; t < T_COUNT; t++) {
		evtype_t *et = &evtypes[t];
		PyTypeObject *tp = (PyTypeObject *)cls[1 + t];
		for (int e = 0; e < E_COUNT; e++) {
			slot_offset(tp, ev_slot[e], &et->off[e]);
			int need = e <= E_ENC_DICT || needed[t][e];
			if (need && et->off[e] < 0 && !(e == E_KIND && t != T_POLICY))
				return PyErr_Format(PyExc_TypeError, "%s has no slot %s", tp->tp_name, ev_slot[e]);
		}
		Py_CLEAR(et->kind);
		if (t != T_POLICY && !(et->kind = PyObject_GetAttrString((PyObject *)tp, "kind")))
			return NULL;
		Py_XSETREF(et->type, (PyTypeObject *)Py_NewRef(tp));
	}
	Py_RETURN_NONE;
}

static PyObject *configure_json(PyObject *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"encode", "process_json", "sub", "body", "pod_parts", NULL};
	PyObject *a, *b, *c, *d, *e;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO", names, &a, &b, &c, &d, &e))
		return NULL;
	Py_XSETREF(pod_parts_json, Py_NewRef(e));
	Py_XSETREF(py_json, Py_NewRef(a));
	Py_XSETREF(py_process_json, Py_NewRef(b));
	Py_XSETREF(sub_json, Py_NewRef(c));
	Py_XSETREF(body_json, Py_NewRef(d));
	Py_RETURN_NONE;
}

static PyObject *configure_pb(PyObject *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"encode", "process_bytes", "sub", "timestamp", "body", "kind_numbers", "pod_parts", NULL};
	PyObject *a, *b, *c, *d, *e, *k, *pp;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOO!O", names, &a, &b, &c, &d, &e, &PyDict_Type, &k, &pp))
		return NULL;
	Py_XSETREF(pod_parts_pb, Py_NewRef(pp));
	Py_XSETREF(py_pb, Py_NewRef(a));
	Py_XSETREF(py_process_pb, Py_NewRef(b));
	Py_XSETREF(sub_pb, Py_NewRef(c));
	Py_XSETREF(ts_pb, Py_NewRef(d));
	Py_XSETREF(body_pb, Py_NewRef(e));
	Py_XSETREF(kind_numbers, Py_NewRef(k));
	Py_RETURN_NONE;
}
/* ------------------------------------------------------------------ the process stage
 *
 * Builder(event_builder, Process, build_module): on_exec(buf, now), on_clone(buf, now) and
 * on_exit(buf, now) do what EventBuilder.on_exec / on_clone / on_exit (vigil/process/build.py,
 * the reference) do for a record, in one call: decode, exec ids, the parent lookup, the
 * interned sub-messages (looked up in the builder's own caches; a miss calls the
 * builder's method, which fills them), the ProcessMsg, the cache entry and the event.
 * The cache's dicts and queues stay Python objects, changed here as ProcessCache.add /
 * exit / _evict change them. Anything rare (a missing process at exit, --enable-ancestors,
 * an unusual value) is handed to the builder's Python method, so there is one behaviour. */

enum {
	P_EXEC_ID, P_KEY, P_PID, P_KTIME, P_PARENT_EXEC_ID, P_PARENT_KEY, P_PPID, P_REFCNT, P_MSG, P_BINARY, P_EXE,
	P_CGROUP_ID, P_NS, P_CAP_EFFECTIVE, P_FLAGS, P_EXITED, P_REMOVAL_AT, P_NSPID, P_UID, P_DOCKER,
	P_HOLDS_PARENT, P_IN_INIT_TREE, P_COUNT
};
static const char *const proc_slot[P_COUNT] = {
	"exec_id", "key", "pid", "ktime", "parent_exec_id", "parent_key", "ppid", "refcnt", "msg", "binary", "exe",
	"cgroup_id", "ns", "cap_effective", "flags", "exited", "removal_at", "nspid", "uid", "docker",
	"holds_parent", "in_init_tree",
};

/* args trunc, err path/args, cwd, clone, data filename/args */
#define REC_FLAG_BITS (1 << 0 | 1 << 5 | 1 << 3 | 1 << 2 | 1 << 4 | 1 << 11 | 1 << 12 | 1 << 13)
#define K_MISS (1 << 17)
#define K_NOCWD (1 << 18)
#define K_ROOTCWD (1 << 19)
#define K_INIT_TREE (1 << 20)
#define F_PATH_NOT_ROOTED (1 << 8)
#define OP_EXEC 1

struct creds_raw {
	unsigned uid, gid, euid, egid, suid, sgid, fsuid, fsgid, securebits, level, ns_uid, ns_gid, userns, pad;
	unsigned long long cap_p, cap_e, cap_i;
};

typedef struct {
	PyObject_HEAD
	PyObject *builder, *cache, *by_key, *by_pid, *ended, *orphans, *clock, *opts, *node;
	PyObject *flags_cache, *docker_cache, *caps_cache, *ns_cache, *creds_cache, *signames;
	PyObject *m_flag_words, *m_docker, *m_caps, *m_namespaces, *m_creds, *m_binary, *m_binary_properties;
	PyObject *m_parents, *m_on_exit, *m_rfc3339, *m_signal_name, *m_missed;
	PyObject *s_exec_count, *s_exit_count, *s_offset, *s_enable_cred, *s_enable_ns, *s_ancestors;
	PyObject *s_order, *s_pending, *s_append, *s_capacity, *s_grace, *m_rebuild_order;
	PyObject *s_pods, *s_pod_json, *s_fast, *one, *pods, *pods_fast, *s_popleft, *s_removed, *s_evictions;
	PyObject *s_miss_count, *s_clone_count, *s_clone, *s_clone_init, *s_with_pid, *s_by_docker, *s_for_clone;
	PyObject *s_podless;
	PyObject *exited, *m_late_exec;  /* ProcessHold.exited (exec keys of exits given up), .late_exec */
	PyObject *empty_str, *empty_tuple;
	PyObject *generic;  /* on_generic's context (set_generic), NULL until set */
	PyTypeObject *proc_type;
	Py_ssize_t proc_off[P_COUNT];
	const char *node_s;
	Py_ssize_t node_n;
	int enable_cred, enable_ns, ancestors;  /* BuildOptions (frozen) */
	struct creds_raw last_creds_raw;
	PyObject *last_creds;
	long long sec_cached;      /* the second whose "YYYY-MM-DDTHH:MM:SS" is in prefix */
	char prefix[32];
} Builder;

#define BUILDER_REFS(b)                                                                                      \
	{                                                                                                    \
		&b->builder, &b->cache, &b->by_key, &b->by_pid, &b->ended, &b->clock, &b->opts, &b->node,        \
		&b->orphans, &b->flags_cache,                                                                    \
		&b->docker_cache, &b->caps_cache, &b->ns_cache, &b->creds_cache, &b->signames, &b->m_flag_words, \
		&b->m_docker, &b->m_caps, &b->m_namespaces, &b->m_creds, &b->m_binary, &b->m_binary_properties,  \
		&b->m_parents, &b->m_on_exit, &b->m_rfc3339, &b->m_signal_name, &b->m_missed,                  \
		&b->s_exec_count, &b->s_exit_count, &b->s_offset, &b->s_enable_cred, &b->s_enable_ns,            \
		&b->s_ancestors, &b->empty_str, &b->empty_tuple, (PyObject **)&b->proc_type, &b->s_order,         \
		&b->s_pending, &b->s_append, &b->s_capacity, &b->s_grace,                                              \
		&b->m_rebuild_order, &b->last_creds, &b->s_pods, &b->s_pod_json, &b->s_fast, &b->one, &b->pods, &b->pods_fast,\
		&b->s_popleft, &b->s_removed, &b->s_evictions, &b->s_miss_count, &b->s_clone_count, &b->s_clone,  \
		&b->s_clone_init, &b->s_with_pid, &b->s_by_docker, &b->s_for_clone, &b->generic, &b->s_podless,  \
		&b->exited, &b->m_late_exec,                                                                     \
	}

static int builder_traverse(Builder *b, visitproc visit, void *arg)
{
	PyObject **all[] = BUILDER_REFS(b);
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		Py_VISIT(*all[i]);
	return 0;
}

static int builder_clear(Builder *b)
{
	PyObject **all[] = BUILDER_REFS(b);
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		Py_CLEAR(*all[i]);
	return 0;
}

static void builder_dealloc(Builder *b)
{
	PyObject_GC_UnTrack(b);
	builder_clear(b);
	Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *get(PyObject *o, const char *name)
{
	return PyObject_GetAttrString(o, name);
}

static int opt(Builder *b, PyObject *name);

static int builder_init(Builder *b, PyObject *args, PyObject *kw)
{
	PyObject *builder, *proc_type, *mod;
	if (!PyArg_ParseTuple(args, "OO!O", &builder, &PyType_Type, &proc_type, &mod))
		return -1;
	builder_clear(b);
	b->builder = Py_NewRef(builder);
	b->proc_type = (PyTypeObject *)Py_NewRef(proc_type);
	/* every slot of Process must be one this code sets */
	PyObject *slots = get(proc_type, "__slots__");
	if (!slots)
		return -1;
	int same = PyTuple_Check(slots) && PyTuple_GET_SIZE(slots) == P_COUNT;
	for (int i = 0; same && i < P_COUNT; i++)
		same = PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(slots, i), proc_slot[i]) == 0;
	Py_DECREF(slots);
	if (!same) {
		PyErr_SetString(PyExc_TypeError, "Process.__slots__ changed: update native/fastpath.c (proc_slot)");
		return -1;
	}
	for (int i = 0; i < P_COUNT; i++) {
		slot_offset(b->proc_type, proc_slot[i], &b->proc_off[i]);
		if (b->proc_off[i] < 0) {
			PyErr_Format(PyExc_TypeError, "Process has no slot %s", proc_slot[i]);
			return -1;
		}
	}
	if (!(b->cache = get(builder, "cache")) || !(b->by_key = get(b->cache, "_by_key")) ||
	    !(b->by_pid = get(b->cache, "_by_pid")) || !(b->ended = get(b->cache, "_ended")) ||
	    !(b->orphans = get(b->cache, "_orphans")) ||
	    !(b->clock = get(builder, "clock")) ||
	    !(b->opts = get(builder, "opts")) || !(b->node = get(builder, "node")) ||
	    !(b->flags_cache = get(builder, "_flags_cache")) || !(b->docker_cache = get(builder, "_docker_cache")) ||
	    !(b->caps_cache = get(builder, "_caps_cache")) || !(b->ns_cache = get(builder, "_ns_cache")) ||
	    !(b->creds_cache = get(builder, "_creds_cache")) || !(b->signames = get(mod, "_SIGNAMES")) ||
	    !(b->m_flag_words = get(mod, "_flag_words")) || !(b->m_signal_name = get(mod, "signal_name")) ||
	    !(b->m_docker = get(builder, "_docker")) || !(b->m_caps = get(builder, "_caps")) ||
	    !(b->m_namespaces = get(builder, "_namespaces")) || !(b->m_creds = get(builder, "_creds")) ||
	    !(b->m_binary = get(builder, "_binary")) || !(b->m_binary_properties = get(builder, "_binary_properties")) ||
	    !(b->m_parents = get(builder, "_parents")) || !(b->m_on_exit = get(builder, "py_on_exit")) ||
	    !(b->m_rfc3339 = get(b->clock, "ktime_rfc3339")) ||
	    !(b->m_rebuild_order = get(b->cache, "_rebuild_order")) || !(b->m_missed = get(b->cache, "missed")))
		return -1;
	PyObject *hold = get(builder, "hold");
	if (!hold)
		return -1;
	b->exited = get(hold, "exited");
	b->m_late_exec = b->exited ? get(hold, "late_exec") : NULL;
	Py_DECREF(hold);
	if (!b->m_late_exec)
		return -1;
	if (!PyDict_CheckExact(b->exited)) {
		PyErr_SetString(PyExc_TypeError, "ProcessHold.exited is not a plain dict");
		return -1;
	}
	if (!PyDict_CheckExact(b->by_key) || !PyDict_CheckExact(b->by_pid) || !PyDict_CheckExact(b->ended) ||
	    !PyDict_CheckExact(b->orphans) ||
	    !PyDict_CheckExact(b->flags_cache) ||
	    !PyDict_CheckExact(b->docker_cache) || !PyDict_CheckExact(b->caps_cache) ||
	    !PyDict_CheckExact(b->ns_cache) || !PyDict_CheckExact(b->creds_cache) || !PyUnicode_CheckExact(b->node)) {
		PyErr_SetString(PyExc_TypeError, "EventBuilder's caches are not plain dicts");
		return -1;
	}
	b->node_s = PyUnicode_AsUTF8AndSize(b->node, &b->node_n);
	b->s_exec_count = PyUnicode_InternFromString("exec_count");
	b->s_exit_count = PyUnicode_InternFromString("exit_count");
	b->s_offset = PyUnicode_InternFromString("offset");
	b->s_enable_cred = PyUnicode_InternFromString("enable_cred");
	b->s_enable_ns = PyUnicode_InternFromString("enable_ns");
	b->s_ancestors = PyUnicode_InternFromString("ancestors");
	b->s_order = PyUnicode_InternFromString("_order");
	b->s_pending = PyUnicode_InternFromString("_pending");
	b->s_append = PyUnicode_InternFromString("append");
	b->s_capacity = PyUnicode_InternFromString("capacity");
	b->s_grace = PyUnicode_InternFromString("grace_ns");
	b->s_pods = PyUnicode_InternFromString("pods");
	b->s_pod_json = PyUnicode_InternFromString("pod_json");
	b->s_fast = PyUnicode_InternFromString("fast");
	b->s_popleft = PyUnicode_InternFromString("popleft");
	b->s_miss_count = PyUnicode_InternFromString("miss_count");
	b->s_clone_count = PyUnicode_InternFromString("clone_count");
	b->s_clone = PyUnicode_InternFromString("clone");
	b->s_clone_init = PyUnicode_InternFromString("clone inInitTree");  /* build._CLONE_FLAGS */
	b->s_with_pid = PyUnicode_InternFromString("with_pid");
	b->s_by_docker = PyUnicode_InternFromString("by_docker");
	b->s_for_clone = PyUnicode_InternFromString("for_clone");
	b->s_podless = PyUnicode_InternFromString("podless");
	b->s_removed = PyUnicode_InternFromString("removed");
	b->s_evictions = PyUnicode_InternFromString("evictions");
	b->one = PyLong_FromLong(1);
	b->empty_str = PyUnicode_FromString("");
	b->empty_tuple = PyTuple_New(0);
	b->sec_cached = LLONG_MIN;
	if ((b->enable_cred = opt(b, b->s_enable_cred)) < 0 || (b->enable_ns = opt(b, b->s_enable_ns)) < 0 ||
	    (b->ancestors = opt(b, b->s_ancestors)) < 0)
		return -1;
	if (!b->node_s || !b->s_exec_count || !b->s_exit_count || !b->s_offset || !b->s_enable_cred ||
	    !b->s_enable_ns || !b->s_ancestors || !b->empty_str || !b->empty_tuple || !b->s_order || !b->s_pending ||
	    !b->s_append || !b->s_capacity || !b->s_grace || !b->s_pods || !b->s_pod_json || !b->s_fast || !b->one || !b->s_popleft || !b->s_removed ||
	    !b->s_evictions || !b->s_miss_count || !b->s_clone_count || !b->s_clone || !b->s_clone_init || !b->s_with_pid ||
	    !b->s_by_docker || !b->s_for_clone || !b->s_podless)
		return -1;
	return 0;
}

/* base64("node:ktime:pid") */
static PyObject *make_exec_id(const char *node, Py_ssize_t nn, unsigned long long ktime, unsigned long long pid)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char stack[256], ostack[352];
	char *src = (size_t)nn + 48 <= sizeof(stack) ? stack : PyMem_Malloc((size_t)nn + 48);
	if (!src)
		return PyErr_NoMemory();
	int n = (int)nn;
	memcpy(src, node, (size_t)nn);
	src[n++] = ':';
	n += fmt_u64(src + n, ktime);
	src[n++] = ':';
	n += fmt_u64(src + n, pid);
	size_t on = (size_t)(4 * ((n + 2) / 3));
	char *out = on <= sizeof(ostack) ? ostack : PyMem_Malloc(on);
	if (!out) {
		if (src != stack)
			PyMem_Free(src);
		return PyErr_NoMemory();
	}
	int o = 0;
	for (int i = 0; i < n; i += 3) {
		unsigned v = (unsigned char)src[i] << 16;
		if (i + 1 < n)
			v |= (unsigned char)src[i + 1] << 8;
		if (i + 2 < n)
			v |= (unsigned char)src[i + 2];
		out[o++] = b64[(v >> 18) & 63];
		out[o++] = b64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	PyObject *r = PyUnicode_DecodeASCII(out, o, NULL);
	if (src != stack)
		PyMem_Free(src);
	if (out != ostack)
		PyMem_Free(out);
	return r;
}

/* WallClock.ktime_rfc3339, reading the clock's current offset */
static PyObject *rfc3339(Builder *b, unsigned long long ktime)
{
	PyObject *off = PyObject_GetAttr(b->clock, b->s_offset);
	if (!off)
		return NULL;
	long long offset = PyLong_AsLongLong(off);
	Py_DECREF(off);
	long long wall;
	if (PyErr_Occurred()) {
		PyErr_Clear();
		return PyObject_CallFunction(b->m_rfc3339, "K", ktime);
	}
	if (ktime > (unsigned long long)LLONG_MAX || __builtin_add_overflow((long long)ktime, offset, &wall) ||
	    wall < 0 || wall / 1000000000LL > 253402300799LL)
		return PyObject_CallFunction(b->m_rfc3339, "K", ktime);  /* outside years 1970-9999 */
	long long sec = wall / 1000000000LL;
	long frac = (long)(wall % 1000000000LL);
	if (sec != b->sec_cached) {
		time_t t = (time_t)sec;
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(b->prefix, sizeof(b->prefix), "%Y-%m-%dT%H:%M:%S", &tm);
		b->sec_cached = sec;
	}
	/* protojson's fraction: the fewest of 9, 6, 3 or 0 digits that hold it (clock.frac_z) */
	int digits = 9;
	if (frac % 1000 == 0) {
		digits = !frac ? 0 : frac % 1000000 ? 6 : 3;
		for (int k = digits; k < 9; k++)
			frac /= 10;
	}
	char s[48];
	size_t pn = strlen(b->prefix), o = pn;
	memcpy(s, b->prefix, pn);
	if (digits) {
		s[o++] = '.';
		for (int i = digits - 1; i >= 0; i--, frac /= 10)
			s[o + (size_t)i] = (char)('0' + frac % 10);
		o += (size_t)digits;
	}
	s[o++] = 'Z';
	return PyUnicode_DecodeASCII(s, (Py_ssize_t)o, NULL);
}

static PyObject *key_tuple(unsigned long long pid, unsigned long long ktime)
{
	PyObject *a = PyLong_FromUnsignedLongLong(pid), *k = PyLong_FromUnsignedLongLong(ktime);
	PyObject *t = (a && k) ? PyTuple_Pack(2, a, k) : NULL;
	Py_XDECREF(a);
	Py_XDECREF(k);
	return t;
}

static PyObject *pslot(Builder *b, PyObject *p, int i)
{
	return slot(p, b->proc_off[i]);
}

/* a cache-dict lookup that calls `miss(args...)` when absent; new reference */
static PyObject *lookup(PyObject *dict, PyObject *key, PyObject *miss, PyObject *const *args, size_t nargs)
{
	PyObject *v = PyDict_GetItemWithError(dict, key);
	if (v)
		return Py_NewRef(v);
	if (PyErr_Occurred())
		return NULL;
	return PyObject_Vectorcall(miss, args, nargs, NULL);
}

static int opt(Builder *b, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(b->opts, name);
	if (!v)
		return -1;
	int r = PyObject_IsTrue(v);
	Py_DECREF(v);
	return r;
}

static int bump(Builder *b, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(b->builder, name);
	if (!v)
		return -1;
	PyObject *one = PyLong_FromLong(1);
	PyObject *n = one ? PyNumber_Add(v, one) : NULL;
	Py_DECREF(v);
	Py_XDECREF(one);
	if (!n)
		return -1;
	int r = PyObject_SetAttr(b->builder, name, n);
	Py_DECREF(n);
	return r;
}


/* ---- ProcessCache.add / exit / _release (vigil/process/cache.py is the reference; the
 * rare paths, eviction and rebuilding the order queue, are its own methods) */
static int call_method1(PyObject *obj, PyObject *name, PyObject *arg)
{
	PyObject *r = PyObject_CallMethodOneArg(obj, name, arg);
	Py_XDECREF(r);
	return r ? 0 : -1;
}

static long long attr_ll(PyObject *o, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (!v)
		return -1;
	long long r = PyLong_AsLongLong(v);
	Py_DECREF(v);
	return r;
}

static int refcnt_add(Builder *b, PyObject *p, long d, long *out)
{
	PyObject *rc = pslot(b, p, P_REFCNT);
	long v = rc ? PyLong_AsLong(rc) : -1;
	if (!rc || (v == -1 && PyErr_Occurred()))
		return -1;
	v += d;
	SET_STEAL(p, b->proc_off[P_REFCNT], PyLong_FromLong(v));
	*out = v;
	return PyErr_Occurred() ? -1 : 0;
}

static int cache_release(Builder *b, PyObject *p, PyObject *now)
{
	long rc;
	if (refcnt_add(b, p, -1, &rc) < 0)
		return -1;
	if (rc > 0)
		return 0;
	PyObject *g = PyObject_GetAttr(b->cache, b->s_grace);
	PyObject *at = g ? PyNumber_Add(now, g) : NULL;
	Py_XDECREF(g);
	if (!at)
		return -1;
	SET_STEAL(p, b->proc_off[P_REMOVAL_AT], at);
	PyObject *pending = PyObject_GetAttr(b->cache, b->s_pending);
	if (!pending)
		return -1;
	int r = call_method1(pending, b->s_append, p);
	Py_DECREF(pending);
	return r;
}

static int bump_attr(PyObject *o, PyObject *name)
{
	PyObject *v = PyObject_GetAttr(o, name);
	if (!v)
		return -1;
	PyObject *one = PyLong_FromLong(1);
	PyObject *n = one ? PyNumber_Add(v, one) : NULL;
	Py_DECREF(v);
	Py_XDECREF(one);
	if (!n)
		return -1;
	int r = PyObject_SetAttr(o, name, n);
	Py_DECREF(n);
	return r;
}

/* ProcessCache._remove */
static int cache_remove(Builder *b, PyObject *p, PyObject *now)
{
	if (PyDict_DelItem(b->by_key, pslot(b, p, P_KEY)) < 0)
		return -1;
	PyObject *pid = pslot(b, p, P_PID);
	PyObject *cur = PyDict_GetItemWithError(b->by_pid, pid);
	if (PyErr_Occurred() || (cur == p && PyDict_DelItem(b->by_pid, pid) < 0))
		return -1;
	cur = PyDict_GetItemWithError(b->ended, pid);
	if (PyErr_Occurred() || (cur == p && PyDict_DelItem(b->ended, pid) < 0) || bump_attr(b->cache, b->s_removed) < 0)
		return -1;
	PyObject *pk = pslot(b, p, P_PARENT_KEY);
	if (pk == Py_None)
		return 0;
	if (pslot(b, p, P_HOLDS_PARENT) != Py_True) {  /* its parent never came: forget it waited (_orphans) */
		PyObject *kids = PyDict_GET_SIZE(b->orphans) ? PyDict_GetItemWithError(b->orphans, pk) : NULL;
		if (!kids)
			return PyErr_Occurred() ? -1 : 0;
		PyObject *key = pslot(b, p, P_KEY), *kid = PyDict_GetItemWithError(kids, key);
		if (!kid)
			return PyErr_Occurred() ? -1 : 0;
		if (kid != p || PyDict_DelItem(kids, key) < 0)
			return kid != p ? 0 : -1;
		return PyDict_GET_SIZE(kids) ? 0 : PyDict_DelItem(b->orphans, pk);
	}
	PyObject *parent = PyDict_GetItemWithError(b->by_key, pk);
	if (!parent)
		return PyErr_Occurred() ? -1 : 0;
	Py_INCREF(parent);
	int r = cache_release(b, parent, now);
	Py_DECREF(parent);
	return r;
}

/* the cached entry still is p (nothing replaced or removed it) */
static int still_cached(Builder *b, PyObject *p)
{
	PyObject *cur = PyDict_GetItemWithError(b->by_key, pslot(b, p, P_KEY));
	return cur ? cur == p : (PyErr_Occurred() ? -1 : 0);
}

/* ProcessCache._evict(now, room): the oldest releasable entries first, then the oldest of all */
static int cache_evict(Builder *b, PyObject *now, long long cap, long long room)
{
	PyObject *pending = PyObject_GetAttr(b->cache, b->s_pending);
	PyObject *order = pending ? PyObject_GetAttr(b->cache, b->s_order) : NULL;
	int r = order ? 0 : -1;
	while (!r && PyDict_GET_SIZE(b->by_key) > 0 && PyDict_GET_SIZE(b->by_key) > cap - room) {
		PyObject *victim = NULL;
		for (PyObject *q = pending; !r && !victim;) {
			if (q == pending) {
				Py_ssize_t n = PyObject_Length(pending);
				if (n <= 0) {  /* none releasable: the oldest of all */
					r = n < 0 ? -1 : 0;
					q = order;
					continue;
				}
			}
			PyObject *cand = PyObject_CallMethodNoArgs(q, b->s_popleft);
			if (!cand) {
				r = -1;
				break;
			}
			int ok = still_cached(b, cand);
			if (ok > 0 && q == pending) {
				long rc = PyLong_AsLong(pslot(b, cand, P_REFCNT));
				ok = rc == -1 && PyErr_Occurred() ? -1 : rc <= 0;
			}
			if (ok > 0)
				victim = cand;
			else
				Py_DECREF(cand);
			r = ok < 0 ? -1 : 0;
		}
		if (victim) {
			r = cache_remove(b, victim, now) < 0 || bump_attr(b->cache, b->s_evictions) < 0 ? -1 : 0;
			Py_DECREF(victim);
		}
	}
	Py_XDECREF(pending);
	Py_XDECREF(order);
	return r;
}

static int cache_add(Builder *b, PyObject *p, PyObject *now)
{
	PyObject *key = pslot(b, p, P_KEY);
	int has = PyDict_Contains(b->by_key, key);
	if (has)
		return has < 0 ? -1 : 0;
	long long cap = attr_ll(b->cache, b->s_capacity);
	if (cap == -1 && PyErr_Occurred())
		return -1;
	if (PyDict_GET_SIZE(b->by_key) >= cap && cache_evict(b, now, cap, 1) < 0)  /* room first, as ProcessCache.add */
		return -1;
	SET_STEAL(p, b->proc_off[P_REFCNT], PyLong_FromLong(1));
	if (PyErr_Occurred() || PyDict_SetItem(b->by_key, key, p) < 0)
		return -1;
	PyObject *order = PyObject_GetAttr(b->cache, b->s_order);
	if (!order)
		return -1;
	int r = call_method1(order, b->s_append, p);
	Py_ssize_t olen = r ? 0 : PyObject_Length(order);
	Py_DECREF(order);
	if (r || olen < 0)
		return -1;
	if (olen > 2 * PyDict_GET_SIZE(b->by_key) + 64) {
		PyObject *x = PyObject_CallNoArgs(b->m_rebuild_order);
		if (!x)
			return -1;
		Py_DECREF(x);
	}
	PyObject *pk = pslot(b, p, P_PARENT_KEY);
	if (pk != Py_None) {
		PyObject *parent = PyDict_GetItemWithError(b->by_key, pk);
		long rc;
		if (PyErr_Occurred() || (parent && refcnt_add(b, parent, 1, &rc) < 0))
			return -1;
		if (parent)
			SET(p, b->proc_off[P_HOLDS_PARENT], Py_True);
		else {  /* its parent's record behind: the reference once that comes (ProcessCache._orphans) */
			int named = PyObject_IsTrue(pk);
			if (named < 0)
				return -1;
			if (named) {
				PyObject *kids = PyDict_GetItemWithError(b->orphans, pk);
				if (!kids && !PyErr_Occurred()) {
					kids = PyDict_New();
					int e = kids ? PyDict_SetItem(b->orphans, pk, kids) : -1;
					Py_XDECREF(kids);  /* (the dict holds it) */
					if (e < 0)
						return -1;
				}
				if (!kids || PyDict_SetItem(kids, key, p) < 0)
					return -1;
			}
		}
	}
	if (PyDict_GET_SIZE(b->orphans)) {  /* children cached before it: each holds it */
		PyObject *kids = PyDict_GetItemWithError(b->orphans, key);
		if (!kids && PyErr_Occurred())
			return -1;
		if (kids) {
			long rc;
			Py_INCREF(kids);
			int e = PyDict_DelItem(b->orphans, key) < 0 || refcnt_add(b, p, (long)PyDict_GET_SIZE(kids), &rc) < 0;
			Py_ssize_t pos = 0;
			PyObject *k, *kid;
			while (!e && PyDict_Next(kids, &pos, &k, &kid))
				SET(kid, b->proc_off[P_HOLDS_PARENT], Py_True);
			Py_DECREF(kids);
			if (e)
				return -1;
		}
	}
	PyObject *pid = pslot(b, p, P_PID);
	PyObject *old = PyDict_GetItemWithError(b->by_pid, pid);
	if (!old && !PyErr_Occurred())  /* none: the one it named when that exited, still cached */
		old = PyDict_GetItemWithError(b->ended, pid);
	if (PyErr_Occurred())
		return -1;
	if (old) {  /* a newer image is (or was) the pid's: this older one is recorded, ended at once (ProcessCache.add) */
		int newer = PyObject_RichCompareBool(pslot(b, old, P_KTIME), pslot(b, p, P_KTIME), Py_GT);
		if (newer < 0)
			return -1;
		if (newer) {
			SET(p, b->proc_off[P_EXITED], Py_True);
			return cache_release(b, p, now) ? -1 : 0;
		}
	}
	Py_XINCREF(old);
	r = PyDict_SetItem(b->by_pid, pid, p);
	if (!r && old && old != p && pslot(b, old, P_EXITED) == Py_False) {
		SET(old, b->proc_off[P_EXITED], Py_True);
		r = cache_release(b, old, now);
	}
	Py_XDECREF(old);
	return r ? -1 : 0;
}

static int cache_exit(Builder *b, PyObject *p, PyObject *now)
{
	PyObject *ex = pslot(b, p, P_EXITED);
	int t = ex ? PyObject_IsTrue(ex) : -1;
	if (t)
		return t < 0 ? -1 : 0;
	SET(p, b->proc_off[P_EXITED], Py_True);
	PyObject *pid = pslot(b, p, P_PID);
	PyObject *cur = PyDict_GetItemWithError(b->by_pid, pid);
	if (PyErr_Occurred() || (cur == p && (PyDict_DelItem(b->by_pid, pid) < 0 || PyDict_SetItem(b->ended, pid, p) < 0)))
		return -1;
	return cache_release(b, p, now);
}

/* _parents(p): (parent msg or None, ancestors tuple), new references in *parent, *anc */
static int parents(Builder *b, PyObject *p, int ancestors, PyObject **parent, PyObject **anc)
{
	*parent = *anc = NULL;
	if (ancestors) {
		PyObject *t = PyObject_CallOneArg(b->m_parents, p);
		if (!t)
			return -1;
		if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2) {
			Py_DECREF(t);
			PyErr_SetString(PyExc_TypeError, "_parents() must return a pair");
			return -1;
		}
		*parent = Py_NewRef(PyTuple_GET_ITEM(t, 0));
		*anc = Py_NewRef(PyTuple_GET_ITEM(t, 1));
		Py_DECREF(t);
		return 0;
	}
	PyObject *pk = pslot(b, p, P_PARENT_KEY);
	PyObject *pp = (pk && pk != Py_None) ? PyDict_GetItemWithError(b->by_key, pk) : NULL;
	if (PyErr_Occurred())
		return -1;
	*parent = Py_NewRef(pp ? pslot(b, pp, P_MSG) : Py_None);
	*anc = Py_NewRef(b->empty_tuple);
	return 0;
}

/* The objects made here (Process, ProcessMsg, Pod, the events) only ever point down the
 * one-way graph: a process at its message, an event at messages and tuples, a message at
 * its pod and interned dicts; nothing points back (tests/unit/test_fastpath.py checks it).
 * They can be in no reference cycle, so the cyclic GC need not see them: untracked, they
 * are freed by reference counting alone. Tracked, the young-generation collections spent
 * 15-18% of a replay traversing their slots (bench/event_throughput.py, cProfile and perf). */
static PyObject *new_slotted(PyTypeObject *t)
{
	PyObject *o = t->tp_alloc(t, 0);
	if (o)
		PyObject_GC_UnTrack(o);
	return o;
}


static PyObject *new_event(int t, PyObject *proc, PyObject *parent, PyObject *anc, PyObject *time, PyObject *node)
{
	const evtype_t *et = &evtypes[t];
	PyObject *ev = new_slotted(et->type);
	if (!ev)
		return NULL;
	SET(ev, et->off[E_TIME], time);
	SET(ev, et->off[E_NODE], node);
	SET(ev, et->off[E_ENC_JSON], Py_None);
	SET(ev, et->off[E_ENC_PB], Py_None);
	SET(ev, et->off[E_PROCESS], proc);
	SET(ev, et->off[E_PARENT], parent);
	SET(ev, et->off[E_ANCESTORS], anc);
	SET(ev, et->off[E_ENC_DICT], Py_None);
	return ev;
}

/* on_exec/on_exit's record argument, decoded by its type's constructor */
static PyObject *record_arg(PyObject *const *args, Py_ssize_t nargs, const char *usage, int evt, newfunc ctor,
			    PyTypeObject *tp)
{
	if (nargs != 2)
		return PyErr_Format(PyExc_TypeError, "%s", usage);
	if (!msg_type || !evtypes[evt].type)
		return PyErr_Format(PyExc_RuntimeError, "configure_events() first");
	PyObject *tup = PyTuple_Pack(1, args[0]);
	if (!tup)
		return NULL;
	PyObject *r = ctor(tp, tup, NULL);
	Py_DECREF(tup);
	return r;
}

/* A process of a kubelet container (PodResolver.by_docker) just cached without its pod: told
 * to the resolver (PodResolver.podless), which gives it the pod when it comes; as the twin's
 * EventBuilder._podless. Nothing is called for a process with a pod or of no container. */
static int tell_podless(Builder *b, PyObject *p)
{
	PyObject *docker = pslot(b, p, P_DOCKER), *msg = pslot(b, p, P_MSG);
	if (!docker || !PyUnicode_Check(docker) || !PyUnicode_GET_LENGTH(docker) || !msg ||
	    !Py_IS_TYPE(msg, msg_type))
		return 0;
	PyObject *pod = slot(msg, msg_off[M_POD]);
	if (pod && pod != Py_None)
		return 0;
	PyObject *pods = PyObject_GetAttr(b->builder, b->s_pods);
	if (!pods)
		return -1;
	int rc = 0;
	if (pods != Py_None) {
		PyObject *byd = PyObject_GetAttr(pods, b->s_by_docker);
		if (byd && !PyDict_Check(byd))
			PyErr_SetString(PyExc_TypeError, "PodResolver.by_docker is not a dict");
		else if (byd && PyDict_GetItemWithError(byd, docker)) {
			PyObject *res = PyObject_CallMethodObjArgs(pods, b->s_podless, p, NULL);
			Py_XDECREF(res);
		}
		Py_XDECREF(byd);
		rc = PyErr_Occurred() ? -1 : 0;
	}
	Py_DECREF(pods);
	return rc;
}

/* A process's Pod from the resolver's table (PodResolver.fast: [by cgroup name, hits: a
 * bytearray of one native u64, counted in place: a Python int there was a new int object, an
 * addition and a dealloc per exec]) when
 * its container is in it (the resolver drops a container the store changes) and the
 * arguments are not one of the container's exec probes. The table's value is the container's
 * PodShared itself, which carries its probes (one object read, not a tuple and then it).
 * NULL without an error: ask the resolver. */
static PyObject *pod_from_table(Builder *b, PyObject *pods, PyObject *cgroup_name, int cg, PyObject *pid,
				PyObject *arguments)
{
	if (pods != b->pods) {  /* the list is the resolver's for its life: looked up once */
		PyObject *fast = PyObject_GetAttr(pods, b->s_fast);
		if (!fast)
			return NULL;
		if (!PyList_CheckExact(fast) || PyList_GET_SIZE(fast) != 3 || !PyDict_CheckExact(PyList_GET_ITEM(fast, 0)) ||
		    !PyByteArray_CheckExact(PyList_GET_ITEM(fast, 1)) || !PyByteArray_CheckExact(PyList_GET_ITEM(fast, 2)) ||
		    PyByteArray_GET_SIZE(PyList_GET_ITEM(fast, 2)) != (Py_ssize_t)sizeof(unsigned long long)) {
			Py_DECREF(fast);
			return NULL;
		}
		Py_XSETREF(b->pods, Py_NewRef(pods));
		Py_XSETREF(b->pods_fast, fast);
	}
	PyObject *fast = b->pods_fast;
	/* the answer kept with the name (cgnames): of this resolver, in the table's generation */
	struct cgname *e = cg >= 0 && cgnames && cgnames[cg].name == cgroup_name ? &cgnames[cg] : NULL;
	PyObject *genb = PyList_GET_ITEM(fast, 2);
	if (!PyByteArray_CheckExact(genb) || PyByteArray_GET_SIZE(genb) != (Py_ssize_t)sizeof(unsigned long long))
		return NULL;  /* (not the resolver's generation: it decides) */
	unsigned long long gen;
	memcpy(&gen, PyByteArray_AS_STRING(genb), sizeof(gen));
	PyObject *hit;
	if (e && e->shared && e->fast == fast && e->gen == gen)
		hit = e->shared;
	else {
		hit = PyDict_GetItemWithError(PyList_GET_ITEM(fast, 0), cgroup_name);
		if (!hit)
			return NULL;
		if (e) {
			Py_XSETREF(e->fast, Py_NewRef(fast));
			Py_XSETREF(e->shared, Py_NewRef(hit));
			e->gen = gen;
		}
	}
	if (!pod_type || !Py_IS_TYPE(hit, podshared_type))
		return NULL;
	PyObject *probes = slot(hit, shared_off[SH_PROBES]);
	if (!probes)
		return NULL;
	if (probes != Py_None) {  /* arguments longer than every probe's are none of them: no hashing */
		PyObject *lo = slot(hit, shared_off[SH_PROBES_LONGEST]);
		Py_ssize_t longest = lo && PyLong_CheckExact(lo) ? PyLong_AsSsize_t(lo) : -1;
		if (longest < 0)
			return NULL;  /* (an overflow error set, or not the resolver's: it decides) */
		if (PyUnicode_GET_LENGTH(arguments) <= longest &&
		    (!PyFrozenSet_CheckExact(probes) || PySet_Contains(probes, arguments) != 0))
			return NULL;  /* maybe an exec probe (or an error) */
	}
	PyObject *hits = PyList_GET_ITEM(fast, 1);
	if (!PyByteArray_CheckExact(hits) || PyByteArray_GET_SIZE(hits) != (Py_ssize_t)sizeof(unsigned long long))
		return NULL;  /* (not the resolver's counter: it decides, and counts) */
	/* the Pod: its four slots are all it holds (pod_plain), each set here, so it is made
	 * untracked (the GC never needs it: nothing it holds points back) and not zeroed first */
	PyObject *pod = pod_plain ? PyObject_GC_New(PyObject, pod_type) : new_slotted(pod_type);
	if (!pod)
		return NULL;
	PyObject *pv[POD_COUNT] = {[POD_SHARED] = hit, [POD_PID] = pid,
				   [POD_PROBE] = Py_False, [POD_DICT] = Py_None};
	for (int f = 0; f < POD_COUNT; f++)
		*(PyObject **)((char *)pod + pod_off[f]) = Py_NewRef(pv[f]);
	unsigned long long n;
	memcpy(&n, PyByteArray_AS_STRING(hits), sizeof(n));
	n++;
	memcpy(PyByteArray_AS_STRING(hits), &n, sizeof(n));
	return pod;
}

#define NO_PID (~0ULL)  /* cached_process: by the key alone */

/* the cache entry of a process (borrowed): by its exec key (key_pid, ktime) when the kernel
 * knew the ktime, else (or pid NO_PID) by pid, as ProcessCache lookups do; NULL: none, or an error (set) */
static PyObject *cached_process(Builder *b, unsigned long long key_pid, unsigned long long ktime,
				unsigned long long pid)
{
	PyObject *p = NULL;
	if (ktime) {
		PyObject *k = key_tuple(key_pid, ktime);
		if (!k)
			return NULL;
		p = PyDict_GetItemWithError(b->by_key, k);
		Py_DECREF(k);
	}
	if (!p && !PyErr_Occurred() && pid != NO_PID) {
		PyObject *n = PyLong_FromUnsignedLongLong(pid);
		p = n ? PyDict_GetItemWithError(b->by_pid, n) : NULL;
		Py_XDECREF(n);
	}
	return p;
}

/* EventBuilder._parent_of for an exec or a fork: (parent exec_id, parent cache key) by its key
 * when the kernel knew it, else by pid; ("", None) when unknown. New references, 0 or -1. */
static int parent_of(Builder *b, ProcessRecord *r, PyObject **peid, PyObject **pkey)
{
	if (r->pktime) {
		if (!(*pkey = key_tuple(r->ppid_key, r->pktime)))
			return -1;
		PyObject *pp = PyDict_GetItemWithError(b->by_key, *pkey);
		if (pp) {
			*peid = Py_NewRef(pslot(b, pp, P_EXEC_ID));
			Py_SETREF(*pkey, Py_NewRef(pslot(b, pp, P_KEY)));
			return 0;
		}
		return PyErr_Occurred() || !(*peid = make_exec_id(b->node_s, b->node_n, r->pktime, r->ppid_key)) ? -1 : 0;
	}
	PyObject *ppid = PyLong_FromUnsignedLong(r->ppid);
	PyObject *pp = ppid ? PyDict_GetItemWithError(b->by_pid, ppid) : NULL;
	Py_XDECREF(ppid);
	if (PyErr_Occurred())
		return -1;
	*peid = Py_NewRef(pp ? pslot(b, pp, P_EXEC_ID) : b->empty_str);
	*pkey = Py_NewRef(pp ? pslot(b, pp, P_KEY) : Py_None);
	return 0;
}

static PyObject *builder_on_exec(Builder *b, PyObject *const *args, Py_ssize_t nargs)
{
	ProcessRecord *r = (ProcessRecord *)record_arg(args, nargs, "on_exec(buf, now_ns)", T_EXEC,
							ProcessRecord_new, &ProcessRecordType);
	if (!r)
		return NULL;
	PyObject *now = args[1], *rec = (PyObject *)r;
	PyObject *eid = NULL, *key = NULL, *peid = NULL, *pkey = NULL, *flags = NULL, *docker = NULL, *ck = NULL,
		 *caps = NULL, *nsent = NULL, *bp = NULL, *binary = NULL, *arguments = NULL, *start = NULL, *creds = NULL,
		 *msg = NULL, *p = NULL, *res = NULL, *parent = NULL, *anc = NULL, *etime = NULL, *tmp = NULL, *ev = NULL,
		 *nsp = NULL;
	int cred = b->enable_cred, nsopt = b->enable_ns, ancestors = b->ancestors;
	if (!(eid = make_exec_id(b->node_s, b->node_n, r->exec_ktime, r->pid)) ||
	    !(key = key_tuple(r->pid, r->exec_ktime)))
		goto out;
	if (parent_of(b, r, &peid, &pkey) < 0)
		goto out;
	/* in_init_tree (EventBuilder._in_init_tree, a kernel exec): pid 1 of its namespace, or
	 * the mark of its image before the exec (not a newer one: this record read late), or
	 * (none cached) of its parent */
	int in_tree = r->nspid == 1;
	if (!in_tree) {
		if (!(tmp = PyLong_FromUnsignedLong(r->pid)))
			goto out;
		PyObject *before = PyDict_GetItemWithError(b->by_pid, tmp);
		Py_CLEAR(tmp);
		if (before) {
			unsigned long long bk = PyLong_AsUnsignedLongLong(pslot(b, before, P_KTIME));
			if (bk == (unsigned long long)-1 && PyErr_Occurred())
				goto out;
			if (bk > r->exec_ktime)
				before = NULL;
		}
		if (!before && !PyErr_Occurred() && pkey != Py_None)
			before = PyDict_GetItemWithError(b->by_key, pkey);
		if (PyErr_Occurred())
			goto out;
		in_tree = before && pslot(b, before, P_IN_INIT_TREE) == Py_True;
	}
	PyObject *in_tree_obj = in_tree ? Py_True : Py_False;
	/* flag words */
	long fk = r->flags & REC_FLAG_BITS;
	if (in_tree)
		fk |= K_INIT_TREE;
	if (PyUnicode_GET_LENGTH(peid) == 0)
		fk |= K_MISS;
	Py_ssize_t cwdn = PyUnicode_GET_LENGTH(r->cwd);
	if (cwdn == 0) {
		if (!(fk & F_ERR_CWD))  /* an unreachable cwd is errorCWD alone, as in Tetragon */
			fk |= K_NOCWD;
	}
	else if (cwdn == 1 && PyUnicode_READ_CHAR(r->cwd, 0) == '/')
		fk |= K_ROOTCWD;
	if (!(tmp = PyLong_FromLong(fk)))
		goto out;
	flags = PyDict_GetItemWithError(b->flags_cache, tmp);
	if (flags)
		Py_INCREF(flags);
	else if (PyErr_Occurred() || !(flags = PyObject_CallOneArg(b->m_flag_words, tmp)) ||
		 PyDict_SetItem(b->flags_cache, tmp, flags) < 0)
		goto out;
	Py_CLEAR(tmp);
	/* interned pieces */
	if (!(docker = lookup(b->docker_cache, r->cgroup_name, b->m_docker, (PyObject *[]){r->cgroup_name}, 1)))
		goto out;
	if (!(ck = Py_BuildValue("(KKK)", r->cap_permitted, r->cap_effective, r->cap_inheritable)) ||
	    !(caps = lookup(b->caps_cache, ck, b->m_caps, (PyObject *[]){rec}, 1)))
		goto out;
	if (!(nsent = lookup(b->ns_cache, r->ns, b->m_namespaces, (PyObject *[]){r->ns}, 1)))
		goto out;
	if (!PyTuple_Check(nsent) || PyTuple_GET_SIZE(nsent) != 2) {
		PyErr_SetString(PyExc_TypeError, "namespace cache entries are (ns, message) pairs");
		goto out;
	}
	/* binary_properties: on the exec event's message alone (a copy, below), never the cached
	 * one (EventBuilder._exec_msg) */
	if (r->op == OP_EXEC && (r->privs || r->i_nlink == 0)) {
		if (!(bp = PyObject_CallOneArg(b->m_binary_properties, rec)))
			goto out;
		int t = PyObject_IsTrue(bp);
		if (t < 0)
			goto out;
		if (!t)
			Py_SETREF(bp, Py_NewRef(Py_None));
	} else
		bp = Py_NewRef(Py_None);
	/* binary: the name as executed when absolute (an fd's too: /dev/fd/N, as Tetragon), else
	 * resolved */
	Py_ssize_t fnn;
	const char *fn = PyUnicode_AsUTF8AndSize(r->filename, &fnn);
	if (!fn)
		goto out;
	if (fnn && fn[0] == '/')
		binary = Py_NewRef(r->filename);
	else if (!(binary = PyObject_CallFunctionObjArgs(b->m_binary, rec, r->cwd, NULL)))
		goto out;
	/* build.py _args_area: with no cwd after the arguments in Tetragon's event (rootcwd, nocwd,
	 * errorCWD), the NULs at the end are trimmed and empty last arguments go with them */
	{
		const char *ap = PyBytes_AS_STRING(r->args);
		Py_ssize_t an = PyBytes_GET_SIZE(r->args);
		if ((fk & (K_NOCWD | K_ROOTCWD | 1 << 2 | F_ERR_CWD)) && an >= 2 && !ap[an - 1] && !ap[an - 2]) {
			while (an && !ap[an - 1])
				an--;
			if (!(tmp = PyBytes_FromStringAndSize(ap, an)))
				goto out;
		} else
			tmp = Py_NewRef(r->args);
		arguments = format_arguments(NULL, tmp);
		Py_CLEAR(tmp);
	}
	if (!arguments || !(start = rfc3339(b, r->exec_ktime)))
		goto out;
	int has_caps = PyObject_IsTrue(caps);
	if (has_caps < 0)
		goto out;
	/* the same credentials as the last exec: the same interned message (the 16-field key
	 * tuple is not even built) */
	struct creds_raw cr = {r->uid, r->gid, r->euid, r->egid, r->suid, r->sgid, r->fsuid, r->fsgid,
			       r->securebits, r->userns_level, r->userns_uid, r->userns_gid,
			       (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(r->ns, 9)), 0,
			       r->cap_permitted, r->cap_effective, r->cap_inheritable};
	if (PyErr_Occurred())
		goto out;
	if (cred && b->last_creds && !memcmp(&cr, &b->last_creds_raw, sizeof(cr))) {
		creds = Py_NewRef(b->last_creds);
	} else if (cred) {
		PyObject *ck2 = Py_BuildValue("(IIIIIIIIIKKKIIIO)", r->uid, r->gid, r->euid, r->egid, r->suid, r->sgid,
					      r->fsuid, r->fsgid, r->securebits, r->cap_permitted, r->cap_effective,
					      r->cap_inheritable, r->userns_level, r->userns_uid, r->userns_gid,
					      PyTuple_GET_ITEM(r->ns, 9));
		if (!ck2)
			goto out;
		creds = lookup(b->creds_cache, ck2, b->m_creds, (PyObject *[]){rec, caps}, 2);
		Py_DECREF(ck2);
		if (!creds)
			goto out;
		b->last_creds_raw = cr;
		Py_XSETREF(b->last_creds, Py_NewRef(creds));
	} else
		creds = Py_NewRef(Py_None);
	/* the message */
	PyObject *ns_json = PyTuple_GET_ITEM(nsent, 1);
	int has_ns = PyObject_IsTrue(ns_json);
	if (has_ns < 0 || !(msg = new_slotted(msg_type)))
		goto out;
	PyObject *mv[M_COUNT] = {
		[M_EXEC_ID] = eid, [M_CWD] = r->cwd, [M_BINARY] = binary, [M_ARGUMENTS] = arguments, [M_FLAGS] = flags,
		[M_START_TIME] = start, [M_POD] = Py_None, [M_DOCKER] = docker, [M_PARENT_EXEC_ID] = peid,
		[M_CAP] = cred && has_caps ? caps : Py_None, [M_NS] = nsopt && has_ns ? ns_json : Py_None,
		[M_CREDS] = creds, [M_BP] = Py_None, [M_IN_INIT_TREE] = in_tree_obj, [M_ENC_JSON] = Py_None,
		[M_ENC_PB] = Py_None, [M_ENC_DICT] = Py_None,
	};
	for (int f = 0; f < M_COUNT; f++)
		if (mv[f])
			SET(msg, msg_off[f], mv[f]);
	SET_STEAL(msg, msg_off[M_PID], PyLong_FromUnsignedLong(r->pid));
	SET_STEAL(msg, msg_off[M_UID], PyLong_FromUnsignedLong(r->euid));
	SET_STEAL(msg, msg_off[M_AUID], PyLong_FromUnsignedLong(r->auid));
	SET_STEAL(msg, msg_off[M_TID], PyLong_FromUnsignedLong(r->tid));
	if (PyErr_Occurred())
		goto out;
	/* the pid inside its namespace: one int for the cache entry and the pod (a host process's
	 * is its pid, already made): an int made and freed per exec was ~110 instructions */
	if (!(nsp = r->nspid == r->pid ? Py_NewRef(slot(msg, msg_off[M_PID])) : PyLong_FromUnsignedLong(r->nspid)))
		goto out;
	/* pod data (--enable-k8s-api) for a process in a container: from the resolver's table,
	 * or EventBuilder.pods resolves it */
	if (PyUnicode_GET_LENGTH(docker)) {
		PyObject *pods = PyObject_GetAttr(b->builder, b->s_pods);
		if (!pods)
			goto out;
		if (pods != Py_None) {
			PyObject *pod = pod_from_table(b, pods, r->cgroup_name, r->cg_slot, nsp, arguments);
			if (!pod && !PyErr_Occurred())
				pod = PyObject_CallMethodObjArgs(pods, b->s_pod_json, r->cgroup_name, nsp, binary, arguments,
								 NULL);
			if (!pod) {
				Py_DECREF(pods);
				goto out;
			}
			SET_STEAL(msg, msg_off[M_POD], pod);
		}
		Py_DECREF(pods);
	}
	/* the cache entry */
	if (!(p = new_slotted(b->proc_type)))
		goto out;
	PyObject *pv[P_COUNT] = {
		[P_EXEC_ID] = eid, [P_KEY] = key, [P_PARENT_EXEC_ID] = peid, [P_PARENT_KEY] = pkey, [P_MSG] = msg,
		[P_BINARY] = binary, [P_EXE] = r->exe, [P_NS] = PyTuple_GET_ITEM(nsent, 0),
		[P_CAP_EFFECTIVE] = PyTuple_GET_ITEM(ck, 1), [P_FLAGS] = flags, [P_EXITED] = Py_False,
		[P_DOCKER] = docker, [P_PID] = PyTuple_GET_ITEM(key, 0), [P_KTIME] = PyTuple_GET_ITEM(key, 1),
		[P_UID] = slot(msg, msg_off[M_UID]), [P_HOLDS_PARENT] = Py_False, [P_IN_INIT_TREE] = in_tree_obj,
	};
	for (int f = 0; f < P_COUNT; f++)
		if (pv[f])
			SET(p, b->proc_off[f], pv[f]);
	SET_STEAL(p, b->proc_off[P_PPID], PyLong_FromUnsignedLong(r->ppid));
	SET_STEAL(p, b->proc_off[P_REFCNT], PyLong_FromLong(0));
	SET_STEAL(p, b->proc_off[P_CGROUP_ID], PyLong_FromUnsignedLongLong(r->cgroup_id));
	SET_STEAL(p, b->proc_off[P_REMOVAL_AT], PyLong_FromLong(0));
	SET(p, b->proc_off[P_NSPID], nsp);
	if (PyErr_Occurred())
		goto out;
	if (cache_add(b, p, now) < 0 || tell_podless(b, p) < 0)
		goto out;
	if (bump(b, b->s_exec_count) < 0 || parents(b, p, ancestors, &parent, &anc) < 0 ||
	    !(etime = rfc3339(b, r->ktime)))
		goto out;
	if (parent == Py_None) {  /* its parent is not in the cache: a miss (ProcessCache.missed) */
		PyObject *mr = pkey != Py_None ? PyObject_CallObject(b->m_missed, pkey)
					       : PyObject_CallFunction(b->m_missed, "k", (unsigned long)r->ppid);
		if (!mr)
			goto out;
		Py_DECREF(mr);
	}
	if (PyDict_GET_SIZE(b->exited)) {  /* its exit was sent (given up) already: ProcessHold.late_exec */
		int late = PyDict_Contains(b->exited, key);
		PyObject *x = late > 0 ? PyObject_CallFunctionObjArgs(b->m_late_exec, p, now, NULL) : NULL;
		if (late < 0 || (late && !x))
			goto out;
		Py_XDECREF(x);
	}
	if (bp != Py_None) {  /* the event's own message: the cached one's with binary_properties */
		PyObject *emsg = new_slotted(msg_type);
		if (!emsg)
			goto out;
		for (int f = 0; f < M_ENC_JSON; f++) {
			PyObject *v = slot(msg, msg_off[f]);
			if (v)
				SET(emsg, msg_off[f], v);
		}
		static const int changed[] = {M_BP, M_ENC_JSON, M_ENC_PB, M_ENC_DICT};
		PyObject *values[] = {bp, Py_None, Py_None, Py_None};
		for (size_t i = 0; i < sizeof(changed) / sizeof(changed[0]); i++)
			SET(emsg, msg_off[changed[i]], values[i]);
		res = new_event(T_EXEC, emsg, parent, anc, etime, b->node);
		Py_DECREF(emsg);
	} else
		res = new_event(T_EXEC, msg, parent, anc, etime, b->node);
	/* its parent named, not cached (yet; rare): the event waits for it (EventBuilder.exec_parent_missing) */
	if (res && parent == Py_None && pkey != Py_None && r->pid > 1) {
		PyObject *x = PyObject_CallMethod(b->builder, "exec_parent_missing", "OO", res, p);
		if (!x)
			Py_CLEAR(res);
		Py_XDECREF(x);
	}
out:
	Py_XDECREF(eid);
	Py_XDECREF(key);
	Py_XDECREF(peid);
	Py_XDECREF(pkey);
	Py_XDECREF(flags);
	Py_XDECREF(docker);
	Py_XDECREF(ck);
	Py_XDECREF(caps);
	Py_XDECREF(nsent);
	Py_XDECREF(bp);
	Py_XDECREF(binary);
	Py_XDECREF(arguments);
	Py_XDECREF(start);
	Py_XDECREF(creds);
	Py_XDECREF(nsp);
	Py_XDECREF(msg);
	Py_XDECREF(p);
	Py_XDECREF(parent);
	Py_XDECREF(anc);
	Py_XDECREF(etime);
	Py_XDECREF(tmp);
	Py_XDECREF(ev);
	Py_DECREF(rec);
	return res;
}

/* EventBuilder.on_clone: a fork gives the child a cache entry (no event), its message the
 * parent's with the child's identity (ProcessMsg.derive), as make_process(clone_of=) does */
static PyObject *builder_on_clone(Builder *b, PyObject *const *args, Py_ssize_t nargs)
{
	ProcessRecord *r = (ProcessRecord *)record_arg(args, nargs, "on_clone(buf, now_ns)", T_EXEC,
							ProcessRecord_new, &ProcessRecordType);
	if (!r)
		return NULL;
	PyObject *now = args[1], *res = NULL, *key = NULL, *pkey = NULL, *peid = NULL, *eid = NULL, *of = NULL;
	PyObject *pod = NULL, *msg = NULL, *p = NULL, *start = NULL, *pid = NULL;
	/* the process it was forked from, whose image it runs: the caller the record names
	 * (CLONE_PARENT), else its parent; by its key alone when the kernel knew it (an older
	 * image of that pid is not the one it runs: the exec that keyed it was not handled), else
	 * by pid */
	of = r->caller_pid ? cached_process(b, r->caller_pid, r->caller_ktime, r->caller_ktime ? NO_PID : r->caller_pid)
			   : cached_process(b, r->ppid_key, r->pktime, r->pktime ? NO_PID : r->ppid);
	if (PyErr_Occurred())
		goto out;
	if (!of) {  /* a miss; the record waits for that process (EventBuilder.clone_missing) */
		res = PyObject_CallMethod(b->builder, "clone_missing", "OO", args[0], now);
		goto out;
	}
	Py_INCREF(of);
	/* its parent as an exec names it, else (unknown, and no CLONE_PARENT) the process it
	 * forked from */
	if (parent_of(b, r, &peid, &pkey) < 0)
		goto out;
	if (PyUnicode_GET_LENGTH(peid) == 0 && !r->caller_pid) {
		Py_SETREF(peid, Py_NewRef(pslot(b, of, P_EXEC_ID)));
		Py_SETREF(pkey, Py_NewRef(pslot(b, of, P_KEY)));
	}
	if (!(eid = make_exec_id(b->node_s, b->node_n, r->exec_ktime, r->pid)) ||
	    !(key = key_tuple(r->pid, r->exec_ktime)) || !(start = rfc3339(b, r->exec_ktime)))
		goto out;
	PyObject *of_msg = pslot(b, of, P_MSG);
	if (!Py_IS_TYPE(of_msg, msg_type)) {
		PyErr_SetString(PyExc_TypeError, "a cached process's message is not a ProcessMsg");
		goto out;
	}
	/* the child's pod object: the same container's, its own pid inside it */
	pod = Py_NewRef(slot(of_msg, msg_off[M_POD]));
	int has_pod = pod ? PyObject_IsTrue(pod) : 0;
	if (has_pod < 0)
		goto out;
	if (has_pod) {
		PyObject *pods = PyObject_GetAttr(b->builder, b->s_pods);
		if (!pods)
			goto out;
		if (pods != Py_None) {
			PyObject *np = PyLong_FromUnsignedLong(r->nspid);
			PyObject *np_pod = np ? PyObject_CallMethodObjArgs(pods, b->s_with_pid, pod, np, NULL) : NULL;
			Py_XDECREF(np);
			if (!np_pod) {
				Py_DECREF(pods);
				goto out;
			}
			Py_SETREF(pod, np_pod);
		}
		Py_DECREF(pods);
	} else if (PyUnicode_GET_LENGTH(pslot(b, of, P_DOCKER))) {
		/* no pod yet (it came after the parent was built and no event waited for it any
		 * more): looked up again, as Tetragon does at fork; the resolver is asked only for a
		 * kubelet container (PodResolver.by_docker), the rest is a dict lookup here */
		PyObject *pods = PyObject_GetAttr(b->builder, b->s_pods);
		if (!pods)
			goto out;
		if (pods != Py_None) {
			PyObject *docker = pslot(b, of, P_DOCKER);
			PyObject *byd = PyObject_GetAttr(pods, b->s_by_docker);
			PyObject *ref = byd && PyDict_Check(byd) ? PyDict_GetItemWithError(byd, docker) : NULL;
			PyObject *found = NULL;
			if (byd && !PyDict_Check(byd))
				PyErr_SetString(PyExc_TypeError, "PodResolver.by_docker is not a dict");
			if (ref) {
				PyObject *np = PyLong_FromUnsignedLong(r->nspid);
				found = np ? PyObject_CallMethodObjArgs(pods, b->s_for_clone, docker, np,
									slot(of_msg, msg_off[M_BINARY]),
									slot(of_msg, msg_off[M_ARGUMENTS]), NULL)
					   : NULL;
				Py_XDECREF(np);
			}
			Py_XDECREF(byd);
			if (PyErr_Occurred()) {
				Py_XDECREF(found);
				Py_DECREF(pods);
				goto out;
			}
			if (found)
				Py_SETREF(pod, found);
		}
		Py_DECREF(pods);
	}
	if (!(msg = new_slotted(msg_type)) || !(pid = PyLong_FromUnsignedLong(r->pid)))
		goto out;
	for (int f = 0; f < M_ENC_JSON; f++) {
		PyObject *v = slot(of_msg, msg_off[f]);
		if (v)
			SET(msg, msg_off[f], v);
	}
	/* the forking process's mark, or pid 1 of a new namespace (make_process(clone_of=)) */
	int in_tree = r->nspid == 1 || pslot(b, of, P_IN_INIT_TREE) == Py_True;
	PyObject *in_tree_obj = in_tree ? Py_True : Py_False, *cflags = in_tree ? b->s_clone_init : b->s_clone;
	/* ProcessMsg.derive(exec_id=, pid=, start_time=, parent_exec_id=, tid=pid, flags="clone[ inInitTree]",
	 * binary_properties=None, pod=, in_init_tree=), encodings not made yet */
	static const int changed[] = {M_EXEC_ID, M_PID, M_START_TIME, M_PARENT_EXEC_ID, M_TID, M_FLAGS, M_BP, M_POD,
				      M_IN_INIT_TREE, M_ENC_JSON, M_ENC_PB, M_ENC_DICT};
	PyObject *values[] = {eid, pid, start, peid, pid, cflags, Py_None, pod ? pod : Py_None, in_tree_obj, Py_None,
			      Py_None, Py_None};
	for (size_t i = 0; i < sizeof(changed) / sizeof(changed[0]); i++)
		SET(msg, msg_off[changed[i]], values[i]);
	/* the cache entry (Process.__init__, then what make_process copies from the parent) */
	if (!(p = new_slotted(b->proc_type)))
		goto out;
	PyObject *pv[P_COUNT] = {
		[P_EXEC_ID] = eid, [P_KEY] = key, [P_PID] = PyTuple_GET_ITEM(key, 0), [P_KTIME] = PyTuple_GET_ITEM(key, 1),
		[P_PARENT_EXEC_ID] = peid, [P_PARENT_KEY] = pkey, [P_MSG] = msg, [P_BINARY] = slot(msg, msg_off[M_BINARY]),
		[P_EXE] = pslot(b, of, P_EXE), [P_CGROUP_ID] = pslot(b, of, P_CGROUP_ID), [P_NS] = pslot(b, of, P_NS),
		[P_CAP_EFFECTIVE] = pslot(b, of, P_CAP_EFFECTIVE), [P_FLAGS] = cflags, [P_EXITED] = Py_False,
		[P_UID] = pslot(b, of, P_UID), [P_DOCKER] = pslot(b, of, P_DOCKER), [P_HOLDS_PARENT] = Py_False,
		[P_IN_INIT_TREE] = in_tree_obj,
	};
	for (int f = 0; f < P_COUNT; f++)
		if (pv[f])
			SET(p, b->proc_off[f], pv[f]);
	SET_STEAL(p, b->proc_off[P_PPID], PyLong_FromUnsignedLong(r->ppid));
	SET_STEAL(p, b->proc_off[P_REFCNT], PyLong_FromLong(0));
	SET_STEAL(p, b->proc_off[P_REMOVAL_AT], PyLong_FromLong(0));
	SET_STEAL(p, b->proc_off[P_NSPID], PyLong_FromUnsignedLong(r->nspid));
	if (PyErr_Occurred() || cache_add(b, p, now) < 0 || tell_podless(b, p) < 0 || bump(b, b->s_clone_count) < 0)
		goto out;
	res = Py_NewRef(Py_None);
out:
	Py_XDECREF(of);
	Py_XDECREF(key);
	Py_XDECREF(pkey);
	Py_XDECREF(peid);
	Py_XDECREF(eid);
	Py_XDECREF(pod);
	Py_XDECREF(msg);
	Py_XDECREF(p);
	Py_XDECREF(start);
	Py_XDECREF(pid);
	Py_DECREF((PyObject *)r);
	return res;
}

static PyObject *builder_on_exit(Builder *b, PyObject *const *args, Py_ssize_t nargs)
{
	ExitRecord *r = (ExitRecord *)record_arg(args, nargs, "on_exit(buf, now_ns)", T_EXIT, ExitRecord_new,
						 &ExitRecordType);
	if (!r)
		return NULL;
	PyObject *now = args[1], *rec = (PyObject *)r;
	PyObject *res = NULL, *sig = NULL, *status = NULL, *t = NULL, *parent = NULL, *anc = NULL,
		 *tmp = NULL;
	int ancestors = b->ancestors;
	/* by its exec key alone when the kernel had one (an older image of the pid is not the
	 * process that ended: the exec that keyed it was not handled), else by pid */
	PyObject *p = cached_process(b, r->pid, r->exec_ktime, r->exec_ktime ? NO_PID : r->pid);
	if (PyErr_Occurred())
		goto out;
	if (!p) {  /* a process the cache does not have: the reference handles (and counts) it */
		res = PyObject_CallFunctionObjArgs(b->m_on_exit, rec, now, NULL);
		goto out;
	}
	Py_INCREF(p);
	if (parents(b, p, ancestors, &parent, &anc) < 0)
		goto out;
	if (parent == Py_None && pslot(b, p, P_PARENT_KEY) != Py_None) {
		/* the parent its exec named is not cached (its exec record behind): the exit waits for
		 * it in the hold, which the reference registers it with (rare) */
		res = PyObject_CallFunctionObjArgs(b->m_on_exit, rec, now, NULL);
		goto out;
	}
	if (bump(b, b->s_exit_count) < 0)
		goto out;
	unsigned sn = r->code & 0x7F;
	if (!sn)
		sig = Py_NewRef(b->empty_str);
	else {
		if (!(tmp = PyLong_FromUnsignedLong(sn)))
			goto out;
		sig = PyDict_GetItemWithError(b->signames, tmp);
		if (sig)
			Py_INCREF(sig);
		else if (PyErr_Occurred() || !(sig = PyObject_CallOneArg(b->m_signal_name, tmp)))
			goto out;
		Py_CLEAR(tmp);
	}
	if (!(status = PyLong_FromUnsignedLong((r->code >> 8) & 0xFF)) || !(t = rfc3339(b, r->ktime)) ||
	    cache_exit(b, p, now) < 0)
		goto out;
	res = new_event(T_EXIT, pslot(b, p, P_MSG), parent, anc, t, b->node);
	if (res) {
		SET(res, evtypes[T_EXIT].off[E_SIGNAL], sig);
		SET(res, evtypes[T_EXIT].off[E_STATUS], status);
	}
out:
	Py_XDECREF(p);
	Py_XDECREF(sig);
	Py_XDECREF(status);
	Py_XDECREF(t);
	Py_XDECREF(parent);
	Py_XDECREF(anc);
	Py_XDECREF(tmp);
	Py_DECREF(rec);
	return res;
}

static PyObject *builder_rfc3339(Builder *b, PyObject *ktime)
{
	unsigned long long k = PyLong_AsUnsignedLongLong(ktime);
	if (k == (unsigned long long)-1 && PyErr_Occurred()) {
		PyErr_Clear();
		return PyObject_CallOneArg(b->m_rfc3339, ktime);  /* the twin says what it makes of it */
	}
	return rfc3339(b, k);
}

/* ---- policy records: vigil.agent.policy_events.PolicyEvents.handle for the hooks of every kind
 * (kprobes, tracepoints, LSM hooks, uprobes, USDT probes): every argument type, return values,
 * kernel stacks and IMA hashes, with any action but those that ask user space to act (an
 * enforcement's message comes from message() once per selector and action), of processes in
 * the cache or not. The records left to handle() itself: a user stack (read against
 * /proc/<pid>/maps), an argument whose maxData chunks wait, a payload shorter than its header
 * says.
 *
 * set_generic((hooks, plans, make_plan, handle, data, message, missing, data_misses, table)): hooks
 * is PolicyEvents.hooks (hook id -> (hook, policy)), plans the plans made so far (hook id -> plan
 * or None), make_plan(hook_id) -> plan or None, handle the Python handler, data PolicyEvents._data,
 * message(hook, selector, action, ret_action, monitor) -> the body's message when an action
 * enforces, missing(pid, exec_ktime, tid) -> the message of a process not in the cache (PolicyEvents.missing),
 * data_misses PolicyEvents.data_misses (operation -> count: "get", an argument whose maxData
 * chunks never came), table an empty list, filled here as a plan is made: [hook id] -> (hook
 * id, plan or None), so a record's plan is found by its hook id without an int made or plans
 * read (hook ids count up from 1; past PLAN_TABLE_MAX plans is read). A plan
 * (made by PolicyEvents.fast_plan; generic_events.PLAN_FIELDS names its parts) is the tuple
 *   (entry, kind, layout, args, events, keys, ret, names, messages, enforcing,
 *    reported, ret_reported)
 * entry: the hooks entry it was made from (a plan is used only while hooks holds that very
 * object); layout: the body's fields in build_body's order, (key, LAY_*, value) triples (value: a
 * LAY_CONST's value, a LAY_MESSAGE's message when no action enforces, LAY_TAGS' tuple,
 * LAY_KSTACK's kernel symbols: generic_events.KernelSymbols, LAY_IMA's names of hash algorithms); args:
 * (slot, how, label) triples; events: the policy's event counters; keys: the selector action
 * keys (generic_events.counter_table, made with the plan), [selector * REPORTED_ROW + action] ->
 * the key (None: an action the plan does not cover), a row per selector of the hook (a record
 * of a selector past them: handle()); the actions are counted where they were taken, not here;
 * ret: (how, label) of a kprobe's return value, or None; names: (AF_NAMES, SOCK_TYPES,
 * PROTOCOLS, TCP_STATES) of generic_events, for socket arguments; messages: an enforcement's
 * messages by (selector, action, ret_action, monitor), filled here; enforcing: the bit mask of
 * the actions that enforce; reported, ret_reported: tuples of REPORTED_ROW names per selector
 * (generic_events.reported_table, made with the plan), [selector * REPORTED_ROW + the record's
 * action, or return action] -> the event's action, or return_action (None: an action the plan
 * does not cover); row 0 holds each action's own name (selector 0, and selectors past the
 * table), a selector's row another where its action list reports another than the record holds
 * (generic_events._action_of: [Sigkill, Post] reports Post). A LAY_RETURN_ACTION's value: the
 * return_action of a record whose return actions did not run. */
#define REPORTED_ROW 64
enum { GP_ENTRY, GP_KIND, GP_LAYOUT, GP_ARGS, GP_EVENTS, GP_KEYS, GP_RET, GP_NAMES, GP_MESSAGES,
       GP_ENFORCING, GP_REPORTED, GP_RET_REPORTED, GP_COUNT };
#define PLAN_TABLE_MAX 65536  /* hook ids the table (GC_TABLE) holds plans of */
/* what fills a field of the body; vigil.sensors.generic_events.LAY names them in this order */
enum { LAY_CONST, LAY_ARGS, LAY_RETURN, LAY_ACTION, LAY_RETURN_ACTION, LAY_MESSAGE, LAY_TAGS, LAY_KSTACK, LAY_IMA };
/* GP_NAMES: the name tables of sockets, capabilities and bpf commands (dicts: number -> name) */
enum { GN_AF, GN_SOCK_TYPE, GN_PROTOCOL, GN_TCP_STATE, GN_CAP, GN_BPF_CMD, GN_PROG_TYPE, GN_MAP_TYPE, GN_PERF_TYPE,
       GN_TAINTS, GN_SECUREBITS, GN_COUNT };  /* GN_TAINTS, GN_SECUREBITS: ((bit, name), ...) in render_arg's order */
/* how an argument is rendered; vigil.sensors.generic_events.GA names them in this order */
enum { GA_STRING, GA_INT, GA_UINT, GA_LONG, GA_SIZE, GA_STRING_ERR, GA_FILE, GA_PATH, GA_BINPRM, GA_SOCK,
       GA_SOCKADDR, GA_SYSCALL64, GA_BYTES, GA_IOV_BYTES, GA_CAP_MASK, GA_CAPABILITY, GA_BPF_CMD, GA_CRED,
       GA_SKB, GA_NET_DEV, GA_BPF_PROG, GA_BPF_MAP, GA_PERF_EVENT, GA_MODULE, GA_USER_NS, GA_SYSCALL_X64,
       GA_LOAD_INFO, GA_CONST_BUF, GA_KINDS };
#define GA_ERR_OK 128  /* with a file-like kind: an fd, rendered as a file even when it could not be read */
_Static_assert(GA_KINDS <= GA_ERR_OK, "an argument's kind must stay below its flags");
#define GA_SIZE_SHIFT 8  /* with GA_BYTES: 1 + the slot of the buffer's size argument (0: none) */
enum { GC_HOOKS, GC_PLANS, GC_MAKE_PLAN, GC_HANDLE, GC_DATA, GC_MESSAGE, GC_MISSING, GC_DATA_MISSES, GC_TABLE,
       GC_COUNT };

static PyObject *builder_set_generic(Builder *b, PyObject *ctx)
{
	if (!PyTuple_CheckExact(ctx) || PyTuple_GET_SIZE(ctx) != GC_COUNT ||
	    !PyDict_CheckExact(PyTuple_GET_ITEM(ctx, GC_HOOKS)) || !PyDict_CheckExact(PyTuple_GET_ITEM(ctx, GC_PLANS)) ||
	    !PyDict_CheckExact(PyTuple_GET_ITEM(ctx, GC_DATA)) || !PyDict_CheckExact(PyTuple_GET_ITEM(ctx, GC_DATA_MISSES)) ||
	    !PyList_CheckExact(PyTuple_GET_ITEM(ctx, GC_TABLE)) || PyList_GET_SIZE(PyTuple_GET_ITEM(ctx, GC_TABLE))) {
		PyErr_SetString(PyExc_TypeError, "set_generic((hooks, plans, make_plan, handle, data, message, missing, "
						 "data_misses, table: []))");
		return NULL;
	}
	Py_XSETREF(b->generic, Py_NewRef(ctx));
	Py_RETURN_NONE;
}

static int dict_add(PyObject *d, PyObject *key, PyObject *n)  /* d[key] = d.get(key, 0) + n */
{
	PyObject *v = PyDict_GetItemWithError(d, key);
	if (!v && PyErr_Occurred())
		return -1;
	PyObject *sum = v ? PyNumber_Add(v, n) : Py_NewRef(n);
	int r = sum ? PyDict_SetItem(d, key, sum) : -1;
	Py_XDECREF(sum);
	return r;
}

static int dict_incr(PyObject *d, PyObject *key, PyObject *one)  /* d[key] = d.get(key, 0) + 1 */
{
	PyObject *v = PyDict_GetItemWithError(d, key);
	if (!v && PyErr_Occurred())
		return -1;
	PyObject *n = v ? PyNumber_Add(v, one) : Py_NewRef(one);
	int r = n ? PyDict_SetItem(d, key, n) : -1;
	Py_XDECREF(n);
	return r;
}

static int is_str(PyObject *o) { return PyUnicode_CheckExact(o); }
static int is_tuple(PyObject *o) { return PyTuple_CheckExact(o); }

/* a plan's table: whole rows (REPORTED_ROW) of None or items item_ok accepts -- the reported
 * names (GP_REPORTED, GP_RET_REPORTED: str) and the counter keys (GP_KEYS: tuples) */
static int rows_ok(PyObject *t, int (*item_ok)(PyObject *))
{
	if (!PyTuple_CheckExact(t) || !PyTuple_GET_SIZE(t) || PyTuple_GET_SIZE(t) % REPORTED_ROW)
		return 0;
	for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++)
		if (PyTuple_GET_ITEM(t, i) != Py_None && !item_ok(PyTuple_GET_ITEM(t, i)))
			return 0;
	return 1;
}

/* a plan of `entry` whose parts generic_fast reads without checking them again */
static int plan_ok(PyObject *plan, PyObject *entry)
{
	if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != GP_COUNT || PyTuple_GET_ITEM(plan, GP_ENTRY) != entry)
		return 0;
	PyObject *layout = PyTuple_GET_ITEM(plan, GP_LAYOUT);
	if (!PyTuple_CheckExact(layout) || !PyDict_CheckExact(PyTuple_GET_ITEM(plan, GP_MESSAGES)) ||
	    !PyLong_CheckExact(PyTuple_GET_ITEM(plan, GP_ENFORCING)) || !rows_ok(PyTuple_GET_ITEM(plan, GP_KEYS), is_tuple) ||
	    !rows_ok(PyTuple_GET_ITEM(plan, GP_REPORTED), is_str) ||
	    !rows_ok(PyTuple_GET_ITEM(plan, GP_RET_REPORTED), is_str))
		return 0;
	for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(layout); i++) {
		PyObject *f = PyTuple_GET_ITEM(layout, i);
		if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 3 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(f, 0)) ||
		    !PyLong_CheckExact(PyTuple_GET_ITEM(f, 1)))
			return 0;
		long op = PyLong_AsLong(PyTuple_GET_ITEM(f, 1));
		PyObject *v = PyTuple_GET_ITEM(f, 2);
		if (op < LAY_CONST || op > LAY_IMA || ((op == LAY_MESSAGE || op == LAY_RETURN_ACTION) && !PyUnicode_CheckExact(v)) ||
		    ((op == LAY_TAGS || op == LAY_IMA) && !PyTuple_CheckExact(v)))
			return 0;
	}
	return 1;
}

/* table[id] = (hook_id, plan): generic_fast finds it there by the record's hook id alone */
static int plan_table_set(PyObject *table, unsigned long id, PyObject *hook_id, PyObject *plan)
{
	if (id >= PLAN_TABLE_MAX)
		return 0;
	while (PyList_GET_SIZE(table) <= (Py_ssize_t)id)
		if (PyList_Append(table, Py_None) < 0)
			return -1;
	PyObject *pair = PyTuple_Pack(2, hook_id, plan);
	return pair ? PyList_SetItem(table, (Py_ssize_t)id, pair) : -1;  /* (steals pair) */
}

/* the plan of a hook (hook_id: id's int), borrowed; NULL without an error: handle() takes the record */
static PyObject *generic_plan(Builder *b, PyObject *hook_id, unsigned long id)
{
	PyObject *ctx = b->generic, *plans = PyTuple_GET_ITEM(ctx, GC_PLANS);
	PyObject *entry = PyDict_GetItemWithError(PyTuple_GET_ITEM(ctx, GC_HOOKS), hook_id);
	if (!entry)
		return NULL;
	PyObject *plan = PyDict_GetItemWithError(plans, hook_id);
	if (!plan && PyErr_Occurred())
		return NULL;
	if (!plan || (plan != Py_None && PyTuple_GET_ITEM(plan, GP_ENTRY) != entry)) {
		PyObject *made = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, GC_MAKE_PLAN), hook_id);
		if (!made)
			return NULL;
		int bad = made != Py_None && !plan_ok(made, entry);
		if (bad || PyDict_SetItem(plans, hook_id, made) < 0) {
			if (bad)
				PyErr_SetString(PyExc_TypeError, "fast_plan must return a plan of the hook's entry or None");
			Py_DECREF(made);
			return NULL;
		}
		Py_DECREF(made);
		plan = PyDict_GetItemWithError(plans, hook_id);
	}
	if (!plan || plan_table_set(PyTuple_GET_ITEM(ctx, GC_TABLE), id, hook_id, plan) < 0)
		return NULL;
	return plan == Py_None ? NULL : plan;
}

/* the plan of a record's hook from the table (plan_table_set): while hooks holds the entry it
 * was made from; else (or none there yet) generic_plan's. Borrowed; NULL without an error: handle() */
static PyObject *plan_of(Builder *b, unsigned long id)
{
	PyObject *table = PyTuple_GET_ITEM(b->generic, GC_TABLE);
	PyObject *pair = (Py_ssize_t)id < PyList_GET_SIZE(table) ? PyList_GET_ITEM(table, (Py_ssize_t)id) : Py_None;
	if (pair != Py_None) {
		PyObject *plan = PyTuple_GET_ITEM(pair, 1);
		if (plan == Py_None)
			return NULL;  /* the hook's records are all handle()'s */
		PyObject *entry = PyDict_GetItemWithError(PyTuple_GET_ITEM(b->generic, GC_HOOKS), PyTuple_GET_ITEM(pair, 0));
		if (entry && entry == PyTuple_GET_ITEM(plan, GP_ENTRY))
			return plan;
		if (PyErr_Occurred())
			return NULL;
	}
	PyObject *hid = PyLong_FromUnsignedLong(id);
	PyObject *plan = hid ? generic_plan(b, hid, id) : NULL;
	Py_XDECREF(hid);
	return plan;
}

/* the interned str of a C string literal, made once per literal (found by its address: the
 * literals of this file are few); borrowed, NULL: an error. PyUnicode_InternFromString on every
 * event was a sixth of a policy record's build (bench/policy_events.py). */
static PyObject *lit(const char *s)
{
	static struct { const char *p; PyObject *o; } tab[256];
	size_t h = ((uintptr_t)s >> 2) & 255;
	for (int i = 0; i < 256; i++, h = (h + 1) & 255) {
		if (tab[h].p == s)
			return tab[h].o;
		if (!tab[h].p) {
			PyObject *o = PyUnicode_InternFromString(s);
			if (o) {
				tab[h].p = s;
				tab[h].o = o;
			}
			return o;
		}
	}
	PyErr_SetString(PyExc_RuntimeError, "lit: more literals than its table holds");
	return NULL;
}

static int body_set(PyObject *body, const char *key, PyObject *v)
{
	PyObject *k = lit(key);
	return k && v ? PyDict_SetItem(body, k, v) : -1;
}

/* an int, uint, long or size argument (or return value) as render_arg / _ret_value make it:
 * the value, and its key in *key (new references) */
static PyObject *plain_value(int how, long long value, PyObject **key)
{
	char tmp[24];
	int len;
	switch (how) {
	case GA_INT:
		*key = Py_XNewRef(lit("int_arg"));
		return PyLong_FromLongLong(value);
	case GA_UINT:
		*key = Py_XNewRef(lit("uint_arg"));
		return PyLong_FromUnsignedLongLong((unsigned long long)value & 0xFFFFFFFFULL);
	default:
		len = how == GA_LONG ? snprintf(tmp, sizeof(tmp), "%lld", value)
				     : snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)value);
		*key = Py_XNewRef(lit(how == GA_LONG ? "long_arg" : "size_arg"));
		return PyUnicode_FromStringAndSize(tmp, len);
	}
}

/* a kprobe's "return": {key: value} and its label; -1: an error */
static int return_value(PyObject *body, PyObject *spec, long long value)
{
	PyObject *k = NULL, *v = plain_value((int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 0)), value, &k);
	PyObject *label = PyTuple_GET_ITEM(spec, 1), *d = k && v ? PyDict_New() : NULL;
	int r = d && !PyDict_SetItem(d, k, v) && (!PyUnicode_GET_LENGTH(label) || !body_set(d, "label", label)) &&
			!body_set(body, "return", d) ? 0 : -1;
	Py_XDECREF(d);
	Py_XDECREF(k);
	Py_XDECREF(v);
	return r;
}

/* names.get(n, str(n)) */
static PyObject *name_of(PyObject *names, unsigned long n)
{
	PyObject *k = PyLong_FromUnsignedLong(n);
	PyObject *v = k ? PyDict_GetItemWithError(names, k) : NULL;
	if (v || !k || PyErr_Occurred()) {
		Py_XDECREF(k);
		return Py_XNewRef(v);
	}
	v = PyObject_Str(k);
	Py_DECREF(k);
	return v;
}

/* _ip: IPv4 dotted; IPv6 as ipaddress writes it (hextets in lower-case hex, the first of the
 * longest runs of two or more zero hextets as "::"); "" for any other family */
static PyObject *ip_string(const unsigned char *raw, unsigned fam)
{
	char out[48];
	int n = 0;
	if (fam == 2) {
		n = snprintf(out, sizeof(out), "%u.%u.%u.%u", raw[0], raw[1], raw[2], raw[3]);
	} else if (fam == 10) {
		unsigned h[8];
		int best = -1, best_len = 1;
		for (int i = 0; i < 8; i++)
			h[i] = (unsigned)raw[2 * i] << 8 | raw[2 * i + 1];
		for (int i = 0, j; i < 8; i = j + 1) {
			for (j = i; j < 8 && !h[j]; j++)
				;
			if (j - i > best_len) {
				best = i;
				best_len = j - i;
			}
		}
		for (int i = 0; i < 8; i++) {
			if (i == best) {
				n += snprintf(out + n, sizeof(out) - n, "::");
				i += best_len - 1;
			} else {
				n += snprintf(out + n, sizeof(out) - n, "%s%x", n && out[n - 1] != ':' ? ":" : "", h[i]);
			}
		}
	}
	return PyUnicode_FromStringAndSize(out, n);
}

static unsigned long le_field(const unsigned char *p, int bytes)
{
	unsigned long v = 0;
	for (int i = bytes - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* render_arg's sock_arg (struct of read.bpf.h: family, type, protocol, state, sport, dport,
 * mark, priority, cookie, saddr, daddr), in its key order; NULL: an error */
static PyObject *sock_json(const unsigned char *p, PyObject *names)
{
	unsigned fam = (unsigned)le_field(p, 2), state = (unsigned)le_field(p + 6, 2);
	unsigned long mark = le_field(p + 12, 4), prio = le_field(p + 16, 4), cookie = le_field(p + 24, 8);
	PyObject *d = PyDict_New();
	PyObject *v[11] = {NULL};
	const char *keys[11] = {"family", "type", "protocol", "mark", "priority", "saddr", "daddr", "sport", "dport",
				"cookie", "state"};
	v[0] = name_of(PyTuple_GET_ITEM(names, GN_AF), fam);
	v[1] = name_of(PyTuple_GET_ITEM(names, GN_SOCK_TYPE), le_field(p + 2, 2));
	v[2] = name_of(PyTuple_GET_ITEM(names, GN_PROTOCOL), le_field(p + 4, 2));
	v[3] = mark ? PyLong_FromUnsignedLong(mark) : NULL;
	v[4] = prio ? PyLong_FromUnsignedLong(prio) : NULL;
	v[5] = ip_string(p + 32, fam);
	v[6] = ip_string(p + 48, fam);
	v[7] = PyLong_FromUnsignedLong(le_field(p + 8, 2));
	v[8] = PyLong_FromUnsignedLong(le_field(p + 10, 2));
	v[9] = cookie ? PyUnicode_FromFormat("%lu", cookie) : NULL;
	v[10] = state ? name_of(PyTuple_GET_ITEM(names, GN_TCP_STATE), state) : NULL;
	int ok = d != NULL;
	for (int i = 0; i < 11; i++) {
		int wanted = !((i == 3 && !mark) || (i == 4 && !prio) || (i == 9 && !cookie) || (i == 10 && !state));
		if (wanted)
			ok = ok && v[i] && body_set(d, keys[i], v[i]) == 0;
		Py_XDECREF(v[i]);
	}
	if (!ok)
		Py_CLEAR(d);
	return d;
}

/* render_arg's sockaddr_arg: family, addr, port */
static PyObject *sockaddr_json(const unsigned char *p, PyObject *names)
{
	unsigned fam = (unsigned)le_field(p, 2);
	PyObject *d = PyDict_New();
	PyObject *v[3] = {name_of(PyTuple_GET_ITEM(names, GN_AF), fam), ip_string(p + 8, fam),
			  PyLong_FromUnsignedLong(le_field(p + 2, 2))};
	int ok = d && v[0] && v[1] && v[2] && !body_set(d, "family", v[0]) && !body_set(d, "addr", v[1]) &&
		 !body_set(d, "port", v[2]);
	for (int i = 0; i < 3; i++)
		Py_XDECREF(v[i]);
	if (!ok)
		Py_CLEAR(d);
	return d;
}

/* render_arg's table[v] if 0 <= v < len(table) else str(v), the table a dict of the numbers it names */
static PyObject *table_name(PyObject *names, int table, long long v)
{
	if (v >= 0)
		return name_of(PyTuple_GET_ITEM(names, table), (unsigned long)v);
	PyObject *n = PyLong_FromLongLong(v), *str = n ? PyObject_Str(n) : NULL;
	Py_XDECREF(n);
	return str;
}

/* cap_list(mask): the names of its capabilities, lowest first */
static PyObject *cap_names(PyObject *names, unsigned long long mask)
{
	PyObject *table = PyTuple_GET_ITEM(names, GN_CAP), *out = PyList_New(0);
	for (int i = 0; out && i < 64; i++) {
		if (!(mask >> i & 1))
			continue;
		PyObject *k = PyLong_FromLong(i), *name = k ? PyDict_GetItemWithError(table, k) : NULL;
		Py_XDECREF(k);
		if ((!name && (!k || PyErr_Occurred())) || (name && PyList_Append(out, name) < 0))
			Py_CLEAR(out);
	}
	return out;
}

/* render_arg's process_credentials_arg (_cred_json), in its key order: the 80 bytes of
 * read.bpf.h's cred (uid, gid, euid, egid, suid, sgid, fsuid, fsgid, securebits, user_ns level,
 * uid, gid, inum; the permitted, effective and inheritable capabilities at 56) */
static PyObject *userns_json(const struct vp_userns_info *u);

/* the names of the bits set in `bits`, from a ((bit, name), ...) table (module taints, securebits) */
static PyObject *bit_names(PyObject *table, unsigned long long bits)
{
	PyObject *out = PyList_New(0);
	for (Py_ssize_t i = 0; out && i < PyTuple_GET_SIZE(table); i++) {
		PyObject *bn = PyTuple_GET_ITEM(table, i);
		unsigned long long bit = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(bn, 0));
		if (PyErr_Occurred() || ((bits & bit) && PyList_Append(out, PyTuple_GET_ITEM(bn, 1)) < 0))
			Py_CLEAR(out);
	}
	return out;
}

static PyObject *cred_json(const unsigned char *p, PyObject *names)
{
	static const char *const ids[8] = {"uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid"};
	static const char *const sets[3] = {"permitted", "effective", "inheritable"};
	PyObject *d = PyDict_New(), *caps = PyDict_New(), *ns = NULL;
	int ok = d && caps;
	for (int i = 0; ok && i < 8; i++) {
		PyObject *v = PyLong_FromUnsignedLong(le_field(p + 4 * i, 4));
		ok = v && !body_set(d, ids[i], v);
		Py_XDECREF(v);
	}
	unsigned long long sb = le_field(p + 32, 4);
	if (ok && sb) {
		PyObject *l = bit_names(PyTuple_GET_ITEM(names, GN_SECUREBITS), sb);
		ok = l && !body_set(d, "securebits", l);
		Py_XDECREF(l);
	}
	for (int i = 0; ok && i < 3; i++) {
		unsigned long long mask = (unsigned long long)le_field(p + 56 + 8 * i, 8);
		PyObject *l = mask ? cap_names(names, mask) : NULL;
		ok = !mask || (l && !body_set(caps, sets[i], l));
		Py_XDECREF(l);
	}
	ok = ok && !body_set(d, "caps", caps);  /* {} when no set has a capability, as Tetragon's */
	if (ok) {
		struct vp_userns_info u;
		memcpy(&u, p + 36, sizeof(u));  /* level, uid, gid, inum: the layout of a user_namespace argument */
		ns = userns_json(&u);
	}
	ok = ok && ns && !body_set(d, "user_ns", ns);
	Py_XDECREF(ns);
	Py_XDECREF(caps);
	if (!ok)
		Py_CLEAR(d);
	return d;
}

/* ---- the kernel objects' arguments (vigil_policy.h's vp_* payloads), as render_arg makes them */

/* _cstr: a C string field up to its NUL, UTF-8 with replacement */
static PyObject *cstr(const char *p, size_t size)
{
	const char *end = memchr(p, 0, size);
	return PyUnicode_DecodeUTF8(p, end ? end - p : (Py_ssize_t)size, "replace");
}

/* d[key] = v (stolen) unless v is 0 or "" (_nonzero); -1: an error */
static int put_nz(PyObject *d, const char *key, PyObject *v)
{
	int zero = !v ? 0 : PyLong_CheckExact(v) ? !PyObject_IsTrue(v) : PyUnicode_CheckExact(v) && !PyUnicode_GET_LENGTH(v);
	int r = !v ? -1 : zero ? 0 : body_set(d, key, v);
	Py_XDECREF(v);
	return r;
}

static PyObject *nz_dict(PyObject *d, int failed)
{
	if (failed)
		Py_CLEAR(d);
	return d;
}

static PyObject *skb_json(const struct vp_skb *k, PyObject *names)
{
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
	unsigned fam = k->family;
	int bad = put_nz(d, "hash", PyLong_FromUnsignedLong(k->hash)) || put_nz(d, "len", PyLong_FromUnsignedLong(k->len)) ||
		  put_nz(d, "priority", PyLong_FromUnsignedLong(k->priority)) ||
		  put_nz(d, "mark", PyLong_FromUnsignedLong(k->mark)) || put_nz(d, "saddr", ip_string(k->saddr, fam)) ||
		  put_nz(d, "daddr", ip_string(k->daddr, fam)) || put_nz(d, "sport", PyLong_FromUnsignedLong(k->sport)) ||
		  put_nz(d, "dport", PyLong_FromUnsignedLong(k->dport)) || put_nz(d, "proto", PyLong_FromUnsignedLong(k->proto)) ||
		  put_nz(d, "sec_path_len", PyLong_FromUnsignedLong(k->sec_path_len)) ||
		  put_nz(d, "sec_path_olen", PyLong_FromUnsignedLong(k->sec_path_olen)) ||
		  (k->proto && put_nz(d, "protocol", name_of(PyTuple_GET_ITEM(names, GN_PROTOCOL), k->proto))) ||
		  (fam && put_nz(d, "family", name_of(PyTuple_GET_ITEM(names, GN_AF), fam)));
	return nz_dict(d, bad);
}

static PyObject *bpf_json(const struct vp_bpf_info *b, int map, PyObject *names)
{
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
	int bad = map ? put_nz(d, "MapType", table_name(names, GN_MAP_TYPE, b->type)) ||
			    put_nz(d, "KeySize", PyLong_FromUnsignedLong(b->key_size)) ||
			    put_nz(d, "ValueSize", PyLong_FromUnsignedLong(b->value_size)) ||
			    put_nz(d, "MaxEntries", PyLong_FromUnsignedLong(b->max_entries)) ||
			    put_nz(d, "MapName", cstr(b->name, sizeof(b->name)))
		      : put_nz(d, "ProgType", table_name(names, GN_PROG_TYPE, b->type)) ||
			    put_nz(d, "InsnCnt", PyLong_FromUnsignedLong(b->insn_cnt)) ||
			    put_nz(d, "ProgName", cstr(b->name, sizeof(b->name)));
	return nz_dict(d, bad);
}

static PyObject *decimal_or_empty(unsigned long long v)
{
	char tmp[24];
	return v ? PyUnicode_FromStringAndSize(tmp, snprintf(tmp, sizeof(tmp), "%llu", v)) : PyUnicode_FromString("");
}

static PyObject *perf_json(const struct vp_perf_info *pe, PyObject *names)
{
	PyObject *d = PyDict_New();
	if (!d)
		return NULL;
	int bad = put_nz(d, "KprobeFunc", cstr(pe->kprobe_func, sizeof(pe->kprobe_func))) ||
		  put_nz(d, "Type", table_name(names, GN_PERF_TYPE, pe->type)) ||
		  put_nz(d, "Config", decimal_or_empty(pe->config)) ||
		  put_nz(d, "ProbeOffset", decimal_or_empty(pe->probe_offset));
	return nz_dict(d, bad);
}

/* render_arg's module_arg: empty when no name was read; a load_info's signature check always
 * (a struct module's never) */
static PyObject *module_json(const struct vp_module_info *mi, int load_info, PyObject *names)
{
	PyObject *d = PyDict_New(), *name = cstr(mi->name, sizeof(mi->name));
	if (!d || !name || !PyUnicode_GET_LENGTH(name)) {
		Py_XDECREF(name);
		return nz_dict(d, !name);
	}
	PyObject *tainted = bit_names(PyTuple_GET_ITEM(names, GN_TAINTS), mi->taints);
	int bad = !tainted || body_set(d, "name", name) ||
		  (load_info && body_set(d, "signature_ok", mi->sig_ok ? Py_True : Py_False)) ||
		  (PyList_GET_SIZE(tainted) && body_set(d, "tainted", tainted));
	Py_DECREF(name);
	Py_XDECREF(tainted);
	return nz_dict(d, bad);
}

static PyObject *userns_json(const struct vp_userns_info *u)
{
	PyObject *ns = u->inum ? Py_BuildValue("{s:k}", "inum", (unsigned long)u->inum) : PyDict_New();
	if (ns && u->level == 0 && body_set(ns, "is_host", Py_True) < 0)
		Py_CLEAR(ns);
	PyObject *d = ns ? Py_BuildValue("{s:i,s:k,s:k,s:O}", "level", u->level, "uid", (unsigned long)u->uid, "gid",
					 (unsigned long)u->gid, "ns", ns) : NULL;
	Py_XDECREF(ns);
	return d;
}

/* a struct payload as render_arg reads it: its first bytes, zero-filled to the struct's size */
#define STRUCT_ARG(type, var, a, data)                                                            \
	type var;                                                                                   \
	memset(&var, 0, sizeof(var));                                                               \
	memcpy(&var, (data) + (a)->off, (a)->len < sizeof(var) ? (a)->len : sizeof(var))

/* generic_events.file_permission(mode), each mode asked of the twin once (the 16-bit modes are few) */
static PyObject *filemode_of(unsigned short mode)
{
	static PyObject *cache, *twin;
	if (!cache) {
		PyObject *mod = PyImport_ImportModule("vigil.sensors.generic_events");
		twin = mod ? PyObject_GetAttrString(mod, "file_permission") : NULL;
		Py_XDECREF(mod);
		if (!twin || !(cache = PyDict_New())) {
			Py_CLEAR(twin);
			return NULL;
		}
	}
	PyObject *key = PyLong_FromLong(mode);
	PyObject *v = key ? PyDict_GetItemWithError(cache, key) : NULL;
	if (v || !key || PyErr_Occurred()) {
		Py_XDECREF(key);
		return Py_XNewRef(v);
	}
	v = PyObject_CallOneArg(twin, key);
	if (v && PyDict_SetItem(cache, key, v) < 0)
		Py_CLEAR(v);
	Py_DECREF(key);
	return v;
}

/* _file_like: {"path", "flags", "permission"}, each only when there is something to say */
static PyObject *file_like(const struct vp_arg_hdr *a, const char *data)
{
	PyObject *d = PyDict_New(), *v;
	if (!d)
		return NULL;
	if (a->len) {
		v = PyUnicode_DecodeUTF8(data + a->off, a->len, "replace");
		if (!v || body_set(d, "path", v) < 0)
			goto fail;
		Py_DECREF(v);
	}
	if (a->flags & VP_ARGF_TRUNC) {
		v = Py_XNewRef(lit("unresolvedPathComponents"));
		if (!v || body_set(d, "flags", v) < 0)
			goto fail;
		Py_DECREF(v);
	}
	if (a->mode) {
		v = filemode_of(a->mode);
		if (!v || body_set(d, "permission", v) < 0)
			goto fail;
		Py_DECREF(v);
	}
	return d;
fail:
	Py_XDECREF(v);
	Py_DECREF(d);
	return NULL;
}

/* base64.b64encode(p[:n]).decode() */
static PyObject *b64_str(const unsigned char *p, Py_ssize_t n)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	PyObject *s = PyUnicode_New((n + 2) / 3 * 4, 127);
	if (!s)
		return NULL;
	Py_UCS1 *o = PyUnicode_1BYTE_DATA(s);
	Py_ssize_t i = 0;
	for (; i + 2 < n; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
		*o++ = tab[v >> 18];
		*o++ = tab[v >> 12 & 63];
		*o++ = tab[v >> 6 & 63];
		*o++ = tab[v & 63];
	}
	if (i < n) {
		unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
		*o++ = tab[v >> 18];
		*o++ = tab[v >> 12 & 63];
		*o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
		*o++ = '=';
	}
	return s;
}

/* a char_buf, char_iovec or iov_iter argument as render_arg makes it: {"bytes_arg": base64},
 * or when the capture was cut, {"truncated_bytes_arg": {"bytes_arg", "orig_size"}} with the
 * size the call had (an iov_iter's own value, the size argument's, else the bytes read) */
static PyObject *bytes_value(int iov, int size_slot, const struct vp_arg_hdr *a, const struct vp_arg_hdr *all,
			     const char *data, PyObject **key)
{
	PyObject *v = b64_str((const unsigned char *)data + a->off, a->len);
	if (!v || !(a->flags & VP_ARGF_TRUNC)) {
		*key = Py_XNewRef(lit("bytes_arg"));
		return v;
	}
	long long orig = iov ? a->value : size_slot >= 0 ? all[size_slot].value : a->len;
	char tmp[24];
	PyObject *os = PyUnicode_FromStringAndSize(tmp, snprintf(tmp, sizeof(tmp), "%lld", orig));
	PyObject *t = os ? PyDict_New() : NULL;
	if (!t || body_set(t, "bytes_arg", v) || body_set(t, "orig_size", os)) {
		Py_XDECREF(t);
		t = NULL;
	}
	Py_DECREF(v);
	Py_XDECREF(os);
	*key = t ? Py_XNewRef(lit("truncated_bytes_arg")) : NULL;
	return t;
}

static PyObject *struct_arg(int how, const struct vp_arg_hdr *a, const char *data, PyObject *names)
{
	if (how == GA_NET_DEV) {
		PyObject *name = a->len ? PyUnicode_DecodeUTF8(data + a->off, a->len, "replace") : NULL;
		PyObject *d = a->len && !name ? NULL : PyDict_New();
		if (d && name && body_set(d, "name", name) < 0)
			Py_CLEAR(d);
		Py_XDECREF(name);
		return d;
	}
	if (how == GA_SKB) {
		STRUCT_ARG(struct vp_skb, k, a, data);
		return skb_json(&k, names);
	}
	if (how == GA_BPF_PROG || how == GA_BPF_MAP) {
		STRUCT_ARG(struct vp_bpf_info, b, a, data);
		return bpf_json(&b, how == GA_BPF_MAP, names);
	}
	if (how == GA_PERF_EVENT) {
		STRUCT_ARG(struct vp_perf_info, pe, a, data);
		return perf_json(&pe, names);
	}
	if (how == GA_MODULE || how == GA_LOAD_INFO) {
		STRUCT_ARG(struct vp_module_info, mi, a, data);
		return module_json(&mi, how == GA_LOAD_INFO, names);
	}
	STRUCT_ARG(struct vp_userns_info, u, a, data);
	return userns_json(&u);
}

/* one argument as render_arg makes it, with its label when it has one; 1: out of the plan
 * (handle() takes the record) */
static int generic_arg(PyObject *list, int how, PyObject *label, PyObject *key, const struct vp_arg_hdr *a,
		       const struct vp_arg_hdr *all, const char *data, Py_ssize_t n, PyObject *names)
{
	char hex[17];
	int err_ok = how & GA_ERR_OK, size_slot = (how >> GA_SIZE_SHIFT) - 1;
	how &= 0xFF & ~GA_ERR_OK;
	PyObject *v, *k;
	if (how != GA_STRING && (a->flags & VP_ARGF_ERR) && !err_ok) {  /* render_arg's error_arg */
		k = Py_XNewRef(lit("error_arg"));
		v = Py_BuildValue("{s:s}", "Message", "could not be read");
		goto made;
	}
	if (how == GA_CONST_BUF) {  /* const_buf_args: one size_arg per 8 bytes */
		if ((Py_ssize_t)a->off + a->len > n)
			return 1;
		for (unsigned i = 0; i + 8 <= a->len; i += 8) {
			unsigned long long x;
			char tmp[24];
			memcpy(&x, data + a->off + i, 8);
			PyObject *s = PyUnicode_FromStringAndSize(tmp, snprintf(tmp, sizeof(tmp), "%llu", x));
			PyObject *d = s ? PyDict_New() : NULL;
			int bad = !d || body_set(d, "size_arg", s) ||
				  (PyUnicode_GET_LENGTH(label) && body_set(d, "label", label)) || PyList_Append(list, d);
			Py_XDECREF(s);
			Py_XDECREF(d);
			if (bad)
				return -1;
		}
		return 0;
	}
	switch (how) {
	case GA_INT:
	case GA_UINT:
	case GA_LONG:
	case GA_SIZE:
		v = plain_value(how, a->value, &k);
		break;
	case GA_FILE:
	case GA_PATH:
	case GA_BINPRM:
		if ((Py_ssize_t)a->off + a->len > n)
			return 1;
		k = Py_XNewRef(lit(how == GA_FILE ? "file_arg" : how == GA_PATH ? "path_arg"
											 : "linux_binprm_arg"));
		v = file_like(a, data);
		break;
	case GA_SYSCALL64:  /* a raw_syscalls id: bit 31 marks a 32-bit (i386) syscall */
		k = Py_XNewRef(lit("syscall_id"));
		v = Py_BuildValue("{s:k,s:s}", "id", (unsigned long)a->value & 0x7FFFFFFFUL, "abi",
				  a->value & 0x80000000LL ? "i386" : "x64");
		break;
	case GA_SYSCALL_X64:  /* a syscall64 read as a size: a 64-bit syscall's number */
		k = Py_XNewRef(lit("syscall_id"));
		v = Py_BuildValue("{s:k,s:s}", "id", (unsigned long)a->value & 0xFFFFFFFFUL, "abi", "x64");
		break;
	case GA_SOCK:  /* a shorter payload makes _ip raise: handle() says so */
	case GA_SOCKADDR:
		if (a->len < (how == GA_SOCK ? 64 : 24) || (Py_ssize_t)a->off + a->len > n)
			return 1;
		k = Py_XNewRef(lit(how == GA_SOCK ? "sock_arg" : "sockaddr_arg"));
		v = how == GA_SOCK ? sock_json((const unsigned char *)data + a->off, names)
				   : sockaddr_json((const unsigned char *)data + a->off, names);
		break;
	case GA_BYTES:
	case GA_IOV_BYTES:
		if ((Py_ssize_t)a->off + a->len > n)
			return 1;
		v = bytes_value(how == GA_IOV_BYTES, size_slot, a, all, data, &k);
		break;
	case GA_CAP_MASK:  /* kernel_cap_t and the capset sets: 16 hex digits, under the key the plan names */
		if (!PyUnicode_CheckExact(key))
			return 1;
		snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)a->value);
		k = Py_NewRef(key);
		v = PyUnicode_FromStringAndSize(hex, 16);
		break;
	case GA_CAPABILITY: {
		PyObject *value = PyLong_FromLongLong(a->value), *name = table_name(names, GN_CAP, a->value);
		k = Py_XNewRef(lit("capability_arg"));
		v = value && name ? Py_BuildValue("{s:O,s:O}", "value", value, "name", name) : NULL;
		Py_XDECREF(value);
		Py_XDECREF(name);
		break;
	}
	case GA_BPF_CMD:
		k = Py_XNewRef(lit("bpf_cmd_arg"));
		v = table_name(names, GN_BPF_CMD, a->value);
		break;
	case GA_CRED:  /* another size makes _cred_json raise, or read other bytes: handle() says so */
		if (a->len != 80 || (Py_ssize_t)a->off + a->len > n)
			return 1;
		k = Py_XNewRef(lit("process_credentials_arg"));
		v = cred_json((const unsigned char *)data + a->off, names);
		break;
	case GA_SKB:
	case GA_NET_DEV:
	case GA_BPF_PROG:
	case GA_BPF_MAP:
	case GA_PERF_EVENT:
	case GA_MODULE:
	case GA_LOAD_INFO:
	case GA_USER_NS:
		if ((Py_ssize_t)a->off + a->len > n || (how == GA_BPF_PROG && !PyUnicode_CheckExact(key)))
			return 1;
		v = struct_arg(how, a, data, names);
		k = how == GA_BPF_PROG ? Py_NewRef(key)
					: Py_XNewRef(lit(how == GA_SKB	       ? "skb_arg"
							 : how == GA_NET_DEV   ? "net_dev_arg"
							 : how == GA_BPF_MAP   ? "bpf_map_arg"
							 : how == GA_PERF_EVENT ? "perf_event_arg"
							 : how == GA_MODULE || how == GA_LOAD_INFO ? "module_arg"
									       : "user_ns_arg"));
		break;
	case GA_STRING:
	case GA_STRING_ERR:
		if ((Py_ssize_t)a->off + a->len > n)
			return 1;
		k = Py_XNewRef(lit("string_arg"));
		v = PyUnicode_DecodeUTF8(data + a->off, a->len, "replace");
		break;
	default:
		return 1;
	}
made:;
	PyObject *d = k && v ? PyDict_New() : NULL;
	int r = d && !PyDict_SetItem(d, k, v) && (!PyUnicode_GET_LENGTH(label) || !body_set(d, "label", label)) &&
			!PyList_Append(list, d) ? 0 : -1;
	Py_XDECREF(d);
	Py_XDECREF(k);
	Py_XDECREF(v);
	return r;
}

/* A policy event's body: dicts and lists made here, of strings and numbers, pointing down only
 * (the same one-way graph as new_slotted's objects), so the cyclic GC need not see them. Tracked,
 * the collections their allocations set off were a third of a policy record's build
 * (bench/policy_events.py under perf). */
static void untrack_body(PyObject *o, int depth)
{
	Py_ssize_t pos = 0, i;
	PyObject *k, *v;
	if (depth > 4 || !(PyDict_CheckExact(o) || PyList_CheckExact(o)))
		return;
	if (PyObject_GC_IsTracked(o))
		PyObject_GC_UnTrack(o);
	if (PyDict_CheckExact(o))
		while (PyDict_Next(o, &pos, &k, &v))
			untrack_body(v, depth + 1);
	else
		for (i = 0; i < PyList_GET_SIZE(o); i++)
			untrack_body(PyList_GET_ITEM(o, i), depth + 1);
}

/* the event's name of a covered action `action` of a record of `selector`, from the plan's
 * table `gp` (row 0: the action's own name), borrowed; NULL (never an error): an action the
 * plan does not cover. An index into the table made with the plan: nothing allocated, nothing
 * hashed per event. */
static PyObject *reported_name(PyObject *plan, int gp, unsigned selector, unsigned action)
{
	PyObject *t = PyTuple_GET_ITEM(plan, gp);
	Py_ssize_t rows = PyTuple_GET_SIZE(t) / REPORTED_ROW;
	if (action >= REPORTED_ROW)
		return NULL;
	PyObject *v = PyTuple_GET_ITEM(t, (Py_ssize_t)(selector < (unsigned)rows ? selector : 0) * REPORTED_ROW + action);
	return v == Py_None ? NULL : v;
}

/* the name of an action the plan covers, borrowed; NULL (never an error): one it does not */
static PyObject *action_name(PyObject *plan, unsigned action)
{
	return reported_name(plan, GP_REPORTED, 0, action);
}

static int enforces(PyObject *plan, int action)
{
	unsigned long long mask = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(plan, GP_ENFORCING));
	return action < 64 && (mask >> action & 1);
}

/* the message of an enforcing record, borrowed: the plan's, or message(...)'s, which the plan
 * then keeps (what it depends on fits one key) */
static PyObject *enforcement_message(Builder *b, PyObject *plan, const struct msg_generic *m)
{
	/* how the enforcement went: vigil.kernel.policy_layout.enforcement_state */
	int monitor = m->flags & VP_EV_MONITOR ? 1 : m->flags & VP_EV_NOT_TASK ? 2 : m->flags & VP_EV_NOT_OWNER ? 3 : 0;
	PyObject *messages = PyTuple_GET_ITEM(plan, GP_MESSAGES);
	PyObject *k = PyLong_FromUnsignedLong((unsigned long)m->selector << 24 | (unsigned long)m->action << 16 |
					      (unsigned long)m->ret_action << 8 | (unsigned long)monitor);
	PyObject *v = k ? PyDict_GetItemWithError(messages, k) : NULL;
	if (!v && k && !PyErr_Occurred()) {
		PyObject *made = PyObject_CallFunction(PyTuple_GET_ITEM(b->generic, GC_MESSAGE), "Oiiii",
						       PyTuple_GET_ITEM(PyTuple_GET_ITEM(plan, GP_ENTRY), 0),
						       (int)m->selector, (int)m->action, (int)m->ret_action, monitor);
		if (made && !PyUnicode_CheckExact(made))
			PyErr_SetString(PyExc_TypeError, "message() must return a str");
		else if (made && PyDict_SetItem(messages, k, made) == 0)
			v = made;  /* messages holds it */
		Py_XDECREF(made);
	}
	Py_XDECREF(k);
	return v;
}

/* _stack_off: where the stacks start, after every argument's payload */
static Py_ssize_t stack_off(const struct msg_generic *m)
{
	Py_ssize_t off = 0;
	for (int i = 0; i < VP_MAX_ARGS; i++)
		if ((Py_ssize_t)m->args[i].off + m->args[i].len > off)
			off = (Py_ssize_t)m->args[i].off + m->args[i].len;
	return off;
}

/* an LSM hook's imaHash, "algorithm:hex digest", the digest after the stacks; NULL without an
 * error: past the data (handle() makes the record) */
static PyObject *ima_hash(PyObject *algos, const struct msg_generic *m, const char *data, Py_ssize_t n)
{
	static const char hex[] = "0123456789abcdef";
	Py_ssize_t at = stack_off(m) + m->kstack_len + m->ustack_len;
	if (at + m->ima_len > n)
		return NULL;
	PyObject *algo = m->ima_algo < PyTuple_GET_SIZE(algos) ? Py_NewRef(PyTuple_GET_ITEM(algos, m->ima_algo))
							      : PyUnicode_FromFormat("%u", (unsigned)m->ima_algo);
	PyObject *digest = PyUnicode_New(2 * (Py_ssize_t)m->ima_len, 127);
	if (!algo || !digest) {
		Py_XDECREF(algo);
		Py_XDECREF(digest);
		return NULL;
	}
	Py_UCS1 *out = PyUnicode_1BYTE_DATA(digest);
	for (int i = 0; i < m->ima_len; i++) {
		out[2 * i] = (Py_UCS1)hex[(unsigned char)data[at + i] >> 4];
		out[2 * i + 1] = (Py_UCS1)hex[(unsigned char)data[at + i] & 15];
	}
	PyObject *h = PyUnicode_FromFormat("%U:%U", algo, digest);
	Py_DECREF(algo);
	Py_DECREF(digest);
	return h;
}

/* _stack: the kernel stack's addresses (after the arguments' payloads, 8 bytes each, zeros
 * skipped) as {offset, symbol} by the symbol table ksyms.table() gives: (the start addresses,
 * sorted, as native u64s; their names). NULL without an error: a record handle() must make (its
 * stack past the data). */
/* _bpf_prog_frame and RUNNER_FRAMES (vigil/sensors/generic_events.py): a stack taken in a BPF
 * program starts with its frames (bpf_prog_<16 hex>_<name>), then the tracing code that ran it;
 * both are left out at the top. 1: a program frame; 2: a runner frame (left out only below one). */
static int runner_frame(PyObject *name)
{
	static const char *const prefixes[] = {"bpf_trace_run", "__bpf_trace_", "trace_call_bpf", "perf_trace_",
					       "perf_call_bpf_", "perf_syscall_", "__traceiter_", "bpf_trampoline_"};
	const char *s = PyUnicode_AsUTF8(name);

	if (!s) {
		PyErr_Clear();
		return 0;
	}
	if (strlen(s) > 26 && !strncmp(s, "bpf_prog_", 9) && s[25] == '_') {
		int hex = 1;

		for (int k = 9; k < 25; k++)
			hex &= (s[k] >= '0' && s[k] <= '9') || (s[k] >= 'a' && s[k] <= 'f');
		if (hex)
			return 1;
	}
	for (size_t k = 0; k < sizeof(prefixes) / sizeof(prefixes[0]); k++)
		if (!strncmp(s, prefixes[k], strlen(prefixes[k])))
			return 2;
	return 0;
}

static PyObject *kernel_stack(PyObject *ksyms, const struct msg_generic *m, const char *data, Py_ssize_t n)
{
	Py_ssize_t off = stack_off(m);
	if (off + (Py_ssize_t)m->kstack_len > n)
		return NULL;
	PyObject *table = PyObject_CallMethod(ksyms, "table", NULL);
	if (!table)
		return NULL;
	PyObject *addrs = PyTuple_Check(table) && PyTuple_GET_SIZE(table) == 2 ? PyTuple_GET_ITEM(table, 0) : NULL;
	PyObject *names = addrs ? PyTuple_GET_ITEM(table, 1) : NULL;
	if (!addrs || !PyBytes_CheckExact(addrs) || !PyList_CheckExact(names) ||
	    PyBytes_GET_SIZE(addrs) != 8 * PyList_GET_SIZE(names)) {
		Py_DECREF(table);
		PyErr_SetString(PyExc_TypeError, "KernelSymbols.table() must be (bytes of u64 addresses, list of names)");
		return NULL;
	}
	const unsigned long long *start = (const unsigned long long *)PyBytes_AS_STRING(addrs);
	Py_ssize_t count = PyList_GET_SIZE(names);
	PyObject *out = PyList_New(0);
	int skipped = 0;
	for (Py_ssize_t at = off; out && at < off + (Py_ssize_t)m->kstack_len; at += 8) {
		unsigned long long addr;
		memcpy(&addr, data + at, 8);
		if (!addr)
			continue;
		Py_ssize_t lo = 0, hi = count;  /* bisect_right */
		while (lo < hi) {
			Py_ssize_t mid = lo + (hi - lo) / 2;
			if (addr < start[mid])
				hi = mid;
			else
				lo = mid + 1;
		}
		Py_ssize_t i = lo - 1;
		/* _stack: a frame of no known symbol (below the first, or hidden addresses) is left out:
		 * its address is not written */
		if (i < 0 || !start[i] || !PyUnicode_GET_LENGTH(PyList_GET_ITEM(names, i)))
			continue;
		if (!PyList_GET_SIZE(out)) {
			int rf = runner_frame(PyList_GET_ITEM(names, i));

			if (rf == 1 || (rf == 2 && skipped)) {
				skipped = 1;
				continue;
			}
		}
		unsigned long long delta = addr - start[i];
		PyObject *e = PyDict_New(), *d = e && delta ? decimal_or_empty(delta) : NULL;
		int bad = !e || (delta && (!d || body_set(e, "offset", d) < 0)) ||
			  body_set(e, "symbol", PyList_GET_ITEM(names, i)) < 0 || PyList_Append(out, e) < 0;
		Py_XDECREF(d);
		Py_XDECREF(e);
		if (bad)
			Py_CLEAR(out);
	}
	Py_DECREF(table);
	return out;
}

/* body[key] = made (stolen); 1: no made and no error (out of the plan) */
static int set_made(PyObject *body, PyObject *key, PyObject *made)
{
	int r = !made ? (PyErr_Occurred() ? -1 : 1) : PyDict_SetItem(body, key, made);
	Py_XDECREF(made);
	return r;
}

/* ProcessCache.by_pid_since: is cached image p (found by pid) not older than a process that
 * started at ktime `start`? Exec and fork keys are never before their process's start; a /proc
 * image's ktime is up to a clock tick (START_SLACK_NS) before it. 0 with an error set: a bad slot. */
static int image_since(Builder *b, PyObject *p, unsigned long long start)
{
	static long long slack;
	if (!slack) {
		long tck = sysconf(_SC_CLK_TCK);
		slack = 1000000000LL / (tck > 0 ? tck : 100);
	}
	PyObject *kt = pslot(b, p, P_KTIME);
	unsigned long long k = kt && PyLong_Check(kt) ? PyLong_AsUnsignedLongLong(kt) : 0;
	if (!kt || !PyLong_Check(kt))
		PyErr_SetString(PyExc_TypeError, "a cached process's ktime is not an int");
	return !PyErr_Occurred() && k + (unsigned long long)slack >= start;
}

/* the event, or NULL with *out_of_plan set (no error): handle() takes the record */
static PyObject *generic_fast(Builder *b, const char *buf, Py_ssize_t len, int *out_of_plan)
{
	struct msg_generic m;
	*out_of_plan = 1;
	if (len < (Py_ssize_t)sizeof(m) || !evtypes[T_POLICY].type)
		return NULL;
	memcpy(&m, buf, sizeof(m));
	if (m.ustack_len || m.kstack_len % 8)
		return NULL;
	/* maxData chunks wait: a record with an argument they continue takes them in handle()
	 * (a chunk of an event that never came waits too, but concerns no other record); with
	 * none waiting, each such argument's chunks never came: counted below, once it is made */
	long data_args = 0;
	for (int i = 0; i < VP_MAX_ARGS; i++)
		data_args += (m.args[i].flags & VP_ARGF_DATA) != 0;
	if (data_args && PyDict_GET_SIZE(PyTuple_GET_ITEM(b->generic, GC_DATA)))
		return NULL;
	PyObject *plan = plan_of(b, m.hook_id);
	if (!plan)
		return NULL;  /* an error, or handle() */
	PyObject *aname = action_name(plan, m.action), *reported = aname;
	if (aname)
		reported = reported_name(plan, GP_REPORTED, m.selector, m.action);
	if (!reported)
		return NULL;  /* an action the plan leaves to handle() */
	/* the selector action key (PolicyEvents.action_key), from the plan's table: None, handle()'s */
	PyObject *keys = PyTuple_GET_ITEM(plan, GP_KEYS);
	PyObject *ck = (Py_ssize_t)m.selector < PyTuple_GET_SIZE(keys) / REPORTED_ROW
			       ? PyTuple_GET_ITEM(keys, (Py_ssize_t)m.selector * REPORTED_ROW + m.action) : Py_None;
	if (ck == Py_None)
		return NULL;  /* a selector past the hook's (or an action the plan does not cover): handle() */
	/* the process and its parent: PolicyEvents.processes */
	/* an exec key names one image: that one or none (its exec record may be behind: the event
	 * is held), never an older image of the pid; by pid without a key, or with VP_EV_NO_PROC
	 * (the key's ktime is the thread group leader's start, not an exec's) */
	int exact = m.key.ktime && !(m.flags & VP_EV_NO_PROC);
	PyObject *p = cached_process(b, m.key.pid, m.key.ktime, exact ? NO_PID : m.key.pid), *missing = NULL;
	if (!p && PyErr_Occurred())
		return NULL;
	if (p && !exact && (m.flags & VP_EV_NO_PROC) && !image_since(b, p, m.key.ktime))
		p = NULL;  /* an earlier process's image of the pid, older than this one's leader */
	if (PyErr_Occurred())
		return NULL;
	if (!p) {  /* not in the cache: PolicyEvents.missing's stand-in (pid, start_time, "unknown"), no parent */
		missing = PyObject_CallFunction(PyTuple_GET_ITEM(b->generic, GC_MISSING), "KKOO",
						(unsigned long long)m.key.pid, (unsigned long long)m.key.ktime, Py_True,
						m.flags & VP_EV_NO_PROC ? Py_True : Py_False);
		if (!missing)
			return NULL;
	}
	PyObject *pk = p ? pslot(b, p, P_PARENT_KEY) : NULL;
	PyObject *pp = pk && pk != Py_None ? PyDict_GetItemWithError(b->by_key, pk) : NULL;
	PyObject *procmsg = p ? pslot(b, p, P_MSG) : missing;
	if (PyErr_Occurred()) {
		Py_XDECREF(missing);
		return NULL;
	}
	if (pk && pk != Py_None && !pp)
		return NULL;  /* the parent its exec named is not cached (yet): handle() holds its event */
	/* the arguments, then the body in build_body's order (the plan's layout) */
	const char *data = buf + sizeof(m);
	Py_ssize_t n = len - (Py_ssize_t)sizeof(m);
	PyObject *args = PyList_New(0), *body = NULL, *ev = NULL;
	PyObject *specs = PyTuple_GET_ITEM(plan, GP_ARGS), *layout = PyTuple_GET_ITEM(plan, GP_LAYOUT);
	int r = args ? 0 : -1;
	for (Py_ssize_t i = 0; !r && i < PyTuple_GET_SIZE(specs); i++) {
		PyObject *sp = PyTuple_GET_ITEM(specs, i);
		long slot = PyLong_AsLong(PyTuple_GET_ITEM(sp, 0)), how = PyLong_AsLong(PyTuple_GET_ITEM(sp, 1));
		PyObject *label = PyTuple_GET_ITEM(sp, 2);
		r = slot < 0 || slot >= VP_MAX_ARGS || !PyUnicode_Check(label) ? -1
			: (how >> GA_SIZE_SHIFT) > VP_MAX_ARGS ? 1
			: generic_arg(args, (int)how, label, PyTuple_GET_ITEM(sp, 3), &m.args[slot], m.args, data, n,
				      PyTuple_GET_ITEM(plan, GP_NAMES));
	}
	if (!r && !(body = PyDict_New()))
		r = -1;
	for (Py_ssize_t i = 0; !r && i < PyTuple_GET_SIZE(layout); i++) {
		PyObject *f = PyTuple_GET_ITEM(layout, i), *key = PyTuple_GET_ITEM(f, 0), *v = PyTuple_GET_ITEM(f, 2);
		switch (PyLong_AsLong(PyTuple_GET_ITEM(f, 1))) {
		case LAY_CONST:
			r = PyDict_SetItem(body, key, v);
			break;
		case LAY_ARGS:
			r = PyList_GET_SIZE(args) ? PyDict_SetItem(body, key, args) : 0;
			break;
		case LAY_RETURN: {
			PyObject *ret = PyTuple_GET_ITEM(plan, GP_RET);
			r = (m.flags & VP_EV_HAS_RET) && ret != Py_None ? return_value(body, ret, m.ret) : 0;
			break;
		}
		case LAY_ACTION:
			r = PyDict_SetItem(body, key, reported);
			break;
		case LAY_RETURN_ACTION: {  /* Shape.return_action: v (Post) unless return actions ran */
			PyObject *rname = m.ret_action ? reported_name(plan, GP_RET_REPORTED, m.selector, m.ret_action) : v;
			r = rname ? PyDict_SetItem(body, key, rname) : 1;
			break;
		}
		case LAY_MESSAGE:
			if (enforces(plan, m.action) || enforces(plan, m.ret_action))
				v = enforcement_message(b, plan, &m);
			r = !v ? -1 : PyUnicode_GET_LENGTH(v) ? PyDict_SetItem(body, key, v) : 0;
			break;
		case LAY_KSTACK: {  /* left out when no frame could be placed, as build_body does */
			PyObject *st = m.kstack_len ? kernel_stack(v, &m, data, n) : NULL;
			r = !m.kstack_len ? 0 : st && !PyList_GET_SIZE(st) ? (Py_DECREF(st), 0) : set_made(body, key, st);
			break;
		}
		case LAY_IMA:
			r = m.ima_len ? set_made(body, key, ima_hash(v, &m, data, n)) : 0;
			break;
		case LAY_TAGS:
			if (PyTuple_GET_SIZE(v)) {
				PyObject *t = PySequence_List(v);
				r = t ? PyDict_SetItem(body, key, t) : -1;
				Py_XDECREF(t);
			}
			break;
		}
	}
	if (r) {
		Py_XDECREF(args);
		Py_XDECREF(body);
		Py_XDECREF(missing);
		if (r > 0)
			return NULL;  /* out of the plan */
		*out_of_plan = 0;
		return NULL;
	}
	*out_of_plan = 0;
	Py_DECREF(args);
	untrack_body(body, 0);
	/* data_misses["get"] += data_args (PolicyEvents._more_data: Tetragon's data cache misses) */
	if (data_args) {
		static PyObject *get_op;
		PyObject *dm = PyTuple_GET_ITEM(b->generic, GC_DATA_MISSES);
		PyObject *n = (get_op || (get_op = PyUnicode_InternFromString("get"))) ? PyLong_FromLong(data_args) : NULL;
		int bad = !n || dict_add(dm, get_op, n) < 0;
		Py_XDECREF(n);
		if (bad) {
			Py_DECREF(body);
			Py_XDECREF(missing);
			return NULL;
		}
	}
	/* the counter: lp.events[kind] += 1 (the actions were counted where they were taken) */
	PyObject *kind = PyTuple_GET_ITEM(plan, GP_KIND);
	PyObject *t = rfc3339(b, m.hdr.ktime);
	if (!t || dict_incr(PyTuple_GET_ITEM(plan, GP_EVENTS), kind, b->one) < 0 ||
	    !(ev = new_slotted(evtypes[T_POLICY].type))) {
		Py_XDECREF(t);
		Py_DECREF(body);
		Py_XDECREF(missing);
		return NULL;
	}
	const evtype_t *et = &evtypes[T_POLICY];
	SET(ev, et->off[E_TIME], t);
	SET(ev, et->off[E_NODE], b->node);
	SET(ev, et->off[E_ENC_JSON], Py_None);
	SET(ev, et->off[E_ENC_PB], Py_None);
	SET(ev, et->off[E_ENC_DICT], Py_None);
	SET(ev, et->off[E_KIND], kind);
	SET(ev, et->off[E_PROCESS], procmsg);
	SET(ev, et->off[E_PARENT], pp ? pslot(b, pp, P_MSG) : Py_None);
	SET(ev, et->off[E_BODY], body);
	SET(ev, et->off[E_ANCESTORS], b->empty_tuple);  /* plans are made only for hooks without them */
	Py_DECREF(t);
	Py_DECREF(body);
	Py_XDECREF(missing);
	return ev;
}

static PyObject *builder_on_generic(Builder *b, PyObject *const *args, Py_ssize_t nargs)
{
	if (nargs != 2 || !b->generic) {
		PyErr_SetString(PyExc_TypeError, b->generic ? "on_generic(buf, now)" : "on_generic: set_generic() first");
		return NULL;
	}
	Py_buffer view;
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	int out_of_plan;
	PyObject *ev = generic_fast(b, view.buf, view.len, &out_of_plan);
	PyBuffer_Release(&view);
	if (ev || !out_of_plan || PyErr_Occurred())
		return ev;
	return PyObject_Vectorcall(PyTuple_GET_ITEM(b->generic, GC_HANDLE), args, 2, NULL);
}

static PyMethodDef builder_methods[] = {
	{"set_generic", (PyCFunction)builder_set_generic, METH_O, "on_generic's context (see there)"},
	{"on_generic", (PyCFunction)(void (*)(void))builder_on_generic, METH_FASTCALL,
	 "PolicyEvents.handle of raw bytes, for the hooks whose plan covers the record"},
	{"rfc3339", (PyCFunction)builder_rfc3339, METH_O, "WallClock.ktime_rfc3339, compiled"},
	{"on_exec", (PyCFunction)(void (*)(void))builder_on_exec, METH_FASTCALL, "EventBuilder.on_exec of raw bytes"},
	{"on_exit", (PyCFunction)(void (*)(void))builder_on_exit, METH_FASTCALL, "EventBuilder.on_exit of raw bytes"},
	{"on_clone", (PyCFunction)(void (*)(void))builder_on_clone, METH_FASTCALL, "EventBuilder.on_clone of raw bytes"},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject BuilderType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "vigil._fastpath.Builder",
	.tp_doc = "Builder(event_builder, Process, build_module): the process stage's exec and exit, compiled.",
	.tp_basicsize = sizeof(Builder),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)builder_init,
	.tp_dealloc = (destructor)builder_dealloc,
	.tp_traverse = (traverseproc)builder_traverse,
	.tp_clear = (inquiry)builder_clear,
	.tp_methods = builder_methods,
};

/* ------------------------------------------------------------------ the event loop's dispatch
 * handle_records(recs, handlers, now, emit, errors, bad[, samples]): Pipeline.handle's loop
 * (its reference), compiled: each record to the handler of its op (dict op -> callable), the
 * events to emit() in batches of 256; a record with no handler, or whose handler raises
 * one of the `bad` exception classes, is appended to `errors` as (op, length, message or
 * None) and skipped. Other exceptions propagate.
 * `samples` (optional; Pipeline.samples, int64 x SAMPLE_SLOTS): one handler call in about
 * every [SAMPLE_EVERY] records is timed, [op] += its ns and [256 + op] += 1, the next one
 * SAMPLE_EVERY/2 .. 3*SAMPLE_EVERY/2 records later ([SAMPLE_LEFT] counts down, kept between
 * calls; [SAMPLE_RNG] the xorshift state that varies the gap, so records interleaved with a
 * period are all sampled): two clock reads per that many records, none for the others. */
#define EMIT_BATCH 256
#define SAMPLE_EVERY 512
#define SAMPLE_LEFT 513
#define SAMPLE_RNG 514
#define SAMPLE_SLOTS 515

static int64_t sample_gap(int64_t *s)
{
	uint64_t x = (uint64_t)s[SAMPLE_RNG] | 1;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	s[SAMPLE_RNG] = (int64_t)x;
	int64_t every = s[SAMPLE_EVERY] > 0 ? s[SAMPLE_EVERY] : 1;
	return every / 2 + (int64_t)(x % (uint64_t)every) + 1;
}

static int emit_batch(PyObject *emit, PyObject **out)
{
	PyObject *r = PyObject_CallOneArg(emit, *out);
	Py_CLEAR(*out);
	Py_XDECREF(r);
	return r ? 0 : -1;
}

static PyObject *handle_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	if ((nargs != 6 && nargs != 7) || !PyList_Check(args[0]) || !PyDict_Check(args[1]) ||
	    !PyList_Check(args[4]) || !PyTuple_Check(args[5]))
		return PyErr_Format(PyExc_TypeError, "handle_records(recs: list, handlers: dict, now, emit, errors: list, "
						     "bad: tuple[, samples])");
	PyObject *recs = args[0], *handlers = args[1], *now = args[2], *emit = args[3], *errors = args[4];
	PyObject *bad = args[5], *out = NULL;
	Py_buffer sv = {0};
	int64_t *samples = NULL;
	if (nargs == 7 && args[6] != Py_None) {
		if (PyObject_GetBuffer(args[6], &sv, PyBUF_WRITABLE) < 0)
			return NULL;
		if (sv.len < (Py_ssize_t)(SAMPLE_SLOTS * sizeof(int64_t))) {
			PyBuffer_Release(&sv);
			return PyErr_Format(PyExc_ValueError, "handle_records: samples of %zd bytes", sv.len);
		}
		samples = sv.buf;
	}
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(recs); i++) {
		PyObject *buf = PyList_GET_ITEM(recs, i);
		Py_buffer view;
		if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0)
			goto fail;
		Py_ssize_t len = view.len;
		int op = len ? ((unsigned char *)view.buf)[0] : -1;
		PyBuffer_Release(&view);
		PyObject *h = NULL, *e = NULL, *msg = NULL;
		if (op >= 0) {
			PyObject *key = PyLong_FromLong(op);  /* a small int: no allocation */
			h = key ? PyDict_GetItemWithError(handlers, key) : NULL;
			Py_XDECREF(key);
			if (!h && PyErr_Occurred())
				goto fail;
		}
		if (h) {
			struct timespec t0;
			int timed = samples && --samples[SAMPLE_LEFT] <= 0;
			if (timed) {
				samples[SAMPLE_LEFT] = sample_gap(samples);
				clock_gettime(CLOCK_MONOTONIC, &t0);
			}
			Py_INCREF(buf);  /* the handler may outlive the list's hold on it */
			e = PyObject_Vectorcall(h, (PyObject *[]){buf, now}, 2, NULL);
			Py_DECREF(buf);
			if (timed) {
				struct timespec t1;
				clock_gettime(CLOCK_MONOTONIC, &t1);
				samples[op] += (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
				samples[256 + op] += 1;
			}
			if (!e) {
				if (!PyErr_ExceptionMatches(bad))
					goto fail;
				PyObject *type, *value, *tb;
				PyErr_Fetch(&type, &value, &tb);
				msg = value ? PyObject_Str(value) : NULL;
				Py_XDECREF(type);
				Py_XDECREF(value);
				Py_XDECREF(tb);
				if (!msg)
					goto fail;
			}
		}
		if (!e) {  /* no handler, or a bad record */
			PyObject *t = Py_BuildValue("(inN)", op, len, msg ? msg : Py_NewRef(Py_None));
			int r = t ? PyList_Append(errors, t) : -1;
			Py_XDECREF(t);
			if (r < 0)
				goto fail;
			continue;
		}
		if (e == Py_None) {
			Py_DECREF(e);
			continue;
		}
		if (!out && !(out = PyList_New(0))) {
			Py_DECREF(e);
			goto fail;
		}
		int r = PyList_Append(out, e);
		Py_DECREF(e);
		if (r < 0 || (PyList_GET_SIZE(out) >= EMIT_BATCH && emit_batch(emit, &out) < 0))
			goto fail;
	}
	if (out && emit_batch(emit, &out) < 0)
		goto fail;
	if (samples)
		PyBuffer_Release(&sv);
	Py_RETURN_NONE;
fail:
	Py_XDECREF(out);
	if (samples)
		PyBuffer_Release(&sv);
	return NULL;
}

/* count_ops(recs, elapsed_ns, samples, msg_ops, latency, bounds, kept): Pipeline._count_ops
 * (py_count_ops, its reference), compiled: tetragon_msg_op_total and tetragon_handling_latency
 * of a handled batch. Each record's op (its first byte, -1 when empty) is counted in the order
 * the ops first come; the batch's time is shared among them by their mean sampled handler
 * ns (samples[op] / samples[256 + op], halved past `kept` samples; an op without a sample
 * the mean of the others, 1.0 each when none has one), each record one observation of its
 * op's share per record in `latency` ({op: ([count per bound of `bounds`, then +Inf], [sum])}).
 * The same float operations in the same order as the reference: the same values. */
static PyObject *count_ops(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	if (nargs != 7 || !PyList_Check(args[0]) || !PyDict_Check(args[3]) || !PyDict_Check(args[4]) ||
	    !PyTuple_Check(args[5]))
		return PyErr_Format(PyExc_TypeError, "count_ops(recs: list, elapsed_ns, samples, msg_ops: dict, "
						     "latency: dict, bounds: tuple, kept)");
	PyObject *recs = args[0], *ops = args[3], *lat = args[4], *bounds = args[5];
	Py_ssize_t n = PyList_GET_SIZE(recs), nb = PyTuple_GET_SIZE(bounds);
	if (!n)
		Py_RETURN_NONE;
	long long elapsed_ns = PyLong_AsLongLong(args[1]), kept = PyLong_AsLongLong(args[6]);
	if ((elapsed_ns == -1 || kept == -1) && PyErr_Occurred())
		return NULL;
	double bound[16];
	if (nb > 16)
		return PyErr_Format(PyExc_ValueError, "count_ops: %zd bounds", nb);
	for (Py_ssize_t j = 0; j < nb; j++) {
		bound[j] = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, j));
		if (bound[j] == -1.0 && PyErr_Occurred())
			return NULL;
	}
	Py_buffer sv = {0};
	int64_t *s = NULL;
	if (args[2] != Py_None) {
		if (PyObject_GetBuffer(args[2], &sv, PyBUF_WRITABLE) < 0)
			return NULL;
		if (sv.len < (Py_ssize_t)(512 * sizeof(int64_t))) {
			PyBuffer_Release(&sv);
			return PyErr_Format(PyExc_ValueError, "count_ops: samples of %zd bytes", sv.len);
		}
		s = sv.buf;
	}
	/* the ops as they first come (order[j], count[j]); slot[op + 1]: j + 1 (0: not yet; slot 0
	 * is an empty record, op -1). Only `slot` is zeroed: 514 bytes, not a count per op */
	uint16_t slot[257];
	memset(slot, 0, sizeof(slot));
	Py_ssize_t count[257];
	int order[257], nops = 0;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *r = PyList_GET_ITEM(recs, i);
		int op;
		if (PyBytes_Check(r)) {
			op = PyBytes_GET_SIZE(r) ? (unsigned char)PyBytes_AS_STRING(r)[0] : -1;
		} else {
			Py_buffer v;
			if (PyObject_GetBuffer(r, &v, PyBUF_SIMPLE) < 0)
				goto fail;
			op = v.len ? ((unsigned char *)v.buf)[0] : -1;
			PyBuffer_Release(&v);
		}
		if (slot[op + 1]) {
			count[slot[op + 1] - 1]++;
		} else {
			order[nops] = op;
			count[nops++] = 1;
			slot[op + 1] = (uint16_t)nops;
		}
	}
	double unit[257], sampled = 0.0;
	int nsampled = 0, has[257];
	for (int i = 0; i < nops; i++) {
		int op = order[i];
		has[i] = 0;
		if (s && op >= 0 && s[256 + op] > 0) {
			if (s[256 + op] > kept) {
				s[op] /= 2;  /* both >= 0: floor division */
				s[256 + op] /= 2;
			}
			unit[i] = (double)(s[op] > 1 ? s[op] : 1) / (double)s[256 + op];
			has[i] = 1;
			sampled += unit[i];
			nsampled++;
		}
	}
	double mean = nsampled ? sampled / nsampled : 1.0, weight = 0.0, elapsed_us = (double)elapsed_ns / 1000.0;
	for (int i = 0; i < nops; i++) {
		if (!has[i])
			unit[i] = mean;
		weight += unit[i] * (double)count[i];
	}
	for (int i = 0; i < nops; i++) {
		int op = order[i];
		Py_ssize_t k = count[i];
		double per_us = weight > 0 ? elapsed_us * unit[i] / weight : elapsed_us / (double)n;
		Py_ssize_t at = 0;
		while (at < nb && !(bound[at] >= per_us))  /* bisect_left: the first bound (le) that holds it */
			at++;
		PyObject *key = PyLong_FromLong(op), *kk = PyLong_FromSsize_t(k), *h, *was, *v;
		if (!key || !kk)
			goto fail_key;
		was = PyDict_GetItemWithError(ops, key);
		if (!was && PyErr_Occurred())
			goto fail_key;
		v = was ? PyNumber_Add(was, kk) : Py_NewRef(kk);
		if (!v || PyDict_SetItem(ops, key, v) < 0) {
			Py_XDECREF(v);
			goto fail_key;
		}
		Py_DECREF(v);
		h = PyDict_GetItemWithError(lat, key);
		if (!h) {
			if (PyErr_Occurred())
				goto fail_key;
			PyObject *b = PyList_New(nb + 1), *t = PyList_New(1);
			if (b && t) {
				for (Py_ssize_t j = 0; j <= nb; j++)
					PyList_SET_ITEM(b, j, PyLong_FromLong(0));
				PyList_SET_ITEM(t, 0, PyFloat_FromDouble(0.0));
			}
			h = b && t ? PyTuple_Pack(2, b, t) : NULL;
			Py_XDECREF(b);
			Py_XDECREF(t);
			if (!h || PyDict_SetItem(lat, key, h) < 0) {
				Py_XDECREF(h);
				goto fail_key;
			}
			Py_DECREF(h);  /* the dict holds it */
		}
		PyObject *b = PyTuple_Check(h) && PyTuple_GET_SIZE(h) == 2 ? PyTuple_GET_ITEM(h, 0) : NULL;
		PyObject *t = b ? PyTuple_GET_ITEM(h, 1) : NULL;
		if (!b || !PyList_Check(b) || PyList_GET_SIZE(b) != nb + 1 || !PyList_Check(t) || PyList_GET_SIZE(t) != 1) {
			PyErr_SetString(PyExc_TypeError, "count_ops: a latency entry is not ([buckets], [sum])");
			goto fail_key;
		}
		v = PyNumber_Add(PyList_GET_ITEM(b, at), kk);
		if (!v)
			goto fail_key;
		PyList_SetItem(b, at, v);  /* steals v */
		PyObject *add = PyFloat_FromDouble(per_us * (double)k);
		v = add ? PyNumber_Add(PyList_GET_ITEM(t, 0), add) : NULL;
		Py_XDECREF(add);
		if (!v)
			goto fail_key;
		PyList_SetItem(t, 0, v);
		Py_DECREF(key);
		Py_DECREF(kk);
		continue;
fail_key:
		Py_XDECREF(key);
		Py_XDECREF(kk);
		goto fail;
	}
	if (s)
		PyBuffer_Release(&sv);
	Py_RETURN_NONE;
fail:
	if (s)
		PyBuffer_Release(&sv);
	return NULL;
}

/* ------------------------------------------------------------------ event ring
 * The shared-memory ring of encoded events (vigil/api/shm.py, which holds the layout and
 * the pure-Python twins): records [len u32][pad u32][seq u64][payload][pad to 8] from
 * `header` on, a record that does not fit before the end starting over at 0 (the rest
 * marked WRAP). Neither function publishes or reads the header's head/seq: the callers do. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the event ring is little endian; a big-endian build needs byte swaps here"
#endif
#define RING_REC 16
#define RING_WRAP 0xFFFFFFFFu

/* ring_write(buf, header, capacity, head, seq, payloads, reserve_off) -> (head, seq)
 * Before each record's bytes, the u64 at reserve_off gets the position the writer writes up
 * to: a reader whose copy that may overwrite finds out, published or not (vigil/api/shm.py). */
static PyObject *ring_write(PyObject *self, PyObject *args)
{
	Py_buffer view;
	unsigned long long header, cap, head, seq, reserve_off;
	PyObject *list;
	if (!PyArg_ParseTuple(args, "w*KKKKO!K", &view, &header, &cap, &head, &seq, &PyList_Type, &list,
			      &reserve_off))
		return NULL;
	if (cap < 4096 || (cap & 7) || (unsigned long long)view.len < header + cap || (reserve_off & 7) ||
	    reserve_off + 8 > header) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError, "ring_write: buffer smaller than header + capacity");
		return NULL;
	}
	char *data = (char *)view.buf + header;
	unsigned long long *reserve = (unsigned long long *)((char *)view.buf + reserve_off);
	Py_ssize_t count = PyList_GET_SIZE(list);
	for (Py_ssize_t i = 0; i < count; i++) {
		PyObject *item = PyList_GET_ITEM(list, i);
		if (!PyBytes_Check(item)) {
			PyBuffer_Release(&view);
			PyErr_SetString(PyExc_TypeError, "ring_write: payloads must be bytes");
			return NULL;
		}
		unsigned long long n = (unsigned long long)PyBytes_GET_SIZE(item);
		unsigned long long need = (RING_REC + n + 7) & ~7ULL;
		if (need > cap)
			continue; /* larger than the whole ring: cannot be carried */
		unsigned long long off = head % cap;
		unsigned long long pad = cap - off < need ? cap - off : 0; /* no room before the end: wrap */
		__atomic_store_n(reserve, head + pad + need, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_RELEASE); /* the reserve before the bytes it warns of */
		if (pad) {
			if (pad >= 4) {
				uint32_t w = RING_WRAP;
				memcpy(data + off, &w, 4);
			}
			head += pad;
			off = 0;
		}
		seq++;
		uint32_t hdr[2] = {(uint32_t)n, 0};
		memcpy(data + off, hdr, 8);
		memcpy(data + off + 8, &seq, 8);
		memcpy(data + off + RING_REC, PyBytes_AS_STRING(item), (size_t)n);
		head += need;
	}
	__atomic_thread_fence(__ATOMIC_RELEASE); /* records before the header that publishes them */
	PyBuffer_Release(&view);
	return Py_BuildValue("KK", head, seq);
}

/* ring_read(buf, header, capacity, pos, head, next_seq, max_records, frame)
 *   -> (payloads, pos, next_seq, skipped)
 * Copies out the records from `pos` up to `head` (at most max_records); with `frame`
 * each comes with the gRPC message prefix (flag 0, u32 big-endian length) before it.
 * `skipped` counts sequence numbers missing between records (a partial lap). */
static PyObject *ring_read(PyObject *self, PyObject *args)
{
	Py_buffer view;
	unsigned long long header, cap, pos, head, next;
	Py_ssize_t max_records;
	int frame;
	if (!PyArg_ParseTuple(args, "y*KKKKKnp", &view, &header, &cap, &pos, &head, &next, &max_records, &frame))
		return NULL;
	if (cap < 4096 || (unsigned long long)view.len < header + cap) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError, "ring_read: buffer smaller than header + capacity");
		return NULL;
	}
	__atomic_thread_fence(__ATOMIC_ACQUIRE); /* the caller read head: records before it are complete */
	const char *data = (const char *)view.buf + header;
	PyObject *out = PyList_New(0);
	unsigned long long skipped = 0;
	if (!out)
		goto fail;
	while (pos < head && PyList_GET_SIZE(out) < max_records) {
		unsigned long long off = pos % cap;
		if (cap - off < RING_REC) {
			pos += cap - off;
			continue;
		}
		uint32_t n;
		memcpy(&n, data + off, 4);
		if (n == RING_WRAP) {
			pos += cap - off;
			continue;
		}
		if ((unsigned long long)n > cap - off - RING_REC)
			break; /* torn (the writer came round meanwhile): the caller's lap check drops the batch */
		unsigned long long rseq;
		memcpy(&rseq, data + off + 8, 8);
		PyObject *b;
		if (frame) {
			b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n + 5);
			if (b) {
				char *p = PyBytes_AS_STRING(b);
				p[0] = 0;
				p[1] = (char)(n >> 24);
				p[2] = (char)(n >> 16);
				p[3] = (char)(n >> 8);
				p[4] = (char)n;
				memcpy(p + 5, data + off + RING_REC, n);
			}
		} else {
			b = PyBytes_FromStringAndSize(data + off + RING_REC, (Py_ssize_t)n);
		}
		if (!b || PyList_Append(out, b) < 0) {
			Py_XDECREF(b);
			goto fail;
		}
		Py_DECREF(b);
		pos += (RING_REC + n + 7) & ~7ULL;
		if (rseq > next)
			skipped += rseq - next;
		next = rseq + 1;
	}
	__atomic_thread_fence(__ATOMIC_ACQUIRE); /* the copies before the caller reads the reserve again */
	PyBuffer_Release(&view);
	return Py_BuildValue("NKKK", out, pos, next, skipped);
fail:
	Py_XDECREF(out);
	PyBuffer_Release(&view);
	return NULL;
}

/* file_links(fd) -> the open file's link count (fstat's st_nlink; 0: deleted under us): what
 * JsonlWriter._ensure_open asks before every write, without the 19-field os.stat_result and
 * its float times that os.fstat builds each time. OSError as os.fstat raises it. */
static PyObject *file_links(PyObject *self, PyObject *arg)
{
	int fd = _PyLong_AsInt(arg);
	if (fd == -1 && PyErr_Occurred())
		return NULL;
	struct stat st;
	int r;
	Py_BEGIN_ALLOW_THREADS
	r = fstat(fd, &st);
	Py_END_ALLOW_THREADS
	if (r < 0)
		return PyErr_SetFromErrno(PyExc_OSError);
	return PyLong_FromUnsignedLongLong((unsigned long long)st.st_nlink);
}

/* write_pieces(fd, pieces) -> bytes written: the twin of JsonlWriter._write_all. All of the
 * bytes objects, in order, with writev IOV_MAX at a time (the iovecs point into the objects:
 * no joined copy), the GIL released while the kernel copies; a short write (disk full, a
 * signal) goes on from where it stopped. OSError as the last write failed: the caller cuts
 * the file back. */
static PyObject *write_pieces(PyObject *self, PyObject *args)
{
	int fd;
	PyObject *pieces;
	if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &pieces))
		return NULL;
	Py_ssize_t n = PyList_GET_SIZE(pieces);
	for (Py_ssize_t i = 0; i < n; i++)
		if (!PyBytes_CheckExact(PyList_GET_ITEM(pieces, i))) {
			PyErr_SetString(PyExc_TypeError, "write_pieces: pieces must be bytes");
			return NULL;
		}
	Py_INCREF(pieces);  /* its items stay alive while the GIL is released */
	struct iovec iov[IOV_MAX];
	long long written = 0;
	Py_ssize_t i = 0, skip = 0;  /* the next piece, and how much of it is written already */
	int err = 0;
	while (i < n && !err) {
		int k = 0;
		for (Py_ssize_t j = i; j < n && k < IOV_MAX; j++, k++) {
			PyObject *b = PyList_GET_ITEM(pieces, j);
			Py_ssize_t off = j == i ? skip : 0;
			iov[k].iov_base = PyBytes_AS_STRING(b) + off;
			iov[k].iov_len = (size_t)(PyBytes_GET_SIZE(b) - off);
		}
		ssize_t w;
		Py_BEGIN_ALLOW_THREADS
		w = writev(fd, iov, k);
		Py_END_ALLOW_THREADS
		if (w < 0) {
			if (errno != EINTR)
				err = errno;
			else if (PyErr_CheckSignals() < 0) {
				Py_DECREF(pieces);
				return NULL;
			}
			continue;
		}
		written += w;
		for (size_t left = (size_t)w; i < n && left;) {  /* past what was written */
			size_t rest = (size_t)(PyBytes_GET_SIZE(PyList_GET_ITEM(pieces, i)) - skip);
			if (left < rest) {
				skip += (Py_ssize_t)left;
				left = 0;
			} else {
				left -= rest;
				i++;
				skip = 0;
			}
		}
		while (i < n && PyBytes_GET_SIZE(PyList_GET_ITEM(pieces, i)) == skip)  /* empty pieces */
			i++, skip = 0;
	}
	Py_DECREF(pieces);
	if (err) {
		errno = err;
		return PyErr_SetFromErrno(PyExc_OSError);
	}
	return PyLong_FromLongLong(written);
}

/* bpf_ring_drain(data, base, mask, cons, prod, max_bytes) -> (records, cons, discarded): the
 * twin of vigil.kernel.ringbuf.RingBuffer.drain's loop over a BPF ring buffer's mapped data
 * (`data`: the producer mapping, data area at `base`, mapped once: a payload that runs past
 * its end continues at its start; a header never does, records being 8-aligned): each
 * committed record's payload from `cons` on, stopping at a record still being written
 * (BUSY), at `prod`, or past max_bytes. */
#define BPF_RB_BUSY (1U << 31)
#define BPF_RB_DISCARD (1U << 30)
static PyObject *bpf_ring_drain(PyObject *self, PyObject *args)
{
	Py_buffer view;
	unsigned long long base, mask, cons, prod, max_bytes, discarded = 0;
	if (!PyArg_ParseTuple(args, "y*KKKKK", &view, &base, &mask, &cons, &prod, &max_bytes))
		return NULL;
	if ((unsigned long long)view.len < base + mask + 1) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError, "bpf_ring_drain: mapping smaller than the data area");
		return NULL;
	}
	const char *data = (const char *)view.buf + base;
	unsigned long long start = cons;
	PyObject *out = PyList_New(0);
	while (out && cons < prod && cons - start < max_bytes) {
		const char *rec = data + (cons & mask);
		/* the kernel clears BUSY with a release store when the record is committed */
		uint32_t ln = __atomic_load_n((const uint32_t *)rec, __ATOMIC_ACQUIRE);
		if (ln & BPF_RB_BUSY)
			break;
		uint32_t size = ln & ~(BPF_RB_BUSY | BPF_RB_DISCARD);
		if (size > mask + 1 - 8) {  /* never from a kernel: refuse rather than read past the map */
			PyErr_Format(PyExc_ValueError, "bpf_ring_drain: record of %u bytes in a %llu-byte ring", size, mask + 1);
			Py_CLEAR(out);
			break;
		}
		if (!(ln & BPF_RB_DISCARD)) {
			unsigned long long at = (cons + 8) & mask, room = mask + 1 - at;
			PyObject *b = PyBytes_FromStringAndSize(NULL, size);
			if (b) {
				char *to = PyBytes_AS_STRING(b);
				if (size <= room) {
					memcpy(to, data + at, size);
				} else {  /* wraps: the rest is at the start of the data area */
					memcpy(to, data + at, room);
					memcpy(to + room, data, size - room);
				}
			}
			if (!b || PyList_Append(out, b) < 0)
				Py_CLEAR(out);
			Py_XDECREF(b);
		} else {
			discarded++;
		}
		cons += (size + 8 + 7) & ~7ULL;
	}
	PyBuffer_Release(&view);
	return out ? Py_BuildValue("NKK", out, cons, discarded) : NULL;
}

/* hold_follow(events, waiting, ProcessExec) -> indices, or None: the events of a batch that
 * follow a held exec (ProcessHold._gate, vigil/process/hold.py, the reference): an exit or
 * policy event whose process's exec_id, an exec event whose parent_exec_id (not its own), is in
 * `waiting`, or is the exec_id of an exec event of the batch that follows one (its children's
 * events wait behind it too). The hold's take() then handles only those in Python: while an exec
 * waits for its parent, the batch's other events pass without a Python step each. */
static PyObject *follow_attr(PyObject *o, PyTypeObject *t, Py_ssize_t off, const char *name, int optional)
{
	if (off >= 0 && Py_TYPE(o) == t) {
		PyObject *v = *(PyObject **)((char *)o + off);
		if (v)
			return Py_NewRef(v);
	}
	PyObject *v = PyObject_GetAttrString(o, name);
	if (!v && optional && PyErr_ExceptionMatches(PyExc_AttributeError))
		PyErr_Clear();
	return v;
}

static PyObject *hold_follow(PyObject *self, PyObject *args)
{
	PyObject *events, *waiting, *exec_t, *out = NULL, *added = NULL;
	if (!PyArg_ParseTuple(args, "O!O!O!", &PyList_Type, &events, &PyDict_Type, &waiting, &PyType_Type, &exec_t))
		return NULL;
	if (!PyDict_GET_SIZE(waiting))
		Py_RETURN_NONE;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(events); i++) {
		PyObject *e = PyList_GET_ITEM(events, i), *proc = NULL, *eid = NULL, *own = NULL;
		PyTypeObject *et = NULL;
		Py_ssize_t off = -1;
		for (int t = 0; t < T_COUNT && !et; t++)
			if (evtypes[t].type && Py_TYPE(e) == evtypes[t].type)
				et = evtypes[t].type, off = evtypes[t].off[E_PROCESS];
		proc = follow_attr(e, et, off, "process", 1);  /* getattr(e, "process", None) */
		if (!proc) {
			if (PyErr_Occurred())
				goto fail;
			continue;
		}
		int is_exec = Py_TYPE(e) == (PyTypeObject *)exec_t, in = 0;
		if (proc == Py_None)
			goto next;
		eid = follow_attr(proc, msg_type, msg_off[is_exec ? M_PARENT_EXEC_ID : M_EXEC_ID],
				  is_exec ? "parent_exec_id" : "exec_id", 0);
		if (!eid || (in = PyObject_IsTrue(eid)) < 0)
			goto fail_e;
		if (in && !(in = PyDict_Contains(waiting, eid)) && added)
			in = PySet_Contains(added, eid);
		if (in < 0)
			goto fail_e;
		if (in && is_exec) {  /* (never its own exec: the <kernel> process is its own parent) */
			if (!(own = follow_attr(proc, msg_type, msg_off[M_EXEC_ID], "exec_id", 0)))
				goto fail_e;
			int same = PyObject_RichCompareBool(eid, own, Py_EQ);
			if (same < 0)
				goto fail_e;
			in = !same;
		}
		if (in) {
			PyObject *n = PyLong_FromSsize_t(i);
			int r = n && (out || (out = PyList_New(0))) ? PyList_Append(out, n) : -1;
			Py_XDECREF(n);
			if (r < 0)
				goto fail_e;
			if (is_exec && ((!added && !(added = PySet_New(NULL))) || PySet_Add(added, own) < 0))
				goto fail_e;
		}
		Py_XDECREF(own);
		Py_XDECREF(eid);
	next:
		Py_DECREF(proc);
		continue;
	fail_e:
		Py_XDECREF(own);
		Py_XDECREF(eid);
		Py_DECREF(proc);
		goto fail;
	}
	Py_XDECREF(added);
	if (!out)
		Py_RETURN_NONE;
	return out;
fail:
	Py_XDECREF(added);
	Py_XDECREF(out);
	return NULL;
}

/* ktime_prefix(records, now) -> n: the twin of vigil.kernel.ringbuf.py_ktime_prefix, how many
 * leading records (bytes, struct msg_header first) the kernel made before `now`. */
static PyObject *ktime_prefix(PyObject *self, PyObject *args)
{
	PyObject *recs;
	unsigned long long now;
	if (!PyArg_ParseTuple(args, "O!K", &PyList_Type, &recs, &now))
		return NULL;
	Py_ssize_t n = 0;
	for (; n < PyList_GET_SIZE(recs); n++) {
		PyObject *r = PyList_GET_ITEM(recs, n);
		if (!PyBytes_Check(r)) {
			PyErr_SetString(PyExc_TypeError, "ktime_prefix: records must be bytes");
			return NULL;
		}
		unsigned long long k = 0;
		if (PyBytes_GET_SIZE(r) >= 16)
			memcpy(&k, PyBytes_AS_STRING(r) + 8, 8);
		if (k >= now)
			break;
	}
	return PyLong_FromSsize_t(n);
}

/* ------------------------------------------------------------------ module */
static PyObject *set_decode_error(PyObject *self, PyObject *cls)
{
	Py_XSETREF(DecodeError, Py_NewRef(cls));
	Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
	{"format_arguments", format_arguments, METH_O, "argv area -> Tetragon `arguments`"},
	{"exec_id", exec_id, METH_VARARGS, "exec_id(node, ktime, pid) -> base64(node:ktime:pid)"},
	{"encode_json", encode_json, METH_O, "event -> its JSON line (cached on it)"},
	{"encode_json_batch", encode_json_batch, METH_O, "events -> their JSON lines"},
	{"file_links", file_links, METH_O, "(fd) -> the open file's link count (os.fstat(fd).st_nlink)"},
	{"write_pieces", write_pieces, METH_VARARGS, "(fd, pieces) -> bytes written: all of them, in order"},
	{"hold_follow", hold_follow, METH_VARARGS,
	 "(events, waiting, ProcessExec) -> indices of the events that follow a held exec, or None"},
	{"ktime_prefix", ktime_prefix, METH_VARARGS, "(records, now) -> how many lead records are older than now"},
	{"bpf_ring_drain", bpf_ring_drain, METH_VARARGS,
	 "(data, base, mask, cons, prod, max_bytes) -> (records, cons, discarded) of a BPF ring buffer"},
	{"encode_json_pieces", encode_json_pieces, METH_O,
	 "events -> (pieces, size): their JSON lines as pieces to write in order, and their size"},
	{"encode_pb", encode_pb, METH_O, "event -> serialised GetEventsResponse (cached on it)"},
	{"encode_pb_batch", encode_pb_batch, METH_O, "events -> serialised GetEventsResponses"},
	{"process_json", process_json, METH_O, "ProcessMsg -> its JSON object (cached on it)"},
	{"process_pb", process_pb, METH_O, "ProcessMsg -> varint(length) + serialised Process (cached on it)"},
	{"configure_events", configure_events, METH_VARARGS, "(ProcessMsg, ProcessExec, ProcessExit, PolicyEvent, Pod, PodShared)"},
	{"configure_json", (PyCFunction)(void (*)(void))configure_json, METH_VARARGS | METH_KEYWORDS,
	 "the JSON twins: encode(ev), process_json(m), sub(dict) -> bytes, body(dict) -> bytes, pod_parts(dict)"},
	{"configure_pb", (PyCFunction)(void (*)(void))configure_pb, METH_VARARGS | METH_KEYWORDS,
	 "the protobuf twins: encode(ev), process_bytes(m), sub(name, dict), timestamp(str), body(ev), kind_numbers, "
	 "pod_parts(dict)"},
	{"decode_generic", decode_generic, METH_O, "generic policy record -> (GenericRecord, data after the header)"},
	{"handle_records", (PyCFunction)(void (*)(void))handle_records, METH_FASTCALL,
	 "handle_records(recs, handlers, now, emit, errors, bad[, samples]): the event loop's dispatch (Pipeline.handle)"},
	{"count_ops", (PyCFunction)(void (*)(void))count_ops, METH_FASTCALL,
	 "count_ops(recs, elapsed_ns, samples, msg_ops, latency, bounds, kept): a batch's metrics (Pipeline._count_ops)"},
	{"set_decode_error", set_decode_error, METH_O, "the exception class a bad record raises"},
	{"ring_write", ring_write, METH_VARARGS,
	 "(buf, header, capacity, head, seq, payloads, reserve_off) -> (head, seq)"},
	{"ring_read", ring_read, METH_VARARGS,
	 "(buf, header, capacity, pos, head, next_seq, max_records, frame) -> (payloads, pos, next_seq, skipped)"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "vigil._fastpath", "The agent's per-event hot path, compiled.", -1, methods,
	NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
	if (PyType_Ready(&ProcessRecordType) < 0 || PyType_Ready(&ExitRecordType) < 0 || PyType_Ready(&BuilderType) < 0 ||
	    PyType_Ready(&ArgHdrType) < 0 || PyType_Ready(&GenericRecordType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "ProcessRecord", (PyObject *)&ProcessRecordType) < 0 ||
	    PyModule_AddObjectRef(m, "ExitRecord", (PyObject *)&ExitRecordType) < 0 ||
	    PyModule_AddObjectRef(m, "Builder", (PyObject *)&BuilderType) < 0 ||
	    PyModule_AddIntConstant(m, "PROCESS_SIZE", (long)sizeof(struct msg_process)) < 0 ||
	    PyModule_AddIntConstant(m, "EXIT_SIZE", (long)sizeof(struct msg_exit)) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
