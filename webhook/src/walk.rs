//! Finding files: a path that is a file is taken as it is; a directory is
//! searched recursively for the files `wanted` accepts, in sorted order so
//! that every command's output is stable.

use std::path::{Path, PathBuf};

pub fn files(path: &Path, wanted: &dyn Fn(&Path) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if path.is_dir() {
        walk(path, wanted, &mut out)?;
    } else {
        out.push(path.to_owned());
    }
    Ok(out)
}

fn walk(dir: &Path, wanted: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk(&entry, wanted, out)?;
        } else if wanted(&entry) {
            out.push(entry);
        }
    }
    Ok(())
}

/// Whether `path` ends in one of `extensions` (without the dot).
pub fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.contains(&e))
}
