//! The `cpkfs-emulator` binary as the root's tests and scripts use it: one
//! `listening on URL` line when ready, admin endpoints on that URL, and a
//! refusal (non-zero exit, reason on stderr) for a malformed `--account`.
//! Having an integration test also makes `cargo test` link the binary, which
//! the root package's tests spawn.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn prints_its_url_and_serves_admin_stats() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cpkfs-emulator"))
        .args(["--listen", "127.0.0.1:0", "--http"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let resp = http_get(&addr, "/__admin/stats");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let stats: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(stats["total_requests"], 0, "{body}");
}

#[test]
fn refuses_a_malformed_account() {
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs-emulator"))
        .args(["--listen", "127.0.0.1:0", "--account", "nokey"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected NAME=KEY1[,KEY2]"), "{err}");
}
