/*
 * crash.c - the fatal-signal handler and the per-thread record of which
 * plugin code is running (see crash.h).
 *
 * State:
 *   top, altstack  thread-local; written only by their own thread, read
 *                  by the signal handler running on that same thread, so
 *                  no lock (a compiler fence orders the frame's fields
 *                  before it is published as `top`).
 *   installed      written once by crash_install (main thread, before
 *                  any other thread starts), read-only afterwards.
 *   crashing       an atomic_flag: the first thread to take a fatal
 *                  signal reports; any other one goes straight to the
 *                  default action.
 *   report_fd      the supervisor's pipe, or -1 (--single-process);
 *                  written once by crash_install.
 * The handler uses only async-signal-safe calls (open, read, write,
 * sigaction, raise) plus backtrace()/backtrace_symbols_fd(), whose lazy
 * loading of libgcc is done up front by crash_install, and the gauges
 * function (tasks_gauges on the engine, lock-free).
 *
 * Supervised, the handler prints nothing itself: it sends the signal,
 * what was running, the task gauges, the raw frames and its memory map
 * (/proc/self/maps) to the supervisor, which symbolizes the frames with
 * libdw after the process is gone and prints the report (supervisor.c).
 * With --single-process it prints the report and raw frames to stderr.
 */
#include "crash.h"

#include <execinfo.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define ALTSTACK_MIN (64u * 1024u)
#define MAX_FRAMES 64

static _Thread_local crash_frame *top;
static _Thread_local void *altstack;  /* ours, mmap'd; NULL until set */

static int installed;
static int report_fd = -1;          /* crash_install; read-only afterwards */
static crash_gauges_fn gauges;      /* crash_set_gauges; read-only afterwards */
static void *gauges_arg;            /* crash_set_gauges; read-only afterwards */
static atomic_flag crashing = ATOMIC_FLAG_INIT;
static pthread_key_t altstack_key;  /* destructor frees the thread's stack */

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

/* ---- alternate signal stacks -------------------------------------------- */

static size_t altstack_size(void)
{
    size_t n = (size_t)SIGSTKSZ; /* not a constant on newer glibc */
    return n < ALTSTACK_MIN ? ALTSTACK_MIN : n;
}

/* Thread exit: drop our stack if it is still the thread's. */
static void altstack_free(void *p)
{
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == p && !(cur.ss_flags & SS_ONSTACK)) {
        stack_t off = {.ss_flags = SS_DISABLE};
        sigaltstack(&off, NULL);
    }
    munmap(p, altstack_size());
}

/* Give this thread an alternate stack unless it has one (sanitizer
 * runtimes give every thread their own; keep theirs). */
static void altstack_ensure(void)
{
    stack_t cur;
    if (altstack != NULL || !installed)
        return;
    if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) {
        altstack = cur.ss_sp; /* someone else's: never freed by us */
        return;
    }
    size_t len = altstack_size();
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return; /* no alternate stack: crashes are still reported, overflows not */
    stack_t ss = {.ss_sp = p, .ss_size = len, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(p, len);
        return;
    }
    altstack = p;
    pthread_setspecific(altstack_key, p);
}

/* ---- frames ------------------------------------------------------------------ */

static void push(crash_frame *f)
{
    altstack_ensure();
    f->prev = top;
    atomic_signal_fence(memory_order_seq_cst);
    top = f;
}

void crash_enter_route(crash_frame *f, const char *method, const char *path,
                       const char *rid, uint64_t gen, const char *plugin_name)
{
    *f = (crash_frame){.kind = CRASH_ROUTE, .a = method, .b = path, .rid = rid,
                       .gen = gen, .plugin = plugin_name};
    push(f);
}

void crash_enter_task(crash_frame *f, const char *name, uint64_t task_id,
                      const char *rid, uint64_t gen)
{
    *f = (crash_frame){.kind = CRASH_TASK, .a = name, .task_id = task_id, .rid = rid,
                       .gen = gen};
    push(f);
}

