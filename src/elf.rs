//! Just enough ELF to tell whether `LD_PRELOAD` can work on a program.
//!
//! A dynamically linked program names its loader in a `PT_INTERP` program header; the
//! loader is what reads `LD_PRELOAD`. A program without one (static Go binaries, musl
//! static builds) makes its system calls directly and no preload library sees them. A Go
//! program makes its own system calls even when dynamically linked (cgo): it is known by
//! its build-id note (`.note.go.buildid`, in a `PT_NOTE` segment near the start) or, when
//! built without a build id, its `.go.buildinfo` section.

use std::io::Read;
use std::path::{Path, PathBuf};

/// What a file is, as far as preloading goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linkage {
    /// Has an ELF interpreter: LD_PRELOAD applies.
    Dynamic,
    /// An ELF file without an interpreter (a static Go program included): LD_PRELOAD
    /// cannot apply.
    Static,
    /// A dynamically linked Go program: the preload loads, but Go's runtime makes its
    /// network system calls itself, past every hook.
    Go,
    /// Not ELF (a script, which runs an interpreter that is checked when it runs).
    NotElf,
    /// Built for another machine (an emulator registered with binfmt_misc runs it): its
    /// system calls are the emulator's, which LD_PRELOAD of this library cannot reach.
    Foreign,
}

impl Linkage {
    /// Why the hooks cannot see this program's connections (`None`: they can).
    pub fn unhookable(self) -> Option<&'static str> {
        match self {
            Linkage::Static => Some(
                "is statically linked: LD_PRELOAD cannot intercept it, and its connections would bypass the tunnel",
            ),
            Linkage::Go => Some(
                "is a Go program: it makes its own system calls, which LD_PRELOAD cannot intercept, and its connections would bypass the tunnel",
            ),
            Linkage::Foreign => Some(
                "is built for another architecture: an emulator would run it past LD_PRELOAD, and its connections would bypass the tunnel",
            ),
            Linkage::Dynamic | Linkage::NotElf => None,
        }
    }
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

const PT_INTERP: u64 = 3;
/// The machines this process's kernel runs without an emulator (`e_machine`): its own,
/// and on x86-64 the i386 ABI too (the seccomp filter gives those local sockets only).
#[cfg(target_arch = "x86_64")]
const NATIVE_MACHINES: &[u64] = &[62, 3];
#[cfg(target_arch = "aarch64")]
const NATIVE_MACHINES: &[u64] = &[183, 40];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE_MACHINES: &[u64] = &[];
const PT_NOTE: u64 = 4;
/// Go's linker: a note named "Go" of this type holds the build id.
const NT_GO_BUILDID: u64 = 4;
const GO_BUILDINFO: &[u8] = b".go.buildinfo";

/// The bytes read so far, with the header's class and byte order.
struct Elf<'a> {
    b: &'a [u8],
    class64: bool,
    le: bool,
}

impl Elf<'_> {
    fn int(&self, o: u64, n: usize) -> Result<u64, ElfError> {
        let o = usize::try_from(o).map_err(|_| ElfError::Malformed)?;
        let s = self
            .b
            .get(o..o.checked_add(n).ok_or(ElfError::Malformed)?)
            .ok_or(ElfError::Malformed)?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if self.le { s[n - 1 - i] } else { s[i] };
            v = v << 8 | u64::from(byte);
        }
        Ok(v)
    }
    fn u16(&self, o: u64) -> Result<u64, ElfError> {
        self.int(o, 2)
    }
    fn u32(&self, o: u64) -> Result<u64, ElfError> {
        self.int(o, 4)
    }
    /// A word of the file's class (an address or offset).
    fn word(&self, o: u64) -> Result<u64, ElfError> {
        self.int(o, if self.class64 { 8 } else { 4 })
    }
    /// A field at `off64` in the 64-bit layout, `off32` in the 32-bit one.
    fn at(&self, off64: u64, off32: u64) -> u64 {
        if self.class64 { off64 } else { off32 }
    }
}

/// The parts of an ELF file's header this module reads.
struct Header {
    class64: bool,
    le: bool,
    interp: bool,
    /// `e_machine`.
    machine: u64,
    /// (offset, size) of each PT_NOTE segment.
    notes: Vec<(u64, u64)>,
    /// Section headers: offset, entry size, count, index of the section-name table.
    sections: (u64, u64, u64, u64),
}

