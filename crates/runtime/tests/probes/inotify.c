/* Inotify probe run inside an env by tests/budgets.rs. `instances` opens inotify instances until
 * the kernel refuses one; `watches` adds watches to one instance, each on a new empty file in
 * DIR, until the kernel refuses one. Prints "COUNT errno N", then holds what it took until its
 * stdin closes. Built static with the host's C compiler (the busybox root has no C library). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static long instances(int *err) {
    long n = 0;
    while (inotify_init1(IN_CLOEXEC) >= 0) n++;
    *err = errno;
    return n;
}

static long watches(const char *dir, int *err) {
    char path[4096];
    long n = 0;
    int in = inotify_init1(IN_CLOEXEC);
    if (in < 0) { *err = errno; return -1; }
    for (;;) {
        snprintf(path, sizeof path, "%s/%ld", dir, n);
        int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        if (fd < 0) { *err = errno; return -n - 1; }
        close(fd);
        if (inotify_add_watch(in, path, IN_MODIFY) < 0) { *err = errno; return n; }
        n++;
    }
}

int main(int argc, char **argv) {
    int err = 0;
    long n;
    if (argc == 2 && !strcmp(argv[1], "instances")) n = instances(&err);
    else if (argc == 3 && !strcmp(argv[1], "watches")) n = watches(argv[2], &err);
    else { fprintf(stderr, "usage: probe instances | probe watches DIR\n"); return 2; }
    printf("%ld errno %d\n", n, err);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}
