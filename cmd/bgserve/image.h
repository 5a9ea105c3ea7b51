/*
 * image.h - the plugin's file on disk: is it a complete ELF image we
 * may load, and the private copy bgserve actually dlopens.
 *
 * bgserve never dlopens the build output itself: glibc hands back the
 * image already loaded for the same path or inode (so a rebuilt plugin
 * would not be seen), and a compiler writing in place over a mapped file
 * crashes the process with SIGBUS.  Each load copies the file to
 * DIR/PID-OWNER.N.NAME (DIR: $XDG_RUNTIME_DIR/bgserve, else
 * /tmp/bgserve-UID, mode 0700; OWNER: the supervisor's pid, or PID itself
 * with --single-process) and loads the copy; the copy is deleted when the
 * generation is unloaded.  When a serving process crashes, its supervisor
 * symbolizes the report from the copies and then deletes them; copies
 * whose process and owner are both gone (a killed bgserve) are deleted
 * at the next startup.  The directory is shared by every bgserve of the
 * user, so a copy is never judged stale while its owner lives: the owner
 * may still be reading it for a crash report.
 */
#ifndef BGSERVE_IMAGE_H
#define BGSERVE_IMAGE_H

#include <stddef.h>

enum {
    IMAGE_OK = 0,
    IMAGE_EOPEN = -1,       /* cannot open or read: errno text in err */
    IMAGE_ENOTELF = -2,     /* not an ELF shared object of this machine */
    IMAGE_EINCOMPLETE = -3, /* truncated: still being written? */
    IMAGE_ESTATICTLS = -4,  /* flagged STATIC_TLS: cannot be reloaded */
    IMAGE_ECOPY = -5,       /* the private copy could not be written */
};

/*
 * Read path, check it is a complete ELF shared object without the
 * STATIC_TLS flag, and write a private copy.  On success returns
 * IMAGE_OK and *copy_path (malloc'd) names the copy.  On failure returns
 * an IMAGE_E* code with a one-line reason in err; nothing is left behind.
 */
int image_prepare(const char *path, char **copy_path, char *err, size_t errlen);

/* Check only (no copy): IMAGE_OK or an IMAGE_E* code with a reason. */
int image_check(const char *path, char *err, size_t errlen);

/* Delete a private copy made by image_prepare. */
void image_remove(const char *copy_path);

/* The process that owns this process's copies: the supervisor, set in
 * the serving process it forks.  Unset, a process owns its own. */
void image_set_owner(long pid);

/* Delete private copies whose process and owner are both gone (a killed
 * or crashed bgserve; copies named PID.N.NAME by an older bgserve: their
 * process gone).  Returns how many were removed. */
int image_clean_stale(void);

/* Delete the copies of process pid, a serving process that has died and
 * whose crash report has been written.  Returns how many were removed. */
int image_remove_pid(long pid);

/* Delete this process's own copies, still loaded or not: at exit, when
 * a generation could not be unloaded (a task stuck in plugin code still
 * runs its code).  Returns how many were removed. */
int image_remove_own(void);

/* The directory of the private copies (created if needed), or NULL. */
const char *image_dir(void);

#endif
