//! The seccomp filter of every process in an env: an allow list. The policy is data (the
//! tables below: syscalls allowed whatever their arguments, and a few allowed only with some
//! arguments), written out as classic BPF by [`crate::inside::bpf`] (ranges of syscall
//! numbers: 152 instructions, which the kernel's JIT takes 0.06 ms to install where
//! `seccompiler`'s one test per syscall took 0.85 ms; the tests compare the two programs'
//! answers), once per process that enters an env, and installed with `seccompiler` after
//! no_new_privs.
//!
//! Every other syscall fails with `ENOSYS`, as on a kernel that lacks it, so programs take
//! the fallback they have for older kernels (glibc goes from `clone3` to `clone`, from
//! `fchmodat2` to `fchmodat`): a syscall newer than this list degrades, it does not break.
//! Left out on purpose: kernel modules, kexec, reboot, swap, clocks, kernel logs, accounting,
//! bpf, perf, userfaultfd, kernel keyrings, handle-based opens, quotas (`quotactl`,
//! `quotactl_fd`), fanotify, raw I/O ports, io_uring, `vhangup`, and every way to make or
//! join namespaces or change mounts (`mount`, `umount2`, `pivot_root`, `unshare`, `setns`,
//! the new mount API, `clone` with a `CLONE_NEW*` flag, `clone3`, whose flags a filter cannot
//! read). `socket` is allowed for every family but `AF_PACKET` (a raw view of the env's
//! links, which nothing an env runs needs). A call from another architecture's table (i386
//! `int 0x80` on x86_64) kills the process: its numbers mean other calls, and no program of
//! the env's architecture makes one. x32 numbers (bit 30) are simply not in the list.

use crate::inside::bpf::{self, Arg0};
use anyhow::{anyhow, Context, Result};
use seccompiler::BpfProgram;
use std::collections::BTreeMap;

/// Syscalls allowed whatever their arguments, on every architecture.
#[rustfmt::skip]
const ALLOWED: &[libc::c_long] = {
    use libc::*;
    &[
        // Files and directories.
        SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_preadv,
        SYS_pwritev, SYS_preadv2, SYS_pwritev2, SYS_openat, SYS_openat2, SYS_close,
        SYS_close_range, SYS_lseek, SYS_dup, SYS_dup3, SYS_pipe2, SYS_fcntl, SYS_ioctl,
        SYS_flock, SYS_fsync, SYS_fdatasync, SYS_sync, SYS_syncfs, SYS_sync_file_range,
        SYS_truncate, SYS_ftruncate, SYS_fallocate, SYS_fadvise64, SYS_readahead,
        SYS_copy_file_range, SYS_sendfile, SYS_splice, SYS_tee, SYS_vmsplice, SYS_getdents64,
        SYS_getcwd, SYS_chdir, SYS_fchdir, SYS_chroot, SYS_mkdirat, SYS_mknodat, SYS_unlinkat,
        SYS_symlinkat, SYS_linkat, SYS_renameat, SYS_renameat2, SYS_readlinkat, SYS_faccessat,
        SYS_faccessat2, SYS_fchmod, SYS_fchmodat, SYS_fchmodat2, SYS_fchown, SYS_fchownat,
        SYS_utimensat, SYS_newfstatat, SYS_fstat, SYS_statx, SYS_statfs, SYS_fstatfs,
        SYS_umask, SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_getxattr, SYS_lgetxattr,
        SYS_fgetxattr, SYS_listxattr, SYS_llistxattr, SYS_flistxattr, SYS_removexattr,
        SYS_lremovexattr, SYS_fremovexattr, SYS_inotify_init1, SYS_inotify_add_watch,
        SYS_inotify_rm_watch, SYS_memfd_create, SYS_memfd_secret,
        // Memory.
        SYS_brk, SYS_mmap, SYS_munmap, SYS_mprotect, SYS_mremap, SYS_msync, SYS_mincore,
        SYS_madvise, SYS_process_madvise, SYS_mlock, SYS_mlock2, SYS_munlock, SYS_mlockall,
        SYS_munlockall, SYS_remap_file_pages, SYS_mbind, SYS_get_mempolicy, SYS_set_mempolicy,
        SYS_set_mempolicy_home_node, SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect,
        SYS_mseal, SYS_membarrier,
        // Processes, threads, signals.
        SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group, SYS_wait4, SYS_waitid, SYS_kill,
        SYS_tkill, SYS_tgkill, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn,
        SYS_rt_sigpending, SYS_rt_sigtimedwait, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo,
        SYS_rt_sigsuspend, SYS_sigaltstack, SYS_signalfd4, SYS_pidfd_open,
        SYS_pidfd_send_signal, SYS_pidfd_getfd, SYS_process_mrelease, SYS_set_tid_address,
        SYS_set_robust_list, SYS_get_robust_list, SYS_futex, SYS_futex_waitv, SYS_rseq,
        SYS_restart_syscall, SYS_prctl, SYS_seccomp, SYS_landlock_create_ruleset,
        SYS_landlock_add_rule, SYS_landlock_restrict_self, SYS_ptrace, SYS_process_vm_readv,
        SYS_process_vm_writev, SYS_kcmp, SYS_capget, SYS_capset, SYS_getpid, SYS_getppid,
        SYS_gettid, SYS_getpgid, SYS_setpgid, SYS_getsid, SYS_setsid, SYS_getuid, SYS_geteuid,
        SYS_getgid, SYS_getegid, SYS_getresuid, SYS_getresgid, SYS_getgroups, SYS_setuid,
        SYS_setgid, SYS_setreuid, SYS_setregid, SYS_setresuid, SYS_setresgid, SYS_setfsuid,
        SYS_setfsgid, SYS_setgroups, SYS_getrlimit, SYS_setrlimit, SYS_prlimit64,
        SYS_getrusage, SYS_getpriority, SYS_setpriority, SYS_sched_yield, SYS_sched_getaffinity,
        SYS_sched_setaffinity, SYS_sched_getparam, SYS_sched_setparam, SYS_sched_getscheduler,
        SYS_sched_setscheduler, SYS_sched_getattr, SYS_sched_setattr,
        SYS_sched_get_priority_max, SYS_sched_get_priority_min, SYS_sched_rr_get_interval,
        SYS_ioprio_get, SYS_ioprio_set, SYS_getcpu, SYS_uname, SYS_sysinfo, SYS_sethostname,
        SYS_setdomainname, SYS_getrandom,
        // Time and waiting.
        SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_nanosleep,
        SYS_gettimeofday, SYS_times, SYS_getitimer, SYS_setitimer, SYS_timer_create,
        SYS_timer_settime, SYS_timer_gettime, SYS_timer_getoverrun, SYS_timer_delete,
        SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime, SYS_eventfd2,
        SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2, SYS_ppoll,
        SYS_pselect6,
        // Asynchronous I/O (the old interface; io_uring is left out).
        SYS_io_setup, SYS_io_destroy, SYS_io_submit, SYS_io_cancel, SYS_io_getevents,
        // System V and POSIX IPC (the env's own IPC namespace).
        SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_semget, SYS_semop, SYS_semctl,
        SYS_semtimedop, SYS_shmget, SYS_shmat, SYS_shmdt, SYS_shmctl, SYS_mq_open,
        SYS_mq_unlink, SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_notify,
        SYS_mq_getsetattr,
        // Sockets (`socket` itself is a rule: no AF_PACKET).
        SYS_socketpair, SYS_bind, SYS_connect, SYS_listen, SYS_accept, SYS_accept4,
        SYS_getsockname, SYS_getpeername, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg,
        SYS_sendmmsg, SYS_recvmmsg, SYS_shutdown, SYS_setsockopt, SYS_getsockopt,
    ]
};

