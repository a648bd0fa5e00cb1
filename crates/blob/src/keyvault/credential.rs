//! Microsoft Entra ID tokens for Key Vault (reference §7.5): client secret,
//! App Service managed identity and IMDS, chosen from the environment as the
//! Azure SDKs do. Tokens are cached per scope and tenant and refreshed before
//! they expire (5 minutes ahead, or at half-life for short-lived tokens).

use super::VaultError;
use crate::secret::SecretString;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default login host (`AZURE_AUTHORITY_HOST` overrides).
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Default IMDS base URL (`CPKFS_IMDS_ENDPOINT` overrides, e.g. for the emulator).
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// Where tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    /// Service principal with a client secret (`AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`, `AZURE_AUTHORITY_HOST`).
    /// `tenant` None = the tenant the vault's challenge names.
    ClientSecret {
        tenant: Option<String>,
        client_id: String,
        secret: SecretString,
        authority: String,
    },
    /// App Service / Functions / Container Apps (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`).
    AppService {
        endpoint: String,
        header: SecretString,
        client_id: Option<String>,
    },
    /// Azure VM / VMSS instance metadata service.
    Imds {
        base: String,
        client_id: Option<String>,
    },
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl TokenSource {
    /// Pick the source from the environment (reference §7.5 "source selection").
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<TokenSource, VaultError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let client_id = get("AZURE_CLIENT_ID");
        if let Some(secret) = get("AZURE_CLIENT_SECRET") {
            let Some(client_id) = client_id else {
                return Err(VaultError::Config(
                    "AZURE_CLIENT_SECRET is set but AZURE_CLIENT_ID is not".into(),
                ));
            };
            let authority = get("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|| DEFAULT_AUTHORITY.into())
                .trim_end_matches('/')
                .to_string();
            if !authority.starts_with("https://") {
                return Err(VaultError::Config(format!(
                    "AZURE_AUTHORITY_HOST must be an https URL (got {authority})"
                )));
            }
            return Ok(TokenSource::ClientSecret {
                tenant: get("AZURE_TENANT_ID"),
                client_id,
                secret: SecretString::new(secret),
                authority,
            });
        }
        if get("AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
            return Err(VaultError::Config("AZURE_CLIENT_CERTIFICATE_PATH (certificate credential) is not supported by cpkfs: use AZURE_CLIENT_SECRET or a managed identity".into()));
        }
        if get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            return Err(VaultError::Config("AZURE_FEDERATED_TOKEN_FILE (workload identity) is not supported by cpkfs: use AZURE_CLIENT_SECRET or a managed identity".into()));
        }
        if let Some(endpoint) = get("IDENTITY_ENDPOINT") {
            if get("IDENTITY_SERVER_THUMBPRINT").is_some() {
                return Err(VaultError::Config(
                    "Service Fabric managed identity is not supported by cpkfs".into(),
                ));
            }
            if get("IMDS_ENDPOINT").is_some() {
                return Err(VaultError::Config(
                    "Azure Arc managed identity is not supported by cpkfs".into(),
                ));
            }
            let Some(header) = get("IDENTITY_HEADER") else {
                return Err(VaultError::Config(
                    "IDENTITY_ENDPOINT is set without IDENTITY_HEADER".into(),
                ));
            };
            return Ok(TokenSource::AppService {
                endpoint,
                header: SecretString::new(header),
                client_id,
            });
        }
        if get("MSI_ENDPOINT").is_some() {
            return Err(VaultError::Config(
                "MSI_ENDPOINT (Cloud Shell / Azure ML managed identity) is not supported by cpkfs"
                    .into(),
            ));
        }
        let base = get("CPKFS_IMDS_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_IMDS.into())
            .trim_end_matches('/')
            .to_string();
        Ok(TokenSource::Imds { base, client_id })
    }

    pub fn name(&self) -> &'static str {
        match self {
            TokenSource::ClientSecret { .. } => "the client-credentials flow",
            TokenSource::AppService { .. } => "the App Service managed identity endpoint",
            TokenSource::Imds { .. } => "IMDS (managed identity)",
        }
    }

    /// The identity, for messages ("client id X" or "managed identity").
    pub fn identity(&self) -> String {
        match self {
            TokenSource::ClientSecret { client_id, .. } => client_id.clone(),
            TokenSource::AppService { client_id, .. } | TokenSource::Imds { client_id, .. } => {
                match client_id {
                    Some(c) => format!("{c} (managed identity)"),
                    None => "the system-assigned managed identity".into(),
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            TokenSource::ClientSecret {
                tenant,
                client_id,
                authority,
                ..
            } => format!(
                "ClientSecret {{ client_id: {client_id}, tenant: {tenant:?}, authority: {authority}, secret: <redacted> }}"
            ),
            TokenSource::AppService {
                endpoint,
                client_id,
                ..
            } => format!(
                "AppService {{ endpoint: {endpoint}, client_id: {client_id:?}, header: <redacted> }}"
            ),
            TokenSource::Imds { base, client_id } => {
                format!("Imds {{ base: {base}, client_id: {client_id:?} }}")
            }
        }
    }
}

#[derive(Clone)]
struct Cached {
    token: SecretString,
    refresh_at: Instant,
    expires_at: Instant,
}

/// A token source with a cache.
pub struct TokenCredential {
    source: TokenSource,
    http: reqwest::Client,
    cache: std::sync::Mutex<HashMap<String, Cached>>,
    /// One fetch at a time (concurrent callers wait and then hit the cache).
    fetch: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCredential")
            .field("source", &self.source)
            .finish()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A number that IMDS sends as a string and Entra as a number.
fn num(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl TokenCredential {
    pub fn new(source: TokenSource, http: reqwest::Client) -> Self {
        TokenCredential {
            source,
            http,
            cache: Default::default(),
            fetch: Default::default(),
        }
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Forget the cached token for this scope (the service rejected it).
    pub fn invalidate(&self, scope: &str, tenant: Option<&str>) {
        self.cache
            .lock()
            .unwrap()
            .remove(&format!("{scope}|{}", tenant.unwrap_or("")));
    }

    /// A token for `scope` (e.g. `https://vault.azure.net/.default`).
    /// `tenant`: from the vault's challenge.
    pub async fn token(
        &self,
        scope: &str,
        tenant: Option<&str>,
    ) -> Result<SecretString, VaultError> {
        let key = format!("{scope}|{}", tenant.unwrap_or(""));
        let fresh = |c: &HashMap<String, Cached>| {
            c.get(&key)
                .filter(|t| Instant::now() < t.refresh_at)
                .map(|t| t.token.clone())
        };
        if let Some(t) = fresh(&self.cache.lock().unwrap()) {
            return Ok(t);
        }
        let _one = self.fetch.lock().await;
        if let Some(t) = fresh(&self.cache.lock().unwrap()) {
            return Ok(t);
        }
        let stale = self.cache.lock().unwrap().get(&key).cloned();
        match self.fetch_token(scope, tenant).await {
            Ok((token, lifetime)) => {
                let margin = Duration::from_secs(300).min(lifetime / 2);
                let now = Instant::now();
                self.cache.lock().unwrap().insert(
                    key,
                    Cached {
                        token: token.clone(),
                        refresh_at: now + lifetime - margin,
                        expires_at: now + lifetime,
                    },
                );
                tracing::debug!(
                    source = self.source.name(),
                    lifetime_s = lifetime.as_secs(),
                    "got a Key Vault token"
                );
                Ok(token)
            }
            // A refresh failed but the old token still works: keep using it.
            Err(e) => {
                match stale.filter(|c| Instant::now() + Duration::from_secs(10) < c.expires_at) {
                    Some(c) => {
                        tracing::warn!(error = %e, "could not refresh the Key Vault token; the current one is still valid");
                        Ok(c.token)
                    }
                    None => Err(e),
                }
            }
        }
    }

    fn token_error(&self, detail: impl Into<String>) -> VaultError {
        VaultError::Token {
            source_name: self.source.name(),
            identity: self.source.identity(),
            detail: detail.into(),
        }
    }

    async fn fetch_token(
        &self,
        scope: &str,
        tenant: Option<&str>,
    ) -> Result<(SecretString, Duration), VaultError> {
        let resource = scope.trim_end_matches("/.default");
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let req = match &self.source {
                TokenSource::ClientSecret {
                    tenant: t,
                    client_id,
                    secret,
                    authority,
                } => {
                    let Some(tenant) = t.as_deref().or(tenant) else {
                        return Err(self.token_error(
                            "no tenant: set AZURE_TENANT_ID (the vault's challenge named none)",
                        ));
                    };
                    let body = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("client_id", client_id)
                        .append_pair("client_secret", secret.expose())
                        .append_pair("grant_type", "client_credentials")
                        .append_pair("scope", scope)
                        .finish();
                    self.http
                        .post(format!("{authority}/{tenant}/oauth2/v2.0/token"))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body)
                }
                TokenSource::AppService {
                    endpoint,
                    header,
                    client_id,
                } => {
                    let mut q = vec![("api-version", "2019-08-01"), ("resource", resource)];
                    if let Some(c) = client_id {
                        q.push(("client_id", c));
                    }
                    self.http
                        .get(endpoint)
                        .query(&q)
                        .header("x-identity-header", header.expose())
                }
                TokenSource::Imds { base, client_id } => {
                    let mut q = vec![("api-version", "2018-02-01"), ("resource", resource)];
                    if let Some(c) = client_id {
                        q.push(("client_id", c));
                    }
                    self.http
                        .get(format!("{base}{IMDS_PATH}"))
                        .query(&q)
                        .header("metadata", "true")
                }
            };
            let resp = match req.timeout(Duration::from_secs(20)).send().await {
                Ok(r) => r,
                Err(e) if attempt < 3 => {
                    tracing::debug!(error = %e, "token request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(self.token_error(format!(
                        "the token endpoint is unreachable: {}",
                        crate::keyvault::client::error_chain(&e)
                    )))
                }
            };
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if status == 200 {
                let Some(tok) = v["access_token"].as_str() else {
                    return Err(self.token_error("the answer has no access_token"));
                };
                let lifetime = num(&v["expires_in"])
                    .or_else(|| num(&v["expires_on"]).map(|on| on.saturating_sub(now_unix())))
                    .unwrap_or(300);
                return Ok((SecretString::new(tok), Duration::from_secs(lifetime.max(1))));
            }
            let retryable = matches!(
                self.source,
                TokenSource::Imds { .. } | TokenSource::AppService { .. }
            ) && matches!(status, 404 | 410 | 429 | 500..=599);
            if retryable && attempt < 3 {
                tokio::time::sleep(Duration::from_millis(300 << attempt)).await;
                continue;
            }
            let detail = v["error_description"]
                .as_str()
                .or(v["message"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
            let code = v["error"].as_str().unwrap_or("");
            return Err(self.token_error(format!("HTTP {status} {code}: {detail}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn source_selection() {
        let s = TokenSource::from_env(&env(&[
            ("AZURE_CLIENT_ID", "app"),
            ("AZURE_CLIENT_SECRET", "hunter2"),
            ("AZURE_TENANT_ID", "t"),
        ]))
        .unwrap();
        assert!(matches!(s, TokenSource::ClientSecret { .. }));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.identity(), "app");
        let s = TokenSource::from_env(&env(&[
            ("IDENTITY_ENDPOINT", "http://x/msi"),
            ("IDENTITY_HEADER", "h"),
        ]))
        .unwrap();
        assert!(matches!(s, TokenSource::AppService { .. }));
        let s = TokenSource::from_env(&env(&[])).unwrap();
        assert!(matches!(s, TokenSource::Imds { ref base, .. } if base == DEFAULT_IMDS));
        let s = TokenSource::from_env(&env(&[("CPKFS_IMDS_ENDPOINT", "https://127.0.0.1:9/")]))
            .unwrap();
        assert!(matches!(s, TokenSource::Imds { ref base, .. } if base == "https://127.0.0.1:9"));
        for bad in [
            &[("AZURE_CLIENT_SECRET", "x")][..],
            &[
                ("AZURE_CLIENT_ID", "a"),
                ("AZURE_CLIENT_SECRET", "x"),
                ("AZURE_AUTHORITY_HOST", "http://l"),
            ],
            &[
                ("IDENTITY_ENDPOINT", "http://x"),
                ("IMDS_ENDPOINT", "http://y"),
                ("IDENTITY_HEADER", "h"),
            ],
            &[("MSI_ENDPOINT", "http://x")],
        ] {
            assert!(TokenSource::from_env(&env(bad)).is_err(), "{bad:?}");
        }
    }
}
