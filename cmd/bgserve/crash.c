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
 * The handler uses only async-signal-safe calls (write, sigaction,
 * raise) plus backtrace()/backtrace_symbols_fd(), whose lazy loading of
 * libgcc is done up front by crash_install.
 */
#include "crash.h"

#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define ALTSTACK_MIN (64u * 1024u)
#define MAX_FRAMES 64

static _Thread_local crash_frame *top;
static _Thread_local void *altstack;  /* ours, mmap'd; NULL until set */

static int installed;
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
                       const char *rid, uint64_t gen, const char *plugin)
{
    *f = (crash_frame){.kind = CRASH_ROUTE, .a = method, .b = path, .rid = rid,
                       .gen = gen, .plugin = plugin};
    push(f);
}

void crash_enter_task(crash_frame *f, const char *name, uint64_t task_id,
                      const char *rid, uint64_t gen)
{
    *f = (crash_frame){.kind = CRASH_TASK, .a = name, .task_id = task_id, .rid = rid,
                       .gen = gen};
    push(f);
}

void crash_enter_hook(crash_frame *f, const char *hook, uint64_t gen, const char *plugin)
{
    *f = (crash_frame){.kind = CRASH_HOOK, .a = hook, .gen = gen, .plugin = plugin};
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

static void flush(out *o)
{
    size_t off = 0;
    while (off < o->len) {
        ssize_t n = write(2, o->buf + off, o->len - off);
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

static void on_fatal(int sig, siginfo_t *si, void *uctx)
{
    (void)uctx;
    if (atomic_flag_test_and_set(&crashing)) {
        die(sig); /* another thread is reporting; it will take us down */
        return;
    }
    const crash_frame *f = top;
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
    if (f)
        put(&o, "  a crash in plugin code cannot be survived safely: bgserve exits; "
                "fix the plugin and start it again\n");
    put(&o, "backtrace:\n");
    flush(&o);

    void *frames[MAX_FRAMES];
    int n = backtrace(frames, MAX_FRAMES);
    backtrace_symbols_fd(frames, n, 2);
    /* bgserve exports no symbols (plugins must not bind to them), so its
     * own frames are offsets. */
    put(&o, "  (frames of bgserve itself show as bgserve(+0xOFFSET): "
            "addr2line -f -e PATH-TO-BGSERVE 0xOFFSET names them)\n");
    flush(&o);
    die(sig);
}

/* ---- setup -------------------------------------------------------------------- */

void crash_install(void)
{
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
