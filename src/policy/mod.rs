//! Pure policy decisions over small fact structs: no I/O, no YAML, no sockets. The
//! configuration compiles Istio resources into these types; the data path asks them:
//! [`authz`] (AuthorizationPolicy) and [`jwt`] (RequestAuthentication).

pub mod authz;
pub mod jwt;
