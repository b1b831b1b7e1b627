/* An LD_PRELOAD shim for the reliability tests: a wall clock that is wrong and
 * then set, as on a Pi without a battery clock that boots in the past until NTP
 * steps it.
 *
 * - clock_gettime(CLOCK_REALTIME*) and gettimeofday(2) add the offset in
 *   milliseconds written (as decimal text) in the file named by
 *   CAREHUB_CLOCK_OFFSET_FILE; the file is read again at most every 20 ms of
 *   CLOCK_MONOTONIC, so the test steps the clock by rewriting it.
 *   CLOCK_MONOTONIC and CLOCK_BOOTTIME are left alone: they never step.
 * - ntp_adjtime(3) and adjtimex(2) report the clock unsynchronised
 *   (STA_UNSYNC, TIME_ERROR) while the file named by CAREHUB_CLOCK_UNSYNC_FLAG
 *   exists, synchronised (TIME_OK) once it is gone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime(void) {
    static clock_gettime_fn real;
    if (real == NULL) {
        real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    }
    return real;
}

static long long offset_ms(void) {
    static long long offset;
    static long long read_at_ms = -1000000;
    struct timespec mono;
    if (real_clock_gettime()(CLOCK_MONOTONIC, &mono) != 0) {
        return offset;
    }
    long long now = (long long)mono.tv_sec * 1000 + mono.tv_nsec / 1000000;
    if (now - read_at_ms < 20) {
        return offset;
    }
    read_at_ms = now;
    const char *path = getenv("CAREHUB_CLOCK_OFFSET_FILE");
    if (path == NULL) {
        return offset;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return offset;
    }
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) {
        buf[n] = 0;
        offset = strtoll(buf, NULL, 10);
    }
    return offset;
}

static void shift(struct timespec *ts, long long ms) {
    long long ns = (long long)ts->tv_nsec + (ms % 1000) * 1000000;
    long long s = (long long)ts->tv_sec + ms / 1000;
    while (ns < 0) {
        ns += 1000000000;
        s -= 1;
    }
    while (ns >= 1000000000) {
        ns -= 1000000000;
        s += 1;
    }
    ts->tv_sec = (time_t)s;
    ts->tv_nsec = (long)ns;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int rc = real_clock_gettime()(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        shift(ts, offset_ms());
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

static int report(struct timex *tx, int (*real)(struct timex *)) {
    int state = real(tx);
    const char *flag = getenv("CAREHUB_CLOCK_UNSYNC_FLAG");
    if (flag != NULL && access(flag, F_OK) == 0) {
        tx->status |= STA_UNSYNC;
        return TIME_ERROR;
    }
    tx->status &= ~STA_UNSYNC;
    return state < 0 ? state : TIME_OK;
}

int ntp_adjtime(struct timex *tx) {
    static int (*real)(struct timex *);
    if (real == NULL) {
        real = (int (*)(struct timex *))dlsym(RTLD_NEXT, "ntp_adjtime");
    }
    return report(tx, real);
}

int adjtimex(struct timex *tx) {
    static int (*real)(struct timex *);
    if (real == NULL) {
        real = (int (*)(struct timex *))dlsym(RTLD_NEXT, "adjtimex");
    }
    return report(tx, real);
}
