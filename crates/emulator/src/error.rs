//! Azure-shaped error responses (§5.1).

use http::StatusCode;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra child elements of `<Error>` (name, text).
    pub extra: Vec<(&'static str, String)>,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).expect("valid status"),
            code,
            message: message.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn auth_failed(detail: Option<String>) -> Self {
        let e = Self::new(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.");
        match detail {
            Some(d) => e.with("AuthenticationErrorDetail", d),
            None => e,
        }
    }
    pub fn no_auth() -> Self {
        Self::new(401, "NoAuthenticationInformation", "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.")
    }
    pub fn invalid_header(name: &str, value: &str) -> Self {
        Self::new(
            400,
            "InvalidHeaderValue",
            "The value for one of the HTTP headers is not in the correct format.",
        )
        .with("HeaderName", name)
        .with("HeaderValue", value)
    }
    pub fn missing_header(name: &str) -> Self {
        Self::new(
            400,
            "MissingRequiredHeader",
            "A required HTTP header was not specified.",
        )
        .with("HeaderName", name)
    }
    pub fn invalid_query(name: &str, value: &str, reason: &str) -> Self {
        Self::new(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
        )
        .with("QueryParameterName", name)
        .with("QueryParameterValue", value)
        .with("Reason", reason)
    }
    pub fn out_of_range_query(name: &str, value: &str) -> Self {
        Self::new(
            400,
            "OutOfRangeQueryParameterValue",
            "One of the query parameters specified in the request URI is outside the permissible range.",
        )
        .with("QueryParameterName", name)
        .with("QueryParameterValue", value)
    }
    pub fn container_not_found() -> Self {
        Self::new(
            404,
            "ContainerNotFound",
            "The specified container does not exist.",
        )
    }
    pub fn blob_not_found() -> Self {
        Self::new(404, "BlobNotFound", "The specified blob does not exist.")
    }
    pub fn condition_not_met() -> Self {
        Self::new(
            412,
            "ConditionNotMet",
            "The condition specified using HTTP conditional header(s) is not met.",
        )
    }
    pub fn not_modified() -> Self {
        Self::new(
            304,
            "ConditionNotMet",
            "The condition specified using HTTP conditional header(s) is not met.",
        )
    }
    pub fn blob_exists() -> Self {
        Self::new(
            409,
            "BlobAlreadyExists",
            "The specified blob already exists.",
        )
    }
    pub fn uses_cpk() -> Self {
        Self::new(409, "BlobUsesCustomerSpecifiedEncryption", "The blob is encrypted with customer specified encryption, but it was not provided in the request.")
    }
    pub fn cpk_mismatch() -> Self {
        Self::new(409, "BlobCustomerSpecifiedEncryptionMismatch", "The given customer specified encryption does not match the encryption used to encrypt the blob.")
    }
    pub fn not_cpk() -> Self {
        Self::new(409, "BlobDoesNotUseCustomerSpecifiedEncryption", "The blob is not encrypted with customer specified encryption, but one was provided in the request.")
    }
    pub fn internal() -> Self {
        Self::new(
            500,
            "InternalError",
            "The server encountered an internal error. Please retry the request.",
        )
    }
    pub fn invalid_input() -> Self {
        Self::new(
            400,
            "InvalidInput",
            "One of the request inputs is not valid.",
        )
    }
    pub fn unsupported() -> Self {
        Self::new(
            400,
            "UnsupportedHttpVerb",
            "The resource doesn't support specified Http Verb.",
        )
    }
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// ISO 8601 with 7 fractional digits, as in `Time:` lines.
pub fn iso_time_now() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}.{:07}Z",
        now.format("%Y-%m-%dT%H:%M:%S"),
        now.timestamp_subsec_nanos() / 100
    )
}

/// The XML body of an error response.
pub fn error_body(err: &ApiError, request_id: &str) -> String {
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>");
    s.push_str(err.code);
    s.push_str("</Code><Message>");
    s.push_str(&xml_escape(&format!(
        "{}\nRequestId:{}\nTime:{}",
        err.message,
        request_id,
        iso_time_now()
    )));
    s.push_str("</Message>");
    for (name, value) in &err.extra {
        s.push('<');
        s.push_str(name);
        s.push('>');
        s.push_str(&xml_escape(value));
        s.push_str("</");
        s.push_str(name);
        s.push('>');
    }
    s.push_str("</Error>");
    s
}