/// Syscalls allowed whatever their arguments that only x86_64 has (the older forms the
/// generic table replaced).
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ALLOWED_X86_64: &[libc::c_long] = {
    use libc::*;
    &[
        SYS_open, SYS_creat, SYS_stat, SYS_lstat, SYS_access, SYS_pipe, SYS_dup2, SYS_poll,
        SYS_select, SYS_epoll_create, SYS_epoll_wait, SYS_eventfd, SYS_signalfd,
        SYS_inotify_init, SYS_getdents, SYS_mkdir, SYS_rmdir, SYS_mknod, SYS_unlink,
        SYS_symlink, SYS_link, SYS_rename, SYS_readlink, SYS_chmod, SYS_chown, SYS_lchown,
        SYS_utime, SYS_utimes, SYS_futimesat, SYS_fork, SYS_vfork, SYS_alarm, SYS_pause,
        SYS_time, SYS_getpgrp, SYS_arch_prctl, SYS_get_thread_area, SYS_set_thread_area,
    ]
};
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_X86_64: &[libc::c_long] = &[];

/// Syscalls newer than the `libc` crate's tables, allowed whatever their arguments. From 424
/// on, every architecture shares one numbering.
const ALLOWED_NEWER: &[libc::c_long] = &[
    451, // cachestat
    453, // map_shadow_stack (x86_64 shadow stacks; ENOSYS elsewhere)
    454, // futex_wake
    455, // futex_wait
    456, // futex_requeue
    463, // setxattrat
    464, // getxattrat
    465, // listxattrat
    466, // removexattrat
];

/// `clone` flags that create namespaces (a filter reads `clone`'s flags, not `clone3`'s).
const CLONE_NEW_ANY: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64
    | 0x80; // CLONE_NEWTIME

/// `personality` values allowed (Docker's list): Linux, with UNAME26 or 32-bit addresses,
/// and the query. Not ADDR_NO_RANDOMIZE, which would switch address randomisation off.
const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The audit architecture values of `<linux/audit.h>` a filter checks calls against.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;

