#!/usr/bin/env python3
"""Microsoft's own Key Vault and Identity SDKs (azure-keyvault-keys 4.11.3,
azure-keyvault-secrets 4.12.0, azure-identity 1.27.0, msal 1.39.0) against the
cpkfs emulator. Driven by tests/keyvault.rs.

Only what the emulator requires is set: the vault URL, the authority host, the
CA bundle (`connection_verify`), the documented switch for the challenge's
domain check (`verify_challenge_resource=False`) and, for the client-secret
credential, `disable_instance_discovery=True`: MSAL validates any authority
host it does not know by calling instance discovery at
login.microsoftonline.com, which an offline emulator cannot answer, and
azure-identity offers no way to point that call elsewhere. MSAL itself can: the
`msal` check below validates the emulator's authority through the emulator's
own instance discovery document.

Environment:
  EMU_URL        https://127.0.0.1:PORT (the emulator's main listener)
  EMU_CA_FILE    PEM of the emulator's CA
  KV_CLIENT_ID / KV_CLIENT_SECRET   a service principal with every permission
  KV_MI_CLIENT_ID                   a managed identity (IMDS / App Service)
The vault URL, authority host and tenant come from GET EMU_URL/__admin/vault.

Subcommands (exit status 0 = every check passed; otherwise a message on stderr):
  all                     keys, crypto, secrets, a disabled key, every token flow
  wrap KEY OUT_FILE       create RSA key KEY, wrap a fresh 32-byte key with
                          RSA-OAEP-256, write a cpkfs wrapped-key file; prints
                          "sha256: <base64 SHA-256 of the key>"
  unwrap FILE             unwrap a cpkfs wrapped-key file (`cpkfs keygen
                          --wrap-with`), check its sha256; prints "sha256: …"
"""
import base64
import hashlib
import json
import os
import sys

import msal
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.keyvault.secrets import SecretClient

VAULT_SCOPE = "https://vault.azure.net/.default"


