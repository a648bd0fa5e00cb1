//! Example commands of the docs that can run offline, run as written
//! (taken from the docs at test time, so a doc edit is what gets tested),
//! with only machine-specific parts substituted: paths, the port, the
//! binaries of this build first in PATH.

// Shared helper file: this test uses only `emulator_exe` from it.
#[allow(dead_code)]
#[path = "common/exe.rs"]
mod exe;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn doc(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// PATH with this build's `cpkfs` and `cpkfs-emulator` (one directory) first.
fn path_with_build() -> String {
    let dir = exe::emulator_exe().parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

fn bash(script: &str, cwd: &Path) -> std::process::Output {
    Command::new("timeout")
        .args(["-k", "5", "180", "bash", "-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .env("PATH", path_with_build())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// README: `cpkfs keygen --out FILE` and the openssl alternative both give a
/// 0600 file holding a base64 AES-256 key.
#[test]
fn readme_key_generation() {
    let readme = doc("README.md");
    let dir = tempfile::tempdir().unwrap();
    let target = "/etc/cpkfs/data.cpk";
    let line = readme
        .lines()
        .find(|l| l.contains("openssl rand -base64 32 > /etc/cpkfs/data.cpk"))
        .expect("README shows the openssl key");
    // `(umask 077; openssl … > FILE)      # or: cpkfs keygen --out FILE`
    let (openssl, keygen) = line.split_once("# or:").expect("both ways on one line");
    for (i, cmd) in [openssl.trim(), keygen.trim()].into_iter().enumerate() {
        let out_file = dir.path().join(format!("k{i}"));
        let cmd = cmd.replace(target, out_file.to_str().unwrap());
        let out = bash(&cmd, dir.path());
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&out_file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{cmd}");
        let text = std::fs::read_to_string(&out_file).unwrap();
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap();
        assert_eq!(raw.len(), 32, "{cmd}");
    }
}

/// README: starting the emulator as shown prints where it listens and
/// writes its CA.
#[test]
fn readme_emulator_command() {
    let readme = doc("README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release --bin cpkfs-emulator -- "))
        .expect("README shows how to start the emulator");
    let args = line.split_once(" -- ").unwrap().1;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("emu-ca.pem");
    let args = args
        .replace("127.0.0.1:10000", "127.0.0.1:0")
        .replace("/tmp/emu-ca.pem", ca.to_str().unwrap());
    let mut child = Command::new(exe::emulator_exe())
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("listening on https://127.0.0.1:"),
        "{first}"
    );
    assert!(std::fs::read_to_string(&ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CONFIGURATION.md, "The emulator's Key Vault": the whole example as written
/// — the emulator with a vault, the SDKs creating the wrapping key and the
/// account-key secret, `cpkfs keygen --wrap-with`, and a mount whose account
/// key comes from the vault and whose CPK is unwrapped by it — with free ports
/// and a temporary mount point. The mount is then used and unmounted.
#[test]
fn configuration_key_vault_example() {
    let conf = doc("docs/CONFIGURATION.md");
    let start = conf
        .find("```sh\ncpkfs-emulator --listen 127.0.0.1:8443 --vault demo=")
        .expect("CONFIGURATION.md has the Key Vault example");
    let block = &conf[start + "```sh\n".len()..];
    let block = &block[..block.find("\n```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let script = block
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:8444", &format!("127.0.0.1:{}", free_port()))
        .replace("/mnt/vaultdemo", mnt.to_str().unwrap());
    // Clean up whatever the example started, however it ends; then use the
    // mount: a file written through it reads back.
    let script = format!(
        "trap 'umount -l {m} 2>/dev/null; kill $(jobs -p) 2>/dev/null; true' EXIT\n{script}\n\
         echo through-the-vault > {m}/hello && test \"$(cat {m}/hello)\" = through-the-vault\n\
         grep -q ' {m} ' /proc/self/mountinfo\n",
        m = mnt.display()
    );
    let out = Command::new("timeout")
        .args(["-k", "5", "180", "bash", "-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path_with_build())
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_AUTHORITY_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Key Vault example failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wrapped = std::fs::read_to_string(dir.path().join("cpk.json")).unwrap();
    assert!(wrapped.contains("\"kid\""), "{wrapped}");
}
