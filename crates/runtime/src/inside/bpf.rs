//! The seccomp filter written out as classic BPF from the policy's syscall numbers as ranges.
//!
//! The syscalls allowed whatever their arguments fall into a few dozen runs of consecutive
//! numbers, so the program tests ranges: 152 instructions for the env policy, where a chain
//! of one test per syscall (what `seccompiler` emits for the same policy) is 1567. Every
//! env's init and every env-enter helper installs the filter, and the kernel's BPF JIT takes
//! time in proportion to the program: 0.85 ms for the chain, 0.06 ms for this one on the test
//! machine. The tests run both programs, this one and `seccompiler`'s
//! from the same policy, on every syscall number with arguments that each condition tells
//! apart, and require the same answer.
//!
//! Layout: the architecture (another one's call kills the process), then each syscall with
//! a condition on its first argument (a block that returns), then the ranges in ascending
//! order (`nr > hi`: next range; `nr >= lo`: allow; else: deny), then deny.

use seccompiler::{sock_filter, BpfProgram};

/// What an allowed syscall's first argument must be (its low 32 bits, what a filter reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg0 {
    /// Anything.
    Any,
    /// No bit of the mask set.
    MaskedZero(u32),
    /// Anything but this value.
    Not(u32),
    /// One of these values.
    OneOf(&'static [u32]),
}

/// Offsets in `struct seccomp_data`: the syscall number, the audit architecture, and the low
/// 32 bits of the first argument.
const NR: u32 = 0;
const ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const ARG0_LOW: u32 = 16;
#[cfg(target_endian = "big")]
const ARG0_LOW: u32 = 20;

/// The filter's answers.
pub const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
/// A call the policy does not allow fails with `ENOSYS`, as on a kernel that lacks it.
pub const DENY: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
/// A call from another architecture's table kills the process.
pub const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | code | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(action: u32) -> sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, action)
}

/// The block of a syscall with a condition (none for [`Arg0::Any`]): loads its first
/// argument, returns the answer.
fn condition(arg: Arg0) -> Option<Vec<sock_filter>> {
    let tests = match arg {
        Arg0::Any => return None,
        Arg0::MaskedZero(mask) => vec![jump(libc::BPF_JSET, mask, 1, 0), ret(ALLOW), ret(DENY)],
        Arg0::Not(value) => vec![jump(libc::BPF_JEQ, value, 1, 0), ret(ALLOW), ret(DENY)],
        Arg0::OneOf(values) => {
            let n = values.len();
            // Equal: to the `ret ALLOW` after this list and its `ret DENY`.
            let mut tests: Vec<sock_filter> = (values.iter().enumerate())
                .map(|(i, &v)| jump(libc::BPF_JEQ, v, (n - i) as u8, 0))
                .collect();
            tests.extend([ret(DENY), ret(ALLOW)]);
            tests
        }
    };
    Some([vec![load(ARG0_LOW)], tests].concat())
}

/// The runs of consecutive numbers in `sorted` (ascending, no duplicates), as (first, last).
fn runs(sorted: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &nr in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == nr => *last = nr,
            _ => out.push((nr, nr)),
        }
    }
    out
}

/// The program allowing the syscalls of `policy` (number and condition; numbers unique) of
/// the architecture whose audit value is `arch`, and nothing else.
pub fn program(arch: u32, policy: &[(u32, Arg0)]) -> Result<BpfProgram, String> {
    let mut prog = vec![
        load(ARCH),
        jump(libc::BPF_JEQ, arch, 1, 0),
        ret(KILL),
        load(NR),
    ];
    let mut plain: Vec<u32> = Vec::new();
    for &(nr, arg) in policy {
        let Some(block) = condition(arg) else {
            plain.push(nr);
            continue;
        };
        let skip =
            u8::try_from(block.len()).map_err(|_| format!("syscall {nr}: too many values"))?;
        prog.push(jump(libc::BPF_JEQ, nr, 0, skip));
        prog.extend(block);
    }
    plain.sort_unstable();
    plain.dedup();
    for (lo, hi) in runs(&plain) {
        prog.extend([
            jump(libc::BPF_JGT, hi, 3, 0),
            jump(libc::BPF_JGE, lo, 0, 1),
            ret(ALLOW),
            ret(DENY),
        ]);
    }
    prog.push(ret(DENY));
    Ok(prog)
}

#[cfg(test)]
pub(crate) mod run {
    //! A classic BPF interpreter for seccomp programs (the instructions both compilers emit:
    //! `ld [k]`, `and #k`, `ja`, `jeq`/`jgt`/`jge`/`jset #k`, `ret #k`), to compare programs by
    //! what they answer.

    use seccompiler::sock_filter;

    /// The `struct seccomp_data` of a call, as the kernel lays it out.
    pub fn data(nr: u32, arch: u32, args: [u64; 6]) -> Vec<u8> {
        let mut d = Vec::with_capacity(64);
        d.extend(nr.to_ne_bytes());
        d.extend(arch.to_ne_bytes());
        d.extend(0u64.to_ne_bytes()); // instruction pointer
        for a in args {
            d.extend(a.to_ne_bytes());
        }
        d
    }

    /// What `prog` returns for `data`. Only what both compilers emit: loads of a word of the
    /// data, `and`, jumps on a constant, returns of a constant; anything else panics.
    pub fn run(prog: &[sock_filter], data: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => {
                    let at = i.k as usize;
                    a = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => a &= i.k,
                0x05 => pc += i.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                code => panic!("instruction {code:#x} is not interpreted"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::run::{data, run};
    use super::*;

    #[test]
    fn ranges_are_the_runs_of_the_numbers() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[3]), vec![(3, 3)]);
        assert_eq!(runs(&[0, 1, 2, 5, 7, 8]), vec![(0, 2), (5, 5), (7, 8)]);
    }

    #[test]
    fn a_small_policy_answers_as_written() {
        const PERS: &[u32] = &[0, 8];
        let arch = 0xc000_003e;
        let prog = program(
            arch,
            &[
                (1, Arg0::Any),
                (2, Arg0::Any),
                (3, Arg0::Any),
                (7, Arg0::Any),
                (9, Arg0::MaskedZero(0x10)),
                (10, Arg0::Not(17)),
                (11, Arg0::OneOf(PERS)),
            ],
        )
        .unwrap();
        let call = |nr: u32, arg: u64| run(&prog, &data(nr, arch, [arg, 0, 0, 0, 0, 0]));
        for (nr, want) in [
            (0, DENY),
            (1, ALLOW),
            (3, ALLOW),
            (4, DENY),
            (7, ALLOW),
            (8, DENY),
        ] {
            assert_eq!(call(nr, 0), want, "syscall {nr}");
        }
        assert_eq!(call(9, 0x01), ALLOW);
        assert_eq!(call(9, 0x11), DENY);
        assert_eq!(call(10, 2), ALLOW);
        assert_eq!(call(10, 17), DENY);
        // The high 32 bits are not read.
        assert_eq!(call(10, (1 << 32) | 17), DENY);
        assert_eq!(call(11, 8), ALLOW);
        assert_eq!(call(11, 9), DENY);
        assert_eq!(call(0x4000_0001, 0), DENY);
        assert_eq!(run(&prog, &data(1, 0x4000_0003, [0; 6])), KILL);
    }
}
