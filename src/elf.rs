//! Just enough ELF to tell whether `LD_PRELOAD` can work on a program.
//!
//! A dynamically linked program names its loader in a `PT_INTERP` program header; the
//! loader is what reads `LD_PRELOAD`. A program without one (static Go binaries, musl
//! static builds) makes its system calls directly and no preload library sees them.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What a file is, as far as preloading goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Has an ELF interpreter: LD_PRELOAD applies.
    Dynamic,
    /// An ELF file without an interpreter: LD_PRELOAD cannot apply.
    Static,
    /// Not ELF (a script, which runs an interpreter that is checked when it runs).
    NotElf,
}

/// Why a file could not be classified.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The ELF header or a program header lies outside the bytes read, or has an
    /// unknown class or byte order.
    #[error("truncated or malformed ELF header")]
    Malformed,
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it gave.
        source: std::io::Error,
    },
    /// The file's ELF header is malformed.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it ([`ElfError::Malformed`]).
        source: Box<ElfError>,
    },
}

const PT_INTERP: u32 = 3;

/// Classify the first bytes of a file (the ELF header and program headers).
pub(crate) fn linkage(b: &[u8]) -> Result<Linkage, ElfError> {
    if b.len() < 4 || &b[..4] != b"\x7fELF" {
        return Ok(Linkage::NotElf);
    }
    let bad = || ElfError::Malformed;
    let class64 = match b.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad()),
    };
    let le = match b.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err(bad()),
    };
    let u16_at = |o: usize| -> Result<u64, ElfError> {
        let s: [u8; 2] = b.get(o..o + 2).ok_or_else(bad)?.try_into().expect("2");
        Ok(u64::from(if le {
            u16::from_le_bytes(s)
        } else {
            u16::from_be_bytes(s)
        }))
    };
    let u32_at = |o: usize| -> Result<u64, ElfError> {
        let s: [u8; 4] = b.get(o..o + 4).ok_or_else(bad)?.try_into().expect("4");
        Ok(u64::from(if le {
            u32::from_le_bytes(s)
        } else {
            u32::from_be_bytes(s)
        }))
    };
    let u64_at = |o: usize| -> Result<u64, ElfError> {
        let s: [u8; 8] = b.get(o..o + 8).ok_or_else(bad)?.try_into().expect("8");
        Ok(if le {
            u64::from_le_bytes(s)
        } else {
            u64::from_be_bytes(s)
        })
    };
    let (phoff, phentsize, phnum) = if class64 {
        (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?)
    } else {
        (u32_at(0x1C)?, u16_at(0x2A)?, u16_at(0x2C)?)
    };
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|_| bad())?;
        if u32_at(at)? == u64::from(PT_INTERP) {
            return Ok(Linkage::Dynamic);
        }
    }
    Ok(Linkage::Static)
}

/// Classify a file on disk.
pub fn file_linkage(path: &Path) -> Result<Linkage, ElfError> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|source| ElfError::Read {
            path: path.to_owned(),
            source,
        })?;
    linkage(&head).map_err(|e| ElfError::File {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_files() {
        let me = std::env::current_exe().unwrap();
        assert_eq!(file_linkage(&me).unwrap(), Linkage::Dynamic);
        assert_eq!(linkage(b"#!/bin/sh\n").unwrap(), Linkage::NotElf);
        assert!(matches!(linkage(b"\x7fELF\x09"), Err(ElfError::Malformed)));
        // A minimal 64-bit little-endian header with no program headers is static.
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        assert_eq!(linkage(&h).unwrap(), Linkage::Static);
        // One PT_INTERP header makes it dynamic.
        h[0x20] = 64;
        h[0x36] = 56;
        h[0x38] = 1;
        h.resize(64 + 56, 0);
        h[64] = 3;
        assert_eq!(linkage(&h).unwrap(), Linkage::Dynamic);
    }

    #[test]
    fn errors_name_the_file_as_before() {
        let e = file_linkage(Path::new("/no/such/file")).unwrap_err();
        assert!(matches!(e, ElfError::Read { .. }));
        assert!(e.to_string().starts_with("/no/such/file: "), "{e}");
        let file = std::env::temp_dir().join(format!("qnet-elf-{}", std::process::id()));
        std::fs::write(&file, b"\x7fELF\x07").unwrap();
        let e = file_linkage(&file).unwrap_err();
        let _ = std::fs::remove_file(&file);
        assert_eq!(
            e.to_string(),
            format!("{}: truncated or malformed ELF header", file.display())
        );
    }
}
