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

/// How a setting's value is read from text (`-o`, `--flag`, env) and how its
/// command-line flag behaves.
pub trait SettingValue: Sized {
    fn parse(name: &str, v: &str) -> Result<Self>;
    /// A flag that may stand alone (`--read-only`) or take `=VALUE`.
    const IS_SWITCH: bool = false;
}

impl SettingValue for String {
    fn parse(_: &str, v: &str) -> Result<Self> {
        Ok(v.to_string())
    }
}

impl SettingValue for PathBuf {
    fn parse(_: &str, v: &str) -> Result<Self> {
        Ok(v.into())
    }
}

impl SettingValue for bool {
    fn parse(name: &str, v: &str) -> Result<Self> {
        parse_bool(name, v)
    }
    const IS_SWITCH: bool = true;
}

impl SettingValue for u32 {
    fn parse(name: &str, v: &str) -> Result<Self> {
        v.parse()
            .map_err(|_| anyhow::anyhow!("{name}={v}: expected a number"))
    }
}

impl SettingValue for f64 {
    fn parse(name: &str, v: &str) -> Result<Self> {
        v.parse()
            .map_err(|_| anyhow::anyhow!("{name}={v}: expected seconds"))
    }
}

impl SettingValue for Size {
    fn parse(_: &str, v: &str) -> Result<Self> {
        Ok(Size::Bytes(parse_size(v)?))
    }
}

/// One setting as the docs and the help show it.
#[derive(Debug, Clone, Copy)]
pub struct SettingSpec {
    pub name: &'static str,
    /// `-o` alias and short flag, if any (shown in the docs' name column).
    pub alias: Option<&'static str>,
    /// The environment variable(s) read, as the docs show them.
    pub env: &'static str,
    pub default: &'static str,
    /// Markdown; the first sentence is the command-line help.
    pub doc: &'static str,
}

/// Declares every setting once: the `Settings` struct (TOML, via serde), its
/// text parser (`-o`, `--flags`, env), its overlay, the clap flags
/// (`SettingFlags`) and the table of `docs/CONFIGURATION.md` (`SETTINGS`,
/// checked by a test) all come from this list.
macro_rules! settings {
    ($(
        $name:ident: $ty:ty, alias $alias:expr, env $env:literal, default $default:literal,
        check $check:expr, doc $doc:literal;
    )*) => {
        #[derive(Debug, Clone, Default, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(#[doc = $doc] pub $name: Option<$ty>,)*
        }

        pub const SETTINGS: &[SettingSpec] = &[$(SettingSpec {
            name: stringify!($name),
            alias: $alias,
            env: $env,
            default: $default,
            doc: $doc,
        },)*];

        /// Every setting as a `--flag` (dashes for underscores). Switches
        /// (booleans) stand alone or take `=VALUE`; the rest take a value.
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct SettingFlags {
            $(
                #[arg(
                    long,
                    help = first_sentence($doc),
                    long_help = $doc,
                    num_args = if <$ty as SettingValue>::IS_SWITCH { 0..=1 } else { 1..=1 },
                    require_equals = <$ty as SettingValue>::IS_SWITCH,
                    default_missing_value = if <$ty as SettingValue>::IS_SWITCH { Some("true") } else { None },
                )]
                pub $name: Option<String>,
            )*
        }

        impl SettingFlags {
            /// (name, value) of every flag given.
            pub fn given(&self) -> Vec<(&'static str, &str)> {
                let mut v = vec![];
                $(if let Some(x) = &self.$name {
                    v.push((stringify!($name), x.as_str()));
                })*
                v
            }
        }

        impl Settings {
            /// Parse and store one setting by name; false if the name is unknown.
            fn set_known(&mut self, name: &str, v: &str) -> Result<bool> {
                $(if name == stringify!($name) || Some(name) == $alias {
                    let check: fn(&$ty) -> Result<()> = $check;
                    let value = <$ty as SettingValue>::parse(stringify!($name), v)?;
                    check(&value)?;
                    self.$name = Some(value);
                    return Ok(true);
                })*
                Ok(false)
            }

            /// Check every value set, wherever it came from (TOML values
            /// are not parsed by [`Settings::set`]).
            pub fn validate(&self) -> Result<()> {
                $(if let Some(value) = &self.$name {
                    let check: fn(&$ty) -> Result<()> = $check;
                    check(value)?;
                })*
                Ok(())
            }

            /// Overlay: every value set in `hi` wins.
            pub fn overlay(self, hi: Settings) -> Settings {
                Settings { $($name: hi.$name.or(self.$name),)* }
            }
        }
    };
}

