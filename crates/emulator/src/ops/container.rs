//! Container operations: Create, Get Properties/Metadata, Set Metadata, Delete.

use chrono::Utc;
use http::Response;

use super::request::parse_metadata;
use super::response::{etag_headers, R};
use super::stored::container_mut;
use crate::error::ApiError;
use crate::http::{empty, Req};
use crate::shared::Shared;
use crate::store::{new_etag, Container};

pub fn valid_container_name(n: &str) -> bool {
    let b = n.as_bytes();
    (3..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !n.contains("--")
}

pub(super) fn create_container(shared: &Shared, req: Req) -> R {
    if !valid_container_name(&req.container) {
        return Err(ApiError::new(
            400,
            "InvalidResourceName",
            "The specifed resource name contains invalid characters.",
        ));
    }
    let metadata = parse_metadata(&req)?;
    let mut st = shared.state.lock().unwrap();
    let acct = st
        .accounts
        .get_mut(&req.account)
        .ok_or_else(ApiError::container_not_found)?;
    if acct.containers.contains_key(&req.container) {
        return Err(ApiError::new(
            409,
            "ContainerAlreadyExists",
            "The specified container already exists.",
        ));
    }
    let c = Container {
        etag: new_etag(),
        last_modified: Utc::now(),
        metadata,
        blobs: Default::default(),
    };
    shared
        .disk
        .save_container(&req.account, &req.container, &c)
        .map_err(|_| ApiError::internal())?;
    let resp = etag_headers(Response::builder().status(201), &c.etag, &c.last_modified)
        .header("content-length", "0")
        .body(empty())
        .unwrap();
    acct.containers.insert(req.container.clone(), c);
    Ok(resp)
}

pub(super) fn get_container_props(shared: &Shared, req: Req) -> R {
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, &req)?;
    let mut b = etag_headers(Response::builder().status(200), &c.etag, &c.last_modified)
        .header("x-ms-lease-status", "unlocked")
        .header("x-ms-lease-state", "available")
        .header("x-ms-has-immutability-policy", "false")
        .header("x-ms-has-legal-hold", "false")
        .header("content-length", "0");
    for (k, v) in &c.metadata {
        b = b.header(format!("x-ms-meta-{k}"), v.as_str());
    }
    Ok(b.body(empty()).unwrap())
}

pub(super) fn set_container_metadata(shared: &Shared, req: Req) -> R {
    let metadata = parse_metadata(&req)?;
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, &req)?;
    c.metadata = metadata;
    c.etag = new_etag();
    c.last_modified = Utc::now();
    shared
        .disk
        .save_container(&req.account, &req.container, c)
        .map_err(|_| ApiError::internal())?;
    Ok(
        etag_headers(Response::builder().status(200), &c.etag, &c.last_modified)
            .header("content-length", "0")
            .body(empty())
            .unwrap(),
    )
}

pub(super) fn delete_container(shared: &Shared, req: Req) -> R {
    let mut st = shared.state.lock().unwrap();
    let acct = st
        .accounts
        .get_mut(&req.account)
        .ok_or_else(ApiError::container_not_found)?;
    if acct.containers.remove(&req.container).is_none() {
        return Err(ApiError::container_not_found());
    }
    let _ = shared.disk.delete_container(&req.account, &req.container);
    Ok(Response::builder()
        .status(202)
        .header("content-length", "0")
        .body(empty())
        .unwrap())
}