void crash_enter_hook(crash_frame *f, const char *hook, uint64_t gen, const char *plugin_name)
{
    *f = (crash_frame){.kind = CRASH_HOOK, .a = hook, .gen = gen, .plugin = plugin_name};
    push(f);
}

void crash_leave(crash_frame *f)
{
    atomic_signal_fence(memory_order_seq_cst);
    top = f->prev;
}

const crash_frame *crash_current(void)
{
    return top;
}

/* ---- the handler (async-signal-safe from here on) ---------------------------- */

typedef struct out {
    char buf[1024];
    size_t len;
} out;

static void put(out *o, const char *s)
{
    if (s == NULL)
        s = "(null)";
    for (; *s && o->len < sizeof o->buf - 1; s++)
        o->buf[o->len++] = *s;
}

static void put_u64(out *o, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n > 0 && o->len < sizeof o->buf - 1)
        o->buf[o->len++] = tmp[--n];
}

static void put_hex(out *o, uintptr_t v)
{
    char tmp[2 * sizeof v];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v);
    put(o, "0x");
    while (n > 0 && o->len < sizeof o->buf - 1)
        o->buf[o->len++] = tmp[--n];
}

static void flush_to(int fd, out *o)
{
    size_t off = 0;
    while (off < o->len) {
        ssize_t n = write(fd, o->buf + off, o->len - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    o->len = 0;
}

static const char *sig_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV (segmentation fault)";
    case SIGBUS: return "SIGBUS (bus error)";
    case SIGFPE: return "SIGFPE (arithmetic exception)";
    case SIGILL: return "SIGILL (illegal instruction)";
    case SIGABRT: return "SIGABRT (abort)";
    default: return "a fatal signal";
    }
}

static void describe(out *o, const crash_frame *f)
{
    switch (f->kind) {
    case CRASH_ROUTE:
        put(o, "route ");
        put(o, f->a);
        put(o, " ");
        put(o, f->b);
        break;
    case CRASH_TASK:
        put(o, "task '");
        put(o, f->a);
        put(o, "' id ");
        put_u64(o, f->task_id);
        break;
    default:
        put(o, f->a);
        put(o, " hook");
        break;
    }
    if (f->rid) {
        put(o, " (request ");
        put(o, f->rid);
        put(o, ")");
    }
    put(o, ", generation ");
    put_u64(o, f->gen);
    if (f->plugin && *f->plugin) {
        put(o, " of plugin '");
        put(o, f->plugin);
        put(o, "'");
    }
}

static void die(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    /* Blocked while we run: delivered (default action) when we return.
     * A hardware fault would also simply fault again. */
    raise(sig);
}

/* The interrupted instruction, from the signal's machine context. */
static uintptr_t fault_pc(const void *uctx)
{
    const ucontext_t *uc = uctx;
    if (uc == NULL)
        return 0;
#if defined(__x86_64__)
    return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t)uc->uc_mcontext.pc;
#else
    return 0;
#endif
}

/* The frames from the interrupted instruction outwards (the handler's
 * own frames and the signal trampoline dropped).  *exact: frames[0] is
 * the faulting instruction rather than a return address. */
static int interrupted_frames(void **frames, int max, const void *uctx, int *exact)
{
    int n = backtrace(frames, max);
    uintptr_t pc = fault_pc(uctx);
    *exact = 0;
    for (int i = 0; pc != 0 && i < n; i++) {
        if ((uintptr_t)frames[i] == pc) {
            memmove(frames, frames + i, (size_t)(n - i) * sizeof *frames);
            *exact = 1;
            return n - i;
        }
    }
    return n;
}

/* Supervised: the machine-readable record the supervisor turns into the
 * report (symbolize.h).  Lines "KEY value"; after "M" the raw text of
 * /proc/self/maps up to the end of the stream. */
