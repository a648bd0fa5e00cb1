#!/usr/bin/env python3
"""The official Azure SDK (azure-storage-blob 12.31.1) against the cpkfs
emulator, with a customer-provided key. Driven by tests/sdk_interop.rs.

Environment:
  EMU_ACCOUNT_URL  https://127.0.0.1:PORT/devstoreaccount1
  EMU_CA_FILE      PEM of the emulator's CA
  EMU_ACCOUNT      account name        EMU_ACCOUNT_KEY  account key (base64)
  EMU_CONTAINER    container           CPK / CPK_SHA256 the key and its hash (base64)
  CPK_OTHER        another key (base64), for the mismatch case

Subcommands (exit status 0 = every check passed; otherwise a message on stderr):
  upload-single BLOB DATA_FILE     Put Blob with CPK and metadata
  upload-staged BLOB DATA_FILE N   N x Put Block + Put Block List with CPK and metadata
  download BLOB DATA_FILE          download with CPK (small ranges), compare bytes and key hash
  errors BLOB                      no key -> BlobUsesCustomerSpecifiedEncryption,
                                   wrong key -> BlobCustomerSpecifiedEncryptionMismatch
  list PREFIX BLOB...              listing shows the key hash (CustomerProvidedKeySha256) and
                                   encrypted (hidden) metadata for each BLOB
  rekey-from-url SRC DST DATA_FILE SRC is under CPK: upload_blob_from_url to DST with
                                   source_cpk=CPK, cpk=CPK_OTHER (2026-02-06, source SAS made by
                                   the SDK), stage_block_from_url in two ranges to DST.staged;
                                   both read back with CPK_OTHER and compared with DATA_FILE;
                                   missing / wrong source key -> the GET's 409 codes
"""
import base64
import hashlib
import os
import sys

from azure.core.exceptions import HttpResponseError
import datetime

from azure.storage.blob import (
    BlobBlock,
    BlobSasPermissions,
    BlobServiceClient,
    CustomerProvidedEncryptionKey,
    generate_blob_sas,
)

METADATA = {"origin": "sdk", "mode": "0644"}


