/*
 * bench/wakecost.c - what one thread wake-up costs on this machine.
 *
 * bgserve hands each batch of tasks to a worker with a condition-variable
 * signal; under load the worker then preempts a busy HTTP thread and goes
 * back to sleep when the batch is done.  This measures that cycle alone,
 * so the benchmark can say how much of the task cases' cost is the
 * machine's price for a wake-up rather than bgserve's own work.
 *
 * A "busy" thread runs a fixed amount of arithmetic, then signals a
 * sleeping thread, which wakes, counts and sleeps again.  The busy
 * thread is pinned to CPU 0; the sleeper to CPU 0 ("same CPU": every
 * wake-up preempts the busy thread) or CPU 1 ("other CPU": an
 * inter-processor wake-up).  The cost of a wake-up is the process CPU
 * time beyond that of the arithmetic alone (measured first), divided by
 * the times the sleeper really slept (its voluntary context switches).
 *
 * Output: one line, "wake-up cycle CPU µs: same CPU S, other CPU O"
 * (O is "-" on a single-CPU machine).  Built (with -D_GNU_SOURCE, for
 * the affinity calls) and run by bench/run.
 */
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define CYCLES 20000
#define WORK_ROUNDS 4000 /* arithmetic between signals: some µs */

/* Shared between the busy thread and the sleeper; all under mu. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int pending, done;
static long sleeps; /* the sleeper's voluntary context switches; written before join */

static volatile uint64_t sink; /* keeps the arithmetic from being optimised away */

static double cpu_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void work(void)
{
    uint64_t x = sink;
    for (int i = 0; i < WORK_ROUNDS; i++)
        x = x * 6364136223846793005u + 1442695040888963407u;
    sink = x;
}

static long voluntary_switches(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_nvcsw;
}

static void *sleeper(void *arg)
{
    pin(*(int *)arg);
    long v0 = voluntary_switches();
    pthread_mutex_lock(&mu);
    while (!done) {
        while (!pending && !done)
            pthread_cond_wait(&cv, &mu);
        pending = 0;
    }
    pthread_mutex_unlock(&mu);
    sleeps = voluntary_switches() - v0;
    return NULL;
}

/* CPU µs per wake-up (the sleeper's voluntary switches: a signal that
 * finds it awake costs no wake-up), beyond the arithmetic of work_us per
 * cycle. */
static double wake_us(int sleeper_cpu, double work_us)
{
    pthread_t t;
    done = pending = 0;
    if (pthread_create(&t, NULL, sleeper, &sleeper_cpu) != 0)
        return -1;
    double c0 = cpu_s(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < CYCLES; i++) {
        work();
        pthread_mutex_lock(&mu);
        pending = 1;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(t, NULL);
    double total_us = (cpu_s(CLOCK_PROCESS_CPUTIME_ID) - c0) * 1e6;
    return sleeps > 0 ? (total_us - work_us * CYCLES) / (double)sleeps : -1;
}

int main(void)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (pin(0) != 0) {
        fprintf(stderr, "wakecost: cannot pin to CPU 0\n");
        return 1;
    }
    double w0 = cpu_s(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < CYCLES; i++)
        work();
    double work_us = (cpu_s(CLOCK_THREAD_CPUTIME_ID) - w0) * 1e6 / CYCLES;

    double same = wake_us(0, work_us);
    if (ncpu > 1)
        printf("wake-up cycle CPU µs: same CPU %.1f, other CPU %.1f\n", same,
               wake_us(1, work_us));
    else
        printf("wake-up cycle CPU µs: same CPU %.1f, other CPU -\n", same);
    return 0;
}
