//! A Key Vault data-plane subset (reference §7.1–7.4) and the Entra ID
//! endpoints of [`super::token`], shaped so that Microsoft's own SDKs
//! (azure-keyvault-keys/-secrets, azure-identity, MSAL) work against them.
//!
//! URL forms (BASE = the emulator's main listener, `https://127.0.0.1:PORT`):
//!
//! | what | URL |
//! |---|---|
//! | a vault (what `https://NAME.vault.azure.net` is in Azure) | the root of its own listener, `https://127.0.0.1:VPORT` (`--vault NAME=ADDR`; one vault `default` on a free port otherwise) |
//! | secrets | `VAULT/secrets/{name}[/{version}]?api-version=…`, `…/versions`, `VAULT/secrets` |
//! | keys | `VAULT/keys/{name}/create`, `…/{version}`, `…/versions`, `…[/{version}]/wrapkey\|unwrapkey\|encrypt\|decrypt`, `VAULT/keys` |
//! | authority host (`AZURE_AUTHORITY_HOST`) | `BASE` → `BASE/{tenant}/oauth2/v2.0/token`, `BASE/{tenant}/v2.0/.well-known/openid-configuration`, `BASE/common/discovery/instance` |
//! | IMDS base (cpkfs: `CPKFS_IMDS_ENDPOINT`; azure-identity: `AZURE_POD_IDENTITY_AUTHORITY_HOST`) | `BASE` → `BASE/metadata/identity/oauth2/token` |
//! | App Service (`IDENTITY_ENDPOINT`) | `BASE/__msi/token` |
//!
//! Object ids therefore have Azure's shape, `VAULT/keys/NAME/VERSION`: the
//! SDKs parse the collection from the first path segment and refuse anything
//! else. State is in memory only.
//! Admin on BASE (no auth): `GET /__admin/vault` (`vault_url`, `vaults`,
//! `authority_host`, `tenant`, endpoints, identity header, token counters),
//! `POST /__admin/vault/identities` (JSON [`Identity`]),
//! `POST /__admin/vault/config` (`{"token_lifetime_secs":N,"identity_header":"…"}`),
//! `POST /__admin/vault/revoke-tokens`, `POST /__admin/vault/enabled`
//! (`{"vault"?,"kind":"keys|secrets","name","version"?,"enabled"}`).

// Handlers return the error response itself; it is built once per request.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey};
use serde::Serialize;
use serde_json::{json, Value};

use super::http::{full, RespBody};
use super::token::{self, hex, now_secs, Entra, EntraRoute, Identity, VAULT_RESOURCE};

pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
pub const MSI_PATH: &str = "/__msi/token";
pub const ADMIN_PREFIX: &str = "/__admin/vault";
/// The vault served when no `--vault` is given.
pub const DEFAULT_VAULT: &str = "default";

/// One vault and the base URL of the listener that serves it.
#[derive(Clone, Debug, Serialize)]
pub struct VaultSite {
    pub name: String,
    pub url: String,
}

/// Key material. Private parts never leave the emulator.
pub enum Material {
    Rsa(Box<RsaPrivateKey>),
    Oct(Vec<u8>),
}

struct KeyVersion {
    version: String,
    material: Material,
    key_ops: Vec<String>,
    enabled: bool,
    created: u64,
    updated: u64,
}

struct SecretVersion {
    version: String,
    value: String,
    content_type: Option<String>,
    enabled: bool,
    created: u64,
    updated: u64,
}

#[derive(Default)]
struct Vault {
    secrets: BTreeMap<String, Vec<SecretVersion>>,
    keys: BTreeMap<String, Vec<KeyVersion>>,
}

/// Everything the Key Vault part keeps.
#[derive(Default)]
pub struct KvState {
    pub entra: Mutex<Entra>,
    /// The tenant (fixed; kept outside the lock for routing every request).
    tenant: String,
    vaults: Mutex<BTreeMap<String, Vault>>,
    /// The vault listeners, the default vault first; set once they are bound.
    sites: Mutex<Vec<VaultSite>>,
}

impl KvState {
    pub fn new(identities: Vec<Identity>, token_lifetime: Option<u64>) -> KvState {
        let mut e = Entra::default();
        for i in identities {
            e.identities.insert(i.client_id.clone(), i);
        }
        if let Some(t) = token_lifetime {
            e.token_lifetime = t;
        }
        KvState {
            tenant: e.tenant.clone(),
            entra: Mutex::new(e),
            ..Default::default()
        }
    }

    /// Record the bound vault listeners (the first is the default vault).
    pub fn set_sites(&self, sites: Vec<VaultSite>) {
        let mut vaults = self.vaults.lock().unwrap();
        for s in &sites {
            vaults.entry(s.name.clone()).or_default();
        }
        *self.sites.lock().unwrap() = sites;
    }

    pub fn sites(&self) -> Vec<VaultSite> {
        self.sites.lock().unwrap().clone()
    }

    /// Does this path of the main listener belong to the Key Vault / Entra part?
    pub fn owns(&self, path: &str) -> bool {
        path == IMDS_PATH
            || path == MSI_PATH
            || path == ADMIN_PREFIX
            || path.starts_with("/__admin/vault/")
            || token::entra_route(&self.tenant, path).is_some()
    }
}

// ---------------------------------------------------------------- crypto

