//! Tiny guest "kernels" for probing what this host allows without a real Linux guest: minimal
//! x86-64 ELF images that Firecracker's loader accepts and jumps to in 64-bit mode.
//!
//! - [`spin_kernel`] loops forever: a VM that stays `Running` (for lifecycle tests).
//! - [`reset_kernel`] writes the reset command (0xFE) to the i8042 controller's port 0x64, on which
//!   Firecracker ends the VMM with exit code 0: proof that KVM ran guest instructions.
//!
//! Neither is a boot: they say nothing about whether a Linux guest gets to user space on this host.

/// Where the image is loaded: Firecracker requires kernels at or above 1 MiB.
const LOAD_ADDRESS: u64 = 0x10_0000;
const ELF_HEADER_SIZE: u16 = 64;
const PROGRAM_HEADER_SIZE: u16 = 56;

/// `jmp $`.
const SPIN: &[u8] = &[0xeb, 0xfe];
/// `mov al, 0xfe; out 0x64, al; jmp $`.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];

pub fn spin_kernel() -> Vec<u8> {
    elf(SPIN)
}

pub fn reset_kernel() -> Vec<u8> {
    elf(RESET)
}

/// An ELF64 executable with one loadable segment holding the headers and `code`; the entry point is
/// the first byte of `code`.
fn elf(code: &[u8]) -> Vec<u8> {
    let headers = u64::from(ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE);
    let total = headers + code.len() as u64;
    let mut out = Vec::with_capacity(total as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    out.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&(LOAD_ADDRESS + headers).to_le_bytes()); // e_entry
    out.extend_from_slice(&u64::from(ELF_HEADER_SIZE).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&ELF_HEADER_SIZE.to_le_bytes()); // e_ehsize
    out.extend_from_slice(&PROGRAM_HEADER_SIZE.to_le_bytes()); // e_phentsize
    out.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // The program header: PT_LOAD, readable + executable, the whole file at LOAD_ADDRESS.
    out.extend_from_slice(&1u32.to_le_bytes()); // p_type
    out.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    out.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    out.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    out.extend_from_slice(&total.to_le_bytes()); // p_filesz
    out.extend_from_slice(&total.to_le_bytes()); // p_memsz
    out.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    out.extend_from_slice(code);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_well_formed_elf() {
        for image in [spin_kernel(), reset_kernel()] {
            assert_eq!(&image[..4], b"\x7fELF");
            let entry = u64::from_le_bytes(image[24..32].try_into().unwrap());
            let offset = (entry - LOAD_ADDRESS) as usize;
            assert_eq!(offset, 120);
            assert!(offset < image.len());
            let filesz = u64::from_le_bytes(image[64 + 32..64 + 40].try_into().unwrap());
            assert_eq!(filesz as usize, image.len());
        }
        assert_eq!(&reset_kernel()[120..], RESET);
    }
}