/// clap shows this as the short help; the docs' cell is the long help.
const fn first_sentence(doc: &'static str) -> &'static str {
    let b = doc.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'.' && b[i + 1] == b' ' {
            // Safe split: '.' and ' ' are ASCII, so i + 1 is a char boundary.
            let (head, _) = b.split_at(i + 1);
            return match std::str::from_utf8(head) {
                Ok(s) => s,
                Err(_) => doc,
            };
        }
        i += 1;
    }
    doc
}

fn any<T>(_: &T) -> Result<()> {
    Ok(())
}

settings! {
    endpoint: String, alias None, env "`CPKFS_ENDPOINT`", default "`https://ACCOUNT.blob.core.windows.net`", check any,
        doc "Blob endpoint. An IP address, `localhost` or a URL with a path (`https://127.0.0.1:10000/devstoreaccount1`) selects path-style URLs (emulators).";
    account: String, alias None, env "`AZURE_STORAGE_ACCOUNT`, `CPKFS_ACCOUNT`", default "required", check any,
        doc "Storage account name.";
    container: String, alias None, env "`CPKFS_CONTAINER`", default "required", check any,
        doc "Container to mount. The mount-helper form takes it as the source: `mount -t fuse.cpkfs CONTAINER DIR`.";
    account_key_file: PathBuf, alias None, env "`CPKFS_ACCOUNT_KEY_FILE`", default "—", check any,
        doc "File with the account key, or both of the account's keys one per line (mode 0600). Re-read when it changes and when the service rejects the key in use; cpkfs then switches to a key that works and logs which (never the key). `AZURE_STORAGE_KEY` (the key itself) is used when no file is given.";
    sas_token_file: PathBuf, alias None, env "`CPKFS_SAS_TOKEN_FILE`", default "—", check any,
        doc "File with a SAS token (instead of an account key). `AZURE_STORAGE_SAS_TOKEN` is used when no file is given.";
    cpk_file: PathBuf, alias None, env "`CPKFS_CPK_FILE`", default "— (no encryption key)", check any,
        doc "The customer-provided key ring (mode 0600): one base64 key (32 bytes, what `openssl rand -base64 32` prints) per line; the first is the current key (all writes), the others older keys kept for reading blobs not rotated yet (`cpkfs rotate-cpk`). `#` comments and blank lines are ignored. A JSON file is a Key Vault wrapped-key file (see Key Vault).";
    cpk_sha256: String, alias None, env "`CPKFS_CPK_SHA256`", default "—", check any,
        doc "Expected base64 SHA-256 of the current key. A wrong key file is refused.";
    ca_file: PathBuf, alias None, env "`CPKFS_CA_FILE`", default "—", check any,
        doc "Extra CA certificates (PEM) to trust, e.g. the emulator's `--ca-out` file.";
    block_size: Size, alias None, env "`CPKFS_BLOCK_SIZE`", default "`8M`", check |b| {
            let b = b.bytes()?;
            if !(64 << 10..=4000 << 20).contains(&b) {
                bail!("block_size must be between 64K and 4000M");
            }
            Ok(())
        },
        doc "Block size of ranged reads, the cache and Put Block (64K…4000M; suffixes K, M, G).";
    cache_size: Size, alias None, env "`CPKFS_CACHE_SIZE`", default "`256M`", check any,
        doc "Bytes the in-memory block cache may hold (suffixes K, M, G).";
    disk_cache_dir: PathBuf, alias None, env "`CPKFS_DISK_CACHE_DIR`", default "— (off)", check any,
        doc "Directory of the encrypted disk cache: blocks evicted from the memory cache are written here, sealed with AES-256-GCM under a random key that exists only in the mount's memory (never the plaintext, the customer-provided key or that key), so a second read of data larger than RAM comes from local disk. Each mount uses its own subdirectory `cpkfs-mount-<random>` (0700), removed at unmount; one left by a killed mount is removed by the next mount on the same directory. Created (0700) if missing; must be writable. See `docs/SEMANTICS.md` \"Disk cache\".";
    disk_cache_size: Size, alias None, env "`CPKFS_DISK_CACHE_SIZE`", default "`4G`", check |b| {
            b.bytes()?;
            Ok(())
        },
        doc "Bytes the disk cache may hold (least recently used blocks are deleted first; suffixes K, M, G). At least one block plus 64K.";
    attr_ttl: f64, alias None, env "`CPKFS_ATTR_TTL`", default "`3`", check |t| {
            if !(0.0..=86400.0).contains(t) {
                bail!("attr_ttl must be between 0 and 86400 seconds");
            }
            Ok(())
        },
        doc "Seconds attributes, listings and negative lookups are trusted.";
    read_only: bool, alias Some("ro"), env "`CPKFS_READ_ONLY`", default "`false`", check any,
        doc "Mount read-only. Writes fail with EROFS.";
    create_container: bool, alias None, env "`CPKFS_CREATE_CONTAINER`", default "`false`", check any,
        doc "Create the container if it does not exist.";
    allow_other: bool, alias None, env "`CPKFS_ALLOW_OTHER`", default "`false`", check any,
        doc "Let other users use the mount. Non-root users need `user_allow_other` in `/etc/fuse.conf`.";
    allow_open_key_files: bool, alias None, env "`CPKFS_ALLOW_OPEN_KEY_FILES`", default "`false`", check any,
        doc "Accept key files readable by group or others.";
    nonempty: bool, alias None, env "`CPKFS_NONEMPTY`", default "`false`", check any,
        doc "Allow mounting over a non-empty directory.";
    foreground: bool, alias Some("f"), env "`CPKFS_FOREGROUND`", default "`false`", check any,
        doc "Stay in the foreground, logging to stderr. Otherwise `cpkfs mount` returns only once the mount is live (or fails with the reason) and the mount runs detached.";
    uid: u32, alias None, env "`CPKFS_UID`", default "the mounting user", check any,
        doc "Owner of files whose blobs carry no `uid` metadata.";
    gid: u32, alias None, env "`CPKFS_GID`", default "the mounting user's group", check any,
        doc "Group of files whose blobs carry no `gid` metadata.";
    umask: String, alias None, env "`CPKFS_UMASK`", default "`022`", check |v| {
            u32::from_str_radix(v, 8).map_err(|_| anyhow::anyhow!("umask={v}: expected octal"))?;
            Ok(())
        },
        doc "Octal umask for files and directories whose blobs carry no `mode` metadata.";
    conflict: String, alias None, env "`CPKFS_CONFLICT`", default "`error`", check |v| match v.as_str() {
            "error" | "overwrite" => Ok(()),
            _ => bail!("conflict={v}: expected error or overwrite"),
        },
        doc "When another writer changed a file since it was opened: `error` — close fails (EIO) and this version is kept as `NAME.cpkfs-conflict-<time>`; `overwrite` — last writer wins.";
    attrs_in_tags: bool, alias None, env "`CPKFS_ATTRS_IN_TAGS`", default "`false`", check any,
        doc "Also keep each CPK file's mode, owner and times in its blob index tags, which List Blobs returns unencrypted: the first listing of a directory of CPK files then needs no keyed HEAD per file. Tags are not encrypted by the key: anyone who can list the container sees these attributes (never names' contents or data). Needs tag permission (`t` in a SAS). See `docs/SEMANTICS.md` \"Attributes in blob index tags\".";
    retry_attempts: u32, alias None, env "`CPKFS_RETRY_ATTEMPTS`", default "`6`", check |n| {
            if *n == 0 {
                bail!("retry_attempts must be at least 1");
            }
            Ok(())
        },
        doc "Attempts per request. Only transient failures (5xx, 408, 429, connection errors) are retried.";
    retry_max_delay: f64, alias None, env "`CPKFS_RETRY_MAX_DELAY`", default "`10`", check any,
        doc "Longest wait between attempts in seconds (exponential backoff with jitter; a `Retry-After` is honoured up to this).";
    log_level: String, alias None, env "`CPKFS_LOG_LEVEL`", default "`info`", check any,
        doc "`error`, `warn`, `info`, `debug` or `trace` for cpkfs's own logs; HTTP and TLS libraries log at `warn` at most. No level logs a key, a token or a string-to-sign.";
    log_file: PathBuf, alias None, env "`CPKFS_LOG_FILE`", default "stderr (foreground), syslog (background)", check any,
        doc "Log file.";
    account_key_secret: String, alias None, env "`CPKFS_ACCOUNT_KEY_SECRET`", default "—", check any,
        doc "Key Vault secret holding the account key (or both keys, one per line): `https://VAULT.vault.azure.net/secrets/NAME[/VERSION]`. Fetched at mount; when the service rejects the key in use (`AuthenticationFailed`, i.e. a rotation), fetched again before the request is retried. If the secret holds one key and has no new version yet, the request waits up to 30 s for one. Takes precedence over `account_key_file`.";
    vault_ca_file: PathBuf, alias None, env "`CPKFS_VAULT_CA_FILE`", default "`ca_file`", check any,
        doc "Extra CA (PEM) trusted for Key Vault and the token endpoints.";
    vault_disable_challenge_verification: bool, alias None, env "`CPKFS_VAULT_DISABLE_CHALLENGE_VERIFICATION`", default "`false`", check any,
        doc "Accept a Key Vault 401 challenge whose resource domain (`vault.azure.net`) does not contain the vault's host. Needed for the emulator (127.0.0.1); never set it for Azure.";
}