/// Wrap / encrypt (`decrypt == false`) or unwrap / decrypt with `alg`.
pub fn crypt(m: &Material, alg: &str, input: &[u8], reverse: bool) -> Result<Vec<u8>, String> {
    let mut rng = rand::thread_rng();
    match (m, alg) {
        (Material::Rsa(k), "RSA-OAEP" | "RSA-OAEP-256" | "RSA1_5") => {
            let r = if reverse {
                match alg {
                    "RSA-OAEP" => k.decrypt(Oaep::new::<sha1::Sha1>(), input),
                    "RSA-OAEP-256" => k.decrypt(Oaep::new::<sha2::Sha256>(), input),
                    _ => k.decrypt(Pkcs1v15Encrypt, input),
                }
            } else {
                let p = k.to_public_key();
                match alg {
                    "RSA-OAEP" => p.encrypt(&mut rng, Oaep::new::<sha1::Sha1>(), input),
                    "RSA-OAEP-256" => p.encrypt(&mut rng, Oaep::new::<sha2::Sha256>(), input),
                    _ => p.encrypt(&mut rng, Pkcs1v15Encrypt, input),
                }
            };
            r.map_err(|e| format!("{alg}: {e}"))
        }
        (Material::Oct(k), "A128KW" | "A192KW" | "A256KW") => {
            let want = match alg {
                "A128KW" => 16,
                "A192KW" => 24,
                _ => 32,
            };
            if k.len() != want {
                return Err(format!(
                    "{alg} needs a {}-bit key; this key has {} bits",
                    want * 8,
                    k.len() * 8
                ));
            }
            let r = match k.len() {
                16 => {
                    let kek = aes_kw::KekAes128::from(<[u8; 16]>::try_from(&k[..]).unwrap());
                    if reverse {
                        kek.unwrap_vec(input)
                    } else {
                        kek.wrap_vec(input)
                    }
                }
                24 => {
                    let kek = aes_kw::KekAes192::from(<[u8; 24]>::try_from(&k[..]).unwrap());
                    if reverse {
                        kek.unwrap_vec(input)
                    } else {
                        kek.wrap_vec(input)
                    }
                }
                _ => {
                    let kek = aes_kw::KekAes256::from(<[u8; 32]>::try_from(&k[..]).unwrap());
                    if reverse {
                        kek.unwrap_vec(input)
                    } else {
                        kek.wrap_vec(input)
                    }
                }
            };
            r.map_err(|e| format!("{alg}: {e}"))
        }
        _ => Err(format!(
            "Algorithm {alg} is not supported for this key type"
        )),
    }
}

fn b64d(s: &str) -> Option<Vec<u8>> {
    B64URL.decode(s.trim_end_matches('=')).ok()
}

// ---------------------------------------------------------------- responses

fn json_resp(status: u16, v: &Value, extra: &[(&str, String)]) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap();
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("content-length", body.len())
        .header("x-ms-keyvault-service-version", "1.9.0.0")
        .header("x-ms-request-id", uuid::Uuid::new_v4().to_string());
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    b.body(full(body)).unwrap()
}

/// Key Vault's error shape, which the SDKs turn into `HttpResponseError`s
/// with `error.code` and `message`.
fn kv_error(status: u16, code: &str, message: &str) -> Response<RespBody> {
    json_resp(
        status,
        &json!({"error":{"code":code,"message":message}}),
        &[],
    )
}

fn bad_parameter(message: &str) -> Response<RespBody> {
    kv_error(400, "BadParameter", message)
}

/// A handler outcome: a response to send.
type R = Result<Response<RespBody>, Response<RespBody>>;

fn attrs(enabled: bool, created: u64, updated: u64) -> Value {
    json!({"enabled":enabled,"created":created,"updated":updated,
           "recoveryLevel":"Recoverable+Purgeable","recoverableDays":90})
}

