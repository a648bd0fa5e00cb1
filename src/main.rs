//! `cpkfs`: mount an Azure Blob Storage container with a customer-provided key.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cpkfs::blob::{
    AccountKey, BlobClient, ClientConfig, Credential, CustomerKey, SasToken, SharedKeyCredential,
};
use cpkfs::fs::{Fs, FsConfig};
use cpkfs::fuse::FuseAdapter;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "cpkfs",
    version,
    about = "Mount an Azure Blob Storage container, every byte encrypted under your own key (CPK)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount a container (returns once the mount works, unless --foreground).
    Mount(MountArgs),
    /// Unmount a cpkfs mount point.
    Unmount { mountpoint: PathBuf },
}

#[derive(Args, Clone)]
struct MountArgs {
    /// Blob endpoint, e.g. https://ACCOUNT.blob.core.windows.net or https://127.0.0.1:10000 (path style).
    #[arg(long, env = "CPKFS_ENDPOINT")]
    endpoint: Option<String>,
    /// Storage account name.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT")]
    account: String,
    /// Container to mount.
    #[arg(long, env = "CPKFS_CONTAINER")]
    container: String,
    /// File holding the account key (or both keys, one per line).
    #[arg(long, env = "CPKFS_ACCOUNT_KEY_FILE")]
    account_key_file: Option<PathBuf>,
    /// File holding a SAS token (instead of an account key).
    #[arg(long, env = "CPKFS_SAS_TOKEN_FILE")]
    sas_token_file: Option<PathBuf>,
    /// File holding the customer-provided key: base64 of 32 bytes (`openssl rand -base64 32`).
    #[arg(long, env = "CPKFS_CPK_FILE")]
    cpk_file: Option<PathBuf>,
    /// Expected base64 SHA-256 of the key: guards against a wrong key file.
    #[arg(long, env = "CPKFS_CPK_SHA256")]
    cpk_sha256: Option<String>,
    /// Extra CA certificate(s) to trust (PEM), e.g. the emulator's.
    #[arg(long, env = "CPKFS_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Block size for reads and writes, in bytes (suffixes K, M, G allowed).
    #[arg(long, env = "CPKFS_BLOCK_SIZE", default_value = "8M", value_parser = parse_size)]
    block_size: u64,
    /// Block cache size in bytes (suffixes K, M, G allowed).
    #[arg(long, env = "CPKFS_CACHE_SIZE", default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Seconds attributes and listings are trusted.
    #[arg(long, env = "CPKFS_ATTR_TTL", default_value_t = 3.0)]
    attr_ttl: f64,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// Create the container if it does not exist.
    #[arg(long)]
    create_container: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    allow_other: bool,
    /// Accept key files readable by group or others.
    #[arg(long)]
    allow_open_key_files: bool,
    /// Stay in the foreground (log to stderr).
    #[arg(short, long)]
    foreground: bool,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "CPKFS_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log file (when running in the background; default: discard).
    #[arg(long, env = "CPKFS_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// Where to mount.
    mountpoint: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size (e.g. 8M)"))
}

/// Read a secret file, refusing files others can read (as ssh does).
fn read_secret_file(path: &Path, what: &str, allow_open: bool) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    if !allow_open && meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "the {what} file {} is readable by group or others (mode {:o}): run `chmod 600 {}` (or pass --allow-open-key-files)",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

fn build_client(a: &MountArgs) -> Result<BlobClient> {
    let endpoint = a
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", a.account));
    let credential = if let Some(f) = &a.account_key_file {
        let text = read_secret_file(f, "account key", a.allow_open_key_files)?;
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(AccountKey::from_base64)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("in the account key file {}", f.display()))?;
        Credential::SharedKey(Arc::new(SharedKeyCredential::new(&a.account, keys)?))
    } else if let Ok(k) = std::env::var("AZURE_STORAGE_KEY") {
        Credential::SharedKey(Arc::new(SharedKeyCredential::new(
            &a.account,
            vec![AccountKey::from_base64(&k)?],
        )?))
    } else if let Some(f) = &a.sas_token_file {
        Credential::Sas(SasToken::parse(&read_secret_file(
            f,
            "SAS token",
            a.allow_open_key_files,
        )?)?)
    } else if let Ok(t) = std::env::var("AZURE_STORAGE_SAS_TOKEN") {
        Credential::Sas(SasToken::parse(&t)?)
    } else {
        bail!("no credentials: pass --account-key-file or --sas-token-file (or set AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN)");
    };
    let cpk = match &a.cpk_file {
        Some(f) => {
            let text = read_secret_file(f, "customer-provided key", a.allow_open_key_files)?;
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("");
            Some(Arc::new(
                CustomerKey::from_base64(first, a.cpk_sha256.as_deref())
                    .with_context(|| format!("in the key file {}", f.display()))?,
            ))
        }
        None => None,
    };
    let mut cfg = ClientConfig::new(&endpoint, &a.account, &a.container, credential);
    cfg.cpk = cpk;
    if let Some(ca) = &a.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?,
        );
    }
    Ok(BlobClient::new(cfg)?)
}

