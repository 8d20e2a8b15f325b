//! Puts the commit Herald is built from in `HERALD_COMMIT`, for `herald --version`: the short
//! hash of `HEAD`, with `-dirty` when tracked files differ from it; the commit a packaged crate
//! records (`.cargo_vcs_info.json`); or `unknown` outside a git checkout (a crates.io build
//! without that record, a source tarball). `HERALD_COMMIT` set at build time wins (a Docker
//! build without `.git`).
//!
//! The logic is in `build/commit.rs`, shared with its test (`tests/version.rs`).

#[path = "build/commit.rs"]
mod commit;

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let description = match std::env::var("HERALD_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => commit::describe(&dir),
    };
    // Run again when HEAD moves (a commit, a checkout) or the index changes (what `-dirty`
    // compares; `git add` and `git commit` rewrite it). An edit not yet staged does not rerun
    // this script by itself: `-dirty` is as of the last of those.
    for file in commit::files_to_watch(&dir) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rustc-env=HERALD_COMMIT={description}");
}
