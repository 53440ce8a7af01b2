//! The devices an env may use: an allow list enforced by its cgroup, so a device node that
//! reaches an env (from a snapshot, on a mount without `nodev`) opens only if it is one of
//! these. Character devices only: the host's `null`, `zero`, `full`, `random`, `urandom` and
//! `tty` that the init binds into `/dev` (`inside::rootfs`), and the env's own terminals
//! (`ptmx` and the pseudo-terminals of its devpts). No block device, whatever its node says.
//!
//! On a v1 or hybrid host the env's `devices` cgroup denies everything (`devices.deny a`) and
//! allows these; on a v2 host a `BPF_PROG_TYPE_CGROUP_DEVICE` program, built here from the
//! same table, is attached to the env's cgroup (with `BPF_F_ALLOW_MULTI`, so programs of
//! parent cgroups still apply too).

use crate::error::{Context, Result};
use rustix::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// One allowed character device: its major number and its minor (`None`: any minor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CharDevice {
    /// Major number.
    pub major: u32,
    /// Minor number, or any.
    pub minor: Option<u32>,
}

/// Fixed devices allowed (major, minor): null, zero, full, random, urandom, tty, ptmx.
const FIXED: [(u32, u32); 7] = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)];

/// Majors of the pseudo-terminal slaves (every minor allowed).
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// The allow list: `FIXED`, and every pseudo-terminal slave.
pub fn allowed() -> Vec<CharDevice> {
    let fixed = FIXED.iter().map(|&(major, minor)| CharDevice {
        major,
        minor: Some(minor),
    });
    let pts = PTS_MAJORS.map(|major| CharDevice { major, minor: None });
    fixed.chain(pts).collect()
}

/// The lines of a v1 `devices.allow` for [`allowed`] (`c MAJOR:MINOR rwm`).
pub fn v1_rules() -> Vec<String> {
    allowed()
        .iter()
        .map(|d| match d.minor {
            Some(minor) => format!("c {}:{minor} rwm", d.major),
            None => format!("c {}:* rwm", d.major),
        })
        .collect()
}

/// Restricts the v1 `devices` cgroup directory `dir` (new, without children) to [`allowed`].
pub fn restrict_v1(dir: &Path) -> Result<()> {
    let write = |file: &str, value: &str| {
        let path = dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value:?} to {}", path.display()))
    };
    write("devices.deny", "a")?;
    for rule in v1_rules() {
        write("devices.allow", &rule)?;
    }
    Ok(())
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Jump offset or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
/// `BPF_DEVCG_DEV_CHAR`: the low 16 bits of `access_type` in `struct bpf_cgroup_dev_ctx`.
const DEV_CHAR: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The v2 device program: 1 (allow) for a character device of [`allowed`], else 0. Its
/// context (`r1`) is `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
/// `access_type` being `access << 16 | type`.
pub fn program() -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),        // r2 = access_type
        insn(ALU64_AND_K, 2, 0, 0, 0xffff), // r2 = type
        insn(LDX_MEM_W, 3, 1, 4, 0),        // r3 = major
        insn(LDX_MEM_W, 4, 1, 8, 0),        // r4 = minor
    ];
    for d in allowed() {
        // Each rule: skip to the next one on a mismatch, else return 1.
        let checks: Vec<(u8, i32)> = [(2, DEV_CHAR), (3, d.major as i32)]
            .into_iter()
            .chain(d.minor.map(|m| (4, m as i32)))
            .collect();
        let n = checks.len() as i16;
        for (i, (reg, value)) in checks.into_iter().enumerate() {
            // Past the remaining checks and the two instructions of "return 1".
            p.push(insn(JNE_K, reg, 0, n - i as i16 - 1 + 2, value));
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Calls bpf(2) with `attr`; its non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a `repr(C)` prefix of `union bpf_attr` that outlives the call, and its
    // size is passed; the kernel reads it (and zero-fills the rest of its own copy).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    match rc {
        -1 => Err(std::io::Error::last_os_error()),
        fd => Ok(fd as i32),
    }
}

/// Loads [`program`] and attaches it to the v2 cgroup directory `dir`. The attachment keeps
/// the program for as long as the cgroup lives.
pub fn restrict_v2(dir: &Path) -> Result<()> {
    let insns = program();
    let license = c"Apache-2.0";
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoad::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &load).context("loading the env's device program")?;
    // SAFETY: bpf(BPF_PROG_LOAD) returned a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(prog) };
    let cgroup = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &attach)
        .with_context(|| format!("attaching the device program to {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The program run by hand on device contexts (an interpreter of the five opcodes it uses);
    //! the kernel runs it in tests/devices.rs.
    use super::*;

    fn run(p: &[Insn], kind: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(0b110 << 16) | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            assert_eq!(src, if i.code == LDX_MEM_W { 1 } else { 0 });
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = ctx[i.off as usize / 4] as u64,
                ALU64_AND_K => r[dst] &= i.imm as u64,
                MOV64_K => r[dst] = i.imm as u64,
                JNE_K if r[dst] != i.imm as u64 => pc += i.off as usize,
                JNE_K => {}
                EXIT => return r[0],
                code => panic!("opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_list() {
        let p = program();
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)] {
            assert_eq!(run(&p, 2, major, minor), 1, "c {major}:{minor}");
            assert_eq!(run(&p, 1, major, minor), 0, "b {major}:{minor}");
        }
        for pts in [(136, 0), (136, 77), (143, 1 << 19)] {
            assert_eq!(run(&p, 2, pts.0, pts.1), 1, "pts {pts:?}");
        }
        for (kind, major, minor) in [(1, 7, 0), (1, 8, 0), (2, 1, 1), (2, 1, 2), (2, 10, 229)] {
            assert_eq!(run(&p, kind, major, minor), 0, "{kind} {major}:{minor}");
        }
        assert_eq!(run(&p, 2, 5, 1), 0, "the console");
        assert_eq!(run(&p, 2, 144, 0), 0);
    }

    #[test]
    fn v1_rules_name_every_device() {
        let rules = v1_rules();
        assert_eq!(rules[0], "c 1:3 rwm");
        assert!(rules.contains(&"c 136:* rwm".to_string()));
        assert_eq!(rules.len(), allowed().len());
    }
}