async fn read_body(body: Incoming) -> Bytes {
    match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

// ---------------------------------------------------------------- main listener

/// Serve a request of the main listener for which [`KvState::owns`] is true:
/// Entra ID, managed identity and admin. `base` is the listener's base URL,
/// which is also the authority host.
pub async fn handle(kv: &KvState, base: &str, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    let path = parts.uri.path();
    let query = super::http::parse_query(parts.uri.query().unwrap_or(""));
    let method = &parts.method;

    if path == IMDS_PATH || path == MSI_PATH {
        if method != Method::GET {
            return kv_error(405, "MethodNotAllowed", "use GET");
        }
        let mut e = kv.entra.lock().unwrap();
        let (st, v) = if path == IMDS_PATH {
            e.imds(&query, &parts.headers)
        } else {
            e.app_service(&query, &parts.headers)
        };
        return json_resp(st, &v, &[]);
    }
    if path == ADMIN_PREFIX || path.starts_with("/__admin/vault/") {
        return admin(kv, base, method, path, &body);
    }
    match token::entra_route(&kv.tenant, path) {
        Some(route) => entra(kv, base, method, route, &query, &body),
        None => kv_error(404, "NotFound", "unknown Entra endpoint"),
    }
}

fn entra(
    kv: &KvState,
    base: &str,
    method: &Method,
    route: EntraRoute,
    query: &[(String, String)],
    body: &[u8],
) -> Response<RespBody> {
    let (st, v) = match route {
        EntraRoute::Token { tenant, v1 } => {
            if method != Method::POST {
                return kv_error(405, "MethodNotAllowed", "use POST");
            }
            kv.entra
                .lock()
                .unwrap()
                .client_credentials(&tenant, v1, body)
        }
        EntraRoute::OpenIdConfiguration { tenant, v2 } => {
            token::openid_configuration(base, &tenant, v2)
        }
        EntraRoute::InstanceDiscovery => token::instance_discovery(base, &kv.tenant, query),
    };
    json_resp(st, &v, &[])
}

fn admin(kv: &KvState, base: &str, method: &Method, path: &str, body: &[u8]) -> Response<RespBody> {
    let parsed = || -> Result<Value, Response<RespBody>> {
        serde_json::from_slice(body)
            .map_err(|e| json_resp(400, &json!({"error": e.to_string()}), &[]))
    };
    let r = match (method.as_str(), path) {
        ("GET", "/__admin/vault") => Ok(admin_status(kv, base)),
        ("POST", "/__admin/vault/identities") => admin_identity(kv, body),
        ("POST", "/__admin/vault/config") => parsed().map(|v| admin_config(kv, &v)),
        ("POST", "/__admin/vault/revoke-tokens") => {
            kv.entra.lock().unwrap().tokens.clear();
            Ok(json_resp(200, &json!({"revoked": true}), &[]))
        }
        ("POST", "/__admin/vault/enabled") => parsed().and_then(|v| admin_enabled(kv, &v)),
        _ => Err(json_resp(
            404,
            &json!({"error":"unknown admin endpoint"}),
            &[],
        )),
    };
    match r {
        Ok(r) | Err(r) => r,
    }
}

/// What a test needs to point an SDK at the emulator.
fn admin_status(kv: &KvState, base: &str) -> Response<RespBody> {
    let sites = kv.sites();
    let e = kv.entra.lock().unwrap();
    json_resp(
        200,
        &json!({
            "vault_url": sites.first().map(|s| s.url.clone()),
            "vaults": sites,
            "authority_host": base,
            "tenant": e.tenant,
            "imds_endpoint": base,
            "identity_endpoint": format!("{base}{MSI_PATH}"),
            "identity_header": e.identity_header,
            "resource": VAULT_RESOURCE,
            "token_lifetime_secs": e.token_lifetime,
            "tokens_issued": e.issued,
            "identities": e.identities.keys().collect::<Vec<_>>(),
        }),
        &[],
    )
}

fn admin_identity(kv: &KvState, body: &[u8]) -> R {
    let i: Identity = serde_json::from_slice(body)
        .map_err(|e| json_resp(400, &json!({"error": e.to_string()}), &[]))?;
    let echo = serde_json::to_value(&i).unwrap();
    kv.entra
        .lock()
        .unwrap()
        .identities
        .insert(i.client_id.clone(), i);
    Ok(json_resp(200, &echo, &[]))
}

fn admin_config(kv: &KvState, v: &Value) -> Response<RespBody> {
    let mut e = kv.entra.lock().unwrap();
    if let Some(t) = v["token_lifetime_secs"].as_u64() {
        e.token_lifetime = t;
    }
    if let Some(h) = v["identity_header"].as_str() {
        e.identity_header = h.to_string();
    }
    json_resp(
        200,
        &json!({"token_lifetime_secs": e.token_lifetime, "identity_header": e.identity_header}),
        &[],
    )
}

/// Enable or disable a version (default: the latest) of a key or secret.
fn admin_enabled(kv: &KvState, v: &Value) -> R {
    let bad = |m: &str| json_resp(400, &json!({"error": m}), &[]);
    let (Some(kind), Some(name), Some(enabled)) = (
        v["kind"].as_str(),
        v["name"].as_str(),
        v["enabled"].as_bool(),
    ) else {
        return Err(bad("expected {vault?, kind, name, version?, enabled}"));
    };
    let vault = match v["vault"].as_str() {
        Some(n) => n.to_string(),
        None => kv
            .sites()
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
    };
    let version = v["version"].as_str();
    let mut vaults = kv.vaults.lock().unwrap();
    let Some(vt) = vaults.get_mut(&vault) else {
        return Err(json_resp(404, &json!({"error":"no such vault"}), &[]));
    };
    let now = now_secs();
    let hit = match kind {
        "keys" => vt.keys.get_mut(name).and_then(|vs| {
            let k = pick_mut(vs, version, |k| &k.version)?;
            k.enabled = enabled;
            k.updated = now;
            Some(())
        }),
        "secrets" => vt.secrets.get_mut(name).and_then(|vs| {
            let s = pick_mut(vs, version, |s| &s.version)?;
            s.enabled = enabled;
            s.updated = now;
            Some(())
        }),
        _ => return Err(bad("kind must be keys or secrets")),
    };
    match hit {
        Some(()) => Ok(json_resp(200, &json!({"enabled": enabled}), &[])),
        None => Err(json_resp(404, &json!({"error":"no such object"}), &[])),
    }
}

/// The named version, or the latest for None.
fn pick_mut<'a, T>(
    vs: &'a mut [T],
    ver: Option<&str>,
    id: impl Fn(&T) -> &String,
) -> Option<&'a mut T> {
    match ver {
        Some(v) => vs.iter_mut().find(|x| id(x) == v),
        None => vs.last_mut(),
    }
}

fn pick<'a, T>(vs: &'a [T], ver: Option<&str>, id: impl Fn(&T) -> &String) -> Option<&'a T> {
    match ver {
        Some(v) => vs.iter().find(|x| id(x) == v),
        None => vs.last(),
    }
}

// ---------------------------------------------------------------- vault listeners

