//! A Key Vault data-plane subset (reference §7.1–7.4) on the emulator's
//! listener, with the Entra ID token endpoints of [`super::token`].
//!
//! URL forms (BASE = the emulator's `https://127.0.0.1:PORT`):
//!
//! | what | URL |
//! |---|---|
//! | vault (what `https://NAME.vault.azure.net` is in Azure) | `BASE/__vault/NAME` |
//! | secrets | `BASE/__vault/NAME/secrets/{name}[/{version}]?api-version=7.4`, `…/versions` |
//! | keys | `BASE/__vault/NAME/keys/{name}/create`, `…/{version}`, `…/versions`, `…/{version}/wrapkey\|unwrapkey\|encrypt\|decrypt` |
//! | authority host (`AZURE_AUTHORITY_HOST`) | `BASE/__entra` → `BASE/__entra/{tenant}/oauth2/v2.0/token` |
//! | IMDS base (cpkfs: `CPKFS_IMDS_ENDPOINT`) | `BASE` → `BASE/metadata/identity/oauth2/token` |
//! | App Service (`IDENTITY_ENDPOINT`) | `BASE/__msi/token` |
//!
//! Vaults spring into existence on first use; state is in memory only.
//! Admin (no auth): `GET /__admin/vault` (tenant, endpoints, identity header,
//! token counters), `POST /__admin/vault/identities` (JSON [`Identity`]),
//! `POST /__admin/vault/config` (`{"token_lifetime_secs":N,"identity_header":"…"}`),
//! `POST /__admin/vault/revoke-tokens`, `POST /__admin/vault/enabled`
//! (`{"vault","kind":"keys|secrets","name","version","enabled"}`).

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
use serde_json::{json, Value};

use super::server::{full, RespBody};
use super::token::{hex, now_secs, Entra, Identity, VAULT_RESOURCE};

pub const VAULT_PREFIX: &str = "/__vault/";
pub const ENTRA_PREFIX: &str = "/__entra/";
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
pub const MSI_PATH: &str = "/__msi/token";
pub const ADMIN_PREFIX: &str = "/__admin/vault";

/// Does this path belong to the Key Vault / Entra part of the emulator?
pub fn owns(path: &str) -> bool {
    path.starts_with(VAULT_PREFIX)
        || path.starts_with(ENTRA_PREFIX)
        || path == IMDS_PATH
        || path == MSI_PATH
        || path == ADMIN_PREFIX
        || path.starts_with("/__admin/vault/")
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
    vaults: Mutex<BTreeMap<String, Vault>>,
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
            entra: Mutex::new(e),
            vaults: Mutex::new(BTreeMap::new()),
        }
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

fn kv_error(status: u16, code: &str, message: &str) -> Response<RespBody> {
    json_resp(
        status,
        &json!({"error":{"code":code,"message":message}}),
        &[],
    )
}

/// A handler outcome: a response to send.
type R = Result<Response<RespBody>, Response<RespBody>>;

fn attrs(enabled: bool, created: u64, updated: u64) -> Value {
    json!({"enabled":enabled,"created":created,"updated":updated,
           "recoveryLevel":"Recoverable+Purgeable","recoverableDays":90})
}

// ---------------------------------------------------------------- dispatch

