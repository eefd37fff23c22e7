//! A writer for the "newc" cpio format the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name, padding to 4 bytes, the data, padding
//! to 4 bytes; a `TRAILER!!!` entry ends the archive. Writing it here lets
//! the guest's root be assembled straight from the host's files (no staging
//! copy) and holds device nodes such as `/dev/console` without `mknod`.

use std::io::{self, Read, Write};

/// File type bits of `mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc archive being written to `W`.
pub(crate) struct Newc<W: Write> {
    out: W,
    /// Bytes written so far (for the padding).
    offset: u64,
    /// The next inode number.
    next_ino: u32,
}

impl<W: Write> Newc<W> {
    /// An empty archive writing to `out`.
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
        }
    }

    /// A directory `name` (no leading `/`) with permissions `perm`.
    pub(crate) fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | perm, 2, 0, (0, 0))?;
        Ok(())
    }

    /// A regular file `name` holding `len` bytes read from `data`.
    pub(crate) fn file(
        &mut self,
        name: &str,
        perm: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.header(name, S_IFREG | perm, 1, len, (0, 0))?;
        let copied = io::copy(&mut data.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {len} bytes, the source gave {copied}"),
            ));
        }
        self.offset += len;
        self.pad()
    }

    /// A symbolic link `name` pointing at `target`.
    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        let len = target.len() as u64;
        self.header(name, S_IFLNK | 0o777, 1, len, (0, 0))?;
        self.out.write_all(target.as_bytes())?;
        self.offset += len;
        self.pad()
    }

    /// A character device node `name` with device number `major:minor`.
    pub(crate) fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.header(name, S_IFCHR | perm, 1, 0, (major, minor))
    }

    /// Writes the trailer and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// One header and its name, padded; `len` bytes of data follow.
    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        len: u64,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let size = u32::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {len} bytes is too large for newc (4 GiB at most)"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        // Name size counts the terminating NUL.
        let namesize = name.len() as u64 + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.offset += 110 + namesize;
        self.pad()
    }

    /// Zero bytes up to the next multiple of 4.
    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - self.offset % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad as usize])?;
        self.offset += pad;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry read back: name, mode, data, rdev.
    type Entry = (String, u32, Vec<u8>, (u32, u32));

    /// A minimal newc reader (what the kernel does), for the tests.
    fn read_back(mut bytes: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&bytes[..6], b"070701", "magic at offset {offset}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (mode, size, rdev) = (field(1), field(6) as usize, (field(9), field(10)));
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&bytes[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(bytes[110 + namesize - 1], 0, "name is NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                return entries;
            }
            let data = bytes[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            assert!(
                bytes[data_at + size..next].iter().all(|&b| b == 0),
                "padding is zero"
            );
            entries.push((name, mode, data, rdev));
            offset += next;
            bytes = &bytes[next..];
        }
    }

    #[test]
    fn entries_read_back() {
        let mut archive = Newc::new(Vec::new());
        archive.dir("bin", 0o755).unwrap();
        let body = b"#!/bin/sh\necho hi\n";
        archive
            .file("init", 0o755, body.len() as u64, &mut &body[..])
            .unwrap();
        archive.symlink("bin/sh", "busybox").unwrap();
        archive.char_device("dev/console", 0o600, 5, 1).unwrap();
        let bytes = archive.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read_back(&bytes);
        assert_eq!(
            entries,
            vec![
                ("bin".to_string(), 0o040_755, vec![], (0, 0)),
                ("init".to_string(), 0o100_755, body.to_vec(), (0, 0)),
                ("bin/sh".to_string(), 0o120_777, b"busybox".to_vec(), (0, 0)),
                ("dev/console".to_string(), 0o020_600, vec![], (5, 1)),
            ]
        );
    }

    #[test]
    fn short_sources_are_errors() {
        let mut archive = Newc::new(Vec::new());
        let err = archive.file("f", 0o644, 10, &mut &b"abc"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