def fail(msg):
    print(f"sdk_keyvault.py: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def env(name):
    v = os.environ.get(name)
    if not v:
        fail(f"environment variable {name} is not set")
    return v


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sha256_b64(b):
    return base64.b64encode(hashlib.sha256(b).digest()).decode()


class Emu:
    """Where the emulator is, as GET /__admin/vault reports it."""

    def __init__(self):
        self.ca = env("EMU_CA_FILE")
        base = env("EMU_URL")
        info = requests.get(f"{base}/__admin/vault", verify=self.ca, timeout=10).json()
        self.vault_url = info["vault_url"]
        self.authority_host = info["authority_host"]
        self.tenant = info["tenant"]
        self.identity_endpoint = info["identity_endpoint"]
        self.identity_header = info["identity_header"]
        self.base = base

    def secret_credential(self, client_id=None, secret=None):
        return ClientSecretCredential(
            self.tenant,
            client_id or env("KV_CLIENT_ID"),
            secret or env("KV_CLIENT_SECRET"),
            authority=self.authority_host,
            connection_verify=self.ca,
            disable_instance_discovery=True,
        )

    def clients(self, cred):
        kw = dict(connection_verify=self.ca, verify_challenge_resource=False)
        return KeyClient(self.vault_url, cred, **kw), SecretClient(self.vault_url, cred, **kw)

    def crypto(self, key_or_id, cred):
        return CryptographyClient(
            key_or_id, cred, connection_verify=self.ca, verify_challenge_resource=False
        )


def check_keys(emu, cred):
    kc, _ = emu.clients(cred)
    k1 = kc.create_rsa_key("sdk-rsa", size=2048)
    check(k1.id.startswith(f"{emu.vault_url}/keys/sdk-rsa/"), f"kid {k1.id}")
    check(k1.key_type == "RSA" and k1.key.n and k1.key.e, "an RSA public key")
    check(not getattr(k1.key, "d", None), "private parts are never returned")
    k2 = kc.create_rsa_key("sdk-rsa", size=2048)
    check(k2.properties.version != k1.properties.version, "a second create adds a version")
    latest = kc.get_key("sdk-rsa")
    check(latest.id == k2.id, f"get_key returns the latest version: {latest.id} != {k2.id}")
    check(kc.get_key("sdk-rsa", k1.properties.version).id == k1.id, "get_key by version")
    versions = sorted(p.version for p in kc.list_properties_of_key_versions("sdk-rsa"))
    check(versions == sorted([k1.properties.version, k2.properties.version]), f"versions {versions}")
    check("sdk-rsa" in [p.name for p in kc.list_properties_of_keys()], "list_properties_of_keys")
    try:
        kc.get_key("no-such-key")
        fail("a missing key was returned")
    except ResourceNotFoundError as e:
        check(e.error.code == "KeyNotFound", f"KeyNotFound, got {e.error.code}")

    # RSA-OAEP-256: wrap with one version, unwrap by its kid (service side).
    cpk = os.urandom(32)
    cc = emu.crypto(k1.id, cred)
    w = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cpk)
    check(w.key_id == k1.id and len(w.encrypted_key) == 256, f"RSA wrap result {w.key_id}")
    check(cc.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, w.encrypted_key).key == cpk, "RSA-OAEP-256 round trip")

    # A256KW with an oct-HSM key (wrap and unwrap both in the service).
    oct_key = kc.create_oct_key("sdk-oct", size=256, hardware_protected=True)
    check(oct_key.id.startswith(f"{emu.vault_url}/keys/sdk-oct/"), f"kid {oct_key.id}")
    oc = emu.crypto(oct_key.id, cred)
    w = oc.wrap_key(KeyWrapAlgorithm.aes_256, cpk)
    check(len(w.encrypted_key) == 40, "A256KW output is 40 bytes for a 32-byte key")
    check(oc.unwrap_key(KeyWrapAlgorithm.aes_256, w.encrypted_key).key == cpk, "A256KW round trip")

    # A disabled version is refused, for get and for unwrap; enabling it again works.
    wrapped = cc.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cpk).encrypted_key
    props = kc.update_key_properties("sdk-rsa", k1.properties.version, enabled=False)
    check(props.properties.enabled is False, "update_key_properties(enabled=False)")
    for what, op in [
        ("get", lambda: kc.get_key("sdk-rsa", k1.properties.version)),
        ("unwrapKey", lambda: emu.crypto(k1.id, cred).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)),
    ]:
        try:
            op()
            fail(f"{what} on a disabled key succeeded")
        except HttpResponseError as e:
            check(e.status_code == 403 and "disabled" in str(e.message), f"{what}: {e.status_code} {e.message}")
    kc.update_key_properties("sdk-rsa", k1.properties.version, enabled=True)
    check(emu.crypto(k1.id, cred).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == cpk, "re-enabled")


def check_secrets(emu, cred):
    _, sc = emu.clients(cred)
    s1 = sc.set_secret("sdk-secret", "first", content_type="text/plain")
    check(s1.id.startswith(f"{emu.vault_url}/secrets/sdk-secret/"), f"secret id {s1.id}")
    s2 = sc.set_secret("sdk-secret", "second")
    check(s2.properties.version != s1.properties.version, "set_secret adds a version")
    got = sc.get_secret("sdk-secret")
    check(got.value == "second" and got.id == s2.id, "get_secret returns the latest")
    old = sc.get_secret("sdk-secret", s1.properties.version)
    check(old.value == "first" and old.properties.content_type == "text/plain", "get_secret by version")
    versions = sorted(p.version for p in sc.list_properties_of_secret_versions("sdk-secret"))
    check(versions == sorted([s1.properties.version, s2.properties.version]), f"versions {versions}")
    check("sdk-secret" in [p.name for p in sc.list_properties_of_secrets()], "list_properties_of_secrets")
    try:
        sc.get_secret("no-such-secret")
        fail("a missing secret was returned")
    except ResourceNotFoundError as e:
        check(e.error.code == "SecretNotFound", f"SecretNotFound, got {e.error.code}")


