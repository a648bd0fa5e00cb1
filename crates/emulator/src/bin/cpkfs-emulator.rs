//! `cpkfs-emulator`: CPK-aware Azure Blob Storage emulator for cpkfs tests and benchmarks.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use cpkfs_emulator::{self as emulator, EmulatorConfig, DEV_ACCOUNT, DEV_KEY1, DEV_KEY2};

/// Azure Blob Storage emulator with customer-provided-key (CPK) support.
///
/// Serves path-style URLs `/{account}/{container}/{blob}` over HTTPS (self-signed
/// certificate for 127.0.0.1, ::1 and localhost) or plain HTTP. Prints exactly one line
/// `listening on URL` on stdout when ready, then one `vault NAME on URL` line per
/// Key Vault. Admin endpoints (no auth): `GET|DELETE /__admin/stats`,
/// `POST|DELETE /__admin/faults`, `POST /__admin/accounts/{name}/regenerate-key?key=1|2`.
/// Each Key Vault is served at the root of its own listener (`--vault`); the
/// main listener is also the Entra ID authority host
/// (`/{tenant}/oauth2/v2.0/token`, OpenID configuration, instance discovery),
/// the IMDS base (`/metadata/identity/oauth2/token`) and App Service's
/// `/__msi/token`; see `GET /__admin/vault` and docs/CONFIGURATION.md.
#[derive(Parser, Debug)]
#[command(name = "cpkfs-emulator", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,

    /// Write the PEM of the self-signed CA to this file (HTTPS only).
    #[arg(long)]
    ca_out: Option<PathBuf>,

    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    http: bool,

    /// Account as NAME=KEY1[,KEY2] (base64 64-byte keys); repeatable.
    /// Default: devstoreaccount1 with the well-known key and a fixed second key.
    #[arg(long = "account", value_name = "NAME=KEY1[,KEY2]")]
    accounts: Vec<String>,

    /// Persist state in this directory (default: in memory).
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Accept CPK headers over plain HTTP (test flag; Azure answers 400 AccountRequiresHttps).
    #[arg(long)]
    allow_cpk_over_http: bool,

    /// Answer service versions >= 2026-02-06 like a service that predates them
    /// (400 InvalidHeaderValue on x-ms-version): no source keys on Put Blob/Block
    /// From URL. For testing cpkfs's streaming fallback.
    #[arg(long)]
    no_source_cpk: bool,

    /// Key Vault identity CLIENT_ID:SECRET:PERM[,PERM…] (e.g.
    /// `app1:pw:secrets/get,keys/unwrapKey`; empty SECRET = managed identity for
    /// IMDS / App Service; `+managed` in the list also serves a service principal
    /// there; `*` = every permission); repeatable.
    #[arg(long = "vault-identity", value_name = "ID:SECRET:PERMS")]
    vault_identities: Vec<String>,

    /// Key Vault NAME served at the root of https://ADDR (port 0 picks a free
    /// one); repeatable, the first is the default vault. Default: one vault
    /// `default` on a free port of the --listen address.
    #[arg(long = "vault", value_name = "NAME=ADDR")]
    vaults: Vec<String>,

    /// Lifetime of issued Key Vault tokens in seconds [default: 3600].
    #[arg(long)]
    vault_token_lifetime: Option<u64>,

    /// Slow the network down like a WAN link: response bodies share this
    /// many MB/s (10^6 bytes), e.g. 100 [default: unlimited].
    #[arg(long, value_name = "MB/s")]
    bandwidth: Option<f64>,

    /// Added latency: every blob request waits this many milliseconds before
    /// it is answered [default: 0].
    #[arg(long, value_name = "MS", default_value_t = 0)]
    latency: u64,

    /// Log level / tracing filter (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn parse_account(s: &str) -> anyhow::Result<(String, [String; 2])> {
    let (name, keys) = s
        .split_once('=')
        .with_context(|| format!("--account {s}: expected NAME=KEY1[,KEY2]"))?;
    let mut it = keys.split(',');
    let k1 = it.next().unwrap_or("").to_string();
    let k2 = it.next().map(str::to_string).unwrap_or_else(|| k1.clone());
    if name.is_empty() || k1.is_empty() || it.next().is_some() {
        bail!("--account {s}: expected NAME=KEY1[,KEY2]");
    }
    use base64::Engine;
    for k in [&k1, &k2] {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(k)
            .with_context(|| format!("--account {name}: key is not base64"))?;
        if raw.is_empty() {
            bail!("--account {name}: empty key");
        }
    }
    Ok((name.to_string(), [k1, k2]))
}

fn parse_vault(s: &str) -> anyhow::Result<(String, SocketAddr)> {
    let (name, addr) = s
        .split_once('=')
        .with_context(|| format!("--vault {s}: expected NAME=ADDR"))?;
    if name.is_empty() {
        bail!("--vault {s}: expected NAME=ADDR");
    }
    let addr = addr
        .parse()
        .with_context(|| format!("--vault {s}: {addr:?} is not an address like 127.0.0.1:8444"))?;
    Ok((name.to_string(), addr))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::stderr)
        .init();

    let accounts = if args.accounts.is_empty() {
        vec![(
            DEV_ACCOUNT.to_string(),
            [DEV_KEY1.to_string(), DEV_KEY2.to_string()],
        )]
    } else {
        args.accounts
            .iter()
            .map(|a| parse_account(a))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if let Some(b) = args.bandwidth {
        if !(b.is_finite() && b > 0.0) {
            bail!("--bandwidth {b}: expected a positive number of MB/s");
        }
    }
    let config = EmulatorConfig {
        listen: args.listen,
        tls: !args.http,
        accounts,
        data_dir: args.data_dir,
        allow_cpk_over_http: args.allow_cpk_over_http,
        source_cpk: !args.no_source_cpk,
        vault_identities: args
            .vault_identities
            .iter()
            .map(|s| emulator::token::parse_identity_flag(s).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?,
        vault_token_lifetime: args.vault_token_lifetime,
        vaults: args
            .vaults
            .iter()
            .map(|v| parse_vault(v))
            .collect::<anyhow::Result<Vec<_>>>()?,
        bandwidth_mb_s: args.bandwidth,
        latency: std::time::Duration::from_millis(args.latency),
    };
    let handle = emulator::start(config).await?;
    if let (Some(path), Some(pem)) = (&args.ca_out, &handle.ca_pem) {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    {
        // One write: a reader that stops after the first line must not make
        // a later write fail.
        let mut text = format!("listening on {}\n", handle.url);
        for v in &handle.vaults {
            text.push_str(&format!("vault {} on {}\n", v.name, v.url));
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    tokio::time::timeout(std::time::Duration::from_secs(6), handle.shutdown())
        .await
        .ok();
    Ok(())
}
