//! The example commands of the docs that can run offline, run as written
//! (taken from the docs at test time, so a doc edit is what gets tested),
//! with only machine-specific parts substituted: paths, the port, the
//! binaries of this build first in PATH.

#[path = "common/exe.rs"]
mod exe;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn doc(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// The ```sh blocks of a markdown text.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => cur = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => out.push(cur.take().unwrap()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// PATH with this build's `cpkfs` and `cpkfs-emulator` (one directory) first.
fn path_with_build() -> String {
    let dir = exe::emulator_exe().parent().unwrap().display().to_string();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// CONFIGURATION.md's Key Vault example, line by line as written: an
/// emulator with a vault identity, the environment it shows (including
/// CPKFS_VAULT_DISABLE_CHALLENGE_VERIFICATION=1), `cpkfs keygen
/// --wrap-with`, and a mount whose account key comes from a vault secret and
/// whose CPK is the wrapped key. The doc's comment line "(create the key …)"
/// is done here with curl, as a reader would (the tenant from the vault's
/// challenge, a token, then the key); so is storing the account key as the
/// secret the mount line names.
#[test]
fn configuration_key_vault_example() {
    let text = doc("docs/CONFIGURATION.md");
    let block = sh_blocks(&text)
        .into_iter()
        .find(|b| b.contains("cpkfs keygen --wrap-with"))
        .expect("CONFIGURATION.md has the Key Vault example");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut script = String::from("trap 'kill %1 2>/dev/null; wait' EXIT\n");
    for line in block
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
        .lines()
    {
        let line = line.replace("/mnt/vaultdemo", mnt.to_str().unwrap());
        script.push_str(&line);
        script.push('\n');
        if line.starts_with("cpkfs-emulator ") {
            // The reader waits for the emulator to come up.
            script.push_str(&format!(
                "for _ in $(seq 100); do [ -s ca.pem ] && curl -s --cacert ca.pem -o /dev/null {base}/__admin/stats && break; sleep 0.1; done\n"
            ));
        }
        if line.starts_with("# (create the key with POST") {
            script.push_str(&format!(
                r#"AUTHORITY=$(curl -s --cacert ca.pem -o /dev/null -D - "{base}/__vault/v1/keys/cpk?api-version=7.4" | sed -n 's/.*authorization="\([^"]*\)".*/\1/p')
TOKEN=$(curl -sf --cacert ca.pem -d "grant_type=client_credentials&client_id=$AZURE_CLIENT_ID&client_secret=$AZURE_CLIENT_SECRET&scope=https://vault.azure.net/.default" "$AUTHORITY/oauth2/v2.0/token" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
curl -sf --cacert ca.pem -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{{"kty":"RSA","key_size":2048}}' "{base}/__vault/v1/keys/cpk/create?api-version=7.4"
curl -sf --cacert ca.pem -o /dev/null -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{{"value":"{DEV_KEY}"}}' "{base}/__vault/v1/secrets/storage-key?api-version=7.4"
"#
            ));
        }
    }
    // What the reader does next: use the mount, then unmount.
    script.push_str(&format!(
        "echo through-the-vault-keys > {m}/hello && cat {m}/hello && cpkfs unmount {m}\n",
        m = mnt.display()
    ));
    let out = bash(&script, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "script:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("through-the-vault-keys"), "{stdout}");
    let wrapped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cpk.json")).unwrap())
            .unwrap();
    assert!(wrapped["wrapped_key"].is_string(), "{wrapped}");
    // Unmounted again.
    let t = Instant::now();
    while std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(mnt.to_str().unwrap())
    {
        assert!(t.elapsed() < Duration::from_secs(10), "still mounted");
        std::thread::sleep(Duration::from_millis(100));
    }
}
