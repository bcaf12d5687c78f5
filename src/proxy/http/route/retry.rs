//! When a failed attempt is tried again (`retries.retryOn`) and how long to wait first.
//!
//! Envoy's `retry_on` conditions, as Istio passes them through:
//! - `5xx`: any 5xx response, and any attempt without a response (connect failure, reset,
//!   refused stream, per-try timeout);
//! - `gateway-error`: 502, 503 or 504, and any attempt without a response (Envoy counts a
//!   reset or a per-try timeout as a gateway error);
//! - `reset`: any attempt without a response; `reset-before-request`: one that never reached
//!   the upstream (a connect failure);
//! - `connect-failure`, `refused-stream` (HTTP/2 `REFUSED_STREAM`): that failure only;
//! - `retriable-4xx`: 409;
//! - a number (`503`): that status. Istio turns numbers into Envoy's retriable status codes
//!   and adds the `retriable-status-codes` condition itself, so the word alone adds nothing;
//! - `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`: that
//!   `grpc-status` in the response headers (a trailers-only gRPC answer).
//!
//! Unknown words are ignored. Istio's policy when a rule has no `retries` is 2 attempts on
//! `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with status
//! 503: the configuration writes that as `503` in the list.

use std::time::Duration;

use rand::Rng;

use crate::config::RetryPolicy;

/// Envoy's default base retry interval.
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's default cap: ten times the base.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How one attempt to the upstream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// No connection could be made (refused, unreachable, connect timeout, TLS handshake).
    ConnectFailure,
    /// The connection or stream was reset or closed before the response headers.
    Reset,
    /// The HTTP/2 stream was refused (`REFUSED_STREAM`): the upstream did not process it.
    RefusedStream,
    /// `perTryTimeout` passed before the response headers.
    Timeout,
    /// Response headers arrived with this status (and `grpc-status`, when they carry one).
    Status {
        status: u16,
        grpc_status: Option<u32>,
    },
}

/// Whether `policy.retry_on` asks for another attempt after `result` (see the module doc);
/// the caller checks the attempts left, the overall timeout, and that the request body can
/// be sent again.
pub fn retriable(policy: &RetryPolicy, result: &AttemptResult) -> bool {
    policy
        .retry_on
        .iter()
        .flat_map(|entry| entry.split(','))
        .map(str::trim)
        .any(|condition| holds(condition, result))
}

/// How long to wait before retry number `retry` (1 for the first retry): Envoy's fully
/// jittered exponential back-off, uniform in `[0, min(25 ms × 2^(retry-1), 250 ms))`.
pub fn backoff(retry: u32) -> Duration {
    backoff_with(retry, rand::rng().random())
}

/// [`backoff`] with the random number given: `random` modulo the ceiling, in milliseconds.
pub fn backoff_with(retry: u32, random: u64) -> Duration {
    let ceiling = backoff_ceiling(retry).as_millis() as u64;
    Duration::from_millis(random % ceiling)
}

/// The exclusive upper bound of [`backoff`] for retry number `retry` (0 counts as 1): 25,
/// 50, 100, 200, then 250 ms.
pub fn backoff_ceiling(retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(16);
    (BACKOFF_BASE * (1u32 << doublings)).min(BACKOFF_MAX)
}

