/*
 * mhd_baseline.c - the floor for any server built on libmicrohttpd: a
 * minimal server with bgserve's thread model and daemon options that
 * answers every request with "Hello, World!" from one persistent buffer.
 *
 *   mhd_baseline [PORT [THREADS]]     PORT 0 (default) picks a free one
 *
 * Like bgserve it binds its own socket, uses MHD_USE_POLL_INTERNAL_THREAD
 * | MHD_ALLOW_SUSPEND_RESUME (poll(2), as bgserve since it left epoll;
 * cmd/bgserve/http.c says why) with a thread pool of one thread per core,
 * the same connection timeout and limit, and prints
 * "bgserve: listening on http://HOST:PORT" once bound so bench/run reads
 * both servers' ports the same way.  It stops on SIGINT or SIGTERM.
 *
 * Threads: main (start, wait for a signal, stop) and libmicrohttpd's
 * pool.  The only shared state is the response, created before the
 * daemon starts and read-only afterwards.
 */
#include <microhttpd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char hello[] = "Hello, World!";

static struct MHD_Response *reply; /* created before serving; read-only */
static int first_call; /* its address marks a request as seen */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload_data;
    /* libmicrohttpd 0.9.75 closes the connection after a response queued
     * in the first call (headers only: the request is not complete yet),
     * so answer in the second, as its documentation does. */
    if (*req_cls == NULL) {
        *req_cls = &first_call;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    return MHD_queue_response(conn, MHD_HTTP_OK, reply);
}

static int listen_on(unsigned port, unsigned *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        close(fd);
        return -1;
    }
    *bound = ntohs(sa.sin_port);
    return fd;
}

int main(int argc, char **argv)
{
    unsigned port = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10)
                                : (unsigned)(cores > 0 ? cores : 1);
    unsigned bound = 0;
    int rc = 1;
    struct MHD_Daemon *d = NULL;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    /* Block before any thread exists so only sigwait sees the signals. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    reply = MHD_create_response_from_buffer(strlen(hello), (void *)hello,
                                            MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(reply, "Content-Type", "text/plain; charset=utf-8");

    int fd = listen_on(port, &bound);
    if (fd < 0) {
        perror("mhd_baseline: listen");
        goto out;
    }
    d = MHD_start_daemon(MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME, 0,
                         NULL, NULL, on_request, NULL,
                         MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                         MHD_OPTION_THREAD_POOL_SIZE, threads > 1 ? threads : 0u,
                         MHD_OPTION_CONNECTION_TIMEOUT, 30u,
                         MHD_OPTION_CONNECTION_LIMIT, 1024u,
                         MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "mhd_baseline: libmicrohttpd %s could not start\n", MHD_get_version());
        close(fd);
        goto out;
    }
    fprintf(stderr, "bgserve: listening on http://127.0.0.1:%u\n", bound);

    int sig;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    close(fd);
    rc = 0;
out:
    MHD_destroy_response(reply);
    return rc;
}
