//! The Kubernetes CRI v1 gRPC API (`runtime.v1`): messages and the RuntimeService and
//! ImageService clients, as code generated once and checked in, so that building the tests
//! needs no `protoc` (the `k8s-cri` crate this replaces ran protoc in its build script).
//!
//! `api.proto` is k8s-cri 0.11.0's `proto/v1.proto` (kubernetes/cri-api, Apache-2.0);
//! `runtime.v1.rs` is what tonic-prost-build 0.14.9 generates from it with its defaults
//! (`tonic_prost_build::configure().compile_protos(&["api.proto"], &["."])`), unchanged.
//! Regenerate with that call in a scratch crate when the CRI version moves.

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

include!("runtime.v1.rs");
