//! Every integration test in one binary: one module per area, the helpers in [`common`] compiled
//! once, and one link of the crate instead of one per file (`cargo test --test it <module>::`
//! runs one area).
//!
//! All modules share this process, so nothing here may change process-wide state: tests never
//! set environment variables, change the current directory, signal their own process or
//! install a global (a tracing subscriber, rustls' default `CryptoProvider`); they pass
//! settings to the child processes they start, hand out loopback ports through
//! [`common::free_port`] (never the same one twice) and make their scratch directories with
//! [`common::temp_dir`] (unique, removed on drop).

mod common;

mod auth_sample;
mod authz;
mod authz_http;
mod bad_certs;
mod ca_cli;
mod ca_grpc_python;
mod ca_hardening;
mod ca_service;
mod ca_token_out;
mod capture;
mod capture_mesh;
mod cipher;
mod config_check;
mod config_errors;
mod config_hardening;
mod dashboard;
mod demo;
mod edge_tls;
mod endpoints;
mod fuzz_regressions;
mod gateway;
mod gateway_certs;
mod gateway_edge;
mod gateway_reload;
mod gateway_routes;
mod hardening;
mod identity_rotation;
mod jwks;
mod jwt;
mod jwt_lab;
mod kubernetes_manifests;
mod l7;
mod policy_enforced;
mod reload;
mod resumption;
mod resumption_identity;
mod secure_naming;
mod sidecar_ca;
mod sidecar_e2e;
mod sidecar_peers;
mod sidecar_subsets;