fn holds(condition: &str, result: &AttemptResult) -> bool {
    let (status, grpc_status) = match *result {
        AttemptResult::Status {
            status,
            grpc_status,
        } => (Some(status), grpc_status),
        _ => (None, None),
    };
    let no_response = status.is_none();
    let grpc = |code: u32| grpc_status == Some(code);
    match condition {
        "5xx" => no_response || status.is_some_and(|s| (500..=599).contains(&s)),
        "gateway-error" => no_response || matches!(status, Some(502..=504)),
        "reset" => no_response,
        "reset-before-request" | "connect-failure" => *result == AttemptResult::ConnectFailure,
        "refused-stream" => *result == AttemptResult::RefusedStream,
        "retriable-4xx" => status == Some(409),
        "cancelled" => grpc(1),
        "deadline-exceeded" => grpc(4),
        "resource-exhausted" => grpc(8),
        "internal" => grpc(13),
        "unavailable" => grpc(14),
        code => code
            .parse::<u16>()
            .is_ok_and(|code| (100..=599).contains(&code) && status == Some(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &[&str]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn status(status: u16) -> AttemptResult {
        AttemptResult::Status {
            status,
            grpc_status: None,
        }
    }

    fn grpc(code: u32) -> AttemptResult {
        AttemptResult::Status {
            status: 200,
            grpc_status: Some(code),
        }
    }

    use AttemptResult::{ConnectFailure, RefusedStream, Reset, Timeout};

    #[test]
    fn conditions_follow_envoy() {
        let rows: &[(&[&str], AttemptResult, bool)] = &[
            (&["5xx"], status(500), true),
            (&["5xx"], status(503), true),
            (&["5xx"], status(599), true),
            (&["5xx"], status(499), false),
            (&["5xx"], status(200), false),
            (&["5xx"], ConnectFailure, true),
            (&["5xx"], Reset, true),
            (&["5xx"], RefusedStream, true),
            (&["5xx"], Timeout, true),
            (&["gateway-error"], status(502), true),
            (&["gateway-error"], status(503), true),
            (&["gateway-error"], status(504), true),
            (&["gateway-error"], status(500), false),
            (&["gateway-error"], status(505), false),
            (&["gateway-error"], Reset, true),
            (&["gateway-error"], Timeout, true),
            (&["gateway-error"], ConnectFailure, true),
            (&["reset"], Reset, true),
            (&["reset"], Timeout, true),
            (&["reset"], ConnectFailure, true),
            (&["reset"], RefusedStream, true),
            (&["reset"], status(503), false),
            (&["reset-before-request"], ConnectFailure, true),
            (&["reset-before-request"], Reset, false),
            (&["connect-failure"], ConnectFailure, true),
            (&["connect-failure"], Reset, false),
            (&["connect-failure"], Timeout, false),
            (&["connect-failure"], status(503), false),
            (&["refused-stream"], RefusedStream, true),
            (&["refused-stream"], Reset, false),
            (&["retriable-4xx"], status(409), true),
            (&["retriable-4xx"], status(408), false),
            (&["retriable-4xx"], status(429), false),
            (&["retriable-4xx"], Reset, false),
            (&["503"], status(503), true),
            (&["503"], status(502), false),
            (&["503"], Reset, false),
            (&["retriable-status-codes", "503"], status(503), true),
            (&["retriable-status-codes"], status(503), false),
            (&["429", "503"], status(429), true),
            (&["5xx,429"], status(429), true),
            (&[" 5xx , gateway-error "], status(500), true),
            (&["700"], status(700), false),
            (&["cancelled"], grpc(1), true),
            (&["deadline-exceeded"], grpc(4), true),
            (&["resource-exhausted"], grpc(8), true),
            (&["internal"], grpc(13), true),
            (&["unavailable"], grpc(14), true),
            (&["unavailable"], grpc(13), false),
            (&["unavailable"], grpc(0), false),
            (&["unavailable"], status(503), false),
            (&["unavailable"], Reset, false),
            (&["cancelled", "deadline-exceeded"], grpc(4), true),
            // gRPC status and HTTP status are separate conditions.
            (
                &["5xx"],
                AttemptResult::Status {
                    status: 503,
                    grpc_status: Some(14),
                },
                true,
            ),
            (&["unknown-word"], Reset, false),
            (&[], Reset, false),
            (&[""], status(503), false),
        ];
        for (i, (retry_on, result, expected)) in rows.iter().enumerate() {
            assert_eq!(
                retriable(&policy(retry_on), result),
                *expected,
                "row {i}: {retry_on:?} after {result:?}"
            );
        }
    }

    #[test]
    fn istio_default_policy_as_configured() {
        let default = policy(&[
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
            "503",
        ]);
        let rows: &[(AttemptResult, bool)] = &[
            (ConnectFailure, true),
            (RefusedStream, true),
            (status(503), true),
            (grpc(14), true),
            (grpc(1), true),
            (Reset, false),
            (Timeout, false),
            (status(500), false),
            (status(502), false),
            (status(200), false),
        ];
        for (result, expected) in rows {
            assert_eq!(retriable(&default, result), *expected, "{result:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_25ms_up_to_250ms() {
        let rows: &[(u32, u64)] = &[
            (0, 25),
            (1, 25),
            (2, 50),
            (3, 100),
            (4, 200),
            (5, 250),
            (6, 250),
            (u32::MAX, 250),
        ];
        for (retry, ceiling_ms) in rows {
            assert_eq!(
                backoff_ceiling(*retry),
                Duration::from_millis(*ceiling_ms),
                "retry {retry}"
            );
            assert_eq!(backoff_with(*retry, 0), Duration::ZERO);
            assert_eq!(
                backoff_with(*retry, ceiling_ms - 1),
                Duration::from_millis(ceiling_ms - 1)
            );
            assert_eq!(backoff_with(*retry, *ceiling_ms), Duration::ZERO);
            assert_eq!(
                backoff_with(*retry, u64::MAX),
                Duration::from_millis(u64::MAX % ceiling_ms)
            );
        }
        for retry in 1..8 {
            for _ in 0..50 {
                assert!(backoff(retry) < backoff_ceiling(retry));
            }
        }
    }
}
