//! Where the `cpkfs-emulator` binary is. It belongs to the `cpkfs-emulator`
//! package, so Cargo sets no `CARGO_BIN_EXE_cpkfs-emulator` for the root's
//! tests. It is built into the same directory as `cpkfs` whenever the whole
//! workspace is built or tested (`cargo build` / `cargo test` at the root: the
//! emulator is a default member, and its own integration test makes Cargo
//! link its binary).

use std::path::{Path, PathBuf};

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