static void send_record(int sig, const siginfo_t *si, const void *uctx, const crash_frame *f)
{
    out o;
    o.len = 0;
    put(&o, "S ");
    put_u64(&o, (uint64_t)sig);
    put(&o, "\nH ");
    put(&o, f ? "bgserve crashed in plugin code: " : "bgserve crashed (not in plugin code): ");
    put(&o, sig_name(sig));
    if (f) {
        put(&o, "\nK ");
        put_u64(&o, (uint64_t)f->kind);
        put(&o, " ");
        put(&o, f->a);
        put(&o, "\nG ");
        put_u64(&o, f->gen);
        put(&o, "\nW ");
        describe(&o, f);
        if (f->kind == CRASH_TASK) { /* the journal's replay must not run it blindly */
            put(&o, "\nT ");
            put_u64(&o, f->task_id);
        }
    }
    if ((sig == SIGSEGV || sig == SIGBUS) && si != NULL && si->si_code > 0) {
        put(&o, "\nA ");
        put_hex(&o, (uintptr_t)si->si_addr);
    }
    uint64_t queued = 0, running = 0;
    if (gauges) {
        gauges(gauges_arg, &queued, &running);
        put(&o, "\nQ ");
        put_u64(&o, queued);
        put(&o, " ");
        put_u64(&o, running);
    }
    put(&o, "\n");
    flush_to(report_fd, &o);

    void *frames[MAX_FRAMES];
    int exact;
    int n = interrupted_frames(frames, MAX_FRAMES, uctx, &exact);
    put(&o, exact ? "E\n" : "");
    for (int i = 0; i < n; i++) {
        put(&o, "P ");
        put_hex(&o, (uintptr_t)frames[i]);
        put(&o, "\n");
        if (o.len > sizeof o.buf - 40)
            flush_to(report_fd, &o);
    }
    put(&o, "M\n");
    flush_to(report_fd, &o);

    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t r;
    while ((r = read(fd, o.buf, sizeof o.buf)) > 0) {
        o.len = (size_t)r;
        flush_to(report_fd, &o);
    }
    close(fd);
}

static void on_fatal(int sig, siginfo_t *si, void *uctx)
{
    if (atomic_flag_test_and_set(&crashing)) {
        die(sig); /* another thread is reporting; it will take us down */
        return;
    }
    const crash_frame *f = top;
    if (report_fd >= 0) {
        send_record(sig, si, uctx, f);
        die(sig);
        return;
    }
    out o;
    o.len = 0;
    if (f) {
        put(&o, "bgserve crashed in plugin code: ");
        put(&o, sig_name(sig));
        put(&o, "\n  while running ");
        describe(&o, f);
        put(&o, "\n");
    } else {
        put(&o, "bgserve crashed (not in plugin code): ");
        put(&o, sig_name(sig));
        put(&o, "\n");
    }
    if ((sig == SIGSEGV || sig == SIGBUS) && si != NULL && si->si_code > 0) {
        put(&o, "  fault address ");
        put_hex(&o, (uintptr_t)si->si_addr);
        put(&o, "\n");
    }
    put(&o, "  --single-process: bgserve exits (without it a supervisor restarts the "
            "server and names each frame's function and file:line)\n");
    put(&o, "backtrace:\n");
    flush_to(2, &o);

    void *frames[MAX_FRAMES];
    int exact;
    int n = interrupted_frames(frames, MAX_FRAMES, uctx, &exact);
    backtrace_symbols_fd(frames, n, 2);
    /* bgserve exports no symbols (plugins must not bind to them), so its
     * own frames are offsets. */
    put(&o, "  (frames of bgserve itself show as bgserve(+0xOFFSET): "
            "addr2line -f -e PATH-TO-BGSERVE 0xOFFSET names them)\n");
    flush_to(2, &o);
    die(sig);
}

/* ---- setup -------------------------------------------------------------------- */

void crash_set_gauges(crash_gauges_fn fn, void *arg)
{
    gauges = fn;
    gauges_arg = arg;
}

void crash_install(int supervisor_fd)
{
    report_fd = supervisor_fd;
    void *warm[2];
    backtrace(warm, 2); /* loads libgcc's unwinder now, not in the handler */
    pthread_key_create(&altstack_key, altstack_free);
    installed = 1;
    altstack_ensure();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
        sigaction(fatal_signals[i], &sa, NULL);
}