fn is_mounted(mountpoint: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(mountpoint) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 4 && Path::new(&f[4].replace("\\040", " ")) == canon && l.contains("fuse")
    })
}

fn init_logging(level: &str, file: Option<&Path>) -> Result<()> {
    // Our crate at the chosen level; HTTP/TLS libraries at warn at most, so
    // nothing they print can carry a header value.
    let filter = tracing_subscriber::EnvFilter::try_new(format!("warn,cpkfs={level}"))
        .with_context(|| format!("invalid log level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Raise the kernel's read-ahead for this mount (fuser can only lower it):
/// it doubles buffered sequential reads.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(mountpoint) {
        let dev = m.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let p = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        if let Err(e) = std::fs::write(&p, "1024") {
            tracing::debug!(path = %p, error = %e, "could not raise read-ahead");
        }
    }
}

fn mount_foreground(a: MountArgs) -> Result<()> {
    init_logging(&a.log_level, a.log_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(4)
        .build()?;
    let client = build_client(&a)?;
    check_mountpoint(&a.mountpoint)?;
    rt.block_on(probe(&client, &a))?;
    let fs_cfg = FsConfig {
        block_size: a.block_size,
        cache_size: a.cache_size,
        attr_ttl: Duration::from_secs_f64(a.attr_ttl),
        read_only: a.read_only,
        ..Default::default()
    };
    let fs = Fs::new(client, fs_cfg);
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("cpkfs:{}", a.container)),
        fuser::MountOption::Subtype("cpkfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if a.read_only {
        cfg.mount_options.push(fuser::MountOption::RO);
    }
    if a.allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(4);
    let session = fuser::Session::new(adapter, &a.mountpoint, &cfg)
        .with_context(|| format!("cannot mount on {}", a.mountpoint.display()))?;
    let bg = session.spawn()?;
    raise_readahead(&a.mountpoint);
    tracing::info!(mountpoint = %a.mountpoint.display(), container = %a.container, "mounted");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let joiner = std::thread::spawn(move || {
        let r = bg.join();
        let _ = tx.send(());
        r
    });
    let mountpoint = a.mountpoint.clone();
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: committing pending writes, then unmounting"),
            _ = int.recv() => tracing::info!("SIGINT: committing pending writes, then unmounting"),
            _ = rx => { tracing::info!("unmounted"); return Ok::<_, anyhow::Error>(()); }
        }
        let failures = fs.flush_all().await;
        for (p, e) in &failures {
            tracing::error!(path = %p, error = %e, "could not commit pending writes");
        }
        let _ = std::process::Command::new("fusermount3").arg("-u").arg(&mountpoint).status();
        Ok(())
    })?;
    let _ = joiner.join();
    Ok(())
}

/// Fail before mounting, with the service's reason (credentials, container,
/// TLS, reachability), creating the container if asked to.
async fn probe(client: &BlobClient, a: &MountArgs) -> Result<()> {
    match client.get_container_properties().await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() && a.create_container => client
            .create_container()
            .await
            .with_context(|| format!("cannot create container {:?}", a.container)),
        Err(e) => Err(e).with_context(|| format!("cannot access container {:?}", a.container)),
    }
}

fn check_mountpoint(p: &Path) -> Result<()> {
    let m = std::fs::metadata(p)
        .with_context(|| format!("mountpoint {} does not exist", p.display()))?;
    if !m.is_dir() {
        bail!("mountpoint {} is not a directory", p.display());
    }
    if is_mounted(p) {
        bail!("{} is already mounted", p.display());
    }
    Ok(())
}

/// Start the mount in a detached child and return once it is live.
fn mount_background(a: MountArgs) -> Result<()> {
    // Validate what we can here, so errors reach the terminal.
    let client = build_client(&a)?;
    check_mountpoint(&a.mountpoint)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(probe(&client, &a))?;
    drop(rt);
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let errlog = tempfile_path();
    let stderr = std::fs::File::create(&errlog)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(&a.mountpoint) {
            let _ = std::fs::remove_file(&errlog);
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let msg = std::fs::read_to_string(&errlog).unwrap_or_default();
            let _ = std::fs::remove_file(&errlog);
            bail!("the mount process exited ({status}): {}", msg.trim());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the mount did not come up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tempfile_path() -> PathBuf {
    std::env::temp_dir().join(format!("cpkfs-start-{}.log", std::process::id()))
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Mount(a) if a.foreground => mount_foreground(a),
        Cmd::Mount(a) => mount_background(a),
        Cmd::Unmount { mountpoint } => std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&mountpoint)
            .status()
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                if s.success() {
                    Ok(())
                } else {
                    bail!("fusermount3 -u {} failed", mountpoint.display())
                }
            }),
    };
    if let Err(e) = res {
        eprintln!("cpkfs: {e:#}");
        std::process::exit(1);
    }
}
