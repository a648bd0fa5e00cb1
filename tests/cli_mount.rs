//! `cpkfs mount` as a Unix tool: every start-up refusal has its own message
//! and a non-zero exit; `mount -t fuse.cpkfs`, `mount -a -T fstab`, `umount`;
//! SIGTERM during a copy loses nothing that close() acknowledged.

#[path = "common/exe.rs"]
mod exe;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY1: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CPK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Emu {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Emu {
    fn start(http: bool) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let extra: &[&str] = if http { &["--http"] } else { &[] };
        let (child, url) = exe::spawn_emulator(&dir.path().join("ca.pem"), extra, Stdio::null());
        Emu { child, url, dir }
    }
    fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    /// Base arguments of a working mount; tests replace one thing each.
    fn args(&self, container: &str) -> Vec<String> {
        vec![
            "mount".into(),
            "--endpoint".into(),
            self.url.clone(),
            "--account".into(),
            "devstoreaccount1".into(),
            "--container".into(),
            container.into(),
            "--account-key-file".into(),
            self.file("acct.key", KEY1, 0o600).display().to_string(),
            "--cpk-file".into(),
            self.file("cpk.key", CPK, 0o600).display().to_string(),
            "--ca-file".into(),
            self.ca().display().to_string(),
            "--create-container".into(),
        ]
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpkfs(args: &[String], mountpoint: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args(args)
        .arg(mountpoint)
        .env_remove("AZURE_STORAGE_KEY")
        .env_remove("AZURE_STORAGE_ACCOUNT")
        .output()
        .unwrap();
    if out.status.success() {
        unmount(mountpoint);
    }
    out
}

fn unmount(p: &Path) {
    for _ in 0..50 {
        if Command::new("fusermount3")
            .arg("-u")
            .arg(p)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set(args: &mut [String], flag: &str, value: String) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value;
}

fn expect_refusal(args: &[String], mp: &Path, needle: &str) {
    let out = cpkfs(args, mp);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a refusal containing {needle:?}, but the mount succeeded"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        !err.contains(CPK) && !err.contains(KEY1),
        "a secret leaked into: {err}"
    );
}

#[test]
fn every_startup_refusal_is_named() {
    let emu = Emu::start(false);
    let mp = emu.mountpoint("mnt");
    let base = emu.args("refusals");

    // The working baseline mounts (and is unmounted by `cpkfs`).
    let ok = cpkfs(&base, &mp);
    assert!(
        ok.status.success(),
        "baseline mount failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let mut a = base.clone();
    set(&mut a, "--cpk-file", "/nonexistent/cpk".into());
    expect_refusal(
        &a,
        &mp,
        "cannot read the customer-provided key file /nonexistent/cpk",
    );

    let mut a = base.clone();
    set(
        &mut a,
        "--cpk-file",
        emu.file("bad64", "not*base64!", 0o600)
            .display()
            .to_string(),
    );
    expect_refusal(&a, &mp, "not valid base64");

    let mut a = base.clone();
    set(
        &mut a,
        "--cpk-file",
        emu.file(
            "short",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",
            0o600,
        )
        .display()
        .to_string(),
    );
    expect_refusal(&a, &mp, "decodes to 31 bytes");

    let mut a = base.clone();
    a.extend([
        "--cpk-sha256".into(),
        "3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE=".into(),
    ]);
    expect_refusal(&a, &mp, "was expected: wrong key file?");

    let mut a = base.clone();
    set(
        &mut a,
        "--cpk-file",
        emu.file("open", CPK, 0o644).display().to_string(),
    );
    expect_refusal(&a, &mp, "readable by group or others");

    let mut a = base.clone();
    set(&mut a, "--endpoint", "http://127.0.0.1:1".into());
    expect_refusal(
        &a,
        &mp,
        "refusing to send a customer-provided key over plain http",
    );

    let mut a = base.clone();
    set(
        &mut a,
        "--endpoint",
        emu.url
            .replace(&emu.url[emu.url.rfind(':').unwrap() + 1..], "1"),
    );
    expect_refusal(&a, &mp, "is unreachable");

    let mut a = base.clone();
    let i = a.iter().position(|x| x == "--ca-file").unwrap();
    a.drain(i..i + 2);
    expect_refusal(&a, &mp, "TLS failure");

    let mut a = base.clone();
    set(
        &mut a,
        "--account-key-file",
        emu.file("wrong.key", &KEY1.replace("Eby8", "Fby8"), 0o600)
            .display()
            .to_string(),
    );
    expect_refusal(&a, &mp, "AuthenticationFailed");

    let mut a = base.clone();
    set(&mut a, "--container", "nosuchcontainer".into());
    a.retain(|x| x != "--create-container");
    expect_refusal(&a, &mp, "ContainerNotFound");

    expect_refusal(&base, &emu.dir.path().join("missing"), "does not exist");
    expect_refusal(
        &base,
        &emu.file("plainfile", "x", 0o600),
        "is not a directory",
    );
    let full = emu.mountpoint("full");
    std::fs::write(full.join("x"), "x").unwrap();
    expect_refusal(&base, &full, "is not empty");

    let mut a = base.clone();
    a.extend(["-o".into(), format!("cpk={CPK}")]);
    expect_refusal(&a, &mp, "refusing the option cpk");
    let mut a = base.clone();
    a.extend(["--account-key".into(), KEY1.into()]);
    expect_refusal(&a, &mp, "account_key_file");

    // Already mounted.
    let mut fg = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args(&base)
        .arg("--foreground")
        .arg(&mp)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(mp.to_str().unwrap())
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "foreground mount did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args(&base)
        .arg(&mp)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already mounted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unmount(&mp);
    let _ = fg.wait();
}

#[test]
fn refused_over_http_emulator_too() {
    // Without a CPK, plain http is fine (Azurite-style); with one it is refused.
    let emu = Emu::start(true);
    let mp = emu.mountpoint("mnt");
    let drop_flag = |a: &mut Vec<String>, f: &str| {
        let i = a.iter().position(|x| x == f).unwrap();
        a.drain(i..i + 2);
    };
    let mut a = emu.args("httpc");
    drop_flag(&mut a, "--ca-file");
    let mut plain = a.clone();
    drop_flag(&mut plain, "--cpk-file");
    let out = cpkfs(&plain, &mp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect_refusal(&a, &mp, "plain http");
}

fn write_config(emu: &Emu, container: &str) -> PathBuf {
    let text = format!(
        "endpoint = \"{}\"\naccount = \"devstoreaccount1\"\ncontainer = \"{container}\"\naccount_key_file = \"{}\"\ncpk_file = \"{}\"\nca_file = \"{}\"\ncreate_container = true\nlog_file = \"{}\"\n",
        emu.url,
        emu.file("acct.key", KEY1, 0o600).display(),
        emu.file("cpk.key", CPK, 0o600).display(),
        emu.ca().display(),
        emu.dir.path().join("mount.log").display()
    );
    emu.file("cpkfs.toml", &text, 0o600)
}

/// mount(8) runs its helpers (mount.fuse3, which runs `cpkfs` through sh)
/// with its own PATH, `/usr/local/sbin:/usr/local/bin:/usr/sbin:…`, whatever
/// PATH the caller has. To make `mount -t fuse.cpkfs` run the binary under
/// test, not whatever `scripts/install` left in /usr/local/bin, the calling
/// thread gets a private mount namespace in which a directory holding only
/// this build's `cpkfs` is bind-mounted over /usr/local/sbin, the first
/// directory of that PATH. Nothing on the machine changes: the namespace,
/// the bind mount and the FUSE mounts made in it vanish with the thread and
/// the mount processes (which the test unmounts).
fn in_namespace_with_cpkfs_first<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // unshare(CLONE_NEWNS) applies to this thread only (it implies
        // CLONE_FS), so other tests keep the host's mounts.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNS) },
            0,
            "unshare(CLONE_NEWNS): {} (these tests run as root)",
            std::io::Error::last_os_error()
        );
        let root = std::ffi::CString::new("/").unwrap();
        // Private: nothing mounted here propagates back to the host.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "make / private: {}", std::io::Error::last_os_error());
        let bin = tempfile::tempdir().unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_cpkfs"), bin.path().join("cpkfs")).unwrap();
        std::fs::create_dir_all("/usr/local/sbin").unwrap();
        let st = Command::new("mount")
            .arg("--bind")
            .arg(bin.path())
            .arg("/usr/local/sbin")
            .status()
            .unwrap();
        assert!(st.success(), "bind mount over /usr/local/sbin");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[test]
fn mount_t_fuse_cpkfs_fstab_and_umount() {
    let emu = Emu::start(false);
    let cfg = write_config(&emu, "fstab");
    let mp = emu.mountpoint("m1");
    let mp2 = emu.mountpoint("m2");
    let fstab = emu.file(
        "fstab",
        &format!(
            "fstab {} fuse.cpkfs config={},_netdev,nofail 0 0\n",
            mp2.display(),
            cfg.display()
        ),
        0o644,
    );
    let version = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .arg("--version")
        .output()
        .unwrap()
        .stdout;
    let (mp_, mp2_) = (mp.clone(), mp2.clone());
    in_namespace_with_cpkfs_first(move || {
        let (mp, mp2) = (mp_, mp2_);
        // The helper's PATH now finds this build first.
        let found = Command::new("sh")
            .args(["-c", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; command -v cpkfs && cpkfs --version"])
            .output()
            .unwrap();
        let found = String::from_utf8_lossy(&found.stdout).to_string();
        assert!(
            found.starts_with("/usr/local/sbin/cpkfs\n")
                && found.ends_with(&*String::from_utf8_lossy(&version)),
            "{found}"
        );
        let st = Command::new("mount")
            .args(["-t", "fuse.cpkfs", "fstab"])
            .arg(&mp)
            .arg("-o")
            .arg(format!("config={},_netdev,nofail", cfg.display()))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "mount -t fuse.cpkfs failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::write(mp.join("hello.txt"), b"hello fstab").unwrap();
        assert_eq!(std::fs::read(mp.join("hello.txt")).unwrap(), b"hello fstab");
        // This thread's namespace (/proc/self is the main thread's).
        let mounts = || std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(mounts().contains(mp.to_str().unwrap()));
        let st = Command::new("umount").arg(&mp).status().unwrap();
        assert!(st.success());
        assert!(!mounts().contains(mp.to_str().unwrap()));

        // fstab line, mounted with `mount -a -T`.
        let st = Command::new("mount")
            .arg("-a")
            .arg("-T")
            .arg(&fstab)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "mount -a -T failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(
            std::fs::read(mp2.join("hello.txt")).unwrap(),
            b"hello fstab",
            "same container, same key"
        );
        let st = Command::new("umount").arg(&mp2).status().unwrap();
        assert!(st.success());
        assert!(!mounts().contains(mp2.to_str().unwrap()));
    });
    // The host never saw the bind mount or the FUSE mounts.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(mp.to_str().unwrap()) && !host.contains(mp2.to_str().unwrap()));
    assert!(!host.contains(" /usr/local/sbin "), "{host}");
}

#[test]
fn sigterm_during_copies_loses_nothing_acknowledged() {
    let emu = Emu::start(false);
    let mp = emu.mountpoint("m");
    let mut args = emu.args("sigterm");
    args.extend(["--block-size".into(), "1M".into()]);
    let mut mount = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args(&args)
        .arg("--foreground")
        .arg(&mp)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(mp.to_str().unwrap())
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "mount did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A writer copies files one after another, recording each file whose
    // close() returned 0; SIGTERM arrives in the middle.
    let src = emu.dir.path().join("src.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let log = emu.dir.path().join("done.txt");
    let script = format!(
        "for i in $(seq 1 40); do mountpoint -q {mp} || exit 0; cp {src} {mp}/f$i && mountpoint -q {mp} && echo f$i >> {log}; done",
        src = src.display(),
        mp = mp.display(),
        log = log.display()
    );
    let mut writer = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(mount.id() as i32, libc::SIGTERM) };
    let _ = writer.wait();
    let st = mount.wait().unwrap();
    assert!(st.success(), "mount exited with {st}");
    let done = std::fs::read_to_string(&log).unwrap_or_default();
    let done: Vec<&str> = done.lines().collect();
    assert!(!done.is_empty(), "no copy finished before SIGTERM");
    // Re-mount elsewhere (the old mount point may hold files a copy wrote
    // after the unmount) and check every acknowledged file.
    let mp2 = emu.mountpoint("m2");
    let out = cpkfs_keep(&args, &mp2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &done {
        let got = std::fs::read(mp2.join(f)).unwrap_or_default();
        assert!(
            got == data,
            "{f} was acknowledged by close() but is not intact"
        );
    }
    unmount(&mp2);
}

fn cpkfs_keep(args: &[String], mountpoint: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args(args)
        .arg(mountpoint)
        .output()
        .unwrap()
}