/// Serve a request to the vault `site` (the root of its own listener).
pub async fn handle_vault(
    kv: &KvState,
    base: &str,
    site: &VaultSite,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await;
    let query = super::http::parse_query(parts.uri.query().unwrap_or(""));
    let ctx = Ctx {
        kv,
        vault: &site.name,
        vault_url: &site.url,
        body: &body,
        now: now_secs(),
    };
    match vault_request(
        &ctx,
        base,
        &parts.method,
        parts.uri.path(),
        &query,
        &parts.headers,
    )
    .await
    {
        Ok(r) | Err(r) => r,
    }
}

/// What a vault handler works with.
struct Ctx<'a> {
    kv: &'a KvState,
    vault: &'a str,
    vault_url: &'a str,
    body: &'a [u8],
    now: u64,
}

impl Ctx<'_> {
    fn json_body(&self) -> Result<Value, Response<RespBody>> {
        serde_json::from_slice(self.body)
            .map_err(|e| bad_parameter(&format!("Invalid JSON body: {e}")))
    }

    /// Run `f` on this vault's state.
    fn with_vault<T>(&self, f: impl FnOnce(&mut Vault) -> T) -> T {
        let mut vaults = self.kv.vaults.lock().unwrap();
        f(vaults.entry(self.vault.to_string()).or_default())
    }
}

/// The object a request names: `{name}` and `{version}` of its path (an
/// empty version, as the SDKs send for "latest", is None).
struct Params<'a> {
    name: &'a str,
    version: Option<&'a str>,
}

type SyncHandler = fn(&Ctx, &Params) -> R;

#[derive(Clone, Copy)]
enum Handler {
    Sync(SyncHandler),
    /// Key creation generates RSA material off the runtime's threads.
    CreateKey,
}

struct Route {
    method: &'static str,
    /// Segments; `{name}` and `{version}` capture, others match case-insensitively.
    path: &'static str,
    permission: &'static str,
    handler: Handler,
}

const fn route(
    method: &'static str,
    path: &'static str,
    permission: &'static str,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        permission,
        handler,
    }
}

use Handler::{CreateKey, Sync};

/// Every vault operation the emulator serves. Earlier entries win, so
/// `…/versions` comes before `…/{version}`.
const ROUTES: &[Route] = &[
    route("GET", "secrets", "secrets/list", Sync(list_secrets)),
    route("PUT", "secrets/{name}", "secrets/set", Sync(set_secret)),
    route(
        "GET",
        "secrets/{name}/versions",
        "secrets/list",
        Sync(secret_versions),
    ),
    route("GET", "secrets/{name}", "secrets/get", Sync(get_secret)),
    route(
        "GET",
        "secrets/{name}/{version}",
        "secrets/get",
        Sync(get_secret),
    ),
    route(
        "PATCH",
        "secrets/{name}/{version}",
        "secrets/set",
        Sync(update_secret),
    ),
    route(
        "DELETE",
        "secrets/{name}",
        "secrets/delete",
        Sync(delete_secret),
    ),
    route("GET", "keys", "keys/list", Sync(list_keys)),
    route("POST", "keys/{name}/create", "keys/create", CreateKey),
    route(
        "GET",
        "keys/{name}/versions",
        "keys/list",
        Sync(key_versions),
    ),
    route("GET", "keys/{name}", "keys/get", Sync(get_key)),
    route("GET", "keys/{name}/{version}", "keys/get", Sync(get_key)),
    route(
        "PATCH",
        "keys/{name}/{version}",
        "keys/update",
        Sync(update_key),
    ),
    route("DELETE", "keys/{name}", "keys/delete", Sync(delete_key)),
    route(
        "POST",
        "keys/{name}/wrapkey",
        "keys/wrapKey",
        Sync(wrap_key),
    ),
    route(
        "POST",
        "keys/{name}/{version}/wrapkey",
        "keys/wrapKey",
        Sync(wrap_key),
    ),
    route(
        "POST",
        "keys/{name}/unwrapkey",
        "keys/unwrapKey",
        Sync(unwrap_key),
    ),
    route(
        "POST",
        "keys/{name}/{version}/unwrapkey",
        "keys/unwrapKey",
        Sync(unwrap_key),
    ),
    route("POST", "keys/{name}/encrypt", "keys/encrypt", Sync(encrypt)),
    route(
        "POST",
        "keys/{name}/{version}/encrypt",
        "keys/encrypt",
        Sync(encrypt),
    ),
    route("POST", "keys/{name}/decrypt", "keys/decrypt", Sync(decrypt)),
    route(
        "POST",
        "keys/{name}/{version}/decrypt",
        "keys/decrypt",
        Sync(decrypt),
    ),
];

/// Match `path` (without the leading `/`) against a route pattern.
fn match_path<'a>(pattern: &str, path: &'a str) -> Option<Params<'a>> {
    let segs: Vec<&str> = path.split('/').collect();
    let pats: Vec<&str> = pattern.split('/').collect();
    if segs.len() != pats.len() {
        return None;
    }
    let mut p = Params {
        name: "",
        version: None,
    };
    for (pat, seg) in pats.iter().zip(&segs) {
        match *pat {
            "{name}" if !seg.is_empty() => p.name = seg,
            "{name}" => return None,
            "{version}" => p.version = Some(*seg).filter(|v| !v.is_empty()),
            lit if lit.eq_ignore_ascii_case(seg) => {}
            _ => return None,
        }
    }
    Some(p)
}

