//! Which commit a build of Herald comes from, for `herald --version` (used by `build.rs`, and
//! by `tests/version.rs`, which runs it on git repositories of its own).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Said when the commit cannot be known.
pub const UNKNOWN: &str = "unknown";

/// The commit of the package in `dir`: `<short hash>` or `<short hash>-dirty` (tracked files
/// differ from it) in a git checkout of Herald; the hash a packaged crate recorded
/// (`.cargo_vcs_info.json`, written by `cargo package`); else [`UNKNOWN`].
pub fn describe(dir: &Path) -> String {
    if let Ok(info) = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")) {
        return packaged_commit(&info).unwrap_or_else(|| UNKNOWN.to_owned());
    }
    // Only a checkout that tracks this very package: a source tarball unpacked inside some
    // other repository must not take that repository's commit.
    if git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"]).is_none() {
        return UNKNOWN.to_owned();
    }
    let Some(hash) = git(dir, &["rev-parse", "--short", "HEAD"]) else { return UNKNOWN.to_owned() };
    match git(dir, &["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if changes.is_empty() => hash,
        _ => format!("{hash}-dirty"),
    }
}

/// The files whose change means the commit or the state of the tree may have changed: `HEAD`
/// and the branch it names (loose or packed), the index, and the workspace's `crates/` (an
/// edit makes the tree dirty). Only files that exist (cargo reruns a script every time for a
/// missing one).
pub fn files_to_watch(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![dir.join(".cargo_vcs_info.json")];
    let git_path = |what: &str| git(dir, &["rev-parse", "--path-format=absolute", what]).map(PathBuf::from);
    if let Some(git_dir) = git_path("--git-dir") {
        files.push(git_dir.join("HEAD"));
        files.push(git_dir.join("index"));
    }
    if let Some(common) = git_path("--git-common-dir") {
        files.push(common.join("packed-refs"));
        if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            files.push(common.join(branch));
        }
    }
    if let Some(top) = git(dir, &["rev-parse", "--show-toplevel"]) {
        files.push(Path::new(&top).join("crates"));
    }
    files.retain(|file| file.exists());
    files
}

/// The short hash in a `.cargo_vcs_info.json` (`{"git": {"sha1": "…", "dirty": true}, …}`),
/// read without a JSON parser (a build script's dependencies are built before everything).
fn packaged_commit(info: &str) -> Option<String> {
    let after = &info[info.find("\"sha1\"")? + "\"sha1\"".len()..];
    let start = after.find('"')? + 1;
    let hash: String = after[start..].chars().take_while(char::is_ascii_hexdigit).collect();
    if hash.len() < 7 {
        return None;
    }
    let dirty = info.contains("\"dirty\": true") || info.contains("\"dirty\":true");
    Some(format!("{}{}", &hash[..7], if dirty { "-dirty" } else { "" }))
}

/// `git -C dir ARGS`'s output, trimmed; `None` if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // `status` would otherwise refresh and rewrite the index, which this script watches.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
