//! Real FUSE mounts for integration tests: a storage service (the bundled
//! CPK emulator over HTTPS, or Azurite over http without CPK) in a child
//! process, `cpkfs mount --foreground` in another, and helpers to look at
//! the container behind the mount's back (REST client, emulator stats).
//!
//! Needs root (or a user allowed to mount FUSE) and /dev/fuse; CI runs as root.
//!
//! Test files include it next to `common` (whose `mod.rs` it does not touch):
//! `mod common; #[path = "common/mount.rs"] mod mount;`
#![allow(dead_code)]

use crate::common::azurite::Azurite;
use crate::common::{dev_credential, fast_retry, unique};
use cpkfs::blob::{BlobClient, ClientConfig, CustomerKey, DEV_ACCOUNT, DEV_ACCOUNT_KEY};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which service backs the mount.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Service {
    /// The bundled emulator over HTTPS, mount with a CPK.
    Emulator,
    /// The bundled emulator over HTTPS, mount without a CPK.
    EmulatorNoCpk,
    /// Azurite over http, mount without a CPK.
    Azurite,
}

#[derive(Clone, Debug)]
pub struct MountOptions {
    pub service: Service,
    pub block_size: String,
    pub cache_size: String,
    pub attr_ttl: String,
    /// More `cpkfs mount` arguments.
    pub extra: Vec<String>,
    /// More `cpkfs-emulator` arguments (e.g. `--no-source-cpk`).
    pub emulator_args: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            service: Service::Emulator,
            block_size: "1M".into(),
            cache_size: "256M".into(),
            attr_ttl: "3".into(),
            extra: vec![],
            emulator_args: vec![],
        }
    }
}

pub struct Mount {
    /// Where the container is mounted.
    pub mnt: PathBuf,
    /// Scratch space outside the mount (key files, log, test data).
    pub scratch: PathBuf,
    pub log: PathBuf,
    /// Service base URL including the account (what `--endpoint` got).
    pub endpoint: String,
    /// Emulator base URL without the account (for `/__admin`), if any.
    pub admin_url: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub container: String,
    /// The mount's customer-provided key, if it has one.
    pub key: Option<Arc<CustomerKey>>,
    pub rt: tokio::runtime::Runtime,
    cmd: Command,
    fuse: Option<Child>,
    emulator: Option<Child>,
    _azurite: Option<Azurite>,
    _dir: tempfile::TempDir,
}

fn random_key_b64() -> String {
    use base64::Engine;
    let raw: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Is `p` a FUSE mount point right now (per /proc/self/mountinfo)?
pub fn is_mounted(p: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(p) else {
        return false;
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && Path::new(&f[4].replace("\\040", " ")) == canon && l.contains("fuse")
    })
}

/// Start `cpkfs-emulator` on a free port; returns (child, base URL, CA PEM).
fn start_emulator(dir: &Path, args: &[String]) -> (Child, String, Vec<u8>) {
    let ca = dir.join("ca.pem");
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, url) = crate::common::exe::spawn_emulator(&ca, &extra, Stdio::inherit());
    let pem = std::fs::read(&ca).expect("emulator wrote its CA");
    (child, url, pem)
}