impl Header {
    /// Other bytes of the same file, read with its class and byte order.
    fn view<'a>(&self, b: &'a [u8]) -> Elf<'a> {
        Elf {
            b,
            class64: self.class64,
            le: self.le,
        }
    }
}

/// Parse the ELF header and program headers from the first bytes of a file.
fn header(b: &[u8]) -> Result<Option<Header>, ElfError> {
    if b.len() < 4 || &b[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let class64 = match b.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(ElfError::Malformed),
    };
    let le = match b.get(5) {
        Some(1) => true,
        Some(2) => false,
        _ => return Err(ElfError::Malformed),
    };
    let e = Elf { b, class64, le };
    let machine = e.u16(0x12)?;
    let phoff = e.word(e.at(0x20, 0x1C))?;
    let phentsize = e.u16(e.at(0x36, 0x2A))?;
    let phnum = e.u16(e.at(0x38, 0x2C))?;
    let (mut interp, mut notes) = (false, Vec::new());
    for i in 0..phnum {
        // Saturating: offsets come from the file; one past the end reads as Malformed.
        let ph = phoff.saturating_add(i * phentsize);
        match e.u32(ph)? {
            PT_INTERP => interp = true,
            PT_NOTE => notes.push((
                e.word(ph.saturating_add(e.at(8, 4)))?,
                e.word(ph.saturating_add(e.at(32, 16)))?,
            )),
            _ => {}
        }
    }
    // Section headers are optional (and may be zeroed): absent reads as none.
    let sections = (|| -> Result<_, ElfError> {
        Ok((
            e.word(e.at(0x28, 0x20))?,
            e.u16(e.at(0x3A, 0x2E))?,
            e.u16(e.at(0x3C, 0x30))?,
            e.u16(e.at(0x3E, 0x32))?,
        ))
    })()
    .unwrap_or((0, 0, 0, 0));
    Ok(Some(Header {
        class64,
        le,
        interp,
        machine,
        notes,
        sections,
    }))
}

/// Whether the notes in `e` (one PT_NOTE segment's bytes) include Go's build id.
fn go_note(e: &Elf<'_>) -> bool {
    let mut o = 0u64;
    let pad = |n: u64| n.div_ceil(4) * 4;
    while let (Ok(namesz), Ok(descsz), Ok(ty)) = (e.u32(o), e.u32(o + 4), e.u32(o + 8)) {
        let name = o + 12;
        let end = name + pad(namesz);
        if ty == NT_GO_BUILDID
            && namesz == 3
            && e.b.get(name as usize..name as usize + 3) == Some(b"Go\0")
        {
            return true;
        }
        o = end + pad(descsz);
    }
    false
}

/// Reads `len` bytes at `off` of the file (fewer at its end).
type ReadAt<'r> = dyn FnMut(u64, u64) -> std::io::Result<Vec<u8>> + 'r;

/// Classify a file from its first bytes `head` (the ELF header and program headers) and,
/// for a dynamically linked one, reads of its notes and section headers.
fn classify(head: &[u8], read_at: &mut ReadAt<'_>) -> Result<Linkage, ElfError> {
    let Some(h) = header(head)? else {
        return Ok(Linkage::NotElf);
    };
    if !NATIVE_MACHINES.is_empty() && !NATIVE_MACHINES.contains(&h.machine) {
        return Ok(Linkage::Foreign);
    }
    if !h.interp {
        return Ok(Linkage::Static);
    }
    // Go's note segment holds a few short notes; a section-name table is small too.
    const READ_MAX: u64 = 64 * 1024;
    for &(off, size) in &h.notes {
        let notes = read_at(off, size.min(READ_MAX)).unwrap_or_default();
        if go_note(&h.view(&notes)) {
            return Ok(Linkage::Go);
        }
    }
    // Built without a build id: the .go.buildinfo section, found by name.
    let (shoff, shentsize, shnum, shstrndx) = h.sections;
    // The entry size the class defines, and a bounded count: at most 256 KiB read.
    if shoff == 0 || shstrndx >= shnum || shentsize != h.view(&[]).at(64, 40) || shnum > 4096 {
        return Ok(Linkage::Dynamic);
    }
    let table = read_at(shoff, shentsize * shnum).unwrap_or_default();
    let t = h.view(&table);
    let names = (|| -> Result<_, ElfError> {
        let s = shstrndx * shentsize;
        Ok((t.word(s + t.at(24, 16))?, t.word(s + t.at(32, 20))?))
    })()
    .ok()
    .and_then(|(off, size)| read_at(off, size.min(READ_MAX)).ok())
    .unwrap_or_default();
    for i in 0..shnum {
        let Ok(n) = t.u32(i * shentsize) else { break };
        let name = names.get(n as usize..).unwrap_or_default();
        if name.starts_with(GO_BUILDINFO) && name.get(GO_BUILDINFO.len()) == Some(&0) {
            return Ok(Linkage::Go);
        }
    }
    Ok(Linkage::Dynamic)
}