fn find_route<'a>(method: &Method, path: &'a str) -> Option<(&'static Route, Params<'a>)> {
    ROUTES
        .iter()
        .filter(|r| r.method == method.as_str())
        .find_map(|r| match_path(r.path, path).map(|p| (r, p)))
}

/// Authenticate (401 with the challenge, before anything else, as Key Vault
/// does: the SDKs' first request is an unauthenticated probe), route,
/// authorize (403), check the api-version, run the handler.
async fn vault_request(
    ctx: &Ctx<'_>,
    base: &str,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> R {
    let ident = authenticate(ctx.kv, base, headers)?;
    let tail = path.strip_prefix('/').unwrap_or(path);
    let Some((route, params)) = find_route(method, tail) else {
        return Err(bad_parameter(&format!(
            "{method} {path} is not a Key Vault operation the emulator serves"
        )));
    };
    permit(&ident, route.permission, ctx.vault)?;
    api_version_ok(query)?;
    match route.handler {
        Sync(h) => h(ctx, &params),
        CreateKey => create_key(ctx, &params).await,
    }
}

/// The identity behind the bearer token, or 401 with the challenge naming
/// the authority (`BASE/{tenant}`: the SDKs take the tenant from the first
/// path segment) and the resource.
fn authenticate(
    kv: &KvState,
    base: &str,
    headers: &HeaderMap,
) -> Result<Identity, Response<RespBody>> {
    let e = kv.entra.lock().unwrap();
    let challenge = format!(
        "Bearer authorization=\"{base}/{}\", resource=\"{VAULT_RESOURCE}\"",
        e.tenant
    );
    let unauthorized = |msg: &str| {
        json_resp(
            401,
            &json!({"error":{"code":"Unauthorized","message":msg}}),
            &[("www-authenticate", challenge.clone())],
        )
    };
    let authz = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = authz
        .strip_prefix("Bearer ")
        .or_else(|| authz.strip_prefix("bearer "))
    else {
        return Err(unauthorized(
            "AKV10000: Request is missing a Bearer or PoP token.",
        ));
    };
    e.check(token.trim()).map_err(unauthorized)
}

/// 403 `Forbidden`/`AccessDenied` unless the identity holds `perm`.
fn permit(ident: &Identity, perm: &str, vault: &str) -> Result<(), Response<RespBody>> {
    if ident.allows(perm) {
        return Ok(());
    }
    let (family, op) = perm.split_once('/').unwrap_or(("", perm));
    Err(json_resp(
        403,
        &json!({"error":{
            "code":"Forbidden",
            "message": format!(
                "The user, group or application 'appid={};oid={}' does not have {} {} permission on key vault '{};location=local'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
                ident.client_id, ident.client_id, family, op.to_ascii_lowercase(), vault),
            "innererror":{"code":"AccessDenied"}}}),
        &[],
    ))
}

/// Key Vault's api-versions: `7.0`…`7.6` (and previews) and the dated
/// ones (`2025-07-01`, and newer: the SDKs move their default forward, e.g.
/// azure-keyvault-secrets 4.12 sends `2026-04-01`).
fn api_version_known(v: &str) -> bool {
    let v = v.strip_suffix("-preview").unwrap_or(v);
    let dated = v.len() == 10
        && chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok()
        && v >= "2025-01-01";
    let seven = v
        .strip_prefix("7.")
        .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
    dated || seven
}

fn api_version_ok(query: &[(String, String)]) -> Result<(), Response<RespBody>> {
    let v = query
        .iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.as_str());
    match v {
        Some(v) if api_version_known(v) => Ok(()),
        Some(v) => Err(bad_parameter(&format!(
            "The specified version ({v}) is not recognized. Consider using the latest supported version (2025-07-01)."
        ))),
        None => Err(bad_parameter("The api-version query parameter is missing.")),
    }
}

// ---------------------------------------------------------------- secrets

fn list_secrets(ctx: &Ctx, _: &Params) -> R {
    let value: Vec<Value> = ctx.with_vault(|vt| {
        vt.secrets
            .iter()
            .filter_map(|(name, vs)| {
                vs.last()
                    .map(|s| secret_bundle(ctx.vault_url, name, s, false))
            })
            .collect()
    });
    Ok(json_resp(
        200,
        &json!({"value": value, "nextLink": null}),
        &[],
    ))
}

fn set_secret(ctx: &Ctx, p: &Params) -> R {
    let b = ctx.json_body()?;
    let Some(value) = b["value"].as_str() else {
        return Err(bad_parameter("The request body must have a 'value'."));
    };
    let sv = SecretVersion {
        version: hex(uuid::Uuid::new_v4().as_bytes()),
        value: value.to_string(),
        content_type: b["contentType"].as_str().map(String::from),
        enabled: b["attributes"]["enabled"].as_bool().unwrap_or(true),
        created: ctx.now,
        updated: ctx.now,
    };
    let out = secret_bundle(ctx.vault_url, p.name, &sv, true);
    ctx.with_vault(|vt| vt.secrets.entry(p.name.to_string()).or_default().push(sv));
    Ok(json_resp(200, &out, &[]))
}

fn get_secret(ctx: &Ctx, p: &Params) -> R {
    ctx.with_vault(|vt| {
        let s = find_secret(vt, p)?;
        if !s.enabled {
            return Err(kv_error(
                403,
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
            ));
        }
        Ok(json_resp(
            200,
            &secret_bundle(ctx.vault_url, p.name, s, true),
            &[],
        ))
    })
}

