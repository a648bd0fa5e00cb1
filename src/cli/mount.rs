//! `cpkfs mount`: resolve settings, check everything that can be checked
//! before mounting (each failure with its own message), mount, and — unless in
//! the foreground — return only once the mount is live.

use super::logging;
use super::settings::Settings;
use super::MountArgs;
use crate::blob::{
    AccountKey, BlobClient, BlobError, ClientConfig, Credential, CustomerKey, SasToken,
    SharedKeyCredential, TransportKind,
};
use crate::fs::attr::AttrDefaults;
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseAdapter;
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set in the detached child of a background mount.
const CHILD_ENV: &str = "CPKFS_INTERNAL_DAEMON_CHILD";

pub struct Plan {
    pub s: Settings,
    pub mountpoint: PathBuf,
}

pub fn resolve(a: &MountArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Plan> {
    let opts = a.option_settings()?;
    let config = a
        .config
        .clone()
        .or_else(|| super::settings::config_from_o(&a.options));
    let file = match &config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the config file {}", p.display()))?;
            Settings::from_toml(&text, &p.display().to_string())?
        }
        None => Settings::default(),
    };
    let s = file.overlay(Settings::from_env(env)?).overlay(opts);
    s.validate()?;
    let mountpoint = a
        .mountpoint
        .clone()
        .ok_or_else(|| anyhow!("no mount point given"))?;
    Ok(Plan { s, mountpoint })
}

/// Read a secret file, refusing files others can read (as ssh does).
fn read_secret_file(path: &Path, what: &str, allow_open: bool) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    if !allow_open && meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "the {what} file {} is readable by group or others (mode {:o}): run `chmod 600 {}` (or set allow_open_key_files)",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

/// The customer-provided keys of `cpk_file`, one base64 key per line: the
/// first is the current key (all writes), the others older keys kept for
/// reading. Blank lines and `#` comments are ignored. `cpk_sha256`, when set,
/// must match the current key.
pub fn load_keyring(s: &Settings) -> Result<Vec<Arc<CustomerKey>>> {
    let Some(f) = &s.cpk_file else {
        return Ok(vec![]);
    };
    let text = read_secret_file(
        f,
        "customer-provided key",
        s.allow_open_key_files.unwrap_or(false),
    )?;
    // A JSON cpk_file holds keys wrapped by Key Vault (src/cli/vault.rs).
    if crate::keyvault::wrapped::looks_wrapped(&text) {
        return super::vault::unwrap_keyring(s, f, &text);
    }
    let mut ring = vec![];
    for (i, line) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
    {
        let expected = if i == 0 {
            s.cpk_sha256.as_deref()
        } else {
            None
        };
        let key = CustomerKey::from_base64(line, expected).with_context(|| {
            format!(
                "the customer-provided key file {} (key #{})",
                f.display(),
                i + 1
            )
        })?;
        ring.push(Arc::new(key));
    }
    if ring.is_empty() {
        bail!(
            "the customer-provided key file {} holds no key",
            f.display()
        );
    }
    Ok(ring)
}

