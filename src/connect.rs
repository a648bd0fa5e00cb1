//! Settings → what talks to Azure, for `mount` and `rotate-cpk`: the
//! customer-provided keys are read once into the [`KeyRing`] that the
//! filesystem core owns, and the client is built without any key (each
//! request is handed the key it needs, chosen from the ring by hash).

use crate::blob::{BlobClient, BlobError};
use crate::cli::mount::{build_client, load_keyring};
use crate::cli::settings::Settings;
use crate::fs::KeyRing;
use anyhow::Result;

pub struct Connection {
    pub client: BlobClient,
    pub keys: KeyRing,
}

pub fn connect(s: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<Connection> {
    let keys = KeyRing::new(load_keyring(s)?);
    let client = build_client(s, env)?;
    // A key travels in request headers: never over plain HTTP (Azure refuses
    // it as well, with 400 AccountRequiresHttps).
    if !keys.is_empty() && !client.endpoint().is_https() {
        return Err(BlobError::CpkOverHttp.into());
    }
    Ok(Connection { client, keys })
}

/// For the commands that work on a container without mounting it
/// (`rotate-cpk`, `doctor`): resolve their settings as a mount would, log to
/// stderr, and connect.
pub fn offline(common: &crate::cli::MountArgs) -> Result<(Settings, Connection)> {
    let env = |k: &str| std::env::var(k).ok();
    let mut common = common.clone();
    common.mountpoint = Some(".".into());
    let plan = crate::cli::mount::resolve(&common, &env)?;
    crate::cli::logging::init(
        plan.s.log_level.as_deref().unwrap_or("warn"),
        crate::cli::logging::Target::Stderr,
    )?;
    let conn = connect(&plan.s, &env)?;
    Ok((plan.s, conn))
}