def fail(msg):
    print(f"sdk_cpk.py: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def env(name):
    v = os.environ.get(name)
    if not v:
        fail(f"environment variable {name} is not set")
    return v


def cpk_from(b64):
    raw = base64.b64decode(b64)
    if len(raw) != 32:
        fail("the CPK does not decode to 32 bytes")
    return CustomerProvidedEncryptionKey(
        key_value=b64, key_hash=base64.b64encode(hashlib.sha256(raw).digest()).decode()
    )


def service(api_version="2021-08-06", **kw):
    return BlobServiceClient(
        account_url=env("EMU_ACCOUNT_URL"),
        credential={"account_name": env("EMU_ACCOUNT"), "account_key": env("EMU_ACCOUNT_KEY")},
        api_version=api_version,
        connection_verify=env("EMU_CA_FILE"),
        **kw,
    )


def container(**kw):
    return service(**kw).get_container_client(env("EMU_CONTAINER"))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def check_hash(what, got):
    want = env("CPK_SHA256")
    if got != want:
        fail(f"{what}: encryption_key_sha256 is {got!r}, expected {want!r}")


def upload_single(blob, path):
    data = read(path)
    cpk = cpk_from(env("CPK"))
    r = container().get_blob_client(blob).upload_blob(
        data, cpk=cpk, metadata=METADATA, overwrite=True
    )
    check_hash("upload_blob response", r.get("encryption_key_sha256"))
    if not r.get("request_server_encrypted"):
        fail(f"upload_blob response not server-encrypted: {r}")


def upload_staged(blob, path, n):
    data = read(path)
    n = int(n)
    cpk = cpk_from(env("CPK"))
    bc = container().get_blob_client(blob)
    step = (len(data) + n - 1) // n
    ids = []
    for i in range(n):
        bid = base64.b64encode(f"sdk-block-{i:06d}".encode()).decode()
        bc.stage_block(bid, data[i * step:(i + 1) * step], cpk=cpk)
        ids.append(BlobBlock(block_id=bid))
    committed, uncommitted = bc.get_block_list("all")  # no key needed
    if len(uncommitted) != n or committed:
        fail(f"block list before commit: {len(committed)} committed, {len(uncommitted)} uncommitted")
    r = bc.commit_block_list(ids, cpk=cpk, metadata=METADATA)
    check_hash("commit_block_list response", r.get("encryption_key_sha256"))


def download(blob, path):
    want = read(path)
    cpk = cpk_from(env("CPK"))
    bc = container(max_single_get_size=1024 * 1024, max_chunk_get_size=1024 * 1024).get_blob_client(blob)
    props = bc.get_blob_properties(cpk=cpk)
    check_hash("get_blob_properties", props.encryption_key_sha256)
    if props.size != len(want):
        fail(f"size {props.size}, expected {len(want)}")
    got = bc.download_blob(cpk=cpk, max_concurrency=3).readall()
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        fail(f"downloaded {len(got)} bytes, expected {len(want)}; first difference at {first}")
    print(f"ok {len(got)} bytes, metadata={props.metadata}")


def expect_code(what, fn, code):
    try:
        fn()
    except HttpResponseError as e:
        if e.error_code != code:
            fail(f"{what}: error_code {e.error_code!r} (HTTP {e.status_code}), expected {code!r}")
        if e.status_code != 409:
            fail(f"{what}: HTTP {e.status_code}, expected 409")
        return
    fail(f"{what}: succeeded, expected {code}")


def errors(blob):
    bc = container(retry_total=0).get_blob_client(blob)
    other = cpk_from(env("CPK_OTHER"))
    uses = "BlobUsesCustomerSpecifiedEncryption"
    mismatch = "BlobCustomerSpecifiedEncryptionMismatch"
    expect_code("download without key", lambda: bc.download_blob().readall(), uses)
    expect_code("properties without key", lambda: bc.get_blob_properties(), uses)
    expect_code("download with wrong key", lambda: bc.download_blob(cpk=other).readall(), mismatch)
    expect_code("properties with wrong key", lambda: bc.get_blob_properties(cpk=other), mismatch)


def list_blobs(prefix, *blobs):
    cc = container()
    seen = {b.name: b for b in cc.list_blobs(name_starts_with=prefix, include=["metadata"])}
    # The SDK's own XML model of the same listing. (12.31.1's public
    # BlobProperties never fills encryption_key_sha256 from an XML listing:
    # get_blob_properties_from_generated_code skips it; only the Arrow path
    # sets it. So the hash is read from the SDK's deserialized model.)
    gen = cc._client.container.list_blob_flat_segment(prefix=prefix or None, include=["metadata"])
    gen_items = {i.name.content: i for i in gen.segment.blob_items}
    for name in blobs:
        if name not in seen or name not in gen_items:
            fail(f"{name} not listed (listed: {sorted(seen)})")
        b = seen[name]
        if b.encryption_key_sha256 is not None:
            check_hash(f"listing of {name}", b.encryption_key_sha256)
        check_hash(f"listing (SDK XML model) of {name}", gen_items[name].properties.customer_provided_key_sha256)
        if not b.server_encrypted:
            fail(f"listing of {name}: server_encrypted is {b.server_encrypted!r}")
        if str(b.encrypted_metadata).lower() != "true":
            fail(f"listing of {name}: encrypted_metadata is {b.encrypted_metadata!r}, expected True")
        if b.metadata:
            fail(f"listing of {name} shows the metadata of a CPK blob: {b.metadata}")
    print(f"ok listed {len(blobs)} CPK blobs with their key hash")


def rekey_from_url(src, dst, path):
    want = read(path)
    key, other = cpk_from(env("CPK")), cpk_from(env("CPK_OTHER"))
    cc = service(api_version="2026-02-06", retry_total=0).get_container_client(env("EMU_CONTAINER"))
    sas = generate_blob_sas(
        env("EMU_ACCOUNT"),
        env("EMU_CONTAINER"),
        src,
        account_key=env("EMU_ACCOUNT_KEY"),
        permission=BlobSasPermissions(read=True),
        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10),
    )
    url = cc.get_blob_client(src).url + "?" + sas
    props = cc.get_blob_client(src).get_blob_properties(cpk=key)
    dbc = cc.get_blob_client(dst)
    r = dbc.upload_blob_from_url(
        url, source_cpk=key, cpk=other, overwrite=True, metadata=METADATA, source_etag=props.etag,
        source_match_condition=__import__("azure.core", fromlist=["MatchConditions"]).MatchConditions.IfNotModified,
    )
    if r.get("encryption_key_sha256") != other.key_hash:
        fail(f"upload_blob_from_url: encryption_key_sha256 {r.get('encryption_key_sha256')!r}")
    got = dbc.download_blob(cpk=other).readall()
    if got != want:
        fail(f"upload_blob_from_url: {len(got)} bytes read back, expected {len(want)}, content differs")
    sbc = cc.get_blob_client(dst + ".staged")
    half = len(want) // 2
    ids = []
    for i, (off, n) in enumerate([(0, half), (half, len(want) - half)]):
        bid = base64.b64encode(f"url-block-{i:04d}".encode()).decode()
        sbc.stage_block_from_url(bid, url, source_offset=off, source_length=n, source_cpk=key, cpk=other)
        ids.append(BlobBlock(block_id=bid))
    sbc.commit_block_list(ids, cpk=other)
    got = sbc.download_blob(cpk=other).readall()
    if got != want:
        fail("stage_block_from_url: content differs")
    expect_code(
        "upload_blob_from_url without source key",
        lambda: cc.get_blob_client(dst + ".x").upload_blob_from_url(url, cpk=other, overwrite=True),
        "BlobUsesCustomerSpecifiedEncryption",
    )
    expect_code(
        "stage_block_from_url with the wrong source key",
        lambda: sbc.stage_block_from_url(
            base64.b64encode(b"url-block-9999").decode(), url, source_offset=0, source_length=10,
            source_cpk=other, cpk=other,
        ),
        "BlobCustomerSpecifiedEncryptionMismatch",
    )
    print(f"ok re-keyed {len(want)} bytes from URL")


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    table = {
        "upload-single": upload_single,
        "upload-staged": upload_staged,
        "download": download,
        "errors": errors,
        "list": list_blobs,
        "rekey-from-url": rekey_from_url,
    }
    if cmd not in table:
        fail(f"unknown subcommand {cmd}")
    try:
        table[cmd](*args)
    except HttpResponseError as e:
        fail(f"{cmd}: unexpected service error {e.status_code} {e.error_code}: {e.message}")
    except TypeError as e:
        fail(f"{cmd}: bad arguments: {e}")


if __name__ == "__main__":
    main(sys.argv)