/// The client for the settings' account, container and credentials. It
/// holds no customer-provided key: use `crate::connect::connect`, which
/// reads the keys into the core's ring as well.
pub fn build_client(s: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<BlobClient> {
    let account = s
        .account
        .clone()
        .ok_or_else(|| anyhow!("no account: set account (or AZURE_STORAGE_ACCOUNT)"))?;
    let container = s
        .container
        .clone()
        .ok_or_else(|| anyhow!("no container: set container"))?;
    let endpoint = s
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
    let allow_open = s.allow_open_key_files.unwrap_or(false);
    let credential = if let Some(url) = &s.account_key_secret {
        super::vault::account_key_credential(s, env, &account, url)?
    } else if let Some(f) = &s.account_key_file {
        let f2 = f.clone();
        let text = read_secret_file(f, "account key", allow_open)?;
        let keys =
            parse_keys(&text).with_context(|| format!("the account key file {}", f.display()))?;
        // Re-read the file when the service rejects the key (rotation).
        let reload: crate::blob::credentials::KeyReloader = Arc::new(move || {
            let text = std::fs::read_to_string(&f2).map_err(|e| e.to_string())?;
            parse_keys(&text).map_err(|e| e.to_string())
        });
        Credential::SharedKey(Arc::new(
            SharedKeyCredential::new(&account, keys)?.with_reloader(reload),
        ))
    } else if let Some(k) = env("AZURE_STORAGE_KEY") {
        let key = AccountKey::from_base64(&k).context("AZURE_STORAGE_KEY")?;
        Credential::SharedKey(Arc::new(SharedKeyCredential::new(&account, vec![key])?))
    } else if let Some(f) = &s.sas_token_file {
        Credential::Sas(SasToken::parse(&read_secret_file(
            f,
            "SAS token",
            allow_open,
        )?)?)
    } else if let Some(t) = env("AZURE_STORAGE_SAS_TOKEN") {
        Credential::Sas(SasToken::parse(&t).context("AZURE_STORAGE_SAS_TOKEN")?)
    } else {
        bail!("no credentials: set account_key_file or sas_token_file (or AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN)");
    };
    let mut cfg = ClientConfig::new(&endpoint, &account, &container, credential);
    if let Some(n) = s.retry_attempts {
        cfg.retry.max_attempts = n;
    }
    if let Some(d) = s.retry_max_delay {
        if !(0.0..=600.0).contains(&d) {
            bail!("retry_max_delay must be between 0 and 600 seconds");
        }
        cfg.retry.max_delay = Duration::from_secs_f64(d);
        cfg.retry.base_delay = cfg.retry.base_delay.min(cfg.retry.max_delay);
    }
    if let Some(ca) = &s.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?,
        );
    }
    Ok(BlobClient::new(cfg)?)
}

/// Account keys, one per line (a key file or a Key Vault secret).
pub(crate) fn parse_keys(text: &str) -> Result<Vec<AccountKey>> {
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(AccountKey::from_base64)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        bail!("it holds no key");
    }
    Ok(keys)
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
        f.len() > 4 && Path::new(&f[4].replace("\\040", " ")) == canon
    })
}

fn check_mountpoint(p: &Path, nonempty: bool) -> Result<()> {
    let m = std::fs::metadata(p).map_err(|e| {
        anyhow!(
            "mount point {} does not exist or cannot be reached: {e}",
            p.display()
        )
    })?;
    if !m.is_dir() {
        bail!("mount point {} is not a directory", p.display());
    }
    if is_mounted(p) {
        bail!("mount point {} is already mounted", p.display());
    }
    if !nonempty && std::fs::read_dir(p)?.next().is_some() {
        bail!(
            "mount point {} is not empty (set nonempty to mount over it)",
            p.display()
        );
    }
    Ok(())
}

fn check_fuse() -> Result<()> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        bail!("/dev/fuse is missing or not accessible: load the fuse module (modprobe fuse) and install fuse3");
    }
    if fusermount().is_none() {
        bail!("fusermount3 was not found: install fuse3 (apt-get install fuse3)");
    }
    Ok(())
}

/// fusermount3, from PATH or the standard directories (mount(8) runs helpers
/// with a minimal environment).
pub fn fusermount() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("fusermount3"))
        .find(|p| p.exists())
}

/// Explain a failed probe in one line.
fn probe_error(e: BlobError, s: &Settings) -> anyhow::Error {
    let container = s.container.as_deref().unwrap_or("");
    let endpoint = s.endpoint.as_deref().unwrap_or("the endpoint");
    match &e {
        BlobError::Transport {
            kind: TransportKind::Tls,
            ..
        } => {
            anyhow!("TLS failure talking to {endpoint}: the server's certificate is not trusted (pass its CA with ca_file): {e}")
        }
        BlobError::Transport {
            kind: TransportKind::Connect | TransportKind::Timeout,
            ..
        } => {
            anyhow!("endpoint {endpoint} is unreachable: {e}")
        }
        BlobError::Service(se)
            if se.is("AuthenticationFailed") || se.is("AuthorizationFailure") =>
        {
            anyhow!("the account key (or SAS) was rejected (AuthenticationFailed): check account_key_file / sas_token_file [{se}]")
        }
        BlobError::Service(se) if se.is("ContainerNotFound") => {
            anyhow!("container {container:?} was not found (ContainerNotFound); set create_container to create it")
        }
        _ => anyhow!("cannot access container {container:?}: {e}"),
    }
}

