//! The seccomp filters every sandboxed process runs under. A deny list, allow by default: runtimes
//! (CPython, Node.js, whatever a `provided` function ships) need a wide and changing set of calls,
//! and an allow list that misses one breaks functions in ways their authors cannot fix. It denies
//! what a function never needs and what widens the kernel's attack surface: mounting, tracing other
//! processes, kernel modules and kexec, BPF, keyrings, perf events, io_uring, `personality`, new
//! namespaces, clock and swap changes, reboot, and every x32 system call. docs/security.md compares
//! this with Firecracker's allow lists.
//!
//! Three programs, because their actions and shapes differ: `clone3` must fail with ENOSYS (not
//! EPERM) so that glibc falls back to `clone`, whose flags a classic filter can inspect; and the x32
//! calls (x86-64 numbers with bit 30 set, same audit arch) are a range, which seccompiler's rules
//! cannot express, so that program is assembled here.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    libc::SYS_bpf,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_perf_event_open,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    // io_uring runs work in kernel threads that seccomp never sees, and has been a steady source of
    // privilege escalations; personality() can switch off ASLR or turn on READ_IMPLIES_EXEC.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_personality,
];

/// clone() flags that create namespaces.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::Seccomp(format!("{e:?}")))
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram, SandboxError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch()?,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// The filters as the raw `struct sock_filter` arrays bubblewrap reads from a descriptor.
pub fn programs() -> Result<Vec<Vec<u8>>, SandboxError> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&nr| (nr, vec![])).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag as u64),
                flag as u64,
            )
            .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
            SeccompRule::new(vec![cond]).map_err(|e| SandboxError::Seccomp(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    deny.insert(libc::SYS_clone, clone_rules);
    let no_clone3: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_clone3, vec![])].into_iter().collect();
    let mut programs: Vec<Vec<u8>> = [
        compile(deny, libc::EPERM)?,
        compile(no_clone3, libc::ENOSYS)?,
    ]
    .iter()
    .map(to_bytes)
    .collect();
    if cfg!(target_arch = "x86_64") {
        programs.push(to_bytes(&deny_x32()));
    }
    Ok(programs)
}

/// The x32 ABI's system-call numbers: x86-64 numbers with this bit set, checked against the same
/// audit arch, so a deny list keyed on numbers alone would let `x32 | SYS_ptrace` through.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// `ret EPERM` for every system call numbered from [`X32_SYSCALL_BIT`] up on x86-64, allow the rest
/// (the other filters still apply: the kernel runs them all and takes the strictest verdict).
fn deny_x32() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    // struct seccomp_data: int nr at offset 0, __u32 arch at offset 4.
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 0, 2, AUDIT_ARCH_X86_64),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JGE_K, 1, 0, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, RET_ALLOW),
        insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
    ]
}

fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for insn in program {
        out.extend_from_slice(&insn.code.to_ne_bytes());
        out.push(insn.jt);
        out.push(insn.jf);
        out.extend_from_slice(&insn.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile() {
        let programs = super::programs().unwrap();
        assert_eq!(
            programs.len(),
            if cfg!(target_arch = "x86_64") { 3 } else { 2 }
        );
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() % 8 == 0));
    }
}
