//! Envoy's response flags and the local responses that carry them, so dashboards and
//! alerts written for Istio read outrider's metrics and logs the same way.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;

/// No flag.
pub const NONE: &str = "-";
/// Upstream connection failure: the app refused or did not answer the connect.
pub const UPSTREAM_CONNECTION_FAILURE: &str = "UF";
/// Upstream connection termination: the app closed or reset the connection.
pub const UPSTREAM_CONNECTION_TERMINATION: &str = "UC";
/// Downstream connection termination: the client went away before the response ended.
pub const DOWNSTREAM_CONNECTION_TERMINATION: &str = "DC";
/// Denied by authorization (RBAC).
pub const RBAC_DENIED: &str = "RBAC";

/// Envoy's body when the app cannot be connected to.
pub const CONNECT_FAILURE_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
/// Envoy's body when the app closed the connection before answering.
pub const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
/// Envoy's body for a request denied by policy.
pub const RBAC_BODY: &str = "RBAC: access denied";

/// A short `text/plain` response made by the proxy itself.
pub fn local_response(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// No healthy upstream: the destination has no endpoint to send to.
pub const NO_HEALTHY_UPSTREAM: &str = "UH";
/// Envoy's body when no endpoint is left.
pub const NO_HEALTHY_UPSTREAM_BODY: &str = "no healthy upstream";