def check_tokens(emu, cred):
    """Client secret (azure-identity and MSAL), IMDS and App Service."""
    tok = cred.get_token(VAULT_SCOPE)
    check(tok.token and tok.expires_on > 0, "a client-secret token")
    bad = emu.secret_credential(secret="wrong-secret")
    try:
        bad.get_token(VAULT_SCOPE)
        fail("a wrong client secret got a token")
    except Exception as e:  # ClientAuthenticationError
        check("invalid_client" in str(e) or "AADSTS7000215" in str(e), f"wrong secret: {e}")

    # MSAL directly, validating the authority with the emulator's own
    # instance discovery document (and reading its OpenID configuration).
    app = msal.ConfidentialClientApplication(
        env("KV_CLIENT_ID"),
        client_credential=env("KV_CLIENT_SECRET"),
        authority=f"{emu.authority_host}/{emu.tenant}",
        instance_discovery=f"{emu.authority_host}/common/discovery/instance",
        verify=emu.ca,
    )
    r = app.acquire_token_for_client(scopes=[VAULT_SCOPE])
    check("access_token" in r, f"MSAL token: {r.get('error')} {r.get('error_description')}")

    mi = env("KV_MI_CLIENT_ID")
    saved = dict(os.environ)
    try:
        # IMDS (azure-identity's override of the IMDS host).
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = emu.base
        for kw in [{}, {"client_id": mi}]:
            c = ManagedIdentityCredential(connection_verify=emu.ca, **kw)
            check(c.get_token(VAULT_SCOPE).token, f"IMDS token {kw}")
        # The token is good for the vault.
        _, sc = emu.clients(ManagedIdentityCredential(connection_verify=emu.ca))
        check(sc.get_secret("sdk-secret").value == "second", "a secret read with the IMDS token")
        del os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
        # App Service.
        os.environ["IDENTITY_ENDPOINT"] = emu.identity_endpoint
        os.environ["IDENTITY_HEADER"] = emu.identity_header
        c = ManagedIdentityCredential(connection_verify=emu.ca)
        check(c.get_token(VAULT_SCOPE).token, "App Service token")
        _, sc = emu.clients(c)
        check(sc.get_secret("sdk-secret").value == "second", "a secret read with the App Service token")
    finally:
        os.environ.clear()
        os.environ.update(saved)

    counts = requests.get(f"{emu.base}/__admin/vault", verify=emu.ca, timeout=10).json()["tokens_issued"]
    check(counts.get("imds", 0) >= 3 and counts.get("app_service", 0) >= 1, f"token counters {counts}")


def cmd_all():
    emu = Emu()
    cred = emu.secret_credential()
    check_keys(emu, cred)
    check_secrets(emu, cred)
    check_tokens(emu, cred)
    print("ok")


def cmd_wrap(name, out):
    emu = Emu()
    cred = emu.secret_credential()
    kc, _ = emu.clients(cred)
    key = kc.create_rsa_key(name, size=2048)
    cpk = os.urandom(32)
    w = emu.crypto(key.id, cred).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cpk)
    doc = {"kid": w.key_id, "alg": "RSA-OAEP-256", "wrapped_key": b64url(w.encrypted_key), "sha256": sha256_b64(cpk)}
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    print(f"sha256: {doc['sha256']}")


def cmd_unwrap(path):
    emu = Emu()
    cred = emu.secret_credential()
    with open(path) as f:
        doc = json.load(f)
    check(doc["kid"].startswith(f"{emu.vault_url}/keys/"), f"kid {doc['kid']} is not in the default vault")
    cpk = emu.crypto(doc["kid"], cred).unwrap_key(doc["alg"], unb64url(doc["wrapped_key"])).key
    check(len(cpk) == 32, f"unwrapped {len(cpk)} bytes")
    check(sha256_b64(cpk) == doc["sha256"], "the unwrapped key's SHA-256 matches the file")
    print(f"sha256: {sha256_b64(cpk)}")


def main():
    args = sys.argv[1:]
    if args == ["all"]:
        cmd_all()
    elif len(args) == 3 and args[0] == "wrap":
        cmd_wrap(args[1], args[2])
    elif len(args) == 2 and args[0] == "unwrap":
        cmd_unwrap(args[1])
    else:
        fail(f"usage: see the docstring (got {args})")


if __name__ == "__main__":
    main()
