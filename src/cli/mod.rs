//! The `cpkfs` command line: `cpkfs mount`, the mount-helper form used by
//! `mount -t fuse.cpkfs` and fstab, `cpkfs unmount`, `cpkfs stats` (a running
//! mount's counters) and `cpkfs doctor` (a container checked without a mount).

pub mod doctor;
pub mod logging;
pub mod mount;
pub mod rotate;
pub mod settings;
pub mod stats;
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
    /// Live counters of a running mount: operations, errors, Blob requests, caches, keys, last errors.
    Stats(stats::StatsArgs),
    /// Check a container without a mount: keys, plain blobs, markers and symlinks, uncommitted blocks (--clean). Exit 0: nothing to fix, 1: something to fix, 2: could not check.
    Doctor(doctor::DoctorArgs),
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
    /// Every setting as a flag (settings.rs declares them).
    #[command(flatten)]
    pub flags: settings::SettingFlags,
    /// Stay in the foreground (same as --foreground).
    #[arg(short = 'f', hide = true)]
    pub f: bool,
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
        for (k, v) in self.flags.given() {
            s.set(k, v)?;
        }
        if self.f {
            s.set("foreground", "true")?;
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
        "stats",
        "doctor",
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
        Cmd::Stats(a) => stats::run(a),
        Cmd::Doctor(a) => match doctor::run(a) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("cpkfs: {e:#}");
                std::process::exit(2);
            }
        },
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
    /// the environment as every setting is read; CONFIGURATION.md's own
    /// example sets it to 1. The flag overrides it.
    #[test]
    fn keygen_env_boolean_accepts_what_people_write() {
        const VAR: &str = "CPKFS_VAULT_DISABLE_CHALLENGE_VERIFICATION";
        let parse = |v: &str, args: &[&str]| {
            let cli = Cli::try_parse_from(
                ["cpkfs", "keygen", "--out", "/nonexistent/k"]
                    .iter()
                    .chain(args),
            )
            .unwrap();
            let Cmd::Keygen(a) = cli.cmd else {
                panic!("not keygen")
            };
            a.settings(&|k| (k == VAR).then(|| v.to_string()))
                .map(|s| s.vault_disable_challenge_verification)
                .map_err(|e| e.to_string())
        };
        for v in ["1", "true", "TRUE", "yes", "on"] {
            assert_eq!(parse(v, &[]), Ok(Some(true)), "{v}");
        }
        for v in ["0", "false", "no", "off"] {
            assert_eq!(parse(v, &[]), Ok(Some(false)), "{v}");
        }
        assert!(parse("maybe", &[]).is_err());
        assert_eq!(
            parse("0", &["--vault-disable-challenge-verification"]),
            Ok(Some(true))
        );
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
