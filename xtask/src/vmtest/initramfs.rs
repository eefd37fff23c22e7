//! The guest's root file system, written as one newc archive straight from
//! the host's files:
//!
//! - busybox-static with a link for each applet (where no tool claims the
//!   path), `/init` and the scenario scripts under `/vmtest/`;
//! - the guest tools' programs (every file in the unpacked packages' `bin`
//!   and `sbin` directories, and udev's `scsi_id`) with the shared
//!   libraries `ldd` finds for them, from the unpacked packages or else
//!   from the host, each at the path the loader found it;
//! - the kernel modules the selected scenarios name plus their dependencies
//!   (from `modules.dep`), with `modules.dep` / `modules.alias` cut down to
//!   them;
//! - the static `parastor` binary.
//!
//! The archive is not compressed: the kernel unpacks a plain newc archive
//! as well, and skipping gzip saves time on both sides of the boot (the
//! guest's decompression runs under TCG).

use super::cpio::Newc;
use super::install::{GuestPackages, output};
use super::modules::{self, ModuleDeps};
use crate::util::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufWriter, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's `/init` (busybox sh).
const INIT: &str = include_str!("guest/init.sh");

/// Helpers every scenario script may use (`/vmtest/lib.sh`).
const LIB: &str = include_str!("guest/lib.sh");

/// The directories of the unpacked tool packages whose files all go into
/// the guest, plus single extra programs.
const PROGRAM_DIRS: &[&str] = &["bin", "sbin", "usr/bin", "usr/sbin"];
const EXTRA_PROGRAMS: &[&str] = &["lib/udev/scsi_id"];

/// One node of the guest's tree.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    /// A host file, copied with permissions `perm`.
    HostFile(PathBuf, u32),
    /// Literal contents with permissions `perm`.
    Bytes(Vec<u8>, u32),
    Symlink(String),
    CharDevice(u32, u32),
}

