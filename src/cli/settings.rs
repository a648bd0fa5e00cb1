//! Mount settings from, lowest to highest precedence: a TOML config file,
//! the environment, then command-line options. One name per setting: the same
//! in TOML, as `-o name=value`, as `--name` (with dashes) and, upper-cased,
//! as `CPKFS_NAME`.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// A size: bytes, or a string with a K/M/G suffix.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    pub fn bytes(&self) -> Result<u64> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| anyhow::anyhow!("{s:?} is not a size (examples: 8388608, 8M, 1G)"))
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub endpoint: Option<String>,
    pub account: Option<String>,
    pub container: Option<String>,
    pub account_key_file: Option<PathBuf>,
    pub sas_token_file: Option<PathBuf>,
    pub cpk_file: Option<PathBuf>,
    pub cpk_sha256: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub block_size: Option<Size>,
    pub cache_size: Option<Size>,
    /// The encrypted disk tier's directory (off when unset).
    pub disk_cache_dir: Option<PathBuf>,
    pub disk_cache_size: Option<Size>,
    pub attr_ttl: Option<f64>,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    pub read_only: Option<bool>,
    pub allow_other: Option<bool>,
    pub allow_open_key_files: Option<bool>,
    pub create_container: Option<bool>,
    pub nonempty: Option<bool>,
    pub foreground: Option<bool>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: Option<String>,
    /// `error` (default): a commit over a concurrent change fails close and
    /// keeps both versions; `overwrite`: last writer wins.
    pub conflict: Option<String>,
    /// Attempts per request (transient failures are retried).
    pub retry_attempts: Option<u32>,
    /// Longest wait between two attempts, in seconds (caps Retry-After too).
    pub retry_max_delay: Option<f64>,
    // Key Vault (src/cli/vault.rs)
    pub account_key_secret: Option<String>,
    pub vault_ca_file: Option<PathBuf>,
    pub vault_disable_challenge_verification: Option<bool>,
}

/// Every setting name, for help texts and the env lookup.
pub const NAMES: &[&str] = &[
    "endpoint",
    "account",
    "container",
    "account_key_file",
    "sas_token_file",
    "cpk_file",
    "cpk_sha256",
    "ca_file",
    "block_size",
    "cache_size",
    "disk_cache_dir",
    "disk_cache_size",
    "attr_ttl",
    "log_level",
    "log_file",
    "read_only",
    "allow_other",
    "allow_open_key_files",
    "create_container",
    "nonempty",
    "foreground",
    "uid",
    "gid",
    "umask",
    "conflict",
    "retry_attempts",
    "retry_max_delay",
    "account_key_secret",
    "vault_ca_file",
    "vault_disable_challenge_verification",
];

/// Options that would put a secret on the command line, and what to do instead.
fn secret_refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "cpk" | "customer_key" | "encryption_key" => {
            "a customer-provided key on the command line is visible to every user (ps, /proc): put it in a 0600 file and pass cpk_file=PATH"
        }
        "account_key" | "key" | "storage_key" => {
            "an account key on the command line is visible to every user: put it in a 0600 file and pass account_key_file=PATH (or set AZURE_STORAGE_KEY)"
        }
        "sas_token" | "sas" => {
            "a SAS token on the command line is visible to every user: put it in a 0600 file and pass sas_token_file=PATH (or set AZURE_STORAGE_SAS_TOKEN)"
        }
        _ => return None,
    })
}

/// Generic mount options that mount(8), fstab and mount.fuse3 pass along
/// and cpkfs accepts without acting on them.
fn is_generic(name: &str) -> bool {
    matches!(
        name,
        "rw" | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "strictatime"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "_netdev"
            | "nofail"
            | "defaults"
            | "default_permissions"
            | "async"
            | "sync"
            | "comment"
            | "config"
    ) || name.starts_with("x-")
}

fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("{name}={v}: expected true or false"),
    }
}

impl Settings {
    pub fn from_toml(text: &str, origin: &str) -> Result<Settings> {
        let s: Settings =
            toml::from_str(text).with_context(|| format!("in the config file {origin}"))?;
        Ok(s)
    }

