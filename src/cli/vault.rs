//! Keys from Azure Key Vault for `cpkfs mount` and `cpkfs keygen`:
//! the account key from a secret (`account_key_secret`), customer-provided
//! keys from wrapped-key files (a `cpk_file` holding JSON), and key generation.
//!
//! Identity: the Azure SDK environment variables (`AZURE_CLIENT_ID`,
//! `AZURE_CLIENT_SECRET`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`,
//! `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`), else IMDS (`CPKFS_IMDS_ENDPOINT`
//! overrides its address).

use super::mount::parse_keys;
use super::settings::Settings;
use crate::blob::secret::SecretString;
use crate::blob::{AccountKey, Credential, CustomerKey, SharedKeyCredential};
use crate::keyvault::wrapped::{self, WrappedKey};
use crate::keyvault::{BlockingVault, TokenSource, VaultClient, VaultOptions};
use anyhow::{anyhow, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a request whose account key was rejected waits for the secret
/// to get a new version when the secret holds a single key (the operator
/// regenerated the key and is about to store it).
pub const SECRET_UPDATE_WAIT: Duration = Duration::from_secs(30);

fn read_pem(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read the CA file {}", p.display()))
}

/// Vault client options from the settings: `vault_ca_file` (else `ca_file`)
/// and `vault_disable_challenge_verification`.
pub fn vault_options(
    ca: Option<&Path>,
    fallback_ca: Option<&Path>,
    disable_check: bool,
) -> Result<VaultOptions> {
    Ok(VaultOptions {
        ca_pem: ca.or(fallback_ca).map(read_pem).transpose()?,
        disable_challenge_verification: disable_check,
    })
}

fn settings_vault(s: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<BlockingVault> {
    let opts = vault_options(
        s.vault_ca_file.as_deref(),
        s.ca_file.as_deref(),
        s.vault_disable_challenge_verification.unwrap_or(false),
    )?;
    let source = TokenSource::from_env(env)?;
    Ok(BlockingVault::new(|| VaultClient::new(source, opts))?)
}

/// Run `f` blocking; on a multi-threaded runtime's worker, tell the runtime
/// so it can move its other tasks elsewhere meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The Shared Key credential of `account_key_secret`: the secret holds the
/// account key (or both keys, one per line). Fetched now; fetched again
/// whenever the service rejects the key in use (see [`SECRET_UPDATE_WAIT`]).
pub fn account_key_credential(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
    account: &str,
    url: &str,
) -> Result<Credential> {
    let vault = settings_vault(s, env)?;
    let fetch = {
        let vault = vault.clone();
        let url = url.to_string();
        move || -> Result<(String, Vec<AccountKey>)> {
            let u = url.clone();
            let (value, id) = vault.run(|c| async move { c.get_secret(&u).await })?;
            let keys = parse_keys(value.expose())
                .with_context(|| format!("the Key Vault secret {url} (not an account key)"))?;
            Ok((id, keys))
        }
    };
    let (id, keys) = fetch().context("cannot fetch the account key (account_key_secret)")?;
    tracing::info!(secret = %id, keys = keys.len(), "account key fetched from Key Vault");
    let last_id = Arc::new(Mutex::new(id));
    let reload: crate::blob::credentials::KeyReloader = Arc::new(move || {
        blocking(|| {
            let deadline = Instant::now() + SECRET_UPDATE_WAIT;
            loop {
                let (id, keys) = fetch().map_err(|e| format!("{e:#}"))?;
                let changed = *last_id.lock().unwrap() != id;
                if changed || keys.len() > 1 || Instant::now() >= deadline {
                    if changed {
                        tracing::info!(secret = %id, "the account key secret has a new version");
                        *last_id.lock().unwrap() = id;
                    }
                    return Ok(keys);
                }
                // One key, already rejected: wait for the secret's update.
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    });
    Ok(Credential::SharedKey(Arc::new(
        SharedKeyCredential::new(account, keys)?.with_reloader(reload),
    )))
}

/// The keyring of a wrapped-key `cpk_file` (JSON object or array), unwrapped
/// by Key Vault now. `cpk_sha256`, when set, must match the current key.
pub fn unwrap_keyring(s: &Settings, file: &Path, text: &str) -> Result<Vec<Arc<CustomerKey>>> {
    let list = wrapped::parse(text)
        .map_err(|e| anyhow!("the wrapped key file {}: {e}", file.display()))?;
    let vault = settings_vault(s, &|k| std::env::var(k).ok())?;
    let mut ring = vec![];
    for (i, w) in list.into_iter().enumerate() {
        let expected = if i == 0 { s.cpk_sha256.clone() } else { None };
        let key = vault
            .run(|c| async move { w.unwrap(&c, expected.as_deref()).await })
            .with_context(|| {
                format!(
                    "cannot unwrap the customer-provided key #{} of {}",
                    i + 1,
                    file.display()
                )
            })?;
        ring.push(Arc::new(key));
    }
    Ok(ring)
}

/// `cpkfs keygen`.
#[derive(clap::Args, Clone, Debug)]
pub struct KeygenArgs {
    /// Wrap the new key with this Key Vault key (https://VAULT/keys/NAME[/VERSION])
    /// and write a wrapped-key JSON file; the plaintext key is never written.
    #[arg(long, value_name = "KEY_URL")]
    pub wrap_with: Option<String>,
    /// Wrapping algorithm: RSA-OAEP-256, RSA-OAEP, or A256KW (oct keys).
    #[arg(long, default_value = wrapped::DEFAULT_ALG)]
    pub alg: String,
    /// Where to write the key file (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Extra CA (PEM) to trust for the vault, e.g. the emulator's (the
    /// setting vault_ca_file; also CPKFS_VAULT_CA_FILE).
    #[arg(long, value_name = "FILE")]
    pub vault_ca_file: Option<String>,
    /// Skip the check that the vault is in the domain its challenge names,
    /// emulators only (the setting vault_disable_challenge_verification).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub vault_disable_challenge_verification: Option<String>,
}

impl KeygenArgs {
    /// The settings keygen uses, read as a mount reads them (environment,
    /// then these flags), so a value means the same everywhere.
    pub fn settings(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
        let mut s = Settings::from_env(env)?;
        if let Some(v) = &self.vault_ca_file {
            s.set("vault_ca_file", v)?;
        }
        if let Some(v) = &self.vault_disable_challenge_verification {
            s.set("vault_disable_challenge_verification", v)?;
        }
        s.validate()?;
        Ok(s)
    }
}

fn write_0600(path: &Path, text: &str, force: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).mode(0o600);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(path).with_context(|| {
        format!(
            "cannot create {} (use --force to replace an existing file)",
            path.display()
        )
    })?;
    // An existing file keeps its mode on truncation: tighten it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub fn keygen(a: KeygenArgs) -> Result<()> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    let raw = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
    let key = CustomerKey::from_raw(*raw);
    let text = match &a.wrap_with {
        None => SecretString::new(STANDARD.encode(*raw) + "\n"),
        Some(url) => {
            let s = a.settings(&|k| std::env::var(k).ok())?;
            let opts = vault_options(
                s.vault_ca_file.as_deref(),
                None,
                s.vault_disable_challenge_verification.unwrap_or(false),
            )?;
            let source = TokenSource::from_env(&|k| std::env::var(k).ok())?;
            let vault = BlockingVault::new(|| VaultClient::new(source, opts))?;
            let (url, alg) = (url.clone(), a.alg.clone());
            let (kid, wrapped) = vault.run(|c| async move {
                let kid = c.resolve_kid(&url).await?;
                c.wrap_key(&kid, &alg, &raw[..]).await
            })?;
            let w = WrappedKey {
                kid,
                alg: a.alg.clone(),
                wrapped_key: URL_SAFE_NO_PAD.encode(wrapped),
                sha256: Some(key.sha256().to_string()),
            };
            SecretString::new(serde_json::to_string_pretty(&w)? + "\n")
        }
    };
    write_0600(&a.out, text.expose(), a.force)?;
    match &a.wrap_with {
        Some(_) => eprintln!("wrote the wrapped key to {}", a.out.display()),
        None => eprintln!("wrote the key to {} (mode 0600)", a.out.display()),
    }
    println!("sha256: {}", key.sha256());
    Ok(())
}