impl Mount {
    pub fn new(opts: MountOptions) -> Mount {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: these tests need a FUSE-capable machine (modprobe fuse; in a container run with --device /dev/fuse --cap-add SYS_ADMIN)"
        );
        let dir = tempfile::Builder::new()
            .prefix("cpkfs-mnt")
            .tempdir()
            .unwrap();
        let scratch = dir.path().join("scratch");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&scratch).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let log = dir.path().join("cpkfs.log");
        let container = unique("mnt");

        let (emulator, azurite, endpoint, admin_url, ca_pem) = match opts.service {
            Service::Emulator | Service::EmulatorNoCpk => {
                let (child, url, pem) = start_emulator(dir.path(), &opts.emulator_args);
                let ep = format!("{url}/{DEV_ACCOUNT}");
                (Some(child), None, ep, Some(url), Some(pem))
            }
            Service::Azurite => {
                let a = Azurite::start();
                let ep = a.url.clone();
                (None, Some(a), ep, None, None)
            }
        };

        let key_file = dir.path().join("account.key");
        write_secret(&key_file, DEV_ACCOUNT_KEY);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cpkfs"));
        cmd.args(["mount", "--foreground", "--create-container"])
            .args(["--endpoint", &endpoint, "--account", DEV_ACCOUNT])
            .args(["--container", &container])
            .arg("--account-key-file")
            .arg(&key_file)
            .args(["--block-size", &opts.block_size])
            .args(["--cache-size", &opts.cache_size])
            .args(["--attr-ttl", &opts.attr_ttl])
            .args(["--log-level", "debug"])
            .arg("--log-file")
            .arg(&log);
        let mut key = None;
        if opts.service == Service::Emulator {
            let b64 = random_key_b64();
            let f = dir.path().join("cpk.key");
            write_secret(&f, &format!("{b64}\n"));
            cmd.arg("--cpk-file").arg(&f);
            key = Some(Arc::new(CustomerKey::from_base64(&b64, None).unwrap()));
        }
        if let Some(pem) = &ca_pem {
            let f = dir.path().join("ca.pem");
            std::fs::write(&f, pem).unwrap();
            cmd.arg("--ca-file").arg(&f);
        }
        cmd.args(&opts.extra);
        cmd.arg(&mnt);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut m = Mount {
            mnt,
            scratch,
            log,
            endpoint,
            admin_url,
            ca_pem,
            container,
            key,
            rt,
            cmd,
            fuse: None,
            emulator,
            _azurite: azurite,
            _dir: dir,
        };
        m.start_fuse();
        m
    }

    /// Run `cpkfs mount --foreground` and wait until the mount is live.
    fn start_fuse(&mut self) {
        let stderr_path = self.log.with_extension("stderr");
        let mut fuse = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start cpkfs mount");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&self.mnt) {
                break;
            }
            if let Some(st) = fuse.try_wait().unwrap() {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!(
                    "cpkfs mount exited ({st}) before mounting: {err}\nlog:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                let _ = fuse.kill();
                panic!(
                    "mount did not appear within 30 s\nlog:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fuse = Some(fuse);
    }

    /// Unmount and mount again (same service, container and key): drops the
    /// kernel's page cache and every cache of the mount process.
    pub fn remount(&mut self) {
        self.unmount();
        self.start_fuse();
    }

    pub fn emulator() -> Mount {
        Mount::new(MountOptions::default())
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The last lines of the mount's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// A REST client on the mount's container, holding `key` (pass
    /// `self.key.clone()` for the mount's key, None for plain requests).
    pub fn client(&self, key: Option<Arc<CustomerKey>>) -> BlobClient {
        let mut cfg = ClientConfig::new(
            &self.endpoint,
            DEV_ACCOUNT,
            &self.container,
            dev_credential(),
        );
        cfg.cpk = key;
        cfg.ca_pem = self.ca_pem.clone();
        cfg.retry = fast_retry();
        // The client builds a reqwest client, which wants a runtime around.
        let _g = self.rt.enter();
        BlobClient::new(cfg).unwrap()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn admin_http(&self) -> (reqwest::Client, String) {
        let url = self
            .admin_url
            .clone()
            .expect("emulator stats need the bundled emulator");
        let mut b = reqwest::Client::builder();
        if let Some(pem) = &self.ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap());
        }
        (b.build().unwrap(), url)
    }

    /// Process ids of the emulator (if this mount started one) and of the
    /// mount process (while mounted), e.g. for their CPU time.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.emulator.as_ref().map(Child::id),
            self.fuse.as_ref().map(Child::id),
        )
    }

    /// The emulator's request counters.
    pub fn stats(&self) -> serde_json::Value {
        let (c, url) = self.admin_http();
        let body = self.block_on(async {
            c.get(format!("{url}/__admin/stats"))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        serde_json::from_slice(&body).unwrap()
    }

    /// Requests of one operation (e.g. "GetBlob") since the last reset.
    pub fn op_count(&self, op: &str) -> u64 {
        self.stats()["requests"][op].as_u64().unwrap_or(0)
    }

    pub fn reset_stats(&self) {
        let (c, url) = self.admin_http();
        self.block_on(async {
            c.delete(format!("{url}/__admin/stats"))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
        });
    }

    /// `POST /__admin/faults` with this JSON; `None` clears faults.
    pub fn set_faults(&self, cfg: Option<serde_json::Value>) {
        let (c, url) = self.admin_http();
        self.block_on(async {
            let r = match cfg {
                Some(v) => c
                    .post(format!("{url}/__admin/faults"))
                    .header("content-type", "application/json")
                    .body(v.to_string())
                    .send(),
                None => c.delete(format!("{url}/__admin/faults")).send(),
            };
            r.await.unwrap().error_for_status().unwrap();
        });
    }

    /// Run `script` with bash (cwd: scratch dir), give up after `secs`;
    /// panics with the output and the mount log unless it exits 0.
    pub fn sh(&self, script: &str, secs: u64) -> String {
        let out = self.sh_status(script, secs);
        if !out.status.success() {
            panic!(
                "command failed ({}): {script}\n--- stdout\n{}\n--- stderr\n{}\n--- mount log\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Mount::sh`] but returns the output whatever the exit status.
    /// `$M` is the mount point, `$S` the scratch dir.
    pub fn sh_status(&self, script: &str, secs: u64) -> Output {
        Command::new("timeout")
            .args([
                "-k",
                "5",
                &secs.to_string(),
                "bash",
                "-euo",
                "pipefail",
                "-c",
            ])
            .arg(script)
            .env("M", &self.mnt)
            .env("S", &self.scratch)
            .current_dir(&self.scratch)
            .stdin(Stdio::null())
            .output()
            .expect("run bash")
    }

    /// Unmount and wait for the mount process to exit (it commits nothing
    /// more: every close already committed). Idempotent.
    pub fn unmount(&mut self) {
        let Some(mut child) = self.fuse.take() else {
            return;
        };
        for _ in 0..20 {
            let st = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status();
            if matches!(st, Ok(s) if s.success()) || !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
        if let Some(mut e) = self.emulator.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds, from
/// /proc/PID/stat; 0 if it cannot be read.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15; `f[0]` is field 3.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// sha256sum of a file, as hex.
pub fn sha256_file(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}