    /// Set one named setting from text (an `-o` option, `--flag` or env var).
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let name = name.trim().replace('-', "_");
        if let Some(why) = secret_refusal(&name) {
            bail!("refusing the option {name}: {why}");
        }
        let v = value.to_string();
        match name.as_str() {
            "endpoint" => self.endpoint = Some(v),
            "account" => self.account = Some(v),
            "container" => self.container = Some(v),
            "account_key_file" => self.account_key_file = Some(v.into()),
            "sas_token_file" => self.sas_token_file = Some(v.into()),
            "cpk_file" => self.cpk_file = Some(v.into()),
            "cpk_sha256" => self.cpk_sha256 = Some(v),
            "ca_file" => self.ca_file = Some(v.into()),
            "block_size" => self.block_size = Some(Size::Bytes(parse_size(&v)?)),
            "cache_size" => self.cache_size = Some(Size::Bytes(parse_size(&v)?)),
            "disk_cache_dir" => self.disk_cache_dir = Some(v.into()),
            "disk_cache_size" => self.disk_cache_size = Some(Size::Bytes(parse_size(&v)?)),
            "attr_ttl" => {
                self.attr_ttl = Some(
                    v.parse()
                        .map_err(|_| anyhow::anyhow!("attr_ttl={v}: expected seconds"))?,
                )
            }
            "log_level" => self.log_level = Some(v),
            "log_file" => self.log_file = Some(v.into()),
            "read_only" | "ro" => self.read_only = Some(parse_bool(&name, &v)?),
            "allow_other" => self.allow_other = Some(parse_bool(&name, &v)?),
            "allow_open_key_files" => self.allow_open_key_files = Some(parse_bool(&name, &v)?),
            "create_container" => self.create_container = Some(parse_bool(&name, &v)?),
            "nonempty" => self.nonempty = Some(parse_bool(&name, &v)?),
            "foreground" => self.foreground = Some(parse_bool(&name, &v)?),
            "uid" => {
                self.uid = Some(
                    v.parse()
                        .map_err(|_| anyhow::anyhow!("uid={v}: expected a number"))?,
                )
            }
            "gid" => {
                self.gid = Some(
                    v.parse()
                        .map_err(|_| anyhow::anyhow!("gid={v}: expected a number"))?,
                )
            }
            "umask" => {
                u32::from_str_radix(&v, 8)
                    .map_err(|_| anyhow::anyhow!("umask={v}: expected octal"))?;
                self.umask = Some(v)
            }
            "retry_attempts" => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("retry_attempts={v}: expected a number"))?;
                if n == 0 {
                    bail!("retry_attempts must be at least 1");
                }
                self.retry_attempts = Some(n)
            }
            "retry_max_delay" => {
                self.retry_max_delay = Some(
                    v.parse()
                        .map_err(|_| anyhow::anyhow!("retry_max_delay={v}: expected seconds"))?,
                )
            }
            "conflict" => match v.as_str() {
                "error" | "overwrite" => self.conflict = Some(v),
                _ => bail!("conflict={v}: expected error or overwrite"),
            },
            "account_key_secret" => self.account_key_secret = Some(v),
            "vault_ca_file" => self.vault_ca_file = Some(v.into()),
            "vault_disable_challenge_verification" => {
                self.vault_disable_challenge_verification = Some(parse_bool(&name, &v)?)
            }
            n if is_generic(n) => {}
            n => bail!("unknown option {n:?} (known: {})", NAMES.join(", ")),
        }
        Ok(())
    }

    /// Apply a comma-separated `-o` list. Returns the `config=` path if any.
    pub fn apply_o(&mut self, list: &str) -> Result<()> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            if k == "config" {
                continue; // read before everything else
            }
            self.set(k, v)?;
        }
        Ok(())
    }

    /// Values from the environment: AZURE_STORAGE_ACCOUNT and CPKFS_<NAME>.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
        let mut s = Settings::default();
        if let Some(a) = env("AZURE_STORAGE_ACCOUNT") {
            s.account = Some(a);
        }
        for name in NAMES {
            if let Some(v) = env(&format!("CPKFS_{}", name.to_ascii_uppercase())) {
                s.set(name, &v)
                    .with_context(|| format!("in CPKFS_{}", name.to_ascii_uppercase()))?;
            }
        }
        for bad in ["CPKFS_CPK", "CPKFS_ACCOUNT_KEY"] {
            if env(bad).is_some() {
                bail!("{bad} is not a setting: put the key in a 0600 file and set {bad}_FILE");
            }
        }
        Ok(s)
    }

    /// Overlay: every value set in `hi` wins.
    pub fn overlay(self, hi: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: hi.$f.or(self.$f)),* } };
        }
        pick!(
            endpoint,
            account,
            container,
            account_key_file,
            sas_token_file,
            cpk_file,
            cpk_sha256,
            ca_file,
            block_size,
            cache_size,
            disk_cache_dir,
            disk_cache_size,
            attr_ttl,
            log_level,
            log_file,
            read_only,
            allow_other,
            allow_open_key_files,
            create_container,
            nonempty,
            foreground,
            uid,
            gid,
            umask,
            conflict,
            retry_attempts,
            retry_max_delay,
            account_key_secret,
            vault_ca_file,
            vault_disable_challenge_verification
        )
    }
}