async fn probe(client: &BlobClient, s: &Settings) -> Result<()> {
    match client.get_container_properties().await {
        Ok(_) => {}
        Err(e) if e.is_not_found() && s.create_container.unwrap_or(false) => {
            client
                .create_container()
                .await
                .map_err(|e| probe_error(e, s))?;
        }
        Err(e) => return Err(probe_error(e, s)),
    }
    // The key itself is exercised by a listing (no blob needs to exist).
    client
        .list_blobs(&crate::blob::ListOptions {
            max_results: Some(1),
            ..Default::default()
        })
        .await
        .map_err(|e| probe_error(e, s))?;
    Ok(())
}

fn fs_config(s: &Settings) -> Result<FsConfig> {
    let mut c = FsConfig::default();
    // Ranges were checked by `Settings::validate` (settings.rs).
    if let Some(b) = &s.block_size {
        c.block_size = b.bytes()?;
    }
    if let Some(b) = &s.cache_size {
        c.cache_size = b.bytes()?;
    }
    if let Some(b) = &s.disk_cache_size {
        c.disk_cache_size = b.bytes()?;
    }
    c.disk_cache_dir = s.disk_cache_dir.clone();
    if c.disk_cache_dir.is_some() && c.disk_cache_size < c.block_size + 64 * 1024 {
        bail!("disk_cache_size must hold at least one block (block_size + 64K)");
    }
    if let Some(t) = s.attr_ttl {
        c.attr_ttl = Duration::from_secs_f64(t);
    }
    c.read_only = s.read_only.unwrap_or(false);
    c.overwrite_conflicts = s.conflict.as_deref() == Some("overwrite");
    c.attrs_in_tags = s.attrs_in_tags.unwrap_or(false);
    let mut d = AttrDefaults::default();
    if let Some(u) = s.uid {
        d.uid = u;
    }
    if let Some(g) = s.gid {
        d.gid = g;
    }
    if let Some(m) = &s.umask {
        let m = u32::from_str_radix(m, 8)? as u16;
        d.file_perm = 0o666 & !m;
        d.dir_perm = 0o777 & !m;
    }
    c.defaults = d;
    Ok(c)
}

/// The disk cache's directory must exist (or be creatable) and be a
/// writable directory: refused at start-up rather than found out on the
/// first eviction.
fn check_disk_cache_dir(d: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(|e| anyhow!("disk_cache_dir {}: {e}", d.display()))?;
    let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("disk_cache_dir {}: contains a NUL byte", d.display()))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        bail!(
            "disk_cache_dir {}: not writable: {}",
            d.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Every check that needs no mount, in the order a user would fix them.
fn preflight(p: &Plan, env: &dyn Fn(&str) -> Option<String>) -> Result<(BlobClient, FsConfig)> {
    let conn = crate::connect::connect(&p.s, env)?;
    let mut cfg = fs_config(&p.s)?;
    cfg.keyring = conn.keys;
    let client = conn.client;
    check_mountpoint(&p.mountpoint, p.s.nonempty.unwrap_or(false))?;
    check_fuse()?;
    if let Some(d) = &cfg.disk_cache_dir {
        check_disk_cache_dir(d)?;
    }
    Ok((client, cfg))
}

pub fn run(a: MountArgs) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let plan = resolve(&a, &env)?;
    let child = std::env::var_os(CHILD_ENV).is_some();
    if plan.s.foreground.unwrap_or(false) || child {
        run_foreground(plan, child, &env)
    } else {
        run_background(plan, &env)
    }
}

