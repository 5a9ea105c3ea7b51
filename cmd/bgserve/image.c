/*
 * image.c - checks on the plugin file and its private copies (see
 * image.h for err bgserve loads a copy).
 *
 * State: the directory name, computed once under dir_once; a counter for
 * unique copy names (atomic).  Everything else is per call.
 *
 * The completeness check reads the ELF header and verifies that the
 * program headers, every loadable segment and the section headers lie
 * inside the file: a linker still writing the file (or a half-finished
 * cp) fails it, so a reload waits for the next write instead of loading
 * half a library.
 */
#include "image.h"

#include "util.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_IMAGE ((size_t)1 << 30)

static pthread_once_t dir_once = PTHREAD_ONCE_INIT;
static char dir_path[PATH_MAX]; /* "" when unusable; written once */
static atomic_uint copy_counter;
static atomic_long copy_owner; /* image_set_owner's pid; 0: this process */

/* ---- reading and checking ------------------------------------------------ */

static int read_all(const char *path, unsigned char **data, size_t *len,
                    char *err, size_t errlen)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s", strerror(errno));
        return IMAGE_EOPEN;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        snprintf(err, errlen, "%s",
                 fstat(fd, &st) != 0 ? strerror(e)
                 : S_ISDIR(st.st_mode) ? "Is a directory" : "not a regular file");
        close(fd);
        return IMAGE_EOPEN;
    }
    if ((size_t)st.st_size > MAX_IMAGE) {
        snprintf(err, errlen, "larger than 1 GiB");
        close(fd);
        return IMAGE_ENOTELF;
    }
    size_t size = (size_t)st.st_size, got = 0;
    unsigned char *buf = xmalloc(size ? size : 1);
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *data = buf;
    *len = got; /* a file shrinking under us shows up as truncated */
    return IMAGE_OK;
}

static int in_file(uint64_t off, uint64_t size, size_t len)
{
    return off <= len && size <= len - off;
}

static int check_bytes(const unsigned char *b, size_t len, char *err, size_t errlen)
{
    Elf64_Ehdr eh;
    if (len < EI_NIDENT || memcmp(b, ELFMAG, SELFMAG) != 0) {
        snprintf(err, errlen, "not an ELF file%s",
                 len == 0 ? " (it is empty)" : "");
        return len == 0 ? IMAGE_EINCOMPLETE : IMAGE_ENOTELF;
    }
    if (b[EI_CLASS] != ELFCLASS64 || b[EI_DATA] != ELFDATA2LSB) {
        snprintf(err, errlen, "not a 64-bit little-endian ELF file");
        return IMAGE_ENOTELF;
    }
    if (len < sizeof eh) {
        snprintf(err, errlen, "incomplete ELF image (%zu bytes, shorter than its header)",
                 len);
        return IMAGE_EINCOMPLETE;
    }
    memcpy(&eh, b, sizeof eh);
    if (eh.e_type != ET_DYN) {
        snprintf(err, errlen, "not a shared object (ELF type %u)", eh.e_type);
        return IMAGE_ENOTELF;
    }
    if (eh.e_phentsize != sizeof(Elf64_Phdr) ||
        !in_file(eh.e_phoff, (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr), len)) {
        snprintf(err, errlen, "incomplete ELF image (program headers past the end "
                 "of its %zu bytes)", len);
        return IMAGE_EINCOMPLETE;
    }
    if (eh.e_shoff != 0 &&
        !in_file(eh.e_shoff, (uint64_t)eh.e_shnum * eh.e_shentsize, len)) {
        snprintf(err, errlen, "incomplete ELF image (section headers past the end "
                 "of its %zu bytes)", len);
        return IMAGE_EINCOMPLETE;
    }
    for (unsigned i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, b + eh.e_phoff + (uint64_t)i * sizeof ph, sizeof ph);
        if ((ph.p_type == PT_LOAD || ph.p_type == PT_DYNAMIC) &&
            !in_file(ph.p_offset, ph.p_filesz, len)) {
            snprintf(err, errlen, "incomplete ELF image (a segment ends past the "
                     "end of its %zu bytes)", len);
            return IMAGE_EINCOMPLETE;
        }
        if (ph.p_type != PT_DYNAMIC)
            continue;
        for (uint64_t off = 0; off + sizeof(Elf64_Dyn) <= ph.p_filesz; off += sizeof(Elf64_Dyn)) {
            Elf64_Dyn d;
            memcpy(&d, b + ph.p_offset + off, sizeof d);
            if (d.d_tag == DT_NULL)
                break;
            if (d.d_tag == DT_FLAGS && (d.d_un.d_val & DF_STATIC_TLS)) {
                snprintf(err, errlen, "flagged STATIC_TLS (it uses initial-exec "
                         "thread-local storage), so it cannot be unloaded and reloaded");
                return IMAGE_ESTATICTLS;
            }
        }
    }
    return IMAGE_OK;
}

