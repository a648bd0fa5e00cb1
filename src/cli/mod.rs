//! The `cpkfs` command line: `cpkfs mount`, the mount-helper form used by
//! `mount -t fuse.cpkfs` and fstab, `cpkfs unmount`.

pub mod logging;
pub mod mount;
pub mod rotate;
pub mod settings;
pub mod vault;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use settings::Settings;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cpkfs",
    version,
    about = "Mount an Azure Blob Storage container, every byte encrypted under your own key (CPK)",
    after_help = "Mount-helper form (used by `mount -t fuse.cpkfs` and /etc/fstab):\n  cpkfs CONTAINER MOUNTPOINT -o opt1,opt2,...\n\nSettings come from a TOML file (--config / -o config=), the environment\n(AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN, CPKFS_<NAME>),\nthen options, each overriding the previous. See docs/CONFIGURATION.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Mount a container. Returns once the mount works (or fails with the reason), unless --foreground.
    Mount(MountArgs),
    /// Re-encrypt blobs from the older keys of the ring (cpk_file lines 2…) to the current key (line 1).
    RotateCpk(rotate::RotateArgs),
    /// Generate a random 256-bit customer-provided key into a 0600 file, optionally wrapped by a Key Vault key (--wrap-with); prints its SHA-256.
    Keygen(vault::KeygenArgs),
    /// Unmount a cpkfs mount point (same as `umount` / `fusermount3 -u`).
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
}

#[derive(Args, Clone, Default)]
pub struct MountArgs {
    /// TOML config file with any of the settings below (by their underscore names).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Comma-separated settings, as in fstab: `-o container=c,cpk_file=/etc/cpkfs/key,ro`.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Blob endpoint [default: https://ACCOUNT.blob.core.windows.net]. IP/localhost → path style (emulators).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Storage account name.
    #[arg(long)]
    pub account: Option<String>,
    /// Container to mount.
    #[arg(long)]
    pub container: Option<String>,
    /// File holding the account key, or both keys one per line (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub account_key_file: Option<String>,
    /// File holding a SAS token (instead of an account key).
    #[arg(long, value_name = "FILE")]
    pub sas_token_file: Option<String>,
    /// File holding the customer-provided key: base64 of 32 bytes (`openssl rand -base64 32`), mode 0600.
    #[arg(long, value_name = "FILE")]
    pub cpk_file: Option<String>,
    /// Expected base64 SHA-256 of the customer-provided key (guards against a wrong file).
    #[arg(long)]
    pub cpk_sha256: Option<String>,
    /// Extra CA certificates (PEM) to trust, e.g. the emulator's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<String>,
    /// Block size for reads and writes [default: 8M].
    #[arg(long)]
    pub block_size: Option<String>,
    /// Block cache size [default: 256M].
    #[arg(long)]
    pub cache_size: Option<String>,
    /// Directory of the encrypted disk cache (blocks evicted from memory, sealed under a key that dies with the mount) [default: off].
    #[arg(long, value_name = "DIR")]
    pub disk_cache_dir: Option<String>,
    /// Bytes the disk cache may hold [default: 4G].
    #[arg(long)]
    pub disk_cache_size: Option<String>,
    /// Seconds attributes and listings are trusted [default: 3].
    #[arg(long)]
    pub attr_ttl: Option<String>,
    /// error, warn, info, debug, trace [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Log file when in the background [default: syslog].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Let other users use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Accept key files readable by group or others.
    #[arg(long)]
    pub allow_open_key_files: bool,
    /// Create the container if it does not exist.
    #[arg(long)]
    pub create_container: bool,
    /// Allow mounting over a non-empty directory.
    #[arg(long)]
    pub nonempty: bool,
    /// Stay in the foreground, logging to stderr.
    #[arg(short, long)]
    pub foreground: bool,
    /// Owner of files without uid metadata [default: the mounting user].
    #[arg(long)]
    pub uid: Option<String>,
    /// Group of files without gid metadata [default: the mounting user's group].
    #[arg(long)]
    pub gid: Option<String>,
    /// Umask (octal) for files and directories without mode metadata [default: 022].
    #[arg(long)]
    pub umask: Option<String>,
    /// On a concurrent change: `error` (close fails, both versions kept) or `overwrite` (last writer wins) [default: error].
    #[arg(long)]
    pub conflict: Option<String>,
    /// Attempts per request before an error is returned [default: 6].
    #[arg(long)]
    pub retry_attempts: Option<String>,
    /// Longest wait between attempts, seconds; caps Retry-After [default: 10].
    #[arg(long)]
    pub retry_max_delay: Option<String>,
    /// Key Vault secret holding the account key (or both keys, one per line): https://VAULT/secrets/NAME[/VERSION].
    #[arg(long, value_name = "URL")]
    pub account_key_secret: Option<String>,
    /// Extra CA certificates (PEM) to trust for Key Vault and Entra ID [default: ca_file].
    #[arg(long, value_name = "FILE")]
    pub vault_ca_file: Option<String>,
    /// Accept a Key Vault challenge from a host outside the resource's domain (emulators only).
    #[arg(long)]
    pub vault_disable_challenge_verification: bool,
    #[arg(long, hide = true)]
    pub account_key: Option<String>,
    #[arg(long, hide = true)]
    pub cpk: Option<String>,
    #[arg(long, hide = true)]
    pub sas_token: Option<String>,
    /// Where to mount.
    pub mountpoint: Option<PathBuf>,
}