fn run_foreground(p: Plan, child: bool, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    // Block buffers are megabytes each and move between threads (FUSE,
    // tokio workers). With glibc's default of up to 8 arenas per core, each
    // thread's arena keeps freed buffers: RSS climbs far above the cache
    // size. One arena lets every freed buffer be reused by any thread;
    // measured here: peak RSS 480-510 → 362 MiB for a 2 GiB copy and read
    // with the 256 MiB cache, at the same throughput.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let level = p.s.log_level.clone().unwrap_or_else(|| "info".into());
    let target = match (&p.s.log_file, child) {
        (Some(f), _) => logging::Target::File(f),
        (None, true) => logging::Target::Syslog,
        (None, false) => logging::Target::Stderr,
    };
    logging::init(&level, target)?;
    let (client, fs_cfg) = preflight(&p, env)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(4)
        .build()?;
    rt.block_on(probe(&client, &p.s))?;
    let container = p.s.container.clone().unwrap_or_default();
    let fs = Fs::new(client, fs_cfg);
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone());
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(format!("cpkfs:{container}")),
        fuser::MountOption::Subtype("cpkfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if p.s.read_only.unwrap_or(false) {
        cfg.mount_options.push(fuser::MountOption::RO);
    }
    if p.s.allow_other.unwrap_or(false) {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(4);
    let session = fuser::Session::new(adapter, &p.mountpoint, &cfg)
        .map_err(|e| anyhow!("cannot mount on {}: {e}", p.mountpoint.display()))?;
    if let (Some(f), crate::blob::Credential::SharedKey(cred)) =
        (p.s.account_key_file.clone(), fs.client().credential())
    {
        rt.spawn(watch_key_file(f, cred.clone()));
    }
    let bg = session.spawn()?;
    raise_readahead(&p.mountpoint);
    tracing::info!(mountpoint = %p.mountpoint.display(), container = %container, "mounted");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let joiner = std::thread::spawn(move || {
        let r = bg.join();
        let _ = tx.send(());
        r
    });
    let mountpoint = p.mountpoint.clone();
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: committing pending writes, then unmounting"),
            _ = int.recv() => tracing::info!("SIGINT: committing pending writes, then unmounting"),
            _ = rx => {
                tracing::info!("unmounted");
                // Descriptors were released before the unmount; what is left
                // is directory times moved by entry changes (stored lazily)
                // and blobs unlinked while open.
                for (path, e) in fs.flush_all().await {
                    tracing::error!(path = %path, error = %e, "could not store at unmount");
                }
                return Ok::<_, anyhow::Error>(());
            }
        }
        let failures = fs.flush_all().await;
        if failures.is_empty() {
            tracing::info!("every pending write is committed");
        }
        for (path, e) in &failures {
            tracing::error!(path = %path, error = %e, "could not commit pending writes");
        }
        let st = std::process::Command::new(fusermount().unwrap_or_else(|| "fusermount3".into())).arg("-u").arg("-z").arg(&mountpoint).status();
        if !matches!(st, Ok(s) if s.success()) {
            tracing::error!("fusermount3 -u {} failed", mountpoint.display());
        }
        Ok(())
    })?;
    let _ = joiner.join();
    Ok(())
}

/// Re-read the account key file when it changes, so a rotated key is used
/// before the old one stops working (a signature failure also re-reads it).
async fn watch_key_file(path: PathBuf, cred: Arc<SharedKeyCredential>) {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| parse_keys(&t))
        {
            Ok(keys) => {
                tracing::info!(
                    keys = keys.len(),
                    "the account key file changed; re-read it"
                );
                cred.set_keys(keys);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the account key file changed but cannot be used")
            }
        }
    }
}

/// Raise the kernel's read-ahead for this mount (fuser can only lower it):
/// measured here, it doubles buffered sequential reads.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(mountpoint) {
        let dev = m.dev();
        let p = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        if let Err(e) = std::fs::write(&p, "1024") {
            tracing::debug!(path = %p, error = %e, "could not raise read-ahead");
        }
    }
}

/// Check what can be checked here (so errors reach the terminal), start the
/// mount in a detached child, and return once it is live.
fn run_background(p: Plan, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    let (client, _) = preflight(&p, env)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(probe(&client, &p.s))?;
    drop(rt);
    let errlog = std::env::temp_dir().join(format!("cpkfs-start-{}.log", std::process::id()));
    let stderr = std::fs::File::create(&errlog)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1))
        .env(CHILD_ENV, "1")
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
        if is_mounted(&p.mountpoint) {
            let _ = std::fs::remove_file(&errlog);
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let msg = std::fs::read_to_string(&errlog).unwrap_or_default();
            let _ = std::fs::remove_file(&errlog);
            let msg = msg.trim().trim_start_matches("cpkfs: ");
            bail!("{msg} (the mount process exited: {status})");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = std::fs::remove_file(&errlog);
            bail!("the mount did not come up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