/// The interpreter a `#!` script names: the first word after `#!` on its first line,
/// within the 256 bytes the kernel reads. `None` for anything else.
pub(crate) fn script_interpreter(head: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.len().min(254)];
    let line = line.split(|&b| b == b'\n').next()?;
    let word = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(word)))
}

/// The interpreter of the `#!` script at `path`, if it is one.
pub(crate) fn file_script_interpreter(path: &Path) -> Option<PathBuf> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(256).read_to_end(&mut head))
        .ok()?;
    script_interpreter(&head)
}

/// Classify a file on disk.
pub fn file_linkage(path: &Path) -> Result<Linkage, ElfError> {
    use std::os::unix::fs::FileExt;
    let read_err = |source| ElfError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut head = Vec::new();
    (&file)
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    let mut read_at = |off: u64, len: u64| -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], off + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        buf.truncate(got);
        Ok(buf)
    };
    classify(&head, &mut read_at).map_err(|e| ElfError::File {
        path: path.to_owned(),
        source: Box::new(e),
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Classify an in-memory file.
    fn linkage(b: &[u8]) -> Result<Linkage, ElfError> {
        classify(b, &mut |off, len| {
            let at = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(b.len());
            Ok(b[at(off)..at(off.saturating_add(len))].to_vec())
        })
    }

    /// A 64-bit little-endian ELF header with `phdrs` program headers (type, offset,
    /// size) from byte 64, followed by `rest`.
    fn elf64(phdrs: &[(u32, u64, u64)], rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x12..0x14].copy_from_slice(&(NATIVE_MACHINES[0] as u16).to_le_bytes());
        h[0x20] = 64;
        h[0x36] = 56;
        h[0x38] = phdrs.len() as u8;
        for &(ty, off, size) in phdrs {
            let mut ph = [0u8; 56];
            ph[..4].copy_from_slice(&ty.to_le_bytes());
            ph[8..16].copy_from_slice(&off.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&ph);
        }
        h.extend_from_slice(rest);
        h
    }

    /// One ELF note: name (NUL included), type, descriptor, each padded to 4 bytes.
    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        for v in [name.len() as u32, desc.len() as u32, ty] {
            n.extend_from_slice(&v.to_le_bytes());
        }
        for part in [name, desc] {
            n.extend_from_slice(part);
            n.resize(n.len().div_ceil(4) * 4, 0);
        }
        n
    }

    #[test]
    fn go_programs_are_told_apart_by_their_build_id_note() {
        // A dynamically linked (cgo) Go program: PT_INTERP, and a PT_NOTE segment whose
        // notes include "Go" type 4 (.note.go.buildid) after a GNU one.
        let notes = [note(b"GNU\0", 3, &[1; 20]), note(b"Go\0", 4, b"abc/def")].concat();
        let at = 64 + 2 * 56;
        let go = elf64(&[(3, 0, 0), (4, at, notes.len() as u64)], &notes);
        assert_eq!(linkage(&go).unwrap(), Linkage::Go);
        // The same notes without Go's: a plain dynamic program.
        let plain = note(b"GNU\0", 3, &[1; 20]);
        let c = elf64(&[(3, 0, 0), (4, at, plain.len() as u64)], &plain);
        assert_eq!(linkage(&c).unwrap(), Linkage::Dynamic);
        // "Go" with another type, or a truncated segment: not a build id.
        let other = note(b"Go\0", 1, b"x");
        let c = elf64(&[(3, 0, 0), (4, at, other.len() as u64)], &other);
        assert_eq!(linkage(&c).unwrap(), Linkage::Dynamic);
        let c = elf64(&[(3, 0, 0), (4, at, 1000)], &notes[..30]);
        assert_eq!(linkage(&c).unwrap(), Linkage::Dynamic);
        // Static wins: a static Go program is refused as static (qnet run says so).
        let s = elf64(&[(4, 64 + 56, notes.len() as u64)], &notes);
        assert_eq!(linkage(&s).unwrap(), Linkage::Static);
        assert!(Linkage::Go.unhookable().unwrap().contains("Go program"));
        assert!(
            Linkage::Static
                .unhookable()
                .unwrap()
                .contains("statically linked")
        );
        assert_eq!(Linkage::Dynamic.unhookable(), None);
        assert_eq!(Linkage::NotElf.unhookable(), None);
    }

    #[test]
    fn foreign_architectures_are_told_apart_by_their_machine() {
        // An aarch64 program on x86-64 (or the reverse): binfmt_misc would hand it to an
        // emulator whose own system calls LD_PRELOAD of this library does not see.
        let mut f = elf64(&[(3, 0, 0)], &[]);
        let foreign: u16 = if NATIVE_MACHINES[0] == 62 { 183 } else { 62 };
        f[0x12..0x14].copy_from_slice(&foreign.to_le_bytes());
        assert_eq!(linkage(&f).unwrap(), Linkage::Foreign);
        assert!(
            Linkage::Foreign
                .unhookable()
                .unwrap()
                .contains("architecture")
        );
        // The machines the kernel runs natively are not foreign (i386 on x86-64 too).
        for &m in NATIVE_MACHINES {
            f[0x12..0x14].copy_from_slice(&(m as u16).to_le_bytes());
            assert_eq!(linkage(&f).unwrap(), Linkage::Dynamic, "machine {m}");
        }
    }

    #[test]
    fn script_interpreters_are_read_as_the_kernel_does() {
        let i = |b: &[u8]| script_interpreter(b).map(|p| p.display().to_string());
        assert_eq!(i(b"#!/bin/sh\necho\n").as_deref(), Some("/bin/sh"));
        assert_eq!(
            i(b"#! /usr/bin/env python3 -u\n").as_deref(),
            Some("/usr/bin/env")
        );
        assert_eq!(i(b"#!\t/static/sh").as_deref(), Some("/static/sh"));
        assert_eq!(i(b"#!\n"), None);
        assert_eq!(i(b"\x7fELF"), None);
        assert_eq!(i(b"echo hi"), None);
    }

    #[test]
    fn go_programs_without_a_build_id_are_found_by_their_buildinfo_section() {
        // go build -ldflags=-buildid= writes no note; .go.buildinfo is always there.
        let build = |name: &[u8]| {
            let names = [b"\0.shstrtab\0".as_slice(), name, b"\0"].concat();
            let mut h = elf64(&[(3, 0, 0)], &names);
            let names_at = 64 + 56;
            let shoff = h.len() as u64;
            h[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
            h[0x3A] = 64;
            h[0x3C] = 3;
            h[0x3E] = 1;
            for (name, off, size) in [
                (0u32, 0u64, 0u64),
                (1, names_at, names.len() as u64),
                (11, 0, 0),
            ] {
                let mut sh = [0u8; 64];
                sh[..4].copy_from_slice(&name.to_le_bytes());
                sh[24..32].copy_from_slice(&off.to_le_bytes());
                sh[32..40].copy_from_slice(&size.to_le_bytes());
                h.extend_from_slice(&sh);
            }
            h
        };
        assert_eq!(linkage(&build(b".go.buildinfo")).unwrap(), Linkage::Go);
        assert_eq!(linkage(&build(b".go.buildinfx")).unwrap(), Linkage::Dynamic);
        assert_eq!(
            linkage(&build(b".go.buildinfo2")).unwrap(),
            Linkage::Dynamic
        );
        // A section table past the end of the file reads as none.
        let mut cut = build(b".go.buildinfo");
        cut.truncate(64 + 56 + 20);
        assert_eq!(linkage(&cut).unwrap(), Linkage::Dynamic);
    }

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
        h[0x12..0x14].copy_from_slice(&(NATIVE_MACHINES[0] as u16).to_le_bytes());
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