/// Serve a request for which [`owns`] is true. `base` is the emulator's base URL.
pub async fn handle(kv: &KvState, base: &str, req: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = parts.uri.path().to_string();
    let query = super::auth::parse_query(parts.uri.query().unwrap_or(""));
    let method = parts.method;
    let headers = parts.headers;

    if path == IMDS_PATH || path == MSI_PATH {
        if method != Method::GET {
            return kv_error(405, "MethodNotAllowed", "use GET");
        }
        let mut e = kv.entra.lock().unwrap();
        let (st, v) = if path == IMDS_PATH {
            e.imds(&query, &headers)
        } else {
            e.app_service(&query, &headers)
        };
        return json_resp(st, &v, &[]);
    }
    if let Some(rest) = path.strip_prefix(ENTRA_PREFIX) {
        let (tenant, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let v1 = match tail {
            "oauth2/v2.0/token" => false,
            "oauth2/token" => true,
            _ => return kv_error(404, "NotFound", "unknown Entra endpoint"),
        };
        if method != Method::POST {
            return kv_error(405, "MethodNotAllowed", "use POST");
        }
        let (st, v) = kv
            .entra
            .lock()
            .unwrap()
            .client_credentials(tenant, v1, &body);
        return json_resp(st, &v, &[]);
    }
    if path == ADMIN_PREFIX || path.starts_with("/__admin/vault/") {
        return admin(kv, base, &method, &path, &body);
    }
    let rest = path.strip_prefix(VAULT_PREFIX).unwrap_or("");
    let (vault, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let vault = vault.to_string();
    match vault_request(kv, base, &vault, &method, tail, &query, &headers, &body).await {
        Ok(r) | Err(r) => r,
    }
}

fn admin(kv: &KvState, base: &str, method: &Method, path: &str, body: &[u8]) -> Response<RespBody> {
    let bad = |m: &str| json_resp(400, &json!({"error": m}), &[]);
    match (method.as_str(), path) {
        ("GET", "/__admin/vault") => {
            let e = kv.entra.lock().unwrap();
            json_resp(
                200,
                &json!({
                    "tenant": e.tenant,
                    "authority_host": format!("{base}/__entra"),
                    "imds_endpoint": base,
                    "identity_endpoint": format!("{base}{MSI_PATH}"),
                    "identity_header": e.identity_header,
                    "vault_url_prefix": format!("{base}/__vault/"),
                    "resource": VAULT_RESOURCE,
                    "token_lifetime_secs": e.token_lifetime,
                    "tokens_issued": e.issued,
                    "identities": e.identities.keys().collect::<Vec<_>>(),
                }),
                &[],
            )
        }
        ("POST", "/__admin/vault/identities") => {
            let i: Identity = match serde_json::from_slice(body) {
                Ok(i) => i,
                Err(e) => return bad(&e.to_string()),
            };
            let echo = serde_json::to_value(&i).unwrap();
            kv.entra
                .lock()
                .unwrap()
                .identities
                .insert(i.client_id.clone(), i);
            json_resp(200, &echo, &[])
        }
        ("POST", "/__admin/vault/config") => {
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad(&e.to_string()),
            };
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
        ("POST", "/__admin/vault/revoke-tokens") => {
            kv.entra.lock().unwrap().tokens.clear();
            json_resp(200, &json!({"revoked": true}), &[])
        }
        ("POST", "/__admin/vault/enabled") => {
            let v: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad(&e.to_string()),
            };
            let (Some(vault), Some(kind), Some(name), Some(enabled)) = (
                v["vault"].as_str(),
                v["kind"].as_str(),
                v["name"].as_str(),
                v["enabled"].as_bool(),
            ) else {
                return bad("expected {vault, kind, name, version?, enabled}");
            };
            let version = v["version"].as_str();
            let mut vaults = kv.vaults.lock().unwrap();
            let Some(vt) = vaults.get_mut(vault) else {
                return json_resp(404, &json!({"error":"no such vault"}), &[]);
            };
            let now = now_secs();
            let hit = match kind {
                "keys" => vt.keys.get_mut(name).and_then(|vs| {
                    let k = match version {
                        Some(ver) => vs.iter_mut().find(|k| k.version == ver),
                        None => vs.last_mut(),
                    }?;
                    k.enabled = enabled;
                    k.updated = now;
                    Some(())
                }),
                "secrets" => vt.secrets.get_mut(name).and_then(|vs| {
                    let s = match version {
                        Some(ver) => vs.iter_mut().find(|s| s.version == ver),
                        None => vs.last_mut(),
                    }?;
                    s.enabled = enabled;
                    s.updated = now;
                    Some(())
                }),
                _ => return bad("kind must be keys or secrets"),
            };
            match hit {
                Some(()) => json_resp(200, &json!({"enabled": enabled}), &[]),
                None => json_resp(404, &json!({"error":"no such object"}), &[]),
            }
        }
        _ => json_resp(404, &json!({"error":"unknown admin endpoint"}), &[]),
    }
}

/// Check the bearer token and the permission. 401 with the challenge, or 403.
fn authorize(
    kv: &KvState,
    base: &str,
    vault: &str,
    headers: &HeaderMap,
    perm: &str,
) -> Result<Identity, Response<RespBody>> {
    let e = kv.entra.lock().unwrap();
    let challenge = format!(
        "Bearer authorization=\"{base}/__entra/{}\", resource=\"{VAULT_RESOURCE}\"",
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
    let ident = e.check(token.trim()).map_err(unauthorized)?;
    if !ident.allows(perm) {
        let (family, op) = perm.split_once('/').unwrap_or(("", perm));
        return Err(json_resp(
            403,
            &json!({"error":{
                "code":"Forbidden",
                "message": format!(
                    "The user, group or application 'appid={};oid={}' does not have {} {} permission on key vault '{};location=local'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
                    ident.client_id, ident.client_id, family, op.to_ascii_lowercase(), vault),
                "innererror":{"code":"AccessDenied"}}}),
            &[],
        ));
    }
    Ok(ident)
}

fn api_version_ok(query: &[(String, String)]) -> Result<(), Response<RespBody>> {
    let v = query
        .iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.as_str());
    match v {
        Some(v) if v.starts_with("7.") || v == "2025-07-01" => Ok(()),
        Some(v) => Err(kv_error(
            400,
            "BadParameter",
            &format!("The specified version ({v}) is not recognized. Consider using the latest supported version (7.4)."),
        )),
        None => Err(kv_error(
            400,
            "BadParameter",
            "The api-version query parameter is missing.",
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn vault_request(
    kv: &KvState,
    base: &str,
    vault: &str,
    method: &Method,
    tail: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> R {
    let seg: Vec<&str> = tail.split('/').collect();
    let vault_url = format!("{base}/__vault/{vault}");
    // Which permission does this request need?
    let perm: &str = match (method.as_str(), seg.as_slice()) {
        ("PUT", ["secrets", _]) => "secrets/set",
        ("GET", ["secrets", _, "versions"]) => "secrets/list",
        ("GET", ["secrets", _] | ["secrets", _, _]) => "secrets/get",
        ("PATCH", ["secrets", _, _]) => "secrets/set",
        ("DELETE", ["secrets", _]) => "secrets/delete",
        ("POST", ["keys", _, "create"]) => "keys/create",
        ("GET", ["keys", _, "versions"]) => "keys/list",
        ("GET", ["keys", _] | ["keys", _, _]) => "keys/get",
        ("PATCH", ["keys", _, _]) => "keys/update",
        ("DELETE", ["keys", _]) => "keys/delete",
        ("POST", ["keys", _, op] | ["keys", _, _, op]) => match *op {
            "wrapkey" => "keys/wrapKey",
            "unwrapkey" => "keys/unwrapKey",
            "encrypt" => "keys/encrypt",
            "decrypt" => "keys/decrypt",
            _ => return Err(kv_error(400, "BadParameter", "unknown key operation")),
        },
        _ => {
            return Err(kv_error(
                404,
                "NotFound",
                &format!("{method} {tail} is not a Key Vault operation the emulator serves"),
            ))
        }
    };
    authorize(kv, base, vault, headers, perm)?;
    api_version_ok(query)?;
    let parse_body = || -> Result<Value, Response<RespBody>> {
        serde_json::from_slice(body)
            .map_err(|e| kv_error(400, "BadParameter", &format!("Invalid JSON body: {e}")))
    };
    let now = now_secs();

    // Key creation generates material outside the lock (RSA keygen is slow).
    if perm == "keys/create" {
        let b = parse_body()?;
        let kty = b["kty"].as_str().unwrap_or("");
        let size = b["key_size"].as_u64();
        let material = match kty {
            "RSA" | "RSA-HSM" => {
                let bits = size.unwrap_or(2048) as usize;
                if ![2048, 3072, 4096].contains(&bits) {
                    return Err(kv_error(
                        400,
                        "BadParameter",
                        "key_size must be 2048, 3072 or 4096 for RSA keys",
                    ));
                }
                let k = tokio::task::spawn_blocking(move || {
                    RsaPrivateKey::new(&mut rand::thread_rng(), bits)
                })
                .await
                .map_err(|e| kv_error(500, "InternalError", &e.to_string()))?
                .map_err(|e| kv_error(500, "InternalError", &e.to_string()))?;
                Material::Rsa(Box::new(k))
            }
            "oct" | "oct-HSM" => {
                let bits = size.unwrap_or(256) as usize;
                if ![128, 192, 256].contains(&bits) {
                    return Err(kv_error(
                        400,
                        "BadParameter",
                        "key_size must be 128, 192 or 256 for oct keys",
                    ));
                }
                let mut k = vec![0u8; bits / 8];
                rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut k);
                Material::Oct(k)
            }
            "EC" | "EC-HSM" => {
                return Err(kv_error(
                    400,
                    "BadParameter",
                    "EC keys are not supported by the emulator",
                ))
            }
            _ => {
                return Err(kv_error(
                    400,
                    "BadParameter",
                    &format!("Invalid kty {kty:?}"),
                ))
            }
        };
        let default_ops: Vec<String> = match material {
            Material::Rsa(_) => ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
                .map(String::from)
                .to_vec(),
            Material::Oct(_) => ["wrapKey", "unwrapKey"].map(String::from).to_vec(),
        };
        let key_ops = b["key_ops"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or(default_ops);
        let enabled = b["attributes"]["enabled"].as_bool().unwrap_or(true);
        let kv_ver = KeyVersion {
            version: hex(uuid::Uuid::new_v4().as_bytes()),
            material,
            key_ops,
            enabled,
            created: now,
            updated: now,
        };
        let out = key_bundle(&vault_url, seg[1], &kv_ver);
        kv.vaults
            .lock()
            .unwrap()
            .entry(vault.to_string())
            .or_default()
            .keys
            .entry(seg[1].to_string())
            .or_default()
            .push(kv_ver);
        return Ok(json_resp(200, &out, &[]));
    }

    let mut vaults = kv.vaults.lock().unwrap();
    let vt = vaults.entry(vault.to_string()).or_default();
    match (perm, seg.as_slice()) {
        ("secrets/set", ["secrets", name]) => {
            let b = parse_body()?;
            let Some(value) = b["value"].as_str() else {
                return Err(kv_error(
                    400,
                    "BadParameter",
                    "The request body must have a 'value'.",
                ));
            };
            let sv = SecretVersion {
                version: hex(uuid::Uuid::new_v4().as_bytes()),
                value: value.to_string(),
                content_type: b["contentType"].as_str().map(String::from),
                enabled: b["attributes"]["enabled"].as_bool().unwrap_or(true),
                created: now,
                updated: now,
            };
            let out = secret_bundle(&vault_url, name, &sv, true);
            vt.secrets.entry(name.to_string()).or_default().push(sv);
            Ok(json_resp(200, &out, &[]))
        }
        ("secrets/get", ["secrets", name, ..]) => {
            let ver = seg.get(2).copied().filter(|v| !v.is_empty());
            let s = find_secret(vt, &vault_url, name, ver)?;
            if !s.enabled {
                return Err(kv_error(
                    403,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                ));
            }
            Ok(json_resp(
                200,
                &secret_bundle(&vault_url, name, s, true),
                &[],
            ))
        }
        ("secrets/list", ["secrets", name, _]) => {
            let vs = vt
                .secrets
                .get(*name)
                .ok_or_else(|| secret_not_found(name))?;
            let value: Vec<Value> = vs
                .iter()
                .map(|s| secret_bundle(&vault_url, name, s, false))
                .collect();
            Ok(json_resp(
                200,
                &json!({"value": value, "nextLink": null}),
                &[],
            ))
        }
        ("secrets/set", ["secrets", name, ver]) => {
            let b = parse_body()?;
            let vs = vt
                .secrets
                .get_mut(*name)
                .ok_or_else(|| secret_not_found(name))?;
            let s = vs
                .iter_mut()
                .find(|s| s.version == *ver)
                .ok_or_else(|| secret_not_found(name))?;
            if let Some(en) = b["attributes"]["enabled"].as_bool() {
                s.enabled = en;
            }
            if let Some(ct) = b["contentType"].as_str() {
                s.content_type = Some(ct.to_string());
            }
            s.updated = now;
            Ok(json_resp(
                200,
                &secret_bundle(&vault_url, name, s, false),
                &[],
            ))
        }
        ("secrets/delete", ["secrets", name]) => {
            let vs = vt
                .secrets
                .remove(*name)
                .ok_or_else(|| secret_not_found(name))?;
            let last = vs.last().unwrap();
            let mut out = secret_bundle(&vault_url, name, last, false);
            out["recoveryId"] = json!(format!("{vault_url}/deletedsecrets/{name}"));
            out["deletedDate"] = json!(now);
            Ok(json_resp(200, &out, &[]))
        }
        ("keys/get", ["keys", name, ..]) => {
            let ver = seg.get(2).copied().filter(|v| !v.is_empty());
            let k = find_key(vt, name, ver)?;
            Ok(json_resp(200, &key_bundle(&vault_url, name, k), &[]))
        }
        ("keys/list", ["keys", name, _]) => {
            let vs = vt.keys.get(*name).ok_or_else(|| key_not_found(name))?;
            let value: Vec<Value> = vs
                .iter()
                .map(|k| {
                    json!({"kid": format!("{vault_url}/keys/{name}/{}", k.version),
                                "attributes": attrs(k.enabled, k.created, k.updated), "tags": {}})
                })
                .collect();
            Ok(json_resp(
                200,
                &json!({"value": value, "nextLink": null}),
                &[],
            ))
        }
        ("keys/update", ["keys", name, ver]) => {
            let b = parse_body()?;
            let vs = vt.keys.get_mut(*name).ok_or_else(|| key_not_found(name))?;
            let k = vs
                .iter_mut()
                .find(|k| k.version == *ver)
                .ok_or_else(|| key_not_found(name))?;
            if let Some(en) = b["attributes"]["enabled"].as_bool() {
                k.enabled = en;
            }
            if let Some(ops) = b["key_ops"].as_array() {
                k.key_ops = ops
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
            }
            k.updated = now;
            Ok(json_resp(200, &key_bundle(&vault_url, name, k), &[]))
        }
        ("keys/delete", ["keys", name]) => {
            let vs = vt.keys.remove(*name).ok_or_else(|| key_not_found(name))?;
            let mut out = key_bundle(&vault_url, name, vs.last().unwrap());
            out["recoveryId"] = json!(format!("{vault_url}/deletedkeys/{name}"));
            out["deletedDate"] = json!(now);
            Ok(json_resp(200, &out, &[]))
        }
        (_, ["keys", name, rest @ ..]) => {
            // crypto operation: rest = [op] or [version, op]
            let (ver, op) = match rest {
                [op] => (None, *op),
                [v, op] => (Some(*v).filter(|v| !v.is_empty()), *op),
                _ => unreachable!(),
            };
            let k = find_key(vt, name, ver)?;
            let op_name = match op {
                "wrapkey" => "wrapKey",
                "unwrapkey" => "unwrapKey",
                other => other,
            };
            if !k.enabled {
                return Err(kv_error(
                    403,
                    "Forbidden",
                    &format!("Operation {op_name} is not allowed on a disabled key."),
                ));
            }
            if !k.key_ops.iter().any(|o| o == op_name) {
                return Err(kv_error(
                    403,
                    "Forbidden",
                    &format!("Operation {op_name} is not permitted on this key."),
                ));
            }
            let b = parse_body()?;
            let alg = b["alg"].as_str().unwrap_or("");
            let Some(input) = b["value"].as_str().and_then(b64d) else {
                return Err(kv_error(
                    400,
                    "BadParameter",
                    "The request body must have a base64url 'value'.",
                ));
            };
            if matches!(op, "encrypt" | "decrypt") && alg.contains("KW") {
                return Err(kv_error(
                    400,
                    "BadParameter",
                    &format!("Algorithm {alg} is not supported for {op_name}."),
                ));
            }
            let reverse = matches!(op, "unwrapkey" | "decrypt");
            let out = crypt(&k.material, alg, &input, reverse)
                .map_err(|e| kv_error(400, "BadParameter", &e))?;
            Ok(json_resp(
                200,
                &json!({"kid": format!("{vault_url}/keys/{name}/{}", k.version), "value": B64URL.encode(out)}),
                &[],
            ))
        }
        _ => Err(kv_error(404, "NotFound", "not found")),
    }
}

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

fn find_secret<'a>(
    vt: &'a Vault,
    _vault_url: &str,
    name: &str,
    ver: Option<&str>,
) -> Result<&'a SecretVersion, Response<RespBody>> {
    let vs = vt.secrets.get(name).ok_or_else(|| secret_not_found(name))?;
    match ver {
        Some(v) => vs.iter().find(|s| s.version == v),
        None => vs.last(),
    }
    .ok_or_else(|| secret_not_found(&format!("{name}/{}", ver.unwrap_or(""))))
}

fn find_key<'a>(
    vt: &'a Vault,
    name: &str,
    ver: Option<&str>,
) -> Result<&'a KeyVersion, Response<RespBody>> {
    let vs = vt.keys.get(name).ok_or_else(|| key_not_found(name))?;
    match ver {
        Some(v) => vs.iter().find(|k| k.version == v),
        None => vs.last(),
    }
    .ok_or_else(|| key_not_found(&format!("{name}/{}", ver.unwrap_or(""))))
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

fn key_bundle(vault_url: &str, name: &str, k: &KeyVersion) -> Value {
    let kid = format!("{vault_url}/keys/{name}/{}", k.version);
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