fn secret_versions(ctx: &Ctx, p: &Params) -> R {
    ctx.with_vault(|vt| {
        let vs = vt
            .secrets
            .get(p.name)
            .ok_or_else(|| secret_not_found(p.name))?;
        let value: Vec<Value> = vs
            .iter()
            .map(|s| secret_bundle(ctx.vault_url, p.name, s, false))
            .collect();
        Ok(json_resp(
            200,
            &json!({"value": value, "nextLink": null}),
            &[],
        ))
    })
}

fn update_secret(ctx: &Ctx, p: &Params) -> R {
    let b = ctx.json_body()?;
    ctx.with_vault(|vt| {
        let vs = vt
            .secrets
            .get_mut(p.name)
            .ok_or_else(|| secret_not_found(p.name))?;
        let s = pick_mut(vs, p.version, |s| &s.version).ok_or_else(|| secret_not_found(p.name))?;
        if let Some(en) = b["attributes"]["enabled"].as_bool() {
            s.enabled = en;
        }
        if let Some(ct) = b["contentType"].as_str() {
            s.content_type = Some(ct.to_string());
        }
        s.updated = ctx.now;
        Ok(json_resp(
            200,
            &secret_bundle(ctx.vault_url, p.name, s, false),
            &[],
        ))
    })
}

fn delete_secret(ctx: &Ctx, p: &Params) -> R {
    ctx.with_vault(|vt| {
        let vs = vt
            .secrets
            .remove(p.name)
            .ok_or_else(|| secret_not_found(p.name))?;
        let last = vs.last().expect("a stored secret has a version");
        let mut out = secret_bundle(ctx.vault_url, p.name, last, false);
        out["recoveryId"] = json!(format!("{}/deletedsecrets/{}", ctx.vault_url, p.name));
        out["deletedDate"] = json!(ctx.now);
        Ok(json_resp(200, &out, &[]))
    })
}

// ---------------------------------------------------------------- keys

fn list_keys(ctx: &Ctx, _: &Params) -> R {
    let value: Vec<Value> = ctx.with_vault(|vt| {
        vt.keys
            .iter()
            .filter_map(|(name, vs)| vs.last().map(|k| key_item(ctx.vault_url, name, k)))
            .collect()
    });
    Ok(json_resp(
        200,
        &json!({"value": value, "nextLink": null}),
        &[],
    ))
}

/// New key material for a create request's `kty` and `key_size`.
async fn new_material(b: &Value) -> Result<Material, Response<RespBody>> {
    let kty = b["kty"].as_str().unwrap_or("");
    let size = b["key_size"].as_u64();
    match kty {
        "RSA" | "RSA-HSM" => {
            let bits = size.unwrap_or(2048) as usize;
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(bad_parameter(
                    "key_size must be 2048, 3072 or 4096 for RSA keys",
                ));
            }
            // RSA key generation takes up to seconds: not on the runtime's threads.
            let k = tokio::task::spawn_blocking(move || {
                RsaPrivateKey::new(&mut rand::thread_rng(), bits)
            })
            .await
            .map_err(|e| kv_error(500, "InternalError", &e.to_string()))?
            .map_err(|e| kv_error(500, "InternalError", &e.to_string()))?;
            Ok(Material::Rsa(Box::new(k)))
        }
        "oct" | "oct-HSM" => {
            let bits = size.unwrap_or(256) as usize;
            if ![128, 192, 256].contains(&bits) {
                return Err(bad_parameter(
                    "key_size must be 128, 192 or 256 for oct keys",
                ));
            }
            let mut k = vec![0u8; bits / 8];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
            Ok(Material::Oct(k))
        }
        "EC" | "EC-HSM" => Err(bad_parameter("EC keys are not supported by the emulator")),
        _ => Err(bad_parameter(&format!("Invalid kty {kty:?}"))),
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    })
}