/// Every setting name, for help texts and the env lookup.
pub fn names() -> impl Iterator<Item = &'static str> {
    SETTINGS.iter().map(|s| s.name)
}

/// The settings table of `docs/CONFIGURATION.md`, made from [`SETTINGS`].
pub fn markdown_table() -> String {
    let mut t = String::from("| name | env | default | meaning |\n|---|---|---|---|\n");
    for s in SETTINGS {
        let name = match s.alias {
            Some(a) if a.len() == 1 => format!("`{}` (`-{a}`)", s.name),
            Some(a) => format!("`{}` (`{a}`)", s.name),
            None => format!("`{}`", s.name),
        };
        t.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            s.env, s.default, s.doc
        ));
    }
    t
}

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
        if self.set_known(&name, value)? || is_generic(&name) {
            return Ok(());
        }
        bail!(
            "unknown option {name:?} (known: {})",
            names().collect::<Vec<_>>().join(", ")
        )
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
        for name in names() {
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
    }

    /// docs/CONFIGURATION.md's settings table is made from the declarations
    /// (name, env, default, meaning): a setting added, renamed or re-documented
    /// here must be there too.
    #[test]
    fn configuration_md_table_is_the_declared_settings() {
        let doc = include_str!("../../docs/CONFIGURATION.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/CONFIGURATION.md's settings table differs from src/cli/settings.rs; it should read:\n{table}"
        );
    }

    /// Every declared setting is a flag, an `-o` option and a CPKFS_ variable,
    /// and switches stand alone or take a value.
    #[test]
    fn every_setting_is_a_flag_an_option_and_an_env_var() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            f: SettingFlags,
            rest: Option<String>,
        }
        let t = T::try_parse_from([
            "t",
            "--read-only",
            "--block-size",
            "1M",
            "--nonempty=false",
            "/m",
        ])
        .unwrap();
        assert_eq!(
            t.rest.as_deref(),
            Some("/m"),
            "a switch took the positional"
        );
        assert_eq!(
            t.f.given(),
            [
                ("block_size", "1M"),
                ("read_only", "true"),
                ("nonempty", "false")
            ]
        );
        for spec in SETTINGS {
            let v = match spec.name {
                "block_size" | "cache_size" | "disk_cache_size" => "1M",
                "attr_ttl" | "retry_max_delay" | "uid" | "gid" | "retry_attempts" => "3",
                "umask" => "022",
                "conflict" => "overwrite",
                n if Settings::default().set_known(n, "true").is_ok() => "true",
                _ => "x",
            };
            let mut a = Settings::default();
            a.set(spec.name, v).unwrap();
            let env = Settings::from_env(&|k| {
                (k == format!("CPKFS_{}", spec.name.to_ascii_uppercase())).then(|| v.to_string())
            })
            .unwrap();
            assert_eq!(a, env, "{}", spec.name);
            assert_ne!(a, Settings::default(), "{} stored nothing", spec.name);
            let flag = format!("--{}={v}", spec.name.replace('_', "-"));
            let t = T::try_parse_from(["t", &flag]).unwrap();
            assert_eq!(t.f.given(), [(spec.name, v)], "{flag}");
        }
    }

    /// The sample config file of the docs is valid as shipped.
    #[test]
    fn example_toml_parses_and_validates() {
        let s = Settings::from_toml(
            include_str!("../../docs/cpkfs.example.toml"),
            "docs/cpkfs.example.toml",
        )
        .unwrap();
        s.validate().unwrap();
        assert!(s.container.is_some(), "{s:?}");
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
