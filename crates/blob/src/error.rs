//! Typed client errors. Every service error keeps the HTTP status, the Azure
//! error code, the message and the request id, and explains the codes a user
//! will meet in one line.

use std::fmt;
use std::time::Duration;

/// An error answer from the Blob service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub operation: &'static str,
    pub resource: String,
    pub status: u16,
    /// `x-ms-error-code` (or the XML `<Code>` when the header is missing).
    pub code: Option<String>,
    /// The first line of the service message (without RequestId/Time lines).
    pub message: String,
    pub request_id: Option<String>,
    /// True when a 403 was a signature (MAC) mismatch: another key may help.
    /// The service's detail text is not kept: it holds the string-to-sign,
    /// which contains the CPK.
    pub mac_mismatch: bool,
    /// Attempts made, this answer included. A conditional write that fails
    /// its condition after more than one attempt may have met its own
    /// earlier success, whose answer was lost.
    pub attempts: u32,
}

impl ServiceError {
    pub fn code(&self) -> &str {
        self.code.as_deref().unwrap_or("")
    }

    /// One line a user understands, for the codes that need one.
    pub fn explanation(&self) -> Option<&'static str> {
        Some(match self.code() {
            "BlobUsesCustomerSpecifiedEncryption" => {
                "the blob is encrypted with a customer-provided key, but none was sent"
            }
            "BlobCustomerSpecifiedEncryptionMismatch" => {
                "the blob is encrypted with a different customer-provided key than this one"
            }
            "BlobDoesNotUseCustomerSpecifiedEncryption" => {
                "the blob is not encrypted with a customer-provided key, but one was sent"
            }
            "InvalidHeaderValue" => "the service refused a header value (a malformed encryption key, key hash or API version?)",
            "AuthenticationFailed" | "AuthorizationFailure" => {
                "the service refused the credentials: wrong or rotated account key, expired SAS, or a clock more than 15 minutes off"
            }
            "AuthorizationPermissionMismatch" => "the SAS or identity lacks the permission this operation needs",
            "AuthorizationProtocolMismatch" => "the SAS does not allow this protocol (http vs https)",
            "NoAuthenticationInformation" => "the request carried no credentials",
            "AccountRequiresHttps" => "the account only accepts https",
            "ContainerNotFound" => "the container does not exist",
            "BlobNotFound" => "the blob does not exist",
            "ConditionNotMet" => "the blob changed since it was opened (ETag no longer matches)",
            "CannotVerifyCopySource" => "the copy source cannot be read by the service (CPK blobs cannot be copied server-side)",
            "ServerBusy" => "the account is throttling requests",
            _ => return None,
        })
    }

    pub fn is(&self, code: &str) -> bool {
        self.code() == code
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: HTTP {}",
            self.operation, self.resource, self.status
        )?;
        if let Some(c) = &self.code {
            write!(f, " {c}")?;
        }
        if let Some(e) = self.explanation() {
            write!(f, " ({e})")?;
        } else if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(r) = &self.request_id {
            write!(f, " [request id {r}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    Service(Box<ServiceError>),

    #[error("{operation} {resource}: {kind} after {attempts} attempt(s) in {elapsed:?}: {source}")]
    Transport {
        operation: &'static str,
        resource: String,
        kind: TransportKind,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("refusing to send a customer-provided key over plain http: Azure only accepts CPK over https (use an https endpoint)")]
    CpkOverHttp,

    #[error("invalid client configuration: {0}")]
    Config(String),

    #[error("{operation} {resource}: could not parse the service's response: {detail}")]
    Protocol {
        operation: &'static str,
        resource: String,
        detail: String,
    },

    #[error("{operation} {resource}: the blob changed during the download (ETag {expected} no longer current)")]
    Changed {
        operation: &'static str,
        resource: String,
        expected: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Connect,
    Tls,
    Timeout,
    Io,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "cannot connect to the endpoint",
            TransportKind::Tls => "TLS failure (untrusted certificate? pass the CA with ca_file)",
            TransportKind::Timeout => "timed out",
            TransportKind::Io => "connection failed",
        })
    }
}

impl BlobError {
    pub fn service(&self) -> Option<&ServiceError> {
        match self {
            BlobError::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The Azure error code, if the service answered.
    pub fn code(&self) -> Option<&str> {
        self.service().and_then(|s| s.code.as_deref())
    }

    pub fn status(&self) -> Option<u16> {
        self.service().map(|s| s.status)
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub fn is_code(&self, code: &str) -> bool {
        self.code() == Some(code)
    }

    /// A From-URL request with a source key refused because the service (or the
    /// account) does not take service version 2026-02-06 or the source-key headers:
    /// 400 `InvalidHeaderValue` (Azure and Azurite for an unknown `x-ms-version` or
    /// header) or an unsupported-version/feature code. Callers fall back to
    /// streaming the bytes. Source-key refusals of a service that does support
    /// them are 409s and are not this.
    /// The error as it ends a request: attempts made and time spent so far
    /// (a transport error keeps the figures of its own attempt otherwise).
    pub(crate) fn with_attempts(self, attempts: u32, elapsed: std::time::Duration) -> BlobError {
        match self {
            BlobError::Transport {
                operation,
                resource,
                kind,
                source,
                ..
            } => BlobError::Transport {
                operation,
                resource,
                kind,
                attempts,
                elapsed,
                source,
            },
            other => other,
        }
    }

    pub fn is_source_cpk_unsupported(&self) -> bool {
        match self.service() {
            Some(s) => {
                (s.status == 400
                    && matches!(
                        s.code.as_deref(),
                        Some("InvalidHeaderValue")
                            | Some("UnsupportedHeader")
                            | Some("InvalidQueryParameterValue")
                            | Some("UnsupportedHttpVerb")
                    ))
                    || matches!(
                        s.code.as_deref(),
                        Some("FeatureNotSupported") | Some("NotImplemented")
                    )
                    || s.status == 501
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_request_id_and_explains_cpk() {
        let e = BlobError::Service(Box::new(ServiceError {
            operation: "GetBlob",
            resource: "c/a.txt".into(),
            status: 409,
            code: Some("BlobCustomerSpecifiedEncryptionMismatch".into()),
            message: "The given customer specified encryption does not match".into(),
            request_id: Some("rid-1".into()),
            mac_mismatch: false,
            attempts: 1,
        }));
        let s = e.to_string();
        assert!(
            s.contains("GetBlob c/a.txt: HTTP 409 BlobCustomerSpecifiedEncryptionMismatch"),
            "{s}"
        );
        assert!(s.contains("different customer-provided key"), "{s}");
        assert!(s.contains("request id rid-1"), "{s}");
        assert!(e.is_code("BlobCustomerSpecifiedEncryptionMismatch"));
    }
}