async fn create_key(ctx: &Ctx<'_>, p: &Params<'_>) -> R {
    let b = ctx.json_body()?;
    let material = new_material(&b).await?;
    let default_ops: &[&str] = match material {
        Material::Rsa(_) => &["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        Material::Oct(_) => &["wrapKey", "unwrapKey"],
    };
    let key = KeyVersion {
        version: hex(uuid::Uuid::new_v4().as_bytes()),
        material,
        key_ops: string_list(&b["key_ops"])
            .unwrap_or_else(|| default_ops.iter().map(|s| s.to_string()).collect()),
        enabled: b["attributes"]["enabled"].as_bool().unwrap_or(true),
        created: ctx.now,
        updated: ctx.now,
    };
    let out = key_bundle(ctx.vault_url, p.name, &key);
    ctx.with_vault(|vt| vt.keys.entry(p.name.to_string()).or_default().push(key));
    Ok(json_resp(200, &out, &[]))
}

fn get_key(ctx: &Ctx, p: &Params) -> R {
    ctx.with_vault(|vt| {
        let k = find_key(vt, p)?;
        // As in Azure: a disabled version is listed but not returned.
        if !k.enabled {
            return Err(kv_error(
                403,
                "Forbidden",
                "Operation get is not allowed on a disabled key.",
            ));
        }
        Ok(json_resp(200, &key_bundle(ctx.vault_url, p.name, k), &[]))
    })
}

fn key_versions(ctx: &Ctx, p: &Params) -> R {
    ctx.with_vault(|vt| {
        let vs = vt.keys.get(p.name).ok_or_else(|| key_not_found(p.name))?;
        let value: Vec<Value> = vs
            .iter()
            .map(|k| key_item(ctx.vault_url, p.name, k))
            .collect();
        Ok(json_resp(
            200,
            &json!({"value": value, "nextLink": null}),
            &[],
        ))
    })
}

fn update_key(ctx: &Ctx, p: &Params) -> R {
    let b = ctx.json_body()?;
    ctx.with_vault(|vt| {
        let vs = vt
            .keys
            .get_mut(p.name)
            .ok_or_else(|| key_not_found(p.name))?;
        let k = pick_mut(vs, p.version, |k| &k.version).ok_or_else(|| key_not_found(p.name))?;
        if let Some(en) = b["attributes"]["enabled"].as_bool() {
            k.enabled = en;
        }
        if let Some(ops) = string_list(&b["key_ops"]) {
            k.key_ops = ops;
        }
        k.updated = ctx.now;
        Ok(json_resp(200, &key_bundle(ctx.vault_url, p.name, k), &[]))
    })
}

fn delete_key(ctx: &Ctx, p: &Params) -> R {
    ctx.with_vault(|vt| {
        let vs = vt
            .keys
            .remove(p.name)
            .ok_or_else(|| key_not_found(p.name))?;
        let last = vs.last().expect("a stored key has a version");
        let mut out = key_bundle(ctx.vault_url, p.name, last);
        out["recoveryId"] = json!(format!("{}/deletedkeys/{}", ctx.vault_url, p.name));
        out["deletedDate"] = json!(ctx.now);
        Ok(json_resp(200, &out, &[]))
    })
}

fn wrap_key(ctx: &Ctx, p: &Params) -> R {
    crypto_op(ctx, p, "wrapKey")
}

fn unwrap_key(ctx: &Ctx, p: &Params) -> R {
    crypto_op(ctx, p, "unwrapKey")
}

fn encrypt(ctx: &Ctx, p: &Params) -> R {
    crypto_op(ctx, p, "encrypt")
}

fn decrypt(ctx: &Ctx, p: &Params) -> R {
    crypto_op(ctx, p, "decrypt")
}

/// wrapKey / unwrapKey / encrypt / decrypt with the named (or latest) version.
fn crypto_op(ctx: &Ctx, p: &Params, op: &str) -> R {
    let b = ctx.json_body()?;
    let alg = b["alg"].as_str().unwrap_or("");
    let Some(input) = b["value"].as_str().and_then(b64d) else {
        return Err(bad_parameter(
            "The request body must have a base64url 'value'.",
        ));
    };
    if matches!(op, "encrypt" | "decrypt") && alg.contains("KW") {
        return Err(bad_parameter(&format!(
            "Algorithm {alg} is not supported for {op}."
        )));
    }
    ctx.with_vault(|vt| {
        let k = find_key(vt, p)?;
        if !k.enabled {
            return Err(kv_error(
                403,
                "Forbidden",
                &format!("Operation {op} is not allowed on a disabled key."),
            ));
        }
        if !k.key_ops.iter().any(|o| o == op) {
            return Err(kv_error(
                403,
                "Forbidden",
                &format!("Operation {op} is not permitted on this key."),
            ));
        }
        let reverse = matches!(op, "unwrapKey" | "decrypt");
        let out = crypt(&k.material, alg, &input, reverse).map_err(|e| bad_parameter(&e))?;
        Ok(json_resp(
            200,
            &json!({"kid": kid(ctx.vault_url, p.name, k), "value": B64URL.encode(out)}),
            &[],
        ))
    })
}

// ---------------------------------------------------------------- lookups and bundles

fn secret_not_found(name: &str) -> Response<RespBody> {
    kv_error(
        404,
        "SecretNotFound",
        &format!("A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"),
    )
}

fn key_not_found(name: &str) -> Response<RespBody> {
    kv_error(
        404,
        "KeyNotFound",
        &format!("A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"),
    )
}

fn object_id(p: &Params) -> String {
    match p.version {
        Some(v) => format!("{}/{v}", p.name),
        None => p.name.to_string(),
    }
}

fn find_secret<'a>(vt: &'a Vault, p: &Params) -> Result<&'a SecretVersion, Response<RespBody>> {
    let vs = vt
        .secrets
        .get(p.name)
        .ok_or_else(|| secret_not_found(p.name))?;
    pick(vs, p.version, |s| &s.version).ok_or_else(|| secret_not_found(&object_id(p)))
}

fn find_key<'a>(vt: &'a Vault, p: &Params) -> Result<&'a KeyVersion, Response<RespBody>> {
    let vs = vt.keys.get(p.name).ok_or_else(|| key_not_found(p.name))?;
    pick(vs, p.version, |k| &k.version).ok_or_else(|| key_not_found(&object_id(p)))
}

fn secret_bundle(vault_url: &str, name: &str, s: &SecretVersion, with_value: bool) -> Value {
    let mut v = json!({
        "id": format!("{vault_url}/secrets/{name}/{}", s.version),
        "attributes": attrs(s.enabled, s.created, s.updated),
        "tags": {},
    });
    if let Some(ct) = &s.content_type {
        v["contentType"] = json!(ct);
    }
    if with_value {
        v["value"] = json!(s.value);
    }
    v
}

