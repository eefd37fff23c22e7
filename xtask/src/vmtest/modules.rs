//! Which kernel modules go into the guest: the ones the selected scenarios
//! name, and everything those depend on, read from the kernel's
//! `modules.dep`.

use crate::util::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// A parsed `modules.dep`: module name → its file (relative to the module
/// directory) and the files it needs loaded first.
#[derive(Debug, Default)]
pub(crate) struct ModuleDeps {
    by_name: BTreeMap<String, (String, Vec<String>)>,
    by_path: BTreeMap<String, Vec<String>>,
}

/// A module's name as the kernel compares it: the file name without
/// directories and `.ko`, with `-` and `_` the same (`dm-crypt` = `dm_crypt`).
pub(crate) fn module_name(name_or_path: &str) -> String {
    let file = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let stem = file.strip_suffix(".ko").unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Parses `text` (lines `kernel/a/b.ko: kernel/c.ko kernel/d.ko`).
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let mut deps = Self::default();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (path, needs) = line.split_once(':').ok_or_else(|| {
                Error::new(format!(
                    "modules.dep line {}: expected `MODULE: DEPS`, got `{line}`",
                    number + 1
                ))
            })?;
            let path = path.trim().to_string();
            let needs: Vec<String> = needs.split_whitespace().map(str::to_string).collect();
            deps.by_name
                .insert(module_name(&path), (path.clone(), needs.clone()));
            deps.by_path.insert(path, needs);
        }
        Ok(deps)
    }

    /// The module files `names` need, each module's dependencies included,
    /// sorted. An unknown name is an error (a typo in a scenario, or a
    /// module built into this kernel: then leave it out of the scenario).
    pub(crate) fn closure<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeSet<String>> {
        let mut files = BTreeSet::new();
        let mut todo = Vec::new();
        for name in names {
            let (path, _) = self.by_name.get(&module_name(name)).ok_or_else(|| {
                Error::new(format!(
                    "kernel module `{name}` is not in modules.dep (misspelt, or built in)"
                ))
            })?;
            todo.push(path.clone());
        }
        while let Some(path) = todo.pop() {
            if files.insert(path.clone()) {
                let needs = self.by_path.get(&path).ok_or_else(|| {
                    Error::new(format!(
                        "modules.dep names `{path}` as a dependency but has no line for it"
                    ))
                })?;
                todo.extend(needs.iter().cloned());
            }
        }
        Ok(files)
    }

    /// The `modules.dep` lines of `files` only (for the guest's copy).
    pub(crate) fn subset(&self, files: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for (path, needs) in &self.by_path {
            if files.contains(path) {
                out.push_str(path);
                out.push(':');
                for need in needs {
                    out.push(' ');
                    out.push_str(need);
                }
                out.push('\n');
            }
        }
        out
    }
}

/// The `modules.alias` lines (`alias PATTERN MODULE`) whose module is one
/// of `files`, so the guest's `modprobe` resolves the aliases the kernel
/// asks for itself (`crypto-xts`, say).
pub(crate) fn alias_subset(aliases: &str, files: &BTreeSet<String>) -> String {
    let names: BTreeSet<String> = files.iter().map(|f| module_name(f)).collect();
    aliases
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some("alias")
                && words
                    .nth(1)
                    .is_some_and(|module| names.contains(&module_name(module)))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/target/target_core_user.ko: kernel/drivers/uio/uio.ko kernel/drivers/target/target_core_mod.ko kernel/fs/configfs/configfs.ko
kernel/drivers/target/target_core_mod.ko: kernel/fs/configfs/configfs.ko
kernel/drivers/uio/uio.ko:
kernel/fs/configfs/configfs.ko:
kernel/drivers/md/dm-crypt.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/crypto/xts.ko:
";

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_ignore_dashes_and_paths() {
        assert_eq!(module_name("kernel/drivers/md/dm-crypt.ko"), "dm_crypt");
        assert_eq!(module_name("dm-crypt"), "dm_crypt");
        assert_eq!(module_name("tcm_loop"), "tcm_loop");
    }

    #[test]
    fn closure_follows_dependencies() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        assert_eq!(
            deps.closure(["target_core_user"]).unwrap(),
            set(&[
                "kernel/drivers/target/target_core_user.ko",
                "kernel/drivers/target/target_core_mod.ko",
                "kernel/drivers/uio/uio.ko",
                "kernel/fs/configfs/configfs.ko",
            ])
        );
        assert_eq!(
            deps.closure(["dm-crypt", "xts"]).unwrap(),
            set(&[
                "kernel/drivers/md/dm-crypt.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/crypto/xts.ko",
            ])
        );
        let err = deps.closure(["nvme"]).unwrap_err().to_string();
        assert!(err.contains("`nvme`"), "{err}");
    }

    #[test]
    fn broken_files_are_reported() {
        assert!(ModuleDeps::parse("no colon here\n").is_err());
        let deps = ModuleDeps::parse("kernel/a.ko: kernel/missing.ko\n").unwrap();
        let err = deps.closure(["a"]).unwrap_err().to_string();
        assert!(err.contains("kernel/missing.ko"), "{err}");
    }

    #[test]
    fn subsets_keep_only_chosen_modules() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let files = deps.closure(["dm_crypt"]).unwrap();
        assert_eq!(
            deps.subset(&files),
            "kernel/drivers/md/dm-crypt.ko: kernel/drivers/md/dm-mod.ko\n\
             kernel/drivers/md/dm-mod.ko:\n"
        );
        let aliases = "# Aliases extracted from modules themselves.\n\
                       alias crypto-xts xts\n\
                       alias devname:mapper/control dm_mod\n\
                       alias crypto-aes aesni_intel\n";
        assert_eq!(
            alias_subset(aliases, &deps.closure(["dm-crypt", "xts"]).unwrap()),
            "alias crypto-xts xts\nalias devname:mapper/control dm_mod\n"
        );
    }
}