impl MountArgs {
    /// The settings given as `--flags` and `-o` (highest precedence).
    pub fn option_settings(&self) -> Result<Settings> {
        let mut s = Settings::default();
        if self.account_key.is_some() {
            s.set("account_key", "")?;
        }
        if self.cpk.is_some() {
            s.set("cpk", "")?;
        }
        if self.sas_token.is_some() {
            s.set("sas_token", "")?;
        }
        let pairs: [(&str, &Option<String>); 19] = [
            ("endpoint", &self.endpoint),
            ("account", &self.account),
            ("container", &self.container),
            ("account_key_file", &self.account_key_file),
            ("sas_token_file", &self.sas_token_file),
            ("cpk_file", &self.cpk_file),
            ("cpk_sha256", &self.cpk_sha256),
            ("ca_file", &self.ca_file),
            ("block_size", &self.block_size),
            ("cache_size", &self.cache_size),
            ("disk_cache_dir", &self.disk_cache_dir),
            ("disk_cache_size", &self.disk_cache_size),
            ("attr_ttl", &self.attr_ttl),
            ("log_level", &self.log_level),
            ("log_file", &self.log_file),
            ("uid", &self.uid),
            ("gid", &self.gid),
            ("account_key_secret", &self.account_key_secret),
            ("vault_ca_file", &self.vault_ca_file),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                s.set(k, v)?;
            }
        }
        if let Some(u) = &self.umask {
            s.set("umask", u)?;
        }
        if let Some(c) = &self.conflict {
            s.set("conflict", c)?;
        }
        if let Some(c) = &self.retry_attempts {
            s.set("retry_attempts", c)?;
        }
        if let Some(c) = &self.retry_max_delay {
            s.set("retry_max_delay", c)?;
        }
        for (k, on) in [
            ("read_only", self.read_only),
            ("allow_other", self.allow_other),
            ("allow_open_key_files", self.allow_open_key_files),
            ("create_container", self.create_container),
            ("nonempty", self.nonempty),
            ("foreground", self.foreground),
            (
                "vault_disable_challenge_verification",
                self.vault_disable_challenge_verification,
            ),
        ] {
            if on {
                s.set(k, "true")?;
            }
        }
        for o in &self.options {
            s.apply_o(o)?;
        }
        Ok(s)
    }
}