fn kid(vault_url: &str, name: &str, k: &KeyVersion) -> String {
    format!("{vault_url}/keys/{name}/{}", k.version)
}

/// A `KeyItem` of the version and key listings.
fn key_item(vault_url: &str, name: &str, k: &KeyVersion) -> Value {
    json!({"kid": kid(vault_url, name, k), "attributes": attrs(k.enabled, k.created, k.updated), "tags": {}})
}

fn key_bundle(vault_url: &str, name: &str, k: &KeyVersion) -> Value {
    let kid = kid(vault_url, name, k);
    let key = match &k.material {
        Material::Rsa(r) => json!({
            "kid": kid, "kty": "RSA", "key_ops": k.key_ops,
            "n": B64URL.encode(r.n().to_bytes_be()), "e": B64URL.encode(r.e().to_bytes_be()),
        }),
        Material::Oct(_) => json!({"kid": kid, "kty": "oct-HSM", "key_ops": k.key_ops}),
    };
    json!({"key": key, "attributes": attrs(k.enabled, k.created, k.updated)})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a256kw_rfc3394_vectors() {
        let kek = Material::Oct(unhex(
            "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
        ));
        let key = unhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        // The request value of reference §7.4.
        assert_eq!(
            B64URL.encode(&key),
            "ABEiM0RVZneImaq7zN3u_wABAgMEBQYHCAkKCwwNDg8"
        );
        let w = crypt(&kek, "A256KW", &key, false).unwrap();
        assert_eq!(
            w,
            unhex(
                "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"
            )
        );
        assert_eq!(
            B64URL.encode(&w),
            "KMn0BMS4EPTLzLNc-4f4Jj9XhuLYDtMmy8fw5xqZ9Dv7mIubegLdIQ"
        );
        assert_eq!(crypt(&kek, "A256KW", &w, true).unwrap(), key);
        // RFC 3394 §4.3: a 16-byte key under the same KEK.
        let w16 = crypt(
            &kek,
            "A256KW",
            &unhex("00112233445566778899AABBCCDDEEFF"),
            false,
        )
        .unwrap();
        assert_eq!(
            w16,
            unhex("64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7")
        );
        // Tampering is detected; the wrong algorithm for the key size is refused.
        let mut bad = w.clone();
        bad[3] ^= 1;
        assert!(crypt(&kek, "A256KW", &bad, true).is_err());
        assert!(crypt(&kek, "A128KW", &key, false).is_err());
        assert!(crypt(&kek, "RSA-OAEP", &key, false).is_err());
    }

    #[test]
    fn routes_match_the_sdks_paths() {
        let m = |method: &str, path: &str| {
            find_route(&method.parse().unwrap(), path).map(|(r, p)| {
                (
                    r.permission,
                    p.name.to_string(),
                    p.version.map(String::from),
                )
            })
        };
        fn some(
            perm: &'static str,
            name: &str,
            ver: Option<&str>,
        ) -> Option<(&'static str, String, Option<String>)> {
            Some((perm, name.to_string(), ver.map(String::from)))
        }
        // The SDKs ask for "latest" with an empty version segment.
        assert_eq!(m("GET", "keys/k1/"), some("keys/get", "k1", None));
        assert_eq!(m("GET", "keys/k1"), some("keys/get", "k1", None));
        assert_eq!(m("GET", "keys/k1/abc"), some("keys/get", "k1", Some("abc")));
        assert_eq!(m("GET", "keys/k1/versions"), some("keys/list", "k1", None));
        assert_eq!(m("POST", "keys/k1/create"), some("keys/create", "k1", None));
        assert_eq!(
            m("POST", "keys/k1/abc/unwrapKey"),
            some("keys/unwrapKey", "k1", Some("abc"))
        );
        assert_eq!(
            m("POST", "keys/k1/wrapkey"),
            some("keys/wrapKey", "k1", None)
        );
        assert_eq!(m("PATCH", "secrets/s/"), some("secrets/set", "s", None));
        assert_eq!(m("PUT", "secrets/s"), some("secrets/set", "s", None));
        assert_eq!(m("GET", "secrets"), some("secrets/list", "", None));
        assert!(m("GET", "keys//x").is_none());
        assert!(m("PUT", "keys/k1").is_none());
        assert!(m("GET", "__vault/v/keys/k1").is_none());
    }

    #[test]
    fn api_versions() {
        for v in [
            "7.0",
            "7.4",
            "7.6",
            "7.6-preview",
            "2025-07-01",
            "2026-04-01",
            "2026-03-01-preview",
        ] {
            assert!(api_version_known(v), "{v}");
        }
        for v in ["", "7", "7.x", "8.0", "2019-02-02", "2025-13-01", "latest"] {
            assert!(!api_version_known(v), "{v}");
        }
    }

    #[test]
    fn rsa_oaep_round_trips() {
        let k = Material::Rsa(Box::new(
            RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap(),
        ));
        let data = [7u8; 32];
        for alg in ["RSA-OAEP", "RSA-OAEP-256", "RSA1_5"] {
            let w = crypt(&k, alg, &data, false).unwrap();
            assert_eq!(w.len(), 256);
            assert_eq!(crypt(&k, alg, &w, true).unwrap(), data, "{alg}");
        }
        let w = crypt(&k, "RSA-OAEP-256", &data, false).unwrap();
        assert!(
            crypt(&k, "RSA-OAEP", &w, true).is_err(),
            "hash mismatch must fail"
        );
    }
}