/// The policy: each allowed syscall and what its first argument must be.
pub fn policy() -> BTreeMap<u32, Arg0> {
    let mut rules: BTreeMap<u32, Arg0> = [ALLOWED, ALLOWED_X86_64, ALLOWED_NEWER]
        .concat()
        .into_iter()
        .map(|nr| (nr as u32, Arg0::Any))
        .collect();
    rules.insert(
        libc::SYS_clone as u32,
        Arg0::MaskedZero(CLONE_NEW_ANY as u32),
    );
    rules.insert(libc::SYS_socket as u32, Arg0::Not(libc::AF_PACKET as u32));
    rules.insert(libc::SYS_personality as u32, Arg0::OneOf(PERSONALITIES));
    rules
}

/// This architecture's audit value, which the filter checks every call against.
fn audit_arch() -> Result<u32> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(AUDIT_ARCH_X86_64),
        "aarch64" => Ok(AUDIT_ARCH_AARCH64),
        other => Err(anyhow!("no seccomp filter for the {other} architecture")),
    }
}

/// The filter program for this architecture.
pub fn program() -> Result<BpfProgram> {
    let policy: Vec<(u32, Arg0)> = policy().into_iter().collect();
    bpf::program(audit_arch()?, &policy).map_err(|e| anyhow!("building the seccomp filter: {e}"))
}

/// Installs the filter on this thread (inherited by every child). Needs no_new_privs.
pub fn install() -> Result<()> {
    let program = program()?;
    seccompiler::apply_filter(&program).context("installing the seccomp filter")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inside::bpf::run::{data, run};
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };

    /// `seccompiler`'s program for the same policy: the reference.
    fn reference() -> BpfProgram {
        let arg = |op, value| SeccompCondition::new(0, SeccompCmpArgLen::Dword, op, value).unwrap();
        let rule = |c| SeccompRule::new(vec![c]).unwrap();
        let rules = policy()
            .into_iter()
            .map(|(nr, a)| {
                let rules = match a {
                    Arg0::Any => Vec::new(),
                    Arg0::MaskedZero(m) => vec![rule(arg(SeccompCmpOp::MaskedEq(m.into()), 0))],
                    Arg0::Not(v) => vec![rule(arg(SeccompCmpOp::Ne, v.into()))],
                    Arg0::OneOf(vs) => vs
                        .iter()
                        .map(|&v| rule(arg(SeccompCmpOp::Eq, v.into())))
                        .collect(),
                };
                (i64::from(nr), rules)
            })
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::ENOSYS as u32),
            SeccompAction::Allow,
            std::env::consts::ARCH.try_into().unwrap(),
        )
        .unwrap();
        filter.try_into().unwrap()
    }

    #[test]
    fn the_policy_leaves_out_the_denied_classes() {
        let rules = policy();
        let denied = [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_clone3,
            libc::SYS_bpf,
            libc::SYS_io_uring_setup,
            libc::SYS_userfaultfd,
            libc::SYS_keyctl,
            libc::SYS_open_by_handle_at,
            libc::SYS_fsopen,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_quotactl_fd,
            libc::SYS_fanotify_init,
        ];
        for nr in denied {
            assert!(!rules.contains_key(&(nr as u32)), "syscall {nr} is allowed");
        }
        assert_eq!(rules[&(libc::SYS_read as u32)], Arg0::Any);
        assert_eq!(
            rules[&(libc::SYS_personality as u32)],
            Arg0::OneOf(PERSONALITIES)
        );
    }

    /// Every syscall number (and x32's, and garbage), from this architecture and another,
    /// with first arguments that each condition tells apart (high bits set or not): the
    /// program answers as `seccompiler`'s program of the same policy, and is far shorter.
    #[test]
    fn the_program_answers_every_call_as_seccompiler_s_program_does() {
        let (ours, theirs) = (program().unwrap(), reference());
        assert!(
            ours.len() * 5 < theirs.len(),
            "{} vs {}",
            ours.len(),
            theirs.len()
        );
        let mut args: Vec<u64> = vec![0, 1, 2, 17, 0x11, 0x0040_0000, u64::MAX, 1 << 32];
        args.extend([
            CLONE_NEW_ANY,
            libc::CLONE_NEWUSER as u64,
            libc::CLONE_NEWNET as u64,
            0x80,
        ]);
        args.extend([libc::AF_PACKET as u64 | 1 << 32, 0xffff_ffff_0000_0000]);
        args.extend(PERSONALITIES.iter().map(|&p| u64::from(p)));
        args.extend(PERSONALITIES.iter().map(|&p| u64::from(p) | 1 << 40));
        let numbers = (0..1100)
            .chain((0..8).map(|n| 0x4000_0000 + n))
            .chain([u32::MAX]);
        let native = audit_arch().unwrap();
        let mut allowed = 0;
        for nr in numbers {
            for arch in [native, 0x4000_0003] {
                for &a in &args {
                    let d = data(nr, arch, [a, a, 0, 0, 0, 0]);
                    let want = run(&theirs, &d);
                    assert_eq!(
                        run(&ours, &d),
                        want,
                        "syscall {nr} arch {arch:#x} arg {a:#x}"
                    );
                    allowed += usize::from(want == bpf::ALLOW);
                }
            }
        }
        assert!(allowed > 300 * args.len(), "{allowed}");
        assert!(ours.len() < 400, "{} instructions", ours.len());
    }
}