/// The guest's tree: path (no leading `/`) → node.
#[derive(Debug, Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Adds `node` at `path` unless something is there already; true if
    /// it was added.
    fn add(&mut self, path: &str, node: Node) -> bool {
        let path = path.trim_start_matches('/').to_string();
        if self.nodes.contains_key(&path) {
            return false;
        }
        self.nodes.insert(path, node);
        true
    }

    /// Writes the tree, each directory before what it holds (parents are
    /// prefixes, so sorted order puts them first; missing ones are made).
    fn write(mut self, out: &Path) -> Result<u64> {
        let parents: BTreeSet<String> = self
            .nodes
            .keys()
            .flat_map(|path| {
                path.match_indices('/')
                    .map(|(i, _)| path[..i].to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for parent in parents {
            self.nodes.entry(parent).or_insert(Node::Dir);
        }
        let file = fs::File::create(out)
            .map_err(|e| Error::new(format!("creating {}: {e}", out.display())))?;
        let mut archive = Newc::new(BufWriter::with_capacity(1 << 20, file));
        let failed = |path: &str, e: std::io::Error| {
            Error::new(format!("writing {path} into {}: {e}", out.display()))
        };
        for (path, node) in &self.nodes {
            match node {
                Node::Dir => archive.dir(path, 0o755),
                Node::HostFile(source, perm) => {
                    let mut f = fs::File::open(source)
                        .map_err(|e| Error::new(format!("opening {}: {e}", source.display())))?;
                    let len = f
                        .metadata()
                        .map_err(|e| Error::new(format!("{}: {e}", source.display())))?
                        .len();
                    archive.file(path, *perm, len, &mut f as &mut dyn Read)
                }
                Node::Bytes(data, perm) => {
                    archive.file(path, *perm, data.len() as u64, &mut data.as_slice())
                }
                Node::Symlink(target) => archive.symlink(path, target),
                Node::CharDevice(major, minor) => archive.char_device(path, 0o600, *major, *minor),
            }
            .map_err(|e| failed(path, e))?;
        }
        archive.finish().map_err(|e| failed("the trailer", e))?;
        let len = fs::metadata(out)
            .map_err(|e| Error::new(format!("{}: {e}", out.display())))?
            .len();
        Ok(len)
    }
}

/// What goes into the guest besides the packages.
pub(crate) struct Contents<'a> {
    /// `/vmtest/plan`: what `/init` runs.
    pub(crate) plan: String,
    /// Scenario scripts: name → text (`/vmtest/scenarios/NAME.sh`).
    pub(crate) scripts: Vec<(&'static str, &'static str)>,
    /// Scenario data files: name → text (`/vmtest/data/NAME`).
    pub(crate) data: Vec<(&'static str, &'static str)>,
    /// Kernel modules the scenarios load (names).
    pub(crate) modules: BTreeSet<&'a str>,
    /// The static `parastor` binary.
    pub(crate) parastor: &'a Path,
}

/// Builds the guest's initramfs at `out`; returns its size in bytes.
pub(crate) fn build(packages: &GuestPackages, contents: &Contents<'_>, out: &Path) -> Result<u64> {
    let mut tree = Tree::default();
    tree.add("dev/console", Node::CharDevice(5, 1));
    for dir in ["proc", "sys", "dev", "tmp", "run", "mnt", "root", "etc"] {
        tree.add(dir, Node::Dir);
    }
    tree.add(
        "etc/passwd",
        Node::Bytes(b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644),
    );
    tree.add("etc/group", Node::Bytes(b"root:x:0:\n".to_vec(), 0o644));
    tree.add("init", Node::Bytes(INIT.as_bytes().to_vec(), 0o755));
    tree.add("vmtest/lib.sh", Node::Bytes(LIB.as_bytes().to_vec(), 0o644));
    tree.add(
        "vmtest/plan",
        Node::Bytes(contents.plan.as_bytes().to_vec(), 0o644),
    );
    for (name, script) in &contents.scripts {
        tree.add(
            &format!("vmtest/scenarios/{name}.sh"),
            Node::Bytes(script.as_bytes().to_vec(), 0o755),
        );
    }
    for (name, text) in &contents.data {
        tree.add(
            &format!("vmtest/data/{name}"),
            Node::Bytes(text.as_bytes().to_vec(), 0o644),
        );
    }
    tree.add(
        "usr/local/bin/parastor",
        Node::HostFile(contents.parastor.to_path_buf(), 0o755),
    );

    let lib_dirs = add_programs(&mut tree, &packages.tools)?;
    let library_path: Vec<&str> = lib_dirs.iter().map(String::as_str).collect();
    tree.add(
        "vmtest/library-path",
        Node::Bytes(format!("{}\n", library_path.join(":")).into_bytes(), 0o644),
    );
    add_busybox_links(&mut tree, &packages.busybox())?;
    add_modules(&mut tree, packages, &contents.modules)?;
    tree.write(out)
}

/// Adds the tool programs and the libraries they load; returns the guest
/// directories holding those libraries (for `LD_LIBRARY_PATH`).
fn add_programs(tree: &mut Tree, tools: &Path) -> Result<BTreeSet<String>> {
    let mut programs = Vec::new();
    for dir in PROGRAM_DIRS {
        let Ok(entries) = fs::read_dir(tools.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(name) = entry.file_name().into_string() {
                programs.push(format!("{dir}/{name}"));
            }
        }
    }
    programs.extend(EXTRA_PROGRAMS.iter().map(|p| p.to_string()));
    programs.sort();

    let search = library_dirs(tools)?;
    let mut libraries = BTreeSet::new();
    for program in &programs {
        let host = tools.join(program);
        let meta = fs::symlink_metadata(&host)
            .map_err(|e| Error::new(format!("{}: {e}", host.display())))?;
        if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&host).map_err(|e| Error::new(format!("{}: {e}", host.display())))?;
            tree.add(
                program,
                Node::Symlink(target.to_string_lossy().into_owned()),
            );
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        tree.add(
            program,
            Node::HostFile(host.clone(), meta.permissions().mode() & 0o7777),
        );
        if is_elf(&host) {
            libraries.extend(shared_libraries(&host, &search)?);
        }
    }
    let mut lib_dirs = BTreeSet::new();
    for library in libraries {
        // The guest path: where the loader found it, minus the unpack root.
        let guest = match library.strip_prefix(tools) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => library.display().to_string(),
        };
        if let Some((dir, _)) = guest.rsplit_once('/') {
            lib_dirs.insert(dir.to_string());
        }
        tree.add(&guest, Node::HostFile(library, 0o755));
    }
    Ok(lib_dirs)
}

/// Every directory under `tools` that holds a shared library, so `ldd`
/// finds the unpacked libraries (including ones found through a RUNPATH
/// such as Ceph's `/usr/lib/x86_64-linux-gnu/ceph`) before the host's.
fn library_dirs(tools: &Path) -> Result<String> {
    let mut dirs = BTreeSet::new();
    let mut todo = vec![tools.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| Error::new(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                todo.push(path);
            } else if entry.file_name().to_string_lossy().contains(".so") {
                dirs.insert(dir.display().to_string());
            }
        }
    }
    Ok(dirs.into_iter().collect::<Vec<_>>().join(":"))
}

