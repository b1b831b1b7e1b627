/* An LD_PRELOAD shim for the reliability tests: while the file named by
 * CAREHUB_FAIL_FSYNC_FLAG exists, fsync(2) and fdatasync(2) fail with EIO without
 * syncing, as a dying SD card or a pulled USB disk makes them fail. Each refusal
 * is counted in the file named by CAREHUB_FAIL_FSYNC_COUNT (one byte a refusal),
 * so the test can tell that the fault was really met. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("CAREHUB_FAIL_FSYNC_FLAG");
    if (flag == NULL || access(flag, F_OK) != 0) {
        return 0;
    }
    const char *count = getenv("CAREHUB_FAIL_FSYNC_COUNT");
    if (count != NULL) {
        int fd = open(count, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            (void)!write(fd, "x", 1);
            close(fd);
        }
    }
    return 1;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    return real(fd);
}