int image_check(const char *path, char *err, size_t errlen)
{
    unsigned char *b = NULL;
    size_t len = 0;
    int rc = read_all(path, &b, &len, err, errlen);
    if (rc == IMAGE_OK)
        rc = check_bytes(b, len, err, errlen);
    free(b);
    return rc;
}

/* ---- the private directory --------------------------------------------------- */

static int usable_dir(const char *d)
{
    struct stat st;
    if (mkdir(d, 0700) != 0 && errno != EEXIST)
        return 0;
    if (lstat(d, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return 0;
    return (st.st_mode & 0077) == 0 || chmod(d, 0700) == 0;
}

static void find_dir(void)
{
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    if (xdg && *xdg == '/') {
        snprintf(dir_path, sizeof dir_path, "%s/bgserve", xdg);
        if (usable_dir(dir_path))
            return;
    }
    snprintf(dir_path, sizeof dir_path, "/tmp/bgserve-%u", (unsigned)geteuid());
    if (!usable_dir(dir_path))
        dir_path[0] = '\0';
}

const char *image_dir(void)
{
    pthread_once(&dir_once, find_dir);
    return dir_path[0] ? dir_path : NULL;
}

/* ---- copies ------------------------------------------------------------------ */

int image_prepare(const char *path, char **copy_path, char *err, size_t errlen)
{
    unsigned char *b = NULL;
    size_t len = 0;
    *copy_path = NULL;
    int rc = read_all(path, &b, &len, err, errlen);
    if (rc == IMAGE_OK)
        rc = check_bytes(b, len, err, errlen);
    if (rc != IMAGE_OK) {
        free(b);
        return rc;
    }

    const char *dir = image_dir();
    if (dir == NULL) {
        snprintf(err, errlen, "no private directory for plugin copies "
                 "(tried $XDG_RUNTIME_DIR/bgserve and /tmp/bgserve-%u)", (unsigned)geteuid());
        free(b);
        return IMAGE_ECOPY;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char copy[PATH_MAX];
    long owner = atomic_load(&copy_owner);
    if (snprintf(copy, sizeof copy, "%s/%ld-%ld.%u.%s", dir, (long)getpid(),
                 owner ? owner : (long)getpid(), atomic_fetch_add(&copy_counter, 1),
                 base) >= (int)sizeof copy) {
        snprintf(err, errlen, "the private copy's path would be too long");
        free(b);
        return IMAGE_ECOPY;
    }
    int fd = open(copy, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create the private copy %s: %s", copy, strerror(errno));
        free(b);
        return IMAGE_ECOPY;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, b + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    int closed = close(fd);
    free(b);
    if (done < len || closed != 0) {
        snprintf(err, errlen, "cannot write the private copy %s: %s", copy, strerror(errno));
        unlink(copy);
        return IMAGE_ECOPY;
    }
    *copy_path = xstrdup(copy);
    return IMAGE_OK;
}

void image_remove(const char *copy_path)
{
    if (copy_path)
        unlink(copy_path);
}

void image_set_owner(long pid)
{
    atomic_store(&copy_owner, pid);
}

/* Is process pid gone?  (A process of another user is not ours to
 * judge: it counts as alive.) */
static int gone(long pid)
{
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Remove the copies in the directory made by process pid (any pid when
 * 0 and gone_only: those whose process and owner are gone).  Returns how
 * many. */
static int remove_copies(pid_t only, int gone_only)
{
    const char *dir = image_dir();
    int removed = 0;
    if (dir == NULL)
        return 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10), owner = pid;
        if (end != e->d_name && *end == '-') /* PID-OWNER.N.NAME */
            owner = strtol(end + 1, &end, 10);
        if (end == e->d_name || *end != '.' || pid <= 0 || owner <= 0)
            continue;
        if (only != 0 && (pid_t)pid != only)
            continue;
        if (gone_only && (!gone(pid) || (owner != pid && !gone(owner))))
            continue; /* alive, or its owner may still read it */
        char full[PATH_MAX];
        if (snprintf(full, sizeof full, "%s/%s", dir, e->d_name) >= (int)sizeof full)
            continue;
        if (unlink(full) == 0)
            removed++;
    }
    closedir(d);
    return removed;
}

int image_clean_stale(void)
{
    return remove_copies(0, 1);
}

int image_remove_pid(long pid)
{
    return pid > 0 ? remove_copies((pid_t)pid, 0) : 0;
}

int image_remove_own(void)
{
    return remove_copies(getpid(), 0);
}