/// Whether `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"\x7fELF")
}

/// The libraries `ldd` says `program` loads, with `search` as
/// `LD_LIBRARY_PATH`.
fn shared_libraries(program: &Path, search: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .env("LD_LIBRARY_PATH", search)
        .output()
        .map_err(|e| Error::new(format!("running ldd on {}: {e}", program.display())))?;
    // A static program makes ldd exit 1 with "not a dynamic executable".
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ldd(&text).map_err(|missing| {
        Error::new(format!(
            "{} needs {missing}, which neither the unpacked packages nor the host have \
             (add its package to GUEST_PACKAGES in xtask/src/vmtest/install.rs)",
            program.display()
        ))
    })
}

/// The library paths in `ldd` output, or the first library it could not
/// find.
///
/// Lines: `\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
/// `\t/lib64/ld-linux-x86-64.so.2 (0x...)`, `\tlinux-vdso.so.1 (0x...)`
/// (in the kernel, no file), `\tlibx.so.1 => not found`.
fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let target = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.trim() == "not found" {
                    return Err(name.to_string());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (0x").next().unwrap_or("").trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Links each busybox applet to `/bin/busybox` where no tool took its path
/// (the tools' `mke2fs` beats busybox's, for one).
fn add_busybox_links(tree: &mut Tree, busybox: &Path) -> Result<()> {
    tree.add("bin/busybox", Node::HostFile(busybox.to_path_buf(), 0o755));
    let list = output(Command::new(busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        tree.add(applet, Node::Symlink("/bin/busybox".to_string()));
    }
    Ok(())
}

/// Adds the module files `names` need, and the cut-down `modules.dep` and
/// `modules.alias`.
fn add_modules(tree: &mut Tree, packages: &GuestPackages, names: &BTreeSet<&str>) -> Result<()> {
    let dir = packages.modules_dir();
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| Error::new(format!("{}: {e}", path.display())))
    };
    let deps = ModuleDeps::parse(&read("modules.dep")?)?;
    let files = deps.closure(names.iter().copied())?;
    let guest_dir = format!("lib/modules/{}", packages.kernel_release);
    for file in &files {
        tree.add(
            &format!("{guest_dir}/{file}"),
            Node::HostFile(dir.join(file), 0o644),
        );
    }
    tree.add(
        &format!("{guest_dir}/modules.dep"),
        Node::Bytes(deps.subset(&files).into_bytes(), 0o644),
    );
    let aliases = read("modules.alias").unwrap_or_default();
    tree.add(
        &format!("{guest_dir}/modules.alias"),
        Node::Bytes(modules::alias_subset(&aliases, &files).into_bytes(), 0o644),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc1d9f2000)\n\
                    \tlibcunit.so.1 => /t/root/usr/lib/x86_64-linux-gnu/libcunit.so.1 (0x00007f8a7fb30000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f8a7f900000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f8a7fb60000)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/t/root/usr/lib/x86_64-linux-gnu/libcunit.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            parse_ldd("\tlibiscsi.so.7 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            Err("libiscsi.so.7".to_string())
        );
        assert_eq!(parse_ldd("\tnot a dynamic executable\n"), Ok(vec![]));
    }

    #[test]
    fn first_claim_on_a_path_wins() {
        let mut tree = Tree::default();
        assert!(tree.add("/sbin/mke2fs", Node::Bytes(b"tool".to_vec(), 0o755)));
        assert!(!tree.add("sbin/mke2fs", Node::Symlink("/bin/busybox".into())));
        assert_eq!(
            tree.nodes.get("sbin/mke2fs"),
            Some(&Node::Bytes(b"tool".to_vec(), 0o755))
        );
    }

    #[test]
    fn parents_are_written_before_children() {
        let dir = std::env::temp_dir().join(format!("vmtest-tree-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let out = dir.join("a.cpio");
        let mut tree = Tree::default();
        tree.add("a/b/c", Node::Bytes(b"x".to_vec(), 0o644));
        tree.add("a-b", Node::Symlink("a".into()));
        let len = tree.write(&out).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(len, bytes.len() as u64);
        let text = String::from_utf8_lossy(&bytes);
        let at = |name: &str| text.find(&format!("{name}\0")).unwrap();
        assert!(at("a") < at("a/b") && at("a/b") < at("a/b/c"));
        assert!(text.contains("TRAILER!!!"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