/// Rewrite the mount-helper form `cpkfs SOURCE MOUNTPOINT [-o OPTS]...` into
/// `cpkfs mount --container SOURCE ... MOUNTPOINT`.
fn rewrite_helper_form(args: Vec<String>) -> Vec<String> {
    let known = [
        "mount",
        "rotate-cpk",
        "keygen",
        "unmount",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    if args.len() < 3 || known.contains(&args[1].as_str()) || args[1].starts_with('-') {
        return args;
    }
    let mut out = vec![args[0].clone(), "mount".into()];
    let source = &args[1];
    // fstab sources like "cpkfs" or "none" leave the container to the options.
    if !matches!(source.as_str(), "cpkfs" | "none") && !source.is_empty() {
        out.push("-o".into());
        out.push(format!("container={source}"));
    }
    out.extend(args[2..].iter().cloned());
    out
}

pub fn main() {
    let args = rewrite_helper_form(std::env::args().collect());
    let cli = Cli::parse_from(args);
    let res = match cli.cmd {
        Cmd::Mount(a) => mount::run(a),
        Cmd::RotateCpk(a) => rotate::run(a),
        Cmd::Keygen(a) => vault::keygen(a),
        Cmd::Unmount { mountpoint } => unmount(&mountpoint),
    };
    if let Err(e) = res {
        eprintln!("cpkfs: {e:#}");
        std::process::exit(1);
    }
}

fn unmount(mountpoint: &std::path::Path) -> Result<()> {
    let bin = mount::fusermount().unwrap_or_else(|| "fusermount3".into());
    let st = std::process::Command::new(bin)
        .arg("-u")
        .arg(mountpoint)
        .status();
    match st {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => bail!("fusermount3 -u {} failed", mountpoint.display()),
        Err(e) => bail!("cannot run fusermount3 (install fuse3): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cpkfs keygen` reads CPKFS_VAULT_DISABLE_CHALLENGE_VERIFICATION from
    /// the environment; CONFIGURATION.md's own example sets it to 1.
    #[test]
    fn keygen_env_boolean_accepts_what_people_write() {
        const VAR: &str = "CPKFS_VAULT_DISABLE_CHALLENGE_VERIFICATION";
        let parse = |v: &str| {
            // Only this test touches the variable.
            std::env::set_var(VAR, v);
            let r = Cli::try_parse_from(["cpkfs", "keygen", "--out", "/nonexistent/k"]);
            std::env::remove_var(VAR);
            match r.map(|c| c.cmd) {
                Ok(Cmd::Keygen(a)) => Ok(a.vault_disable_challenge_verification),
                Ok(_) => panic!("not keygen"),
                Err(e) => Err(e.to_string()),
            }
        };
        for v in ["1", "true", "TRUE", "yes", "on"] {
            assert_eq!(parse(v), Ok(true), "{v}");
        }
        for v in ["0", "false", "no", "off"] {
            assert_eq!(parse(v), Ok(false), "{v}");
        }
        assert!(parse("maybe").is_err());
    }

    #[test]
    fn helper_form_is_rewritten() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rewrite_helper_form(v(&[
                "cpkfs",
                "mycontainer",
                "/mnt/x",
                "-o",
                "config=/etc/c.toml,_netdev"
            ])),
            v(&[
                "cpkfs",
                "mount",
                "-o",
                "container=mycontainer",
                "/mnt/x",
                "-o",
                "config=/etc/c.toml,_netdev"
            ])
        );
        assert_eq!(
            rewrite_helper_form(v(&["cpkfs", "mount", "/m"])),
            v(&["cpkfs", "mount", "/m"])
        );
        assert_eq!(
            rewrite_helper_form(v(&["cpkfs", "none", "/m"])),
            v(&["cpkfs", "mount", "/m"])
        );
        let cli = Cli::parse_from(rewrite_helper_form(v(&[
            "cpkfs",
            "c",
            "/m",
            "-o",
            "ro,cpk_file=/k",
        ])));
        let Cmd::Mount(a) = cli.cmd else { panic!() };
        let s = a.option_settings().unwrap();
        assert_eq!(s.container.as_deref(), Some("c"));
        assert_eq!(s.read_only, Some(true));
        assert_eq!(a.mountpoint, Some(PathBuf::from("/m")));
    }

    #[test]
    fn secret_flags_are_refused() {
        let cli = Cli::parse_from(["cpkfs", "mount", "--cpk", "AAAA", "/m"]);
        let Cmd::Mount(a) = cli.cmd else { panic!() };
        assert!(a
            .option_settings()
            .unwrap_err()
            .to_string()
            .contains("cpk_file"));
    }
}
