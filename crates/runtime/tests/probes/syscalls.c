/* Syscall probe run inside an env by tests/seccomp.rs: makes the one call its argument names,
 * with arguments an unfiltered kernel answers with success or an errno other than ENOSYS, and
 * prints "ok" or "errno N". Built static with the host's C compiler (the busybox root has no
 * C library). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

static long int80_getpid(void) {
    long ret;
    /* i386 getpid is 20; int 0x80 enters the 32-bit syscall table from a 64-bit process. */
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    return ret;
}

static long call(const char *what) {
    static char buf[4096];
    if (!strcmp(what, "x32")) return syscall(0x40000000L | SYS_getpid);
    if (!strcmp(what, "int80")) {
        long r = int80_getpid();
        if (r < 0) { errno = -r; return -1; }
        return r;
    }
    if (!strcmp(what, "io_uring_setup")) { memset(buf, 0, sizeof buf); return syscall(SYS_io_uring_setup, 1, buf); }
    if (!strcmp(what, "bpf")) { memset(buf, 0, 256); return syscall(SYS_bpf, 1000, buf, 128); }
    if (!strcmp(what, "userfaultfd")) return syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    if (!strcmp(what, "keyctl")) return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* SESSION */, 1);
    if (!strcmp(what, "add_key")) return syscall(SYS_add_key, "user", "probe", "x", 1, -3);
    if (!strcmp(what, "open_by_handle_at")) { memset(buf, 0, 64); return syscall(SYS_open_by_handle_at, -1, buf, O_RDONLY); }
    if (!strcmp(what, "name_to_handle_at")) { int id; memset(buf, 0, 256); *(unsigned *)buf = 128; return syscall(SYS_name_to_handle_at, AT_FDCWD, "/", buf, &id, 0); }
    if (!strcmp(what, "fsopen")) return syscall(SYS_fsopen, "tmpfs", 0);
    if (!strcmp(what, "fsmount")) return syscall(SYS_fsmount, -1, 0, 0);
    if (!strcmp(what, "fsconfig")) return syscall(SYS_fsconfig, -1, 0, 0, 0, 0);
    if (!strcmp(what, "fspick")) return syscall(SYS_fspick, -1, "", 0);
    if (!strcmp(what, "open_tree")) return syscall(SYS_open_tree, AT_FDCWD, "/", 0);
    if (!strcmp(what, "move_mount")) return syscall(SYS_move_mount, -1, "", -1, "", 0);
    if (!strcmp(what, "mount_setattr")) return syscall(SYS_mount_setattr, -1, "", 0, buf, 32);
    if (!strcmp(what, "quotactl_fd")) return syscall(SYS_quotactl_fd, -1, 0, 0, 0);
    if (!strcmp(what, "fanotify_init")) return syscall(SYS_fanotify_init, 0x200 /* FAN_REPORT_FID */, O_RDONLY);
    if (!strcmp(what, "af_packet")) return socket(AF_PACKET, SOCK_RAW, 0);
    if (!strcmp(what, "af_inet_raw")) return socket(AF_INET, SOCK_RAW, 1 /* ICMP */);
    if (!strcmp(what, "unshare_user")) return syscall(SYS_unshare, 0x10000000 /* CLONE_NEWUSER */);
    if (!strcmp(what, "clone3")) { memset(buf, 0, 88); return syscall(SYS_clone3, buf, 1 /* too small */); }
    if (!strcmp(what, "getpid")) return syscall(SYS_getpid);
    errno = EINVAL;
    fprintf(stderr, "probe: unknown call %s\n", what);
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long r = call(argv[i]);
        if (r == -2) return 2;
        if (r < 0) printf("%s errno %d\n", argv[i], errno);
        else printf("%s ok\n", argv[i]);
        fflush(stdout);
    }
    return 0;
}