/// Find `config=PATH` in `-o` lists.
pub fn config_from_o(lists: &[String]) -> Option<PathBuf> {
    lists
        .iter()
        .rev()
        .flat_map(|l| l.split(',').rev())
        .find_map(|i| i.trim().strip_prefix("config="))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_file_env_options() {
        let file = Settings::from_toml("account = \"fromfile\"\ncontainer = \"c1\"\nblock_size = \"4M\"\ncache_size = 1024\nread_only = true\n", "t").unwrap();
        let env = Settings::from_env(&|k| match k {
            "AZURE_STORAGE_ACCOUNT" => Some("fromenv".into()),
            "CPKFS_CONTAINER" => Some("c2".into()),
            _ => None,
        })
        .unwrap();
        let mut opts = Settings::default();
        opts.apply_o("container=c3,_netdev,nofail,ro=false,config=/x")
            .unwrap();
        let s = file.overlay(env).overlay(opts);
        assert_eq!(s.account.as_deref(), Some("fromenv"));
        assert_eq!(s.container.as_deref(), Some("c3"));
        assert_eq!(s.block_size.unwrap().bytes().unwrap(), 4 << 20);
        assert_eq!(s.cache_size.unwrap().bytes().unwrap(), 1024);
        assert_eq!(s.read_only, Some(false));
        assert_eq!(s.disk_cache_dir, None, "the disk tier is off by default");
    }

    #[test]
    fn disk_cache_settings_from_every_source() {
        let file = Settings::from_toml(
            "disk_cache_dir = \"/var/cache/cpkfs\"\ndisk_cache_size = \"4G\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(file.disk_cache_dir, Some(PathBuf::from("/var/cache/cpkfs")));
        assert_eq!(
            file.disk_cache_size.clone().unwrap().bytes().unwrap(),
            4 << 30
        );
        let env =
            Settings::from_env(&|k| (k == "CPKFS_DISK_CACHE_SIZE").then(|| "512M".to_string()))
                .unwrap();
        let mut opts = Settings::default();
        opts.apply_o("disk_cache_dir=/tmp/dc").unwrap();
        let s = file.overlay(env).overlay(opts);
        assert_eq!(s.disk_cache_dir, Some(PathBuf::from("/tmp/dc")));
        assert_eq!(s.disk_cache_size.unwrap().bytes().unwrap(), 512 << 20);
        assert!(Settings::default().set("disk_cache_size", "lots").is_err());
    }

    #[test]
    fn refuses_secrets_and_unknowns() {
        let mut s = Settings::default();
        let e = s.apply_o("cpk=AAAA").unwrap_err().to_string();
        assert!(e.contains("cpk_file"), "{e}");
        let e = s.set("account-key", "x").unwrap_err().to_string();
        assert!(e.contains("account_key_file"), "{e}");
        assert!(s.apply_o("sas_token=sv=1").is_err());
        assert!(s
            .apply_o("bogus=1")
            .unwrap_err()
            .to_string()
            .contains("unknown option"));
        assert!(Settings::from_toml("nope = 1", "t").is_err());
        assert!(Settings::from_env(&|k| (k == "CPKFS_CPK").then(|| "x".into())).is_err());
        assert_eq!(
            config_from_o(&["a=b,config=/etc/x.toml".into()]),
            Some(PathBuf::from("/etc/x.toml"))
        );
    }
}
