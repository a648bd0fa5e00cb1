//! Where the `cpkfs-emulator` binary is. It belongs to the `cpkfs-emulator`
//! package, so Cargo sets no `CARGO_BIN_EXE_cpkfs-emulator` for the root's
//! tests. It is built into the same directory as `cpkfs` whenever the whole
//! workspace is built or tested (`cargo build` / `cargo test` at the root: the
//! emulator is a default member, and its own integration test makes Cargo
//! link its binary).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn emulator_exe() -> PathBuf {
    // The cpkfs binary sits in target/<profile>/, the emulator beside it.
    let exe = Path::new(env!("CARGO_BIN_EXE_cpkfs")).with_file_name("cpkfs-emulator");
    assert!(
        exe.is_file(),
        "{} is missing: build it with `cargo build -p cpkfs-emulator` \
         (`cargo test` at the workspace root builds it)",
        exe.display()
    );
    exe
}

/// Start the `cpkfs-emulator` binary on a free port, its CA written to `ca`,
/// with `extra` flags, and return it with its base URL (from the one line it
/// prints when ready). The one start-up helper of every test that needs the
/// emulator in its own process.
pub fn spawn_emulator(ca: &Path, extra: &[&str], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(emulator_exe())
        .args(["--listen", "127.0.0.1:0", "--ca-out"])
        .arg(ca)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start cpkfs-emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from cpkfs-emulator: {line:?}"))
        .to_string();
    (child, url)
}
